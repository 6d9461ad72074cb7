"""Reading results: `status`, `results`, `export`, `report` (fast: no TensorFlow)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from digits.cli.common import JsonOpt, app, db_problem, fail, require_data, stdout_console


@app.command()
def status(
    batch: Annotated[int | None, typer.Option(help="Only this batch.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queues, connected workers, batches in progress, and the last exports."""
    from digits.core.queries import batch_progress, connected_workers, last_exports, queue_depth
    from digits.core.reviews import estimate, queue_counts
    from digits.core.settings import get_settings

    require_data()
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
            "exports": last_exports(3, batch),
            "review": queue_counts(batch, get_settings().audit_share),
        }
        reviewed = estimate(batch)
        info["estimated_accuracy"] = reviewed.as_dict() | {"text": reviewed.text()}
    except Exception as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    if batch and not progress:
        raise fail(f"batch {batch} does not exist")
    serving = _production()
    info["production"] = serving.as_dict() if serving else None
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
    if serving:
        out.print(f"production model: v{serving.version.version} ({serving.why})")
    waiting = info["review"]
    out.print(
        f"review: {waiting['flagged']} flagged and {waiting['audit']} audit items waiting; "
        f"estimated accuracy of unflagged predictions: {info['estimated_accuracy']['text']}"
    )
    table = Table(
        "batch",
        "status",
        "kind",
        "model",
        "items",
        "predicted",
        "errors",
        "flagged",
        "accuracy",
        "progress",
        "elapsed",
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
            str(p.flagged),
            f"{p.accuracy:.1%}" if p.accuracy is not None else "-",
            p.progress,
            _elapsed(p.seconds),
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


def _elapsed(seconds: float | None) -> str:
    """Since the batch was created, to its end or now: ``5.9 s``, ``2 min 05 s``, ``1 h 02 min``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _production() -> Any:
    """The version new batches use and why (None, with no line, when it cannot be told)."""
    from model_store.aliases import active_model
    from model_store.registry import ModelError

    try:
        return active_model()
    except ModelError:
        return None


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
    limit: Annotated[
        int | None,
        typer.Option(help="At most this many rows (default: the table 20, csv/json all)."),
    ] = None,
    show_all: Annotated[
        bool, typer.Option("--all", help="Every row, also in the table (streamed).")
    ] = False,
) -> None:
    """Predictions per item: label, calibrated confidence, model version, source, and why an
    item failed. The table shows the first 20 rows (and how many more); CSV and JSON every row,
    streamed from the database page by page."""
    from itertools import chain

    from digits.core.queries import batch_exists, count_results, iter_results

    if fmt not in ("table", "csv", "json"):
        raise fail("--format must be table, csv or json")
    if limit is not None and limit < 1:
        raise fail(f"--limit must be at least 1, not {limit}", 2)
    if show_all and limit is not None:
        raise fail("--all and --limit N exclude each other", 2)
    require_data()
    shown = TABLE_ROWS if fmt == "table" and limit is None and not show_all else limit
    # the table asks for one row more than it shows: only then is counting the rest worth it
    ask = shown + 1 if fmt == "table" and shown is not None else shown
    try:
        known = batch is None or batch_exists(batch)
        rows = iter_results(batch, below_confidence, ask, source) if known else iter([])
        first = next(rows, None)  # a database problem shows here, before any output
    except Exception as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    if not known:
        raise fail(f"batch {batch} does not exist")
    stream = chain([first], rows) if first is not None else iter([])
    try:
        if fmt == "json":
            _write_json(stream)
        elif fmt == "csv":
            _write_csv(stream)
        elif _write_table(stream, shown) and shown is not None:
            more = count_results(batch, below_confidence, source) - shown
            stdout_console().print(f"{more:,} more rows; use --limit N or --all to see them")
    except BrokenPipeError:  # `digits results --all | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - no flush error at exit
    except Exception as exc:  # the database went away mid-stream
        raise fail(db_problem(exc)) from exc


#: Rows the results table shows unless --limit or --all says otherwise.
TABLE_ROWS = 20


#: Rows per results table: `--all` prints one table per page, so memory stays flat.
TABLE_PAGE = 500


#: The table's columns: the internal item_id gives way to the reason an item failed.
TABLE_COLUMNS = [
    "batch_id",
    "image_id",
    "source",
    "status",
    "label",
    "reviewed_label",
    "confidence",
    "margin",
    "needs_review",
    "model_version",
    "true_label",
    "error",
]


def _write_json(rows: Iterator[dict[str, Any]]) -> None:
    """``json.dumps(rows, indent=1)`` byte for byte, one row at a time."""
    write = sys.stdout.write
    first = True
    for row in rows:
        write("[\n" if first else ",\n")
        write(" " + json.dumps(row, indent=1).replace("\n", "\n "))
        first = False
    write("[]\n" if first else "\n]\n")


def _write_csv(rows: Iterator[dict[str, Any]]) -> None:
    import csv

    from digits.core.queries import RESULT_COLUMNS

    writer = csv.DictWriter(sys.stdout, RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)


def _write_table(rows: Iterator[dict[str, Any]], shown: int | None) -> bool:
    """Print up to ``shown`` rows (all when None) in tables of :data:`TABLE_PAGE` rows; True
    when rows were left over."""
    from rich.table import Table

    out = stdout_console()
    table = Table(*TABLE_COLUMNS)
    for count, r in enumerate(rows):
        if shown is not None and count == shown:
            out.print(table)
            return True
        if count and count % TABLE_PAGE == 0:
            out.print(table)
            table = Table(*TABLE_COLUMNS)
        table.add_row(
            *(
                "" if r[c] is None else f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
                for c in TABLE_COLUMNS
            )
        )
    out.print(table)
    return False


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
    with_files: Annotated[
        bool,
        typer.Option(
            "--with-files",
            help="Also write <out>.files.csv: ImageId,file,label,confidence,needs_review.",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite --out even if it holds another export.")
    ] = False,
) -> None:
    """Write a Kaggle submission (ImageId,Label) for a finished batch, atomically; never over
    another batch's submission unless --force."""
    from scheduler.export import ExportError, export_batch, files_path

    if since_last:
        if batch is not None or model is not None:
            raise fail(
                "--since-last exports every pending batch with its pinned model: "
                "drop --batch/--model"
            )
        if with_files or force:
            raise fail(
                "--with-files and --force go with --batch N: --since-last writes new dated "
                "folders (submission.csv + manifest.json), never over an earlier export"
            )
        from scheduler.export import export_pending

        require_data()
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
    require_data()
    try:
        path, rows, sha = export_batch(
            batch, out, model, partial, manifest, with_files=with_files, force=force
        )
    except ExportError as exc:
        raise fail(str(exc)) from exc
    except Exception as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    files = f" + {files_path(path).name}" if with_files else ""
    typer.echo(f"wrote {rows} rows to {path}{files} (sha256 {sha[:16]}…)")


@app.command()
def report(
    batch: Annotated[int, typer.Option(help="Batch to report on.")],
    out: Annotated[Path, typer.Option(help="Folder for index.html and the PNG plots.")] = Path(
        "report"
    ),
    grid: Annotated[
        int, typer.Option(min=1, max=64, help="At most this many items in the grid.")
    ] = 16,
    include_unflagged: Annotated[
        bool,
        typer.Option(
            "--include-unflagged",
            help="Grid of the least-confident items, flagged or not (default: only the items "
            "flagged for review).",
        ),
    ] = False,
) -> None:
    """Plots (labels, confidence, least-confident items, confusion matrix) and index.html."""
    from sqlalchemy.exc import DBAPIError

    from digits.app.report import ReportError, build_report

    require_data()
    try:
        done = build_report(batch, out, grid, include_unflagged)
    except ReportError as exc:
        raise fail(str(exc)) from exc
    except DBAPIError as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    accuracy = f"; accuracy {done.accuracy:.2%}" if done.accuracy is not None else ""
    typer.echo(
        f"wrote {done.index} with {', '.join(p.name for p in done.images.values())}; "
        f"{done.flagged} flagged for review, {done.shown} in the grid{accuracy}"
    )
