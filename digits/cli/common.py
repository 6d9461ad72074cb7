"""What every command module shares: the Typer apps, option types and error output.

Only stdlib and Typer at module level: `digits --help` must start fast."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="digits: batch scoring of handwritten digits (CSV and scans in, SQL and Kaggle out).",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (docs/cli.md)
    pretty_exceptions_enable=False,
)


db_app = typer.Typer(help="Database schema: migrate and check.", no_args_is_help=True)


models_app = typer.Typer(help="Model versions and aliases.", no_args_is_help=True)


app.add_typer(db_app, name="db")


app.add_typer(models_app, name="models")


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg="red", err=True)
    return typer.Exit(code)


def stop_with_parent(parent: int) -> None:
    """``--exit-with-parent PID``: SIGTERM this process (its own clean stop) once PID is no
    longer its parent, so what `digits run` / `digits up` started never outlives them; refused
    at once if PID is not the parent now (already gone, or a wrong number)."""
    import os
    import signal

    from digits.core.processes import watch_parent

    if os.getppid() != parent:
        raise fail(
            f"--exit-with-parent {parent}: that is not this process's parent (already gone?)"
        )
    watch_parent(parent, lambda: os.kill(os.getpid(), signal.SIGTERM))


def db_problem(exc: Exception) -> str:
    """The database's own first line, without the SQL statement SQLAlchemy appends; the
    `digits db upgrade` hint only when the schema is really missing or older than the code
    (decided by the driver's error code, not by words such as "does not exist", which
    PostgreSQL also uses for an unknown role or database)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    first = text.splitlines()[0] if text else type(orig).__name__
    name = type(orig).__name__
    if getattr(orig, "sqlstate", None) in MISSING_SCHEMA_STATES or (
        type(orig).__module__ == "sqlite3" and first.startswith(MISSING_SCHEMA_SQLITE)
    ):
        return (
            f"the database has no or an older digits schema ({first}); "
            "run `digits db upgrade` first"
        )
    return f"cannot read the database: {name}: {first}"


def require_data() -> None:
    """What a command that only reads calls first: with no database yet it says where it
    looked and exits 1, instead of creating an empty one (and a `var/` folder) wherever it
    was run and failing on a missing table."""
    from digits.core.db import no_data_here

    problem = no_data_here()
    if problem:
        raise fail(problem)


def console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def stdout_console() -> Any:
    """Tables for stdout; wide when piped, so `digits status | grep` does not get '…' cells."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


MISSING_SCHEMA_STATES = frozenset({"42P01", "42703", "3F000"})


MISSING_SCHEMA_SQLITE = ("no such table", "no such column")
