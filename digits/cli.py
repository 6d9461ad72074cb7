"""The `digits` command: one group of thin commands over library functions.

Heavy imports (TensorFlow, Celery, Alembic) happen inside the commands that need them, so
`digits --help`, `status`, `results` and `export` start in a fraction of a second.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="digits: batch scoring of handwritten digits (CSV and scans in, SQL and Kaggle out).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
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


#: PostgreSQL's SQLSTATEs for a table, column or schema the query names but the database
#: lacks (undefined_table, undefined_column, invalid_schema_name), and SQLite's own words.
MISSING_SCHEMA_STATES = frozenset({"42P01", "42703", "3F000"})
MISSING_SCHEMA_SQLITE = ("no such table", "no such column")


def db_problem(exc: Exception) -> str:
    """The database's own first line, without the SQL statement SQLAlchemy appends; the
    `digits db upgrade` hint only when the schema is really missing or older than the code
    (decided by the driver's error code, not by words such as "does not exist", which
    PostgreSQL also uses for an unknown role or database)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    first = text.splitlines()[0] if text else type(orig).__name__
    name = type(orig).__name__
    if (getattr(orig, "sqlstate", None) in MISSING_SCHEMA_STATES
            or (type(orig).__module__ == "sqlite3" and first.startswith(MISSING_SCHEMA_SQLITE))):
        return f"the database has no or an older digits schema ({first}); " \
               "run `digits db upgrade` first"
    return f"cannot read the database: {name}: {first}"


def console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def stdout_console() -> Any:
    """Tables for stdout; wide when piped, so `digits status | grep` does not get '…' cells."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


# ---------------------------------------------------------------- database
@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply all migrations (creates the database on first use)."""
    from digits.db import upgrade
    from digits.settings import get_settings

    upgrade()
    typer.echo(f"database at head: {get_settings().db_url.split('@')[-1]}")


@db_app.command("check")
def db_check() -> None:
    """Exit non-zero when the database, the migrations and the models disagree."""
    from digits.db import check

    problem = check()
    if problem:
        raise fail(f"schema drift: {problem}")
    typer.echo("schema ok: database at head and models match the migrations")


