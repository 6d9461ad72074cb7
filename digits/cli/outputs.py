"""Reading results: `status`, `results`, `export`, `report` (fast: no TensorFlow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from digits.cli.common import JsonOpt, app, db_problem, fail, stdout_console


@app.command()
def status(
    batch: Annotated[int | None, typer.Option(help="Only this batch.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queues, connected workers, batches in progress, and the last exports."""
    from digits.core.queries import batch_progress, connected_workers, last_exports, queue_depth

    try:
        progress = (
            batch_progress([batch] if batch else None, active_only=False)
            if batch
            else batch_progress()[-10:]
        )
        info: dict[str, Any] = {
            "queue": queue_depth(),
            "workers": connected_workers(),
            "batches": [p.as_dict() for p in progress],
            "exports": last_exports(3),
        }
    except Exception as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    if batch and not progress:
        raise fail(f"batch {batch} does not exist")
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    from rich.table import Table

    out = stdout_console()
    queue = info["queue"]
    out.print(
        f"queue: {queue.get('queued', 0)} chunks queued, {queue.get('running', 0)} running; "
        f"workers connected: {len(info['workers'])}"
    )
    table = Table(
        "batch",
        "status",
        "kind",
        "model",
        "items",
        "predicted",
        "errors",
        "progress",
        "seconds",
        "source",
    )
    for p in progress:
        table.add_row(
            str(p.batch_id),
            p.shown_status,
            p.kind,
            f"v{p.model_version}",
            str(p.items),
            str(p.predicted),
            str(p.errors),
            p.progress,
            f"{p.seconds:.1f}",
            Path(p.source).name,
        )
    out.print(table)
    for p in progress:
        if p.ingest == "interrupted":
            out.print(
                f"batch {p.batch_id} was interrupted while ingesting {Path(p.source).name}"
                f" ({p.items:,} rows in): `digits resume {p.batch_id}` finishes it, "
                f"`digits cancel {p.batch_id}` drops it"
            )
    for e in info["exports"]:
        out.print(
            f"export: batch {e['batch_id']} → {e['path']} ({e['rows']} rows, "
            f"{e['trigger']}, {e['created_at']})"
        )


@app.command()
def results(
    batch: Annotated[int | None, typer.Option(help="Only this batch.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    below_confidence: Annotated[
        float | None, typer.Option(help="Only predictions with calibrated confidence below this.")
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="Only items whose source contains this.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
) -> None:
    """Predictions per item: label, calibrated confidence, model version, source, errors."""
    from digits.core.queries import RESULT_COLUMNS
    from digits.core.queries import results as query

    if fmt not in ("table", "csv", "json"):
        raise fail("--format must be table, csv or json")
    if limit is not None and limit < 1:
        raise fail(f"--limit must be at least 1, not {limit}", 2)
    try:
        rows = query(batch, below_confidence, limit, source)
    except Exception as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=1))
    elif fmt == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, RESULT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        from rich.table import Table

        table = Table(*RESULT_COLUMNS[:11])
        for r in rows:
            table.add_row(
                *(
                    "" if r[c] is None else f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
                    for c in RESULT_COLUMNS[:11]
                )
            )
        out = stdout_console()
        out.print(table)


@app.command()
def export(
    batch: Annotated[int | None, typer.Option(help="Batch to export.")] = None,
    out: Annotated[Path, typer.Option(help="Submission file to write.")] = Path("submission.csv"),
    model: Annotated[int | None, typer.Option(help="Export this version's predictions.")] = None,
    partial: Annotated[
        bool, typer.Option(help="Write labelled rows even if some lack one.")
    ] = False,
    manifest: Annotated[bool, typer.Option(help="Also write <out>.manifest.json.")] = False,
    since_last: Annotated[
        bool,
        typer.Option(
            "--since-last",
            help="Instead of one batch: every finished batch not exported yet, "
            "into DIGITS_EXPORT_DIR/<date>/batch-<id>/ (what the nightly export does).",
        ),
    ] = False,
) -> None:
    """Write a Kaggle submission (ImageId,Label) for a finished batch, atomically."""
    from scheduler.export import ExportError, export_batch

    if since_last:
        if batch is not None or model is not None:
            raise fail(
                "--since-last exports every pending batch with its pinned model: "
                "drop --batch/--model"
            )
        from scheduler.export import export_pending

        try:
            written = export_pending(trigger="manual")
        except Exception as exc:  # no database yet, or unreachable
            raise fail(db_problem(exc)) from exc
        if not written:
            typer.echo("nothing to export: every finished batch has already been exported")
        for e in written:
            plural = "s" if e.errors != 1 else ""
            errors = f", {e.errors} item error{plural} listed in the manifest" if e.errors else ""
            typer.echo(
                f"batch {e.batch_id}: {e.rows}/{e.items} rows{errors} → {e.submission} "
                f"(+ {e.manifest.name}, sha256 {e.sha256[:16]}…)"
            )
        return
    if batch is None:
        raise fail(
            "pass --batch N (one batch, to --out) or --since-last (every finished batch "
            "not exported yet)"
        )
    try:
        path, rows, sha = export_batch(batch, out, model, partial, manifest)
    except ExportError as exc:
        raise fail(str(exc)) from exc
    except Exception as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    typer.echo(f"wrote {rows} rows to {path} (sha256 {sha[:16]}…)")


@app.command()
def report(
    batch: Annotated[int, typer.Option(help="Batch to report on.")],
    out: Annotated[Path, typer.Option(help="Folder for index.html and the PNG plots.")] = Path(
        "report"
    ),
    grid: Annotated[int, typer.Option(min=1, max=64, help="Least-confident items to show.")] = 16,
) -> None:
    """Plots (labels, confidence, least-confident items, confusion matrix) and index.html."""
    from sqlalchemy.exc import DBAPIError

    from digits.app.report import ReportError, build_report

    try:
        done = build_report(batch, out, grid)
    except ReportError as exc:
        raise fail(str(exc)) from exc
    except DBAPIError as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    accuracy = f"; accuracy {done.accuracy:.2%}" if done.accuracy is not None else ""
    typer.echo(
        f"wrote {done.index} with {', '.join(p.name for p in done.images.values())}{accuracy}"
    )
