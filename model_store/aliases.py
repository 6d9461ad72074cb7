"""Aliases (``production``, ``candidate``) stored in the database with their history."""

from __future__ import annotations


def alias_target(alias: str) -> int | None:
    """The version an alias points at, or None when it has never been set."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from digits.db import session
    from digits.schema import ModelAlias

    try:
        with session() as sess:
            return sess.scalar(select(ModelAlias.version).where(ModelAlias.alias == alias))
    except (OperationalError, ProgrammingError):
        return None  # schema not created yet: no alias
