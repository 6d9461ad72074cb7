"""The `digits` command: thin commands over library functions, one module per group.

Heavy imports (TensorFlow, Celery, Alembic) happen inside the commands that need them,
so `digits --help`, `status`, `results` and `export` start in a fraction of a second.
Nothing imports this package: it is the top layer."""

from __future__ import annotations

import importlib

import typer

from digits.cli.common import app

__all__ = ["app", "main"]

#: The command modules, in the order `digits --help` lists their commands; importing one
#: registers its commands on ``app``.
GROUPS = ("database", "models", "scoring", "outputs", "benchmark")
for _group in GROUPS:
    importlib.import_module(f"digits.cli.{_group}")


def main() -> None:
    """Entry point: settings are checked first, so a bad DIGITS_* value is one clear line."""
    from pydantic import ValidationError

    from digits.core.settings import get_settings

    try:
        get_settings()
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
