"""`digits db …`: migrate the schema and check it against the models."""

from __future__ import annotations

import typer

from digits.cli.common import db_app, fail, require_data


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations (creates the database on first use)."""
    from digits.core.db import upgrade
    from digits.core.settings import get_settings

    upgrade()
    typer.echo(f"database at head: {get_settings().db_url.split('@')[-1]}")


@db_app.command("check")
def db_check() -> None:
    """Exit non-zero when the database, the migrations and the models disagree."""
    from digits.core.db import check

    require_data()
    problem = check()
    if problem:
        raise fail(f"schema drift: {problem}")
    typer.echo("schema ok: database at head and models match the migrations")
