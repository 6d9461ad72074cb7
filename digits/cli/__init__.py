"""The `digits` command: thin commands over library functions, one module per group.

Heavy imports (TensorFlow, Celery, Alembic) happen inside the commands that need them,
so `digits --help`, `status`, `results` and `export` start in a fraction of a second.
Nothing imports this package: it is the top layer."""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Annotated

import typer
from typer.main import get_command_name
from typer.models import CommandInfo, TyperInfo

from digits.cli.common import app

__all__ = ["app", "main"]

#: The command modules; importing one registers its commands on ``app`` (``PANELS`` below
#: decides the order `digits --help` lists them in).
GROUPS = ("database", "models", "scoring", "outputs", "benchmark", "web", "reviews")
for _group in GROUPS:
    importlib.import_module(f"digits.cli.{_group}")

#: `digits --help` in panels, the everyday commands first (a new user looks for these four);
#: within a panel, this order. A command missing here lands in a last panel, "More"
#: (tests/digits/cli/test_everyday.py checks the order).
PANELS = {
    "Everyday": ("run", "status", "results", "export", "report"),
    "Service": ("up", "web", "enqueue", "worker", "scheduler", "resume", "cancel"),
    "Models": ("train", "models", "rescore", "reviews"),
    "Maintenance": ("db", "bench"),
}
_RANK = {name: i for i, name in enumerate(n for names in PANELS.values() for n in names)}
_PANEL = {name: panel for panel, names in PANELS.items() for name in names}


def _name(info: CommandInfo | TyperInfo) -> str:
    if isinstance(info, TyperInfo) or info.name:
        return str(info.name)
    return get_command_name(getattr(info.callback, "__name__", ""))


_infos: list[CommandInfo | TyperInfo] = [*app.registered_commands, *app.registered_groups]
for _info in _infos:
    _info.rich_help_panel = _PANEL.get(_name(_info), "More")  # never above "Everyday"
app.registered_commands.sort(key=lambda info: _RANK.get(_name(info), len(_RANK)))


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"digits {version('digits')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ] = False,
) -> None:
    """digits: batch scoring of handwritten digits (CSV and scans in, SQL and Kaggle out)."""


def main() -> None:
    """Entry point: settings are checked first, so a bad DIGITS_* value or digits.toml key
    is one clear line."""
    from pydantic import ValidationError

    from digits.core.settings import ConfigFileError, get_settings

    try:
        get_settings()
    except ConfigFileError as exc:  # a digits.toml: the message names the file and the key
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise SystemExit(2) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"DIGITS_{'_'.join(str(p) for p in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
            for e in exc.errors()
        )
        typer.secho(f"error: invalid settings: {problems}", fg="red", err=True)
        raise SystemExit(2) from None
    from model_store.registry import ModelError  # stdlib and settings only: no start-up cost

    try:
        app()
    except ModelError as exc:  # e.g. the production alias names a version not installed here
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise SystemExit(1) from None
    finally:
        _quick_exit()


def _quick_exit() -> None:
    """Make the interpreter's exit cheap: the command's work is done. Python's shutdown
    collects garbage over every object the imports made (SQLAlchemy, Celery, NumPy…), which
    took 0.25-0.3 s of a 1 s `digits run` of one photo; frozen objects are left to the OS.
    Pooled database connections are closed first, properly; log handlers are flushed and
    closed by logging's own exit hook, which still runs."""
    import gc

    db = sys.modules.get("digits.core.db")
    if db is not None:
        with contextlib.suppress(Exception):  # exiting anyway: a dead server is no reason to fail
            db.dispose_engines()
    gc.freeze()
