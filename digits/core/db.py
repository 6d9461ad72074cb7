"""Engines, sessions and migrations for SQLite (embedded default) and PostgreSQL alike.

SQLite is made fit for several processes: WAL journal, a busy timeout, and ``BEGIN IMMEDIATE``
for every writing transaction so two writers queue up instead of failing with "database is
locked" on a lock upgrade. PostgreSQL gets ``pool_pre_ping`` so a restarted server costs one
retry, not a crashed task.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from digits.core.settings import get_settings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_engines: dict[tuple[str, int], Engine] = {}


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("digits_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def sqlite_file(url: str | None = None) -> Path | None:
    """The file of a SQLite URL (None for a server's database or an in-memory one)."""
    url = url or get_settings().db_url
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[-1]
    return Path(path) if path and path != ":memory:" else None


def no_data_here(url: str | None = None) -> str | None:
    """Why there is nothing to read, when the SQLite database does not exist (or is an empty
    file, as a read left it before): what a command that only reads says instead of opening
    it, since opening SQLite creates the file and its folder. None when there is a database
    (a server's is assumed to exist: its own error says otherwise)."""
    path = sqlite_file(url)
    if path is None:
        return None
    if path.is_file() and (path.stat().st_size or _has_wal(path)):
        return None
    return f"no digits data here (looked in {path}); run `digits run …` or set DIGITS_HOME"


def _has_wal(path: Path) -> bool:
    wal = path.with_name(path.name + "-wal")
    return wal.is_file() and wal.stat().st_size > 0


def get_engine(url: str | None = None) -> Engine:
    """One engine per URL per process (a forked worker child never reuses its parent's pool)."""
    url = url or get_settings().db_url
    key = (url, os.getpid())
    engine = _engines.get(key)
    if engine is None:
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 60})
            _sqlite_setup(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Close this process's pooled connections (a server sees a clean goodbye, not a reset)."""
    for key, engine in list(_engines.items()):
        if key[1] == os.getpid():
            engine.dispose()


@contextmanager
def session(write: bool = False, url: str | None = None) -> Iterator[Session]:
    """A session in one transaction, committed on success. ``write`` takes SQLite's write lock
    up front (BEGIN IMMEDIATE) so the transaction never fails halfway on a lock upgrade."""
    engine = get_engine(url)
    bind = engine.execution_options(digits_write=True) if write else engine
    with Session(bind=bind, expire_on_commit=False) as sess, sess.begin():
        yield sess


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", (url or get_settings().db_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (idempotent). A database already at the newest
    revision is told by one query, without importing Alembic: every command runs this first,
    and a warm `digits run` of one photo is about a second in all."""
    if revision == "head" and current_revision(url) == head_revision():
        return
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The newest migration's revision. Migrations are files ``NNNN_what.py`` whose revision
    is their number, each following the one before (tests/digits/core/test_db.py checks
    this against Alembic's own view of the scripts)."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py"))


def current_revision(url: str | None = None) -> str | None:
    """The database's revision, or None when it has none yet (or cannot be read)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with get_engine(url).connect() as conn:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None
    return str(found) if found is not None else None


def check(url: str | None = None) -> str | None:
    """None when the database is at head and matches the models; else what differs."""
    from alembic import command
    from alembic.util.exc import AutogenerateDiffsDetected, CommandError

    try:
        command.check(alembic_config(url))
    except AutogenerateDiffsDetected as exc:
        return str(exc)
    except CommandError as exc:
        return str(exc)
    return None


def insert_ignore(sess: Session, table: Any, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """Bulk INSERT … ON CONFLICT (keys) DO NOTHING on SQLite and PostgreSQL alike.

    This is what makes a redelivered or duplicated task harmless: the second write of the same
    (item, model version) changes nothing and raises nothing.
    """
    if not rows:
        return
    if sess.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        sess.execute(pg_insert(table).on_conflict_do_nothing(index_elements=keys), rows)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        sess.execute(sqlite_insert(table).on_conflict_do_nothing(index_elements=keys), rows)


def aware(value: Any) -> Any:
    """SQLite returns naive datetimes for timezone-aware columns: read them back as UTC."""
    from datetime import UTC

    if value is not None and getattr(value, "tzinfo", None) is None:
        return value.replace(tzinfo=UTC)
    return value