# ---------------------------------------------------------------- models
def _labelled_data(data: Path | None) -> Path:
    """The labelled Kaggle CSV a model command works on: ``--data`` or DIGITS_DATA."""
    from digits.settings import get_settings

    source = data or get_settings().data
    if source is None:
        raise fail("no labelled data: pass --data PATH or set DIGITS_DATA")
    if not source.is_file():
        raise fail(f"{source}: no such file")
    return source


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Labelled Kaggle CSV (.csv/.csv.gz).")] = None,
    arch: Annotated[str, typer.Option(
        help="cnn-lite (version 2's members), cnn-wide (the same at double width), cnn "
        "(version 1) or mlp (the origin's 784-400-10).")] = "cnn-lite",
    epochs: Annotated[int | None, typer.Option(
        help="Epochs per member (default: mlp 10, CNNs 30).", min=1)] = None,
    ensemble: Annotated[int, typer.Option(
        help="Train K members and average them into one version.", min=1)] = 1,
    jobs: Annotated[int, typer.Option(
        help="Members trained side by side in child processes (0: one per core).", min=0)] = 0,
    seed: Annotated[int, typer.Option(help="Random seed (member i uses seed + 1000 i).")] = 0,
    max_minutes: Annotated[float, typer.Option(
        help="Time bound for the members. Members beyond --jobs train in later waves, each "
        "wave an equal share; a member whose epochs would not fit its share ends its "
        "learning-rate schedule sooner, so it still anneals.")] = 55.0,
    precision: Annotated[str, typer.Option(
        help="float32, or bf16: mixed bfloat16 training, faster on CPUs with AVX512_BF16 "
        "(emulated, slower, elsewhere; README: Model); the saved model is float32.")
    ] = "float32",
    elastic: Annotated[bool, typer.Option(
        help="Add elastic distortions (Simard et al. 2003) to half the training images.")
    ] = False,
    degrade: Annotated[bool, typer.Option(
        help="Scan-like degradations in the augmentation (thicker and thinner strokes, blur, "
        "noise); --no-degrade trains on affine jitter only.")] = True,
    label_smoothing: Annotated[float, typer.Option(
        help="Train towards 1 - S on the label and S/10 on every class (0: plain labels).")
    ] = 0.0,
    pseudo_label: Annotated[Path | None, typer.Option(
        help="Unlabelled CSV (pixel0..783, e.g. Kaggle's test.csv.gz) to self-train on: "
        "--ensemble teachers train first for --teacher-epochs, their confident labels of its "
        "rows join the training rows of as many new members, which make the version.")
    ] = None,
    teacher_epochs: Annotated[int, typer.Option(
        help="Epochs per teacher with --pseudo-label.", min=1)] = 15,
    pseudo_threshold: Annotated[float, typer.Option(
        help="With --pseudo-label: keep the unlabelled rows whose averaged teacher "
        "probability is at least this (0 < P <= 1).")] = 0.99,
    quiet: QuietOpt = False,
) -> None:
    """Train a model on a labelled CSV and register it as a new immutable version."""
    from model_store.choices import ARCHITECTURES, ENSEMBLE_ARCHITECTURES, PRECISIONS

    source = _labelled_data(data)
    if arch not in ARCHITECTURES:
        raise fail(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if ensemble > 1 and arch not in ENSEMBLE_ARCHITECTURES:
        raise fail(f"--ensemble needs a CNN architecture ({', '.join(ENSEMBLE_ARCHITECTURES)})")
    if precision not in PRECISIONS:
        raise fail(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if not 0 < pseudo_threshold <= 1:
        raise fail(f"--pseudo-threshold must be above 0 and at most 1, not {pseudo_threshold}")
    if not 0 <= label_smoothing < 1:
        raise fail(f"--label-smoothing must be at least 0 and below 1, not {label_smoothing}")
    if pseudo_label is not None and not pseudo_label.is_file():
        raise fail(f"{pseudo_label}: no such file")
    if pseudo_label is not None and arch not in ENSEMBLE_ARCHITECTURES:
        raise fail(f"--pseudo-label needs a CNN architecture ({', '.join(ENSEMBLE_ARCHITECTURES)})")
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from model_store.training import TrainConfig
    from model_store.training import train as run_training
    from scheduler.csv_input import CsvFileError

    config = TrainConfig(arch=arch, epochs=epochs, seed=seed, max_minutes=max_minutes,
                         ensemble=ensemble, jobs=jobs, precision=precision, elastic=elastic,
                         degrade=degrade, label_smoothing=label_smoothing,
                         pseudo_label=pseudo_label,
                         teacher_epochs=teacher_epochs, pseudo_threshold=pseudo_threshold,
                         command=shlex.join(["digits", *sys.argv[1:]]))
    err = console()
    started = time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, disable=quiet) as bar:
        task = bar.add_task(f"training {arch}", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{arch} {label}")
            if label and not quiet and not err.is_terminal:  # a log file gets a line per epoch
                print(f"[{time.monotonic() - started:7.0f} s] {done}/{total} steps  {label}",
                      file=sys.stderr, flush=True)

        try:
            version = run_training(source, config, progress)
        except (CsvFileError, TimeoutError, ValueError) as exc:
            raise fail(str(exc)) from exc
        except KeyboardInterrupt:  # Ctrl-C reaches the member processes too; they just end
            version = None
    if version is None:  # said after the progress bar has closed, so it is the last line
        raise fail("training interrupted; nothing was registered", 130)
    card = version.card
    typer.echo(
        f"registered model version {version.version} ({card['architecture']}): validation "
        f"accuracy {card['validation']['accuracy']:.4%} on {card['validation']['count']} "
        f"held-out rows ({card['scan_validation']['accuracy']:.4%} as scans), "
        f"{card['training']['wall_seconds']:.0f} s, at {version.path}"
    )


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List registered model versions (bundled and trained) with the aliases naming them."""
    from model_store.aliases import all_aliases, resolve_active
    from model_store.registry import ModelError, list_versions, shadowed_versions

    for path in shadowed_versions():
        typer.echo(f"warning: {path} is hidden: this release bundles its own {path.name}. "
                   "Predictions made with it name that number; move the folder out of "
                   "DIGITS_MODELS_DIR to keep it.", err=True)
    try:
        active: int | None = resolve_active().version
    except ModelError as exc:  # the list is how a user finds a version to promote instead
        typer.secho(f"warning: {exc}", fg="yellow", err=True)
        active = None
    aliases = all_aliases()
    rows = [{"version": v.version, "architecture": v.card.get("architecture"),
             "val_accuracy": v.card.get("validation", {}).get("accuracy"),
             "bundled": v.bundled, "active": v.version == active,
             "aliases": aliases.get(v.version, []), "path": str(v.path)}
            for v in list_versions()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "*" if r["active"] else " "
        acc = f"{r['val_accuracy']:.4%}" if r["val_accuracy"] is not None else "?"
        names = f"[{', '.join(r['aliases'])}]" if r["aliases"] else ""
        typer.echo(f"{mark} v{r['version']:<3} {names:<24} {r['architecture'] or '?':<5} "
                   f"val {acc}  {'bundled' if r['bundled'] else r['path']}")


def _percent(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "?"


@models_app.command("show")
def models_show(
    version: Annotated[int, typer.Argument(help="Model version number.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a version's card: integrity, validation and per-class accuracy, calibration."""
    from model_store.aliases import all_aliases
    from model_store.registry import ModelError, get_version, verify

    try:
        meta = get_version(version)
    except ModelError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(meta.card, indent=2, sort_keys=True))
        return
    try:
        verify(meta)
        integrity = "ok (file matches card)"
    except ModelError as exc:
        integrity = f"FAILED: {exc}"
    card = meta.card
    val = card.get("validation", {})
    cal = card.get("calibration", {})
    train = card.get("training", {})
    data = card.get("training_data", {})
    names = ", ".join(all_aliases().get(version, [])) or "-"
    lines = [
        f"model v{version}",
        f"  architecture      {card.get('architecture', '?')}"
        + (f" ({card['parameters']:,} parameters)" if "parameters" in card else ""),
        f"  aliases           {names}",
        f"  location          {'bundled ' if meta.bundled else ''}{meta.path}",
        f"  sha256            {card.get('sha256', '?')}",
        f"  integrity         {integrity}",
        f"  created           {card.get('created_at', '?')}",
        f"  input → output    {card.get('input', '?')} → {card.get('output', '?')}",
        f"  validation        accuracy {_percent(val.get('accuracy'))} on "
        f"{val.get('count', '?')} held-out rows ({val.get('errors', '?')} errors)",
    ]
    per_class = val.get("per_class_accuracy")
    if per_class:
        lines.append("  per-class acc.    " + "  ".join(
            f"{digit}: {_percent(acc)}" for digit, acc in enumerate(per_class)))
    scans = card.get("scan_validation")
    if scans:
        lines.append(f"  as scans          accuracy {_percent(scans.get('accuracy'))} on "
                     f"{scans.get('count', '?')} rendered rows ({scans.get('refused', 0)} refused)"
                     f"; ECE {scans.get('ece_before', 0):.4f} → {scans.get('ece_after', 0):.4f}")
    review = val.get("review_threshold")
    if review:
        lines.append(f"  review threshold  {review['threshold']}: coverage "
                     f"{_percent(review.get('coverage'))}, accuracy above it "
                     f"{_percent(review.get('accuracy_above'))}")
    if cal:
        ece = ""
        if "ece_before" in val and "ece_after" in val:
            ece = f"; ECE {val['ece_before']:.4f} → {val['ece_after']:.4f}"
        lines.append(f"  calibration       temperature {cal.get('temperature', 1.0)} "
                     f"({cal.get('method', '?')}){ece}")
    if train:
        lines.append(
            f"  training          {train.get('epochs_run', '?')}/{train.get('epochs_planned', '?')}"
            f" epochs, batch {train.get('batch_size', '?')}, {train.get('optimizer', '?')}, "
            + (f"label smoothing {train['label_smoothing']}, " if train.get("label_smoothing")
               else "")
            + f"seed {train.get('seed', '?')}, {train.get('wall_seconds', '?')} s on "
            f"{train.get('machine', '?')}, keras {train.get('keras', '?')}")
        if train.get("augmentation"):
            lines.append(f"  augmentation      {train['augmentation']}")
    for member in train.get("members", []) if len(train.get("members", [])) > 1 else []:
        lines.append(f"    member {member['member']}        seed {member['seed']}, "
                     f"{member['epochs_run']} epochs, {member['wall_seconds']} s, validation "
                     f"{_percent(member['validation_accuracy'])}")
    if data:
        lines.append(f"  training data     {data.get('path', '?')} ({data.get('rows', '?')} rows, "
                     f"sha256 {str(data.get('sha256', '?'))[:16]}…)")
    pseudo = train.get("pseudo_labels")
    if pseudo:
        lines.append(f"  pseudo-labels     {pseudo['kept']:,} of {pseudo['rows']:,} rows of "
                     f"{pseudo['path']} (sha256 {pseudo['sha256'][:16]}…) labelled at ≥ "
                     f"{pseudo['threshold']} by {len(pseudo['teachers'])} teachers of "
                     f"{pseudo['teacher_epochs']} epochs ({pseudo['teacher_validation_errors']} "
                     "held-out errors)")
    matrix = val.get("confusion_matrix")
    if matrix:
        lines.append("  confusion matrix  (rows: true digit, columns: predicted)")
        lines.append("          " + "".join(f"{d:>6}" for d in range(len(matrix))))
        lines.extend(f"      {t:>4}" + "".join(f"{n:>6}" for n in row)
                     for t, row in enumerate(matrix))
    typer.echo("\n".join(lines))


AliasOpt = Annotated[str, typer.Option("--alias", help="Alias to act on.")]


@models_app.command("promote")
def models_promote(
    version: Annotated[int, typer.Argument(help="Model version to promote.")],
    alias: AliasOpt = "production",
    force: Annotated[bool, typer.Option(
        "--force", help="Promote even if its golden accuracy is worse (never skips the "
        "integrity and safe-loading checks).")] = False,
    tolerance: Annotated[float, typer.Option(
        help="Allowed golden-accuracy drop versus the current target.")] = 0.002,
    reason: Annotated[str, typer.Option(help="Why: recorded in the alias history.")] = "",
    golden: Annotated[Path | None, typer.Option(
        help="Labelled golden CSV (default: the shipped 200-row sample).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify, safely load and score a version on the golden set, then point an alias at it."""
    from digits.db import upgrade
    from model_store.promotion import PromotionError, promote

    upgrade()
    try:
        result = promote(version, alias, tolerance, force, golden, reason)
    except PromotionError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    base = (f" vs v{result.previous} {result.baseline_accuracy:.2%}"
            if result.baseline_accuracy is not None else "")
    scores = f"golden accuracy {result.accuracy:.2%}{base} on {result.golden_rows} rows"
    if not result.moved:
        typer.echo(f"{alias} already points at v{version} ({scores})")
        return
    was = f"was v{result.previous}" if result.previous is not None else "was unset"
    typer.echo(f"{alias} → v{version} ({was}): {scores}")
    if result.forced:
        typer.secho("forced: the golden accuracy gate was overridden", fg="yellow", err=True)
    if result.note:
        typer.secho(f"note: {result.note}", fg="yellow", err=True)


@models_app.command("rollback")
def models_rollback(alias: AliasOpt = "production") -> None:
    """Point an alias back at the version it named before its last move."""
    from digits.db import upgrade
    from model_store.aliases import AliasError, rollback

    upgrade()
    try:
        change = rollback(alias)
    except AliasError as exc:
        raise fail(str(exc)) from exc
    if not change.moved:
        typer.echo(f"{alias} already points at v{change.to_version}: nothing to roll back")
        return
    typer.echo(f"{alias}: v{change.from_version} → v{change.to_version} (rollback)")


@models_app.command("evaluate")
def models_evaluate(
    version: Annotated[int, typer.Argument(help="Model version number.")],
    data: Annotated[Path | None, typer.Option(
        help="The labelled CSV it trained on (default: DIGITS_DATA).")] = None,
    scans: Annotated[bool, typer.Option(
        help="Also render the held-out rows as scans and score those.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Re-measure a version on the fixed held-out rows: accuracy, errors, ECE, review coverage;
    for an ensemble also each member's errors, how many of the ensemble's every member shares,
    and which rows it gets wrong."""
    source = _labelled_data(data)
    from model_store.registry import ModelError, get_version
    from model_store.training import measure
    from scheduler.csv_input import CsvFileError

    try:
        with console().status(f"scoring v{version} on the held-out rows of {source.name}"
                              + (", then as rendered scans" if scans else ""),
                              spinner="dots") if not as_json else nullcontext():
            result = measure(get_version(version), source, scans)
    except (ModelError, CsvFileError) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for name in ("clean", "scans"):
        if name in result:
            m = result[name]
            review = m["review_threshold"]
            typer.echo(
                f"v{version} {name:<5} {m['accuracy']:.4%} ({m['errors']} errors / {m['count']})"
                f", ECE {m['ece_before']:.4f} → {m['ece_after']:.4f}; at {review['threshold']}: "
                f"coverage {_percent(review['coverage'])}, accuracy "
                f"{_percent(review['accuracy_above'])}")
    if "members" in result:
        m = result["members"]
        typer.echo(f"v{version} members: {', '.join(map(str, m['member_errors']))} errors; "
                   f"{m['made_by_every_member']} of the ensemble's {m['ensemble_errors']} are "
                   "made by every member")
        typer.echo(f"v{version} wrong rows (0-based data rows of {source.name}): "
                   + (" ".join(map(str, m["error_rows"])) or "none"))


@models_app.command("history")
def models_history(
    alias: AliasOpt = "production",
    limit: Annotated[int | None, typer.Option(help="At most this many moves.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every move of an alias, newest first: from → to, when, and why."""
    from model_store.aliases import history

    moves = history(alias, limit)
    if as_json:
        typer.echo(json.dumps([m.as_dict() for m in moves], indent=2))
        return
    if not moves:
        typer.echo(f"{alias} has never been set")
        return
    for m in moves:
        when = m.created_at.strftime("%Y-%m-%d %H:%M:%S") if m.created_at else "?"
        start = f"v{m.from_version}" if m.from_version is not None else "-"
        typer.echo(f"{when}  {start:>4} → v{m.to_version:<4} {m.reason}")


@app.command()
def rescore(
    batch: Annotated[int, typer.Option(help="Finished batch to score again.")],
    model: Annotated[int, typer.Option(help="Model version to score it with.")],
    limit: Annotated[int, typer.Option(help="Changed items to print (all with --json).")] = 50,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a finished batch with another version beside its predictions; show agreement."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from sqlalchemy.exc import DBAPIError

    from model_store.rescore import RescoreError
    from model_store.rescore import rescore as run_rescore

    try:  # the bar is transient: an error or the summary is what stays on screen
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=console(), disable=quiet or as_json, transient=True) as bar:
            task = bar.add_task(f"batch {batch} with v{model}", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = run_rescore(batch, model, progress)
    except RescoreError as exc:
        raise fail(str(exc)) from exc
    except DBAPIError as exc:  # no schema yet, or the database is unreachable
        raise fail(f"cannot read the database: {type(exc.orig).__name__}: "
                   f"{str(exc.orig).strip()}. Run `digits db upgrade` first?") from exc
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    agreement = f"{result.agreement:.2%}" if result.agreement is not None else "n/a"
    typer.echo(f"batch {batch}: v{result.old_version} vs v{result.new_version}: "
               f"{result.agreeing}/{result.compared} items agree ({agreement}), "
               f"{len(result.changed)} changed; {result.written} predictions added")
    if result.labelled:
        typer.echo(f"accuracy on {result.labelled} labelled items: "
                   f"v{result.old_version} {result.old_correct / result.labelled:.2%}, "
                   f"v{result.new_version} {result.new_correct / result.labelled:.2%}")
    if result.unreadable:
        typer.secho(f"{result.unreadable} items could not be read again", fg="yellow", err=True)
    for c in result.changed[:limit]:
        truth = f" (true {c.true_label})" if c.true_label is not None else ""
        typer.echo(f"  item {c.item_id} #{c.position} {c.source_ref}: "
                   f"{c.old_label} ({c.old_confidence:.3f}) → {c.new_label} "
                   f"({c.new_confidence:.3f}){truth}")
    if len(result.changed) > limit:
        typer.echo(f"  … {len(result.changed) - limit} more (use --json for all)")


# ---------------------------------------------------------------- scoring
@app.command()
def enqueue(
    paths: Annotated[list[Path], typer.Argument(help="CSV files or folders of images.")],
    model: Annotated[int | None, typer.Option(help="Pin this model version.")] = None,
) -> None:
    """Turn inputs into batches and queue them for the workers; prints one batch id per input."""
    from sqlalchemy.exc import DBAPIError

    from digits.db import upgrade
    from scheduler.batches import SourceError, enqueue_path

    upgrade()
    failed = False
    batch_ids: list[int] = []
    with interruptible(batch_ids):
        for path in paths:
            try:
                done = enqueue_path(path, model)
            except SourceError as exc:
                typer.secho(f"error: {exc}", fg="red", err=True)
                failed = True
                continue
            except DBAPIError as exc:
                _report_left_behind(batch_ids)
                raise fail(db_problem(exc)) from exc
            batch_ids.append(done.batch_id)
            typer.echo(done.batch_id)
            if done.failed:
                typer.secho(f"batch {done.batch_id} failed: {done.failed}", fg="red", err=True)
                failed = True
    if failed:
        raise typer.Exit(1)


def _report_left_behind(batch_ids: list[int]) -> None:
    from scheduler.ingestion import left_behind

    try:
        for batch in left_behind(batch_ids):
            typer.secho(batch.line(), fg="yellow", err=True)
    except Exception as exc:  # the database itself may be why we stopped
        typer.secho(f"cannot list what is left: {db_problem(exc)}", fg="red", err=True)


@contextmanager
def interruptible(batch_ids: list[int]) -> Iterator[None]:
    """Ctrl-C or SIGTERM while enqueueing or waiting: say what is left behind (a batch half
    ingested: resume or cancel it; batches queued: a worker finishes them) and exit 130,
    instead of a traceback and a batch that looks complete."""
    import signal

    def terminate(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt:
        typer.secho("interrupted", fg="red", err=True)
        _report_left_behind(batch_ids)
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
    exit_with_parent: Annotated[int | None, typer.Option(
        help="Warm shutdown once process PID is no longer this worker's parent (what "
        "`digits run` and `digits up` pass, so their workers never outlive them).")] = None,
) -> None:
    """Run a Celery worker (prefork) that scores chunks."""
    import signal

    from digits.processes import watch_parent
    from digits.settings import get_settings
    from worker.celery_app import QUEUE
    from worker.celery_app import app as celery_app

    if exit_with_parent is not None:
        if os.getppid() != exit_with_parent:
            raise fail(f"--exit-with-parent {exit_with_parent}: that is not this process's "
                       "parent (already gone?)")
        watch_parent(exit_with_parent, lambda: os.kill(os.getpid(), signal.SIGTERM))
    n = concurrency or get_settings().workers
    # A node name per process (Celery's default is celery@<host> for all): `digits up` and
    # `digits run` start several workers on one host, and remote control (`celery inspect`)
    # must be able to tell them apart. Same host:pid as the heartbeat `digits status` shows.
    node = f"digits-{os.getpid()}@%h"
    celery_app.worker_main(["worker", "--pool", "prefork", "--concurrency", str(n), "-Q", QUEUE,
                            "--hostname", node, "--loglevel", loglevel, "--without-gossip",
                            "--without-mingle"])


@app.command()
def scheduler(
    beat: Annotated[bool, typer.Option(help="Also run Celery beat (nightly export).")] = True,
) -> None:
    """Watch the inbox, sweep expired leases, and schedule the nightly export (foreground)."""
    import logging
    import threading

    from digits.db import upgrade
    from scheduler.service import install_stop_handlers, run_scheduler

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    upgrade()
    stop = threading.Event()
    install_stop_handlers(stop)
    run_scheduler(stop, beat=beat)


@app.command()
def up(
    workers: Annotated[int | None, typer.Option(help="Local worker processes.")] = None,
) -> None:
    """Service mode on this machine: scheduler + beat + N workers; Ctrl-C stops cleanly."""
    import logging

    from digits.db import upgrade
    from digits.settings import get_settings
    from scheduler.service import up as run_up

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    upgrade()
    settings = get_settings()
    typer.echo(f"digits up: inbox {settings.inbox_dir}, exports {settings.exports_dir}, "
               f"{workers or settings.workers} workers; Ctrl-C to stop")
    run_up(workers)


@app.command()
def run(
    paths: Annotated[list[Path], typer.Argument(help="CSV files or folders of images.")],
    out: Annotated[Path | None, typer.Option(help="Also write the Kaggle submission here.")] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes to start.")] = None,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")]
    = 3600.0,
    model: Annotated[int | None, typer.Option(help="Pin this model version.")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score inputs now: enqueue, start local workers if none is connected, wait, summarise."""
    from sqlalchemy.exc import DBAPIError

    from digits.db import upgrade
    from scheduler.runner import run_paths

    upgrade()
    created: list[int] = []
    try:
        with interruptible(created):
            summary = run_paths(paths, workers=workers, timeout=timeout, model=model, out=out,
                                show_progress=not (quiet or as_json), console=console(),
                                created=created)
    except (ValueError, TimeoutError) as exc:
        raise fail(str(exc)) from exc
    except DBAPIError as exc:
        _report_left_behind(created)
        raise fail(db_problem(exc)) from exc
    if as_json:
        typer.echo(json.dumps(summary.as_json()))
    else:
        summary.print(console())
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def resume(
    batch: Annotated[int, typer.Argument(help="The interrupted batch.")],
    quiet: QuietOpt = False,
) -> None:
    """Finish ingesting a batch whose `digits run`/`enqueue` was interrupted, from where it
    stopped (workers then score it as usual)."""
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from scheduler.ingestion import IngestionError, resume_batch

    try:
        with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console(),
                      disable=quiet, transient=True) as bar:
            task = bar.add_task(f"resuming batch {batch}", total=None)

            def progress(rows: int) -> None:
                bar.update(task, description=f"batch {batch}: {rows:,} rows in")

            done, after = resume_batch(batch, progress)
    except IngestionError as exc:
        raise fail(str(exc)) from exc
    if done.failed:
        raise fail(f"batch {batch} failed: {done.failed}")
    typer.echo(f"batch {batch}: resumed after row {after:,}; {done.items:,} items in "
               f"{done.chunks} chunks ({done.errors} refused), queued for the workers")


@app.command()
def cancel(
    batch: Annotated[int, typer.Argument(help="The batch to stop.")],
) -> None:
    """Stop a batch: its chunks stop, it is marked cancelled, what was scored stays."""
    from scheduler.ingestion import IngestionError, cancel_batch

    try:
        done = cancel_batch(batch)
    except IngestionError as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"batch {batch} cancelled (was {done.was}): {done.predicted:,} predictions "
               f"kept, {done.unscored:,} items not scored")


@app.command()
def status(
    batch: Annotated[int | None, typer.Option(help="Only this batch.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Queues, connected workers, batches in progress, and the last exports."""
    from digits.queries import batch_progress, connected_workers, last_exports, queue_depth

    try:
        progress = batch_progress([batch] if batch else None,
                                  active_only=False) if batch else batch_progress()[-10:]
        info: dict[str, Any] = {"queue": queue_depth(), "workers": connected_workers(),
                "batches": [p.as_dict() for p in progress], "exports": last_exports(3)}
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
    out.print(f"queue: {queue.get('queued', 0)} chunks queued, {queue.get('running', 0)} running; "
              f"workers connected: {len(info['workers'])}")
    table = Table("batch", "status", "kind", "model", "items", "predicted", "errors", "progress",
                  "seconds", "source")
    for p in progress:
        table.add_row(str(p.batch_id), p.shown_status, p.kind, f"v{p.model_version}",
                      str(p.items), str(p.predicted), str(p.errors), p.progress,
                      f"{p.seconds:.1f}", Path(p.source).name)
    out.print(table)
    for p in progress:
        if p.ingest == "interrupted":
            out.print(f"batch {p.batch_id} was interrupted while ingesting {Path(p.source).name}"
                      f" ({p.items:,} rows in): `digits resume {p.batch_id}` finishes it, "
                      f"`digits cancel {p.batch_id}` drops it")
    for e in info["exports"]:
        out.print(f"export: batch {e['batch_id']} → {e['path']} ({e['rows']} rows, "
                  f"{e['trigger']}, {e['created_at']})")


@app.command()
def results(
    batch: Annotated[int | None, typer.Option(help="Only this batch.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    below_confidence: Annotated[float | None, typer.Option(
        help="Only predictions with calibrated confidence below this.")] = None,
    source: Annotated[str | None, typer.Option(help="Only items whose source contains this.")]
    = None,
    limit: Annotated[int | None, typer.Option(help="At most this many rows.")] = None,
) -> None:
    """Predictions per item: label, calibrated confidence, model version, source, errors."""
    from digits.queries import RESULT_COLUMNS
    from digits.queries import results as query

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
            table.add_row(*("" if r[c] is None else
                            f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
                            for c in RESULT_COLUMNS[:11]))
        out = stdout_console()
        out.print(table)


@app.command()
def export(
    batch: Annotated[int | None, typer.Option(help="Batch to export.")] = None,
    out: Annotated[Path, typer.Option(help="Submission file to write.")] = Path("submission.csv"),
    model: Annotated[int | None, typer.Option(help="Export this version's predictions.")] = None,
    partial: Annotated[bool, typer.Option(help="Write labelled rows even if some lack one.")]
    = False,
    manifest: Annotated[bool, typer.Option(help="Also write <out>.manifest.json.")] = False,
    since_last: Annotated[bool, typer.Option(
        "--since-last", help="Instead of one batch: every finished batch not exported yet, "
        "into DIGITS_EXPORT_DIR/<date>/batch-<id>/ (what the nightly export does).")] = False,
) -> None:
    """Write a Kaggle submission (ImageId,Label) for a finished batch, atomically."""
    from scheduler.export import ExportError, export_batch

    if since_last:
        if batch is not None or model is not None:
            raise fail("--since-last exports every pending batch with its pinned model: "
                       "drop --batch/--model")
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
            typer.echo(f"batch {e.batch_id}: {e.rows}/{e.items} rows{errors} → {e.submission} "
                       f"(+ {e.manifest.name}, sha256 {e.sha256[:16]}…)")
        return
    if batch is None:
        raise fail("pass --batch N (one batch, to --out) or --since-last (every finished batch "
                   "not exported yet)")
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
    out: Annotated[Path, typer.Option(help="Folder for index.html and the PNG plots.")]
    = Path("report"),
    grid: Annotated[int, typer.Option(min=1, max=64, help="Least-confident items to show.")]
    = 16,
) -> None:
    """Plots (labels, confidence, least-confident items, confusion matrix) and index.html."""
    from sqlalchemy.exc import DBAPIError

    from scheduler.report import ReportError, build_report

    try:
        done = build_report(batch, out, grid)
    except ReportError as exc:
        raise fail(str(exc)) from exc
    except DBAPIError as exc:  # no database yet, or unreachable
        raise fail(db_problem(exc)) from exc
    accuracy = f"; accuracy {done.accuracy:.2%}" if done.accuracy is not None else ""
    typer.echo(f"wrote {done.index} with {', '.join(p.name for p in done.images.values())}"
               f"{accuracy}")


@app.command()
def bench(
    data: Annotated[Path | None, typer.Option(help="Kaggle CSV to score.")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    seed_sample: Annotated[int, typer.Option(help="Images for the origin's per-image loop.")]
    = 300,
    images: Annotated[int, typer.Option(
        help="Image mode: score this many generated ~300x300 JPEG scans instead of a CSV.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark: end-to-end vs model-only ceiling vs the origin's one-predict-per-image loop."""
    from scheduler.bench import run_bench

    try:
        report = run_bench(data, workers=workers, seed_sample=seed_sample, quiet=as_json,
                           images=images)
    except (ValueError, TimeoutError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(json.dumps(report, indent=None if as_json else 2))


def main() -> None:
    """Entry point: settings are checked first, so a bad DIGITS_* value is one clear line."""
    from pydantic import ValidationError

    from digits.settings import get_settings

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


if __name__ == "__main__":
    main()
