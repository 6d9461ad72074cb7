"""Migrations and models agree, on SQLite and PostgreSQL; drift is caught by `db check`."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from digits.core.db import (
    alembic_config,
    check,
    current_revision,
    get_engine,
    head_revision,
    session,
    upgrade,
)
from digits.core.schema import Base, Batch


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, home: object) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    from digits.core.settings import get_settings

    return get_settings().db_url


def test_upgrade_creates_every_table_and_check_is_clean(url: str) -> None:
    upgrade(url)
    upgrade(url)  # idempotent
    assert check(url) is None
    tables = set(inspect(get_engine(url)).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_the_quick_head_check_agrees_with_alembic(url: str) -> None:
    """`upgrade` skips Alembic when the database is at ``head_revision()``, read from the
    migrations' file names: it must be Alembic's own head, and a fresh database has none."""
    from alembic.script import ScriptDirectory

    assert head_revision() == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert current_revision(url) is None
    upgrade(url, "0001")
    assert current_revision(url) == "0001"
    upgrade(url)  # not at head: Alembic runs the rest
    assert current_revision(url) == head_revision()
    assert check(url) is None


def test_check_reports_drift(url: str) -> None:
    upgrade(url)
    with get_engine(url).begin() as conn:
        conn.execute(text("ALTER TABLE batches ADD COLUMN surprise INTEGER"))
    problem = check(url)
    assert problem is not None and "surprise" in problem


def test_check_reports_missing_migrations(url: str) -> None:
    problem = check(url)
    assert problem is not None


def test_timestamps_round_trip_as_utc(url: str) -> None:
    from digits.core.db import aware

    upgrade(url)
    with session(write=True, url=url) as sess:
        batch = Batch(source="x", kind="csv", model_version=1, model_sha256="0" * 64)
        sess.add(batch)
        sess.flush()
        batch_id = batch.id
    with session(url=url) as sess:
        created = aware(sess.get_one(Batch, batch_id).created_at)
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
