"""Alembic environment: the URL comes from the config (set by ``digits.db``) or the settings."""

from __future__ import annotations

from alembic import context

from digits.core.db import get_engine
from digits.core.schema import Base
from digits.core.settings import get_settings

config = context.config
url = config.get_main_option("sqlalchemy.url") or get_settings().db_url


def run_offline() -> None:
    context.configure(
        url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = get_engine(url)
    if url.startswith("sqlite"):
        engine = engine.execution_options(digits_write=True)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=True,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
