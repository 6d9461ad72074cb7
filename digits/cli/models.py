"""`digits train`, `digits models …` and `digits rescore`: versions, aliases, training."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer

from digits.cli.common import JsonOpt, QuietOpt, app, console, fail, models_app, require_data


def _labelled_data(data: Path | None) -> Path:
    """The labelled Kaggle CSV a model command works on: ``--data`` or DIGITS_DATA."""
    from digits.core.settings import get_settings

    source = data or get_settings().data
    if source is None:
        raise fail("no labelled data: pass --data PATH or set DIGITS_DATA")
    if not source.is_file():
        raise fail(f"{source}: no such file")
    return source


def _given(ctx: typer.Context, *names: str) -> list[str]:
    """The options among ``names`` (parameter names) given on the command line, as typed
    (``--arch``): a default value is not a choice the user made."""
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    return [
        flags[name]
        for name in names
        if name in flags
        and getattr(ctx.get_parameter_source(name), "name", "") in ("COMMANDLINE", "ENVIRONMENT")
    ]


def _with_progress(title: str, run: Callable[[Any], Any], quiet: bool) -> Any:
    """Run a training function under a progress bar (a log file gets a line per epoch): its
    refusals become one error line, Ctrl-C exits 130 with nothing registered."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from digits.core.csv_input import CsvFileError
    from model_store.registry import ModelError

    err = console()
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
    ) as bar:
        task = bar.add_task(f"training {title}", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{title} {label}")
            if label and not quiet and not err.is_terminal:  # a log file gets a line per epoch
                print(
                    f"[{time.monotonic() - started:7.0f} s] {done}/{total} steps  {label}",
                    file=sys.stderr,
                    flush=True,
                )

        try:
            version = run(progress)
        except (CsvFileError, ModelError, TimeoutError, ValueError) as exc:
            raise fail(str(exc)) from exc
        except KeyboardInterrupt:  # Ctrl-C reaches the member processes too; they just end
            version = None
    if version is None:  # said after the progress bar has closed, so it is the last line
        raise fail("training interrupted; nothing was registered", 130)
    return version


#: ``digits train`` options that choose a recipe: --from keeps the parent's.
RECIPE_OPTIONS = (
    "arch",
    "ensemble",
    "precision",
    "elastic",
    "degrade",
    "label_smoothing",
    "pseudo_label",
    "teacher_epochs",
    "pseudo_threshold",
)


def _fine_tune(
    ctx: typer.Context,
    parent: int,
    data: Path | None,
    base_data: Path | None,
    replay: int,
    epochs: int | None,
    learning_rate: float,
    seed: int,
    max_minutes: float,
    jobs: int,
    quiet: bool,
    writers: bool | None = None,
    int8: bool = True,
) -> None:
    """``digits train --from V``: every check first (one line each, no Keras), then the
    fine-tuning under the same progress bar as ``train``."""
    clash = _given(ctx, *RECIPE_OPTIONS)
    if clash:
        raise fail(
            f"--from fine-tunes v{parent} with its own recipe: {', '.join(clash)} cannot be "
            "combined with it"
        )
    if data is None:
        raise fail(
            "--from needs --data CSV: the labelled corrections to learn from "
            "(`digits reviews export` writes them)"
        )
    if not data.is_file():
        raise fail(f"{data}: no such file")
    from digits.core.settings import get_settings

    base = base_data or get_settings().data
    if base is None:
        raise fail(
            "--from needs the original training data (for replay rows and the held-out "
            "split): pass --base-data PATH or set DIGITS_DATA"
        )
    if not base.is_file():
        raise fail(f"{base}: no such file")
    from digits.core.csv_input import CsvFileError
    from model_store.fine_tune import DEFAULT_EPOCHS, FineTuneConfig, fine_tune, plan
    from model_store.registry import ModelError

    config = FineTuneConfig(
        parent,
        data,
        base,
        replay,
        epochs or DEFAULT_EPOCHS,
        learning_rate,
        seed,
        max_minutes,
        jobs,
        shlex.join(["digits", *sys.argv[1:]]),
        writers,
    )
    try:
        checked = plan(config)
    except (CsvFileError, ModelError, ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    for warning in checked.warnings:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    version = _with_progress(
        f"fine-tuning v{parent}", lambda progress: fine_tune(checked, progress), quiet
    )
    card = version.card
    tuned = card["fine_tune"]
    before = checked.parent.card.get("validation", {}).get("accuracy")
    typer.echo(
        f"registered model version {version.version} ({card['architecture']}, fine-tuned from "
        f"v{parent} on {tuned['rows_used']} rows of {tuned['path']} + {tuned['replay_rows']} "
        f"replayed): validation accuracy {card['validation']['accuracy']:.4%} on "
        f"{card['validation']['count']} held-out rows"
        + (f" (v{parent}: {before:.4%})" if isinstance(before, float) else "")
        + f", {card['scan_validation']['accuracy']:.4%} as scans, "
        f"{tuned['wall_seconds']:.0f} s, at {version.path}"
    )
    if int8:
        _check_int8(version.version, checked.config.base_data, quiet)


@app.command()
def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Labelled Kaggle CSV (.csv/.csv.gz); with --from, the corrections to learn from."
        ),
    ] = None,
    arch: Annotated[
        str,
        typer.Option(
            help="cnn-lite (version 2's members), cnn-wide (the same at double width), cnn "
            "(version 1) or mlp (the origin's 784-400-10)."
        ),
    ] = "cnn-lite",
    epochs: Annotated[
        int | None,
        typer.Option(help="Epochs per member (default: mlp 10, CNNs 30; with --from 5).", min=1),
    ] = None,
    ensemble: Annotated[
        int, typer.Option(help="Train K members and average them into one version.", min=1)
    ] = 1,
    jobs: Annotated[
        int,
        typer.Option(
            help="Members trained side by side in child processes (0: one per core).", min=0
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Random seed (member i uses seed + 1000 i).")] = 0,
    max_minutes: Annotated[
        float,
        typer.Option(
            help="Time bound for the members. Members beyond --jobs train in later waves, each "
            "wave an equal share; a member whose epochs would not fit its share ends its "
            "learning-rate schedule sooner, so it still anneals."
        ),
    ] = 55.0,
    precision: Annotated[
        str,
        typer.Option(
            help="float32, or bf16: mixed bfloat16 training, faster on CPUs with AVX512_BF16 "
            "(emulated, slower, elsewhere; README: Model); the saved model is float32."
        ),
    ] = "float32",
    elastic: Annotated[
        bool,
        typer.Option(
            help="Add elastic distortions (Simard et al. 2003) to half the training images."
        ),
    ] = False,
    degrade: Annotated[
        bool,
        typer.Option(
            help="Scan-like degradations in the augmentation (thicker and thinner strokes, blur, "
            "noise); --no-degrade trains on affine jitter only."
        ),
    ] = True,
    writers: Annotated[
        bool,
        typer.Option(
            help="Add what capture by other writers differs by (docs/models.md): crossed 7s and "
            "serifed 1s, slant, stroke width, pen pressure, low resolution (digit 8-16 px)."
        ),
    ] = False,
    label_smoothing: Annotated[
        float,
        typer.Option(
            help="Train towards 1 - S on the label and S/10 on every class (0: plain labels)."
        ),
    ] = 0.0,
    pseudo_label: Annotated[
        Path | None,
        typer.Option(
            help="Unlabelled CSV (pixel0..783, e.g. Kaggle's test.csv.gz) to self-train on: "
            "--ensemble teachers train first for --teacher-epochs, their confident labels of its "
            "rows join the training rows of as many new members, which make the version."
        ),
    ] = None,
    teacher_epochs: Annotated[
        int, typer.Option(help="Epochs per teacher with --pseudo-label.", min=1)
    ] = 15,
    pseudo_threshold: Annotated[
        float,
        typer.Option(
            help="With --pseudo-label: keep the unlabelled rows whose averaged teacher "
            "probability is at least this (0 < P <= 1)."
        ),
    ] = 0.99,
    from_version: Annotated[
        int | None,
        typer.Option(
            "--from",
            help="Fine-tune this registered version on --data (labelled corrections, e.g. from "
            "`digits reviews export`) mixed with --replay rows of its original training data, "
            "with its own recipe at a low learning rate; registers a new version.",
        ),
    ] = None,
    replay: Annotated[
        int,
        typer.Option(
            help="With --from: rows of the original training data mixed in, so the model does "
            "not forget it (drawn from its training part, never a held-out row; 0: none).",
            min=0,
        ),
    ] = 2000,
    base_data: Annotated[
        Path | None,
        typer.Option(
            help="With --from: the version's original training CSV, for the replay rows and the "
            "held-out split (default: DIGITS_DATA)."
        ),
    ] = None,
    learning_rate: Annotated[
        float,
        typer.Option(
            help="With --from: the peak of the fine-tuning schedule (1 warm-up epoch, then "
            "cosine decay)."
        ),
    ] = 1e-4,
    int8: Annotated[
        bool,
        typer.Option(
            help="After registering: convert to int8 weights (tflite-int8-dynamic), compare with "
            "float32 on the held-out rows and store it if it qualifies (what workers run by "
            "default); a refusal and its reason go on the card."
        ),
    ] = True,
    quiet: QuietOpt = False,
) -> None:
    """Train a model on a labelled CSV and register it as a new immutable version; with
    --from V, fine-tune version V on corrections instead."""
    from model_store.choices import ARCHITECTURES, ENSEMBLE_ARCHITECTURES, PRECISIONS

    if from_version is not None:
        _fine_tune(
            ctx,
            from_version,
            data,
            base_data,
            replay,
            epochs,
            learning_rate,
            seed,
            max_minutes,
            jobs,
            quiet,
            writers if _given(ctx, "writers") else None,
            int8,
        )
        return
    alone = _given(ctx, "replay", "base_data", "learning_rate")
    if alone:
        raise fail(f"{', '.join(alone)} fine-tune{'s' if len(alone) == 1 else ''}: add --from V")
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
    if writers and arch not in ENSEMBLE_ARCHITECTURES:  # the origin's MLP trains unaugmented
        raise fail(f"--writers needs a CNN architecture ({', '.join(ENSEMBLE_ARCHITECTURES)})")
    from model_store.train_config import TrainConfig
    from model_store.training import train as run_training

    config = TrainConfig(
        arch=arch,
        epochs=epochs,
        seed=seed,
        max_minutes=max_minutes,
        ensemble=ensemble,
        jobs=jobs,
        precision=precision,
        elastic=elastic,
        degrade=degrade,
        writers=writers,
        label_smoothing=label_smoothing,
        pseudo_label=pseudo_label,
        teacher_epochs=teacher_epochs,
        pseudo_threshold=pseudo_threshold,
        command=shlex.join(["digits", *sys.argv[1:]]),
    )
    version = _with_progress(arch, lambda progress: run_training(source, config, progress), quiet)
    card = version.card
    typer.echo(
        f"registered model version {version.version} ({card['architecture']}): validation "
        f"accuracy {card['validation']['accuracy']:.4%} on {card['validation']['count']} "
        f"held-out rows ({card['scan_validation']['accuracy']:.4%} as scans), "
        f"{card['training']['wall_seconds']:.0f} s, at {version.path}"
    )
    if int8:
        _check_int8(version.version, source, quiet)


def _check_int8(version: int, held_out_of: Path, quiet: bool) -> None:
    """Give a freshly registered version its int8 path (model_store.ceiling
    ``check_new_version``) and say which path its workers will run."""
    from digits.core.settings import get_settings
    from model_store.ceiling import check_new_version

    with (
        console().status(
            f"v{version}: checking int8 weights against float32 on the held-out rows",
            spinner="dots",
        )
        if not quiet
        else nullcontext()
    ):
        entry = check_new_version(
            version, held_out_of, get_settings().chunk_size, shlex.join(["digits", *sys.argv[1:]])
        )
    if "refused" in entry:
        typer.echo(
            f"v{version} runs float32: its int8 conversion does not qualify ({entry['refused']})"
        )
        return
    speedup = entry.get("speedup_all_threads") or entry.get("speedup_one_thread")
    typer.echo(
        f"v{version} runs tflite-int8-dynamic: {entry['labels_changed']} of {entry['rows']:,} "
        f"held-out labels changed, {speedup}× float32's images/s, stored as {entry['file']}"
    )


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List registered model versions (bundled and trained) with the aliases naming them."""
    from model_store.aliases import active_model, all_aliases
    from model_store.registry import ModelError, list_versions, shadowed_versions

    for path in shadowed_versions():
        typer.echo(
            f"warning: {path} is hidden: this release bundles its own {path.name}. "
            "Predictions made with it name that number; move the folder out of "
            "DIGITS_MODELS_DIR to keep it.",
            err=True,
        )
    try:
        serving = active_model()
        active: int | None = serving.version.version
    except ModelError as exc:  # the list is how a user finds a version to promote instead
        typer.secho(f"warning: {exc}", fg="yellow", err=True)
        active = None
    aliases = all_aliases()
    rows = [
        {
            "version": v.version,
            "architecture": v.card.get("architecture"),
            "val_accuracy": v.card.get("validation", {}).get("accuracy"),
            "cross_writer_accuracy": v.card.get("cross_writer", {}).get("accuracy"),
            "bundled": v.bundled,
            "active": v.version == active,
            "aliases": aliases.get(v.version, []),
            "path": str(v.path),
        }
        for v in list_versions()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(
        f"  {'version':<7} {'aliases':<24} {'architecture':<22} {'val. acc.':<10} "
        f"{'x-writer':<9} location"
    )
    for r in rows:
        mark = "*" if r["active"] else " "
        acc = f"{r['val_accuracy']:.4%}" if r["val_accuracy"] is not None else "?"
        writers = _percent(r["cross_writer_accuracy"]).replace("?", "-")
        names = ", ".join(r["aliases"]) or "-"
        typer.echo(
            f"{mark} {'v' + str(r['version']):<7} {names:<24} {r['architecture'] or '?':<22} "
            f"{acc:<10} {writers:<9} {'bundled' if r['bundled'] else r['path']}"
        )
    if any(r["cross_writer_accuracy"] is None for r in rows):
        typer.echo(
            "  x-writer: the cross-writer check (digits by other writers, captured small); "
            "- = not on the card: `digits models evaluate V` measures it"
        )
    if active is not None:  # the legend: which version new batches use, and why
        typer.echo(f"* in production: v{active}, {serving.why} (new batches are pinned to it)")


def _percent(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, int | float) else "?"


@models_app.command("show")
def models_show(
    version: Annotated[int, typer.Argument(help="Model version number.")],
    as_json: JsonOpt = False,
) -> None:
    """Show a version's card: integrity, validation and per-class accuracy, calibration."""
    from model_store.aliases import active_model, all_aliases
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
    try:
        serving = active_model()
        production = (
            f"yes: new batches use v{version}, {serving.why}"
            if serving.version.version == version
            else f"no: new batches use v{serving.version.version} ({serving.why})"
        )
    except ModelError as exc:
        production = f"? ({exc})"
    lines = [
        f"model v{version}",
        f"  architecture      {card.get('architecture', '?')}"
        + (f" ({card['parameters']:,} parameters)" if "parameters" in card else ""),
        f"  aliases           {names}",
        f"  production        {production}",
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
        lines.append(
            "  per-class acc.    "
            + "  ".join(f"{digit}: {_percent(acc)}" for digit, acc in enumerate(per_class))
        )
    scans = card.get("scan_validation")
    if scans:
        lines.append(
            f"  as scans          accuracy {_percent(scans.get('accuracy'))} on "
            f"{scans.get('count', '?')} rendered rows ({scans.get('refused', 0)} refused)"
            f"; ECE {scans.get('ece_before', 0):.4f} → {scans.get('ece_after', 0):.4f}"
        )
    lines.append(f"  cross-writer      {_cross_writer_line(version, card.get('cross_writer'))}")
    review = val.get("review_threshold")
    if review:
        lines.append(
            f"  review threshold  {review['threshold']}: coverage "
            f"{_percent(review.get('coverage'))}, accuracy above it "
            f"{_percent(review.get('accuracy_above'))}"
        )
    if cal:
        ece = ""
        if "ece_before" in val and "ece_after" in val:
            ece = f"; ECE {val['ece_before']:.4f} → {val['ece_after']:.4f}"
        lines.append(
            f"  calibration       temperature {cal.get('temperature', 1.0)} "
            f"({cal.get('method', '?')}){ece}"
        )
    lines.append(f"  inference_path    {_inference_path_line(card)}")
    if train:
        lines.append(
            f"  training          {train.get('epochs_run', '?')}/{train.get('epochs_planned', '?')}"
            f" epochs, batch {train.get('batch_size', '?')}, {train.get('optimizer', '?')}, "
            + (
                f"label smoothing {train['label_smoothing']}, "
                if train.get("label_smoothing")
                else ""
            )
            + f"seed {train.get('seed', '?')}, {train.get('wall_seconds', '?')} s on "
            f"{train.get('machine', '?')}, keras {train.get('keras', '?')}"
        )
        if train.get("augmentation"):
            lines.append(f"  augmentation      {train['augmentation']}")
    for member in train.get("members", []) if len(train.get("members", [])) > 1 else []:
        lines.append(
            f"    member {member['member']}        seed {member['seed']}, "
            f"{member['epochs_run']} epochs, {member['wall_seconds']} s, validation "
            f"{_percent(member['validation_accuracy'])}"
        )
    if data:
        lines.append(
            f"  training data     {data.get('path', '?')} ({data.get('rows', '?')} rows, "
            f"sha256 {str(data.get('sha256', '?'))[:16]}…)"
        )
    tuned = card.get("fine_tune")
    if "parent" in card:
        same = tuned.get("base_matches_parent") if tuned else None
        lines.append(
            f"  parent            v{card['parent']}"
            + (
                ""
                if same is None
                else "; validated on the same held-out rows"
                if same
                else "; validated on another file's held-out rows (not comparable)"
            )
        )
    if tuned:
        lines.append(
            f"  fine-tuned on     {tuned.get('rows_used', '?')} rows of {tuned.get('path', '?')} "
            f"(sha256 {str(tuned.get('sha256', '?'))[:16]}…) + {tuned.get('replay_rows', '?')} "
            f"replayed training rows; {tuned.get('epochs', '?')} epochs, peak rate "
            f"{tuned.get('learning_rate', '?')}, seed {tuned.get('seed', '?')}, "
            f"{tuned.get('wall_seconds', '?')} s"
        )
    pseudo = train.get("pseudo_labels")
    if pseudo:
        lines.append(
            f"  pseudo-labels     {pseudo['kept']:,} of {pseudo['rows']:,} rows of "
            f"{pseudo['path']} (sha256 {pseudo['sha256'][:16]}…) labelled at ≥ "
            f"{pseudo['threshold']} by {len(pseudo['teachers'])} teachers of "
            f"{pseudo['teacher_epochs']} epochs ({pseudo['teacher_validation_errors']} "
            "held-out errors)"
        )
    matrix = val.get("confusion_matrix")
    if matrix:
        lines.append("  confusion matrix  (rows: true digit, columns: predicted)")
        lines.append("          " + "".join(f"{d:>6}" for d in range(len(matrix))))
        lines.extend(
            f"      {t:>4}" + "".join(f"{n:>6}" for n in row) for t, row in enumerate(matrix)
        )
    typer.echo("\n".join(lines))


def _inference_path_line(card: dict[str, Any]) -> str:
    """What workers use for this version (DIGITS_INFERENCE_PATH if the card checked it)."""
    from digits.core.settings import get_settings
    from model_store.ceiling import inference_path

    wanted = get_settings().inference_path
    used = inference_path(card, wanted)
    checked = card.get("inference_paths", {})
    line = used + ("" if used == wanted else f" ({wanted} is set but not checked for this version)")
    for path, m in checked.items():
        if "refused" in m:
            line += f"; {path} refused on {m.get('measured_at', '?')}: {m['refused']}"
            continue
        speedup = m.get("speedup_one_thread")
        per = "per worker"
        if speedup is None:
            speedup, per = m.get("speedup_all_threads", "?"), "on every core"
        line += (
            f"; {path} checked on {m.get('rows', '?')} held-out rows: "
            f"{m.get('labels_changed', '?')} labels changed, ECE {m.get('ece', '?')} "
            f"(float32 {m.get('float32_ece', '?')}), {speedup}× images/s {per}"
            + (
                f", stored as {m['file']} ({m.get('bytes', 0) / 1e6:.1f} MB)"
                if m.get("file")
                else ""
            )
        )
    return line


def _cross_writer_line(version: int, writers: dict[str, Any] | None) -> str:
    """The card's cross-writer figure with its weakest style, or how to measure it."""
    if not writers:
        return f"not on this card: `digits models evaluate {version}` measures it"
    if "unavailable" in writers:
        return f"not measured: {writers['unavailable']}"
    styles = {
        k: v for k, v in writers.get("per_style", {}).items() if v.get("accuracy") is not None
    }
    weakest = min(styles.items(), key=lambda kv: kv[1]["accuracy"], default=None)
    return (
        f"accuracy {_percent(writers.get('accuracy'))} on {writers.get('count', '?')} digits by "
        f"other writers, captured small ({len(styles)} styles, {writers.get('refused', 0)} "
        "refused)"
        + (f"; weakest {weakest[0]} {_percent(weakest[1]['accuracy'])}" if weakest else "")
    )


AliasOpt = Annotated[str, typer.Option("--alias", help="Alias to act on.")]
TrainedOnOpt = Annotated[
    Path | None, typer.Option(help="The labelled CSV it trained on (default: DIGITS_DATA).")
]


@models_app.command("promote")
def models_promote(
    version: Annotated[int, typer.Argument(help="Model version to promote.")],
    alias: AliasOpt = "production",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote even if its golden or held-out accuracy is worse (never skips the "
            "integrity and safe-loading checks).",
        ),
    ] = False,
    tolerance: Annotated[
        float,
        typer.Option(
            help="Allowed accuracy drop versus the current target, on the golden set and on "
            "the cards' held-out rows."
        ),
    ] = 0.002,
    reason: Annotated[str, typer.Option(help="Why: recorded in the alias history.")] = "",
    golden: Annotated[
        Path | None, typer.Option(help="Labelled golden CSV (default: the shipped 200-row sample).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify, safely load and score a version on the golden set, compare its card's held-out
    accuracy with the current target's, then point an alias at it."""
    from digits.core.db import upgrade
    from model_store.promotion import PromotionError, promote

    upgrade()
    try:
        result = promote(version, alias, tolerance, force, golden, reason)
    except PromotionError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    base = (
        f" vs v{result.previous} {result.baseline_accuracy:.2%}"
        if result.baseline_accuracy is not None
        else ""
    )
    scores = f"golden accuracy {result.accuracy:.2%}{base} on {result.golden_rows} rows"
    if result.held_out_accuracy is not None and result.baseline_held_out_accuracy is not None:
        scores += (
            f"; held-out {result.held_out_accuracy:.2%} vs {result.baseline_held_out_accuracy:.2%}"
            f" on {result.held_out_rows} rows"
        )
    if not result.moved:
        typer.echo(f"{alias} already points at v{version} ({scores})")
        return
    was = f"was v{result.previous}" if result.previous is not None else "was unset"
    typer.echo(f"{alias} → v{version} ({was}): {scores}")
    if result.forced:
        gates = " and ".join(result.overridden)
        typer.secho(f"forced: the {gates} accuracy gate was overridden", fg="yellow", err=True)
    if result.note:
        typer.secho(f"note: {result.note}", fg="yellow", err=True)


@models_app.command("rollback")
def models_rollback(alias: AliasOpt = "production") -> None:
    """Point an alias back at the version it named before its last move."""
    from digits.core.db import upgrade
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
    data: TrainedOnOpt = None,
    scans: Annotated[
        bool, typer.Option(help="Also render the held-out rows as scans and score those.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Re-measure a version on the fixed held-out rows: accuracy, errors, ECE, review coverage;
    the same on the cross-writer check (digits by other writers, captured at low resolution),
    with accuracy per style; for an ensemble also each member's errors, how many of the
    ensemble's every member shares, and which rows it gets wrong."""
    source = _labelled_data(data)
    from digits.core.csv_input import CsvFileError
    from model_store.evaluation import measure
    from model_store.registry import ModelError, get_version

    try:
        with (
            console().status(
                f"scoring v{version} on the held-out rows of {source.name}"
                + (", then as rendered scans" if scans else "")
                + ", then on the cross-writer set",
                spinner="dots",
            )
            if not as_json
            else nullcontext()
        ):
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
                f"{_percent(review['accuracy_above'])}"
            )
    writers = result.get("cross_writer", {})
    if "unavailable" in writers:
        typer.echo(f"v{version} cross-writer: not measured: {writers['unavailable']}")
    elif writers:
        review = writers["review_threshold"]
        typer.echo(
            f"v{version} cross-writer {writers['accuracy']:.4%} ({writers['errors']} errors / "
            f"{writers['count']}, {writers['refused']} refused), ECE {writers['ece_before']:.4f}"
            f" → {writers['ece_after']:.4f}; at {review['threshold']}: coverage "
            f"{_percent(review['coverage'])}, accuracy {_percent(review['accuracy_above'])}"
        )
        typer.echo(
            f"v{version} cross-writer by style: "
            + ", ".join(
                f"{name} {_percent(m['accuracy'])}" for name, m in writers["per_style"].items()
            )
        )
        if writers.get("missing_fonts"):
            typer.echo(
                f"v{version} cross-writer left out (fonts not installed): "
                + "; ".join(writers["missing_fonts"])
            )
    clutter = result.get("clutter")
    if clutter:
        typer.echo(
            f"v{version} clutter {clutter['accuracy']:.2%} right of {clutter['count']} "
            f"cluttered scans, {clutter['confident_wrong']} confidently wrong; by kind: "
            + ", ".join(f"{kind} {_percent(k['accuracy'])}" for kind, k in clutter["kinds"].items())
        )
    if "members" in result:
        m = result["members"]
        typer.echo(
            f"v{version} members: {', '.join(map(str, m['member_errors']))} errors; "
            f"{m['made_by_every_member']} of the ensemble's {m['ensemble_errors']} are "
            "made by every member"
        )
        typer.echo(
            f"v{version} wrong rows (0-based data rows of {source.name}): "
            + (" ".join(map(str, m["error_rows"])) or "none")
        )


@models_app.command("speed")
def models_speed(
    version: Annotated[int, typer.Argument(help="Model version number.")],
    data: TrainedOnOpt = None,
    paths: Annotated[
        str, typer.Option(help="Comma-separated paths to compare with float32.")
    ] = "xla,bfloat16,tflite-float32,tflite-int8-dynamic,tflite-int8",
    batch: Annotated[
        int, typer.Option(help="Images per forward pass (default: DIGITS_CHUNK_SIZE).", min=0)
    ] = 0,
    threads: Annotated[
        int, typer.Option(help="Threads (1 = one worker process's share on 2 cores; 0 = all).")
    ] = 0,
    repeats: Annotated[int, typer.Option(help="Timed passes; the best counts.", min=1)] = 3,
    limit: Annotated[int, typer.Option(help="Score only the first N held-out rows.", min=0)] = 0,
    record: Annotated[
        bool,
        typer.Option(
            "--record",
            help="Convert to tflite-int8-dynamic afresh and, if it qualifies, store it as "
            "vN/model.int8.tflite with its sha256 and figures on the card (what workers load).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare faster inference paths with float32 on the held-out rows: images/s, labels
    changed, accuracy, ECE and NLL after the version's temperature, and whether each path
    qualifies (faster, at most one label changed, calibration kept). tflite-int8-dynamic runs
    the version's stored model.int8.tflite when it has one."""
    source = _labelled_data(data)
    from digits.core.csv_input import CsvFileError
    from digits.core.settings import get_settings
    from model_store.ceiling import PATHS, speed_comparison
    from model_store.registry import ModelError

    wanted = [p.strip() for p in paths.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PATHS]
    if unknown:
        raise fail(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS)}")
    try:
        with (
            console().status(f"timing v{version} on {source.name}", spinner="dots")
            if not as_json
            else nullcontext()
        ):
            result = speed_comparison(
                version,
                source,
                batch or get_settings().chunk_size,
                wanted,
                repeats,
                limit or None,
                threads or None,
                record=_speed_command(version, source, wanted, threads, limit) if record else None,
            )
    except (ModelError, CsvFileError) as exc:
        raise fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(
        f"v{version}: {result['flops_per_image'] / 1e6:.1f} MFLOP per image; "
        f"{result['rows']} held-out rows, batch {result['batch_size']}, threads "
        f"{result['threads']}, best of {result['repeats']}; CPU float32 peak "
        f"{result['cpu']['peak_gflops']} GFLOP/s ({result['cpu']['assumption']})"
    )
    typer.echo(
        f"{'path':<20} {'images/s':>9} {'speedup':>8} {'GFLOP/s':>8} {'labels':>7} "
        f"{'accuracy':>9} {'ECE':>8} {'NLL':>8}  qualifies"
    )
    for row in result["paths"]:
        if "error" in row:
            typer.echo(f"{row['path']:<20} failed: {row['error']}")
            continue
        typer.echo(
            f"{row['path']:<20} {row['images_per_s']:>9,.0f} {row['speedup']:>7.2f}× "
            f"{row['achieved_gflops']:>8.1f} {row['labels_changed']:>7} "
            f"{row['accuracy']:>9.2%} {row['ece']:>8.5f} {row['nll']:>8.5f}  "
            + ("yes" if row["qualifies"] else "no")
            + (f" ({row['source']})" if "source" in row else "")
        )
    if record:
        typer.echo(f"v{version}: stored model.int8.tflite, its sha256 and figures on the card")


def _speed_command(version: int, source: Path, paths: list[str], threads: int, limit: int) -> str:
    """The command line a recorded inference path's card entry names."""
    return (
        f"digits models speed {version} --data {source} --paths {','.join(paths)}"
        + (f" --threads {threads}" if threads else "")
        + (f" --limit {limit}" if limit else "")
        + " --record"
    )


@models_app.command("history")
def models_history(
    alias: AliasOpt = "production",
    limit: Annotated[int | None, typer.Option(help="At most this many moves.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every move of an alias, newest first: from → to, when, and why."""
    from model_store.aliases import PRODUCTION, active_model, history
    from model_store.registry import ModelError

    require_data()
    moves = history(alias, limit)
    if as_json:
        typer.echo(json.dumps([m.as_dict() for m in moves], indent=2))
        return
    serving = None
    if alias == PRODUCTION:
        try:
            serving = active_model()
        except ModelError as exc:
            typer.secho(f"warning: {exc}", fg="yellow", err=True)
    if not moves:
        uses = f": new batches use v{serving.version.version}, {serving.what}" if serving else ""
        typer.echo(f"{alias} has never been set{uses}")
        return
    if serving is not None:
        typer.echo(f"new batches use v{serving.version.version} ({serving.why})")
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

    from digits.app.rescore import RescoreError
    from digits.app.rescore import rescore as run_rescore

    try:  # the bar is transient: an error or the summary is what stays on screen
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console(),
            disable=quiet or as_json,
            transient=True,
        ) as bar:
            task = bar.add_task(f"batch {batch} with v{model}", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = run_rescore(batch, model, progress)
    except RescoreError as exc:
        raise fail(str(exc)) from exc
    except DBAPIError as exc:  # no schema yet, or the database is unreachable
        raise fail(
            f"cannot read the database: {type(exc.orig).__name__}: "
            f"{str(exc.orig).strip()}. Run `digits db upgrade` first?"
        ) from exc
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    agreement = f"{result.agreement:.2%}" if result.agreement is not None else "n/a"
    typer.echo(
        f"batch {batch}: v{result.old_version} vs v{result.new_version}: "
        f"{result.agreeing}/{result.compared} items agree ({agreement}), "
        f"{len(result.changed)} changed; {result.written} predictions added"
    )
    if result.labelled:
        typer.echo(
            f"accuracy on {result.labelled} labelled items: "
            f"v{result.old_version} {result.old_correct / result.labelled:.2%}, "
            f"v{result.new_version} {result.new_correct / result.labelled:.2%}"
        )
    if result.unreadable:
        typer.secho(f"{result.unreadable} items could not be read again", fg="yellow", err=True)
    for c in result.changed[:limit]:
        truth = f" (true {c.true_label})" if c.true_label is not None else ""
        typer.echo(
            f"  item {c.item_id} #{c.position} {c.source_ref}: "
            f"{c.old_label} ({c.old_confidence:.3f}) → {c.new_label} "
            f"({c.new_confidence:.3f}){truth}"
        )
    if len(result.changed) > limit:
        typer.echo(f"  … {len(result.changed) - limit} more (use --json for all)")
