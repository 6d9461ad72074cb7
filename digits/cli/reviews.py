"""`digits reviews …`: the decisions people made in the review queue, and the reviewed items
as training data (Kaggle train format)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from digits.cli.common import JsonOpt, app, db_problem, fail, require_data, stdout_console

reviews_app = typer.Typer(
    help="Reviewed items: list them, export them as training data.", no_args_is_help=True
)
app.add_typer(reviews_app, name="reviews")

BatchOpt = Annotated[int | None, typer.Option("--batch", help="Only this batch.")]


@reviews_app.command("list")
def reviews_list(batch: BatchOpt = None, as_json: JsonOpt = False) -> None:
    """Every item with a current reviewed label: the model's label, the reviewed one, who, when."""
    from digits.core.reviews import reviewed_items

    require_data()
    try:
        items = reviewed_items(batch)
    except Exception as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in items], indent=2))
        return
    if not items:
        typer.echo(f"no reviewed items{f' in batch {batch}' if batch is not None else ''}")
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table("batch", "ImageId", "source", "model", "reviewed", "kind", "reviewer", "when")
    for r in items:
        table.add_row(
            str(r.batch_id),
            str(r.position),
            escape(r.source),
            str(r.model_label),
            str(r.label) + (" *" if r.label != r.model_label else ""),
            r.kind,
            escape(r.reviewer),
            r.reviewed_at[:19].replace("T", " "),
        )
    out = stdout_console()
    out.print(table)
    changed = sum(r.label != r.model_label for r in items)
    out.print(f"{len(items)} reviewed, {changed} changed the model's label (*)")


@reviews_app.command("export")
def reviews_export(
    out: Annotated[
        Path, typer.Option("--out", help="CSV to write (label,pixel0..pixel783).")
    ] = Path("reviewed.csv"),
    batch: BatchOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write every reviewed item as training data (label,pixel0..783: the 28×28 the model saw)."""
    from digits.app.reviewed import ReviewedExportError, export_reviewed

    require_data()
    try:
        done = export_reviewed(out, batch)
    except ReviewedExportError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror or exc}") from None
    except Exception as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    if as_json:
        typer.echo(json.dumps(done.as_dict(), indent=2))
        return
    typer.echo(
        f"wrote {done.rows} reviewed rows to {out} ({done.overrides} corrected the model)"
        + (
            f"; {len(done.missing)} left out: their pixels are gone (staging or file removed)"
            if done.missing
            else ""
        )
    )
