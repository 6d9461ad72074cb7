"""``digits train``: fit an architecture on a labelled CSV and register it as a new version.

The validation split is fixed (see ``model_store.data``), seeds are fixed, training is bounded
by ``max_minutes``, and the card records everything needed to trust or reproduce the model.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.csv_input import read_unlabelled
from digits.core.preprocess import rows_to_tensor
from digits.core.settings import get_settings
from model_store.augmentation import augmentation
from model_store.calibration import fit_temperature
from model_store.choices import PRECISIONS
from model_store.data import SPLIT_SEED, Split, load_split
from model_store.evaluation import (
    Rendered,
    WriterTensors,
    cross_writer,
    cross_writer_tensors,
    evaluate,
    held_out_probs,
    scan_like_validation,
)
from model_store.fit import MemberJob
from model_store.member_pool import in_background, train_members
from model_store.pseudo import confident_labels, not_held_out
from model_store.registry import ModelVersion, register, sha256_file
from model_store.schedule import PEAK_LEARNING_RATE, member_deadlines, teacher_share
from model_store.train_config import TrainConfig

ProgressFn = Callable[[int, int, str], None]  # (done steps, total steps, description)


def steps_per_epoch(rows: int, config: TrainConfig) -> int:
    """Batches per epoch."""
    return int(np.ceil(rows / config.batch_size))


def _pseudo_labelled(
    teachers: list[tuple[Any, dict[str, Any]]],
    split: Split,
    unlabelled: NDArray[np.uint8],
    config: TrainConfig,
) -> tuple[NDArray[np.uint8], NDArray[np.int64], dict[str, Any]]:
    """The students' training rows: the labelled rows plus the unlabelled rows the teachers'
    average labels with at least ``pseudo_threshold`` (never a held-out row), and the card's
    record of how they were made."""
    from model_store.architectures import build_ensemble

    models = [model for model, _ in teachers]
    teacher = models[0] if len(models) == 1 else build_ensemble(models)
    fresh = not_held_out(unlabelled, split.x_val)
    rows = unlabelled[fresh]
    keep, labels = confident_labels(
        teacher.predict(rows_to_tensor(rows), batch_size=1000, verbose=0), config.pseudo_threshold
    )
    val = teacher.predict(rows_to_tensor(split.x_val), batch_size=1000, verbose=0).argmax(axis=1)
    assert config.pseudo_label is not None
    record = {
        "path": config.pseudo_label.name,
        "sha256": sha256_file(config.pseudo_label),
        "rows": len(unlabelled),
        "held_out_duplicates_dropped": int((~fresh).sum()),
        "threshold": config.pseudo_threshold,
        "kept": len(keep),
        "kept_per_class": np.bincount(labels, minlength=10).tolist(),
        "teacher_epochs": config.teacher_epochs,
        "teacher_validation_errors": int((val != split.y_val).sum()),
        "teachers": [card for _, card in teachers],
        "method": "the teachers (the same architecture and augmentation, seeds as members "
        "0..K-1) trained on the labelled rows; their averaged probabilities label the "
        "unlabelled rows; rows at or above the threshold join the students' training rows",
    }
    return (
        np.concatenate([split.x_train, rows[keep]]),
        np.concatenate([split.y_train, labels]),
        record,
    )


def train(data: Path, config: TrainConfig, progress: ProgressFn | None = None) -> ModelVersion:
    """Train (one model or an ensemble), validate on the fixed held-out split, calibrate on
    clean and scan-like validation data, and register the result as a new version."""
    if config.ensemble < 1:
        raise ValueError("ensemble must be at least 1")
    if config.ensemble > 1 and config.arch == "mlp":
        raise ValueError("ensembles are built from CNN members, not the origin's MLP")
    if config.precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {config.precision!r}; choose one of {', '.join(PRECISIONS)}"
        )
    if not 0 < config.pseudo_threshold <= 1:
        raise ValueError("pseudo_threshold must be in (0, 1]")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError("label_smoothing must be in [0, 1)")
    started = time.time()
    split = load_split(data, config.val_fraction)
    unlabelled = read_unlabelled(config.pseudo_label) if config.pseudo_label else None
    epochs = config.resolved_epochs()
    workers = config.resolved_jobs()
    members = config.ensemble
    teachers = members if unlabelled is not None else 0
    limit = config.max_minutes * 60
    # Progress in steps of every model the run trains (teachers first); the total follows
    # their fitted schedules, so a bar's time remaining is what the time limit allows.
    steps = [steps_per_epoch(len(split.y_train), config)] * teachers + [
        steps_per_epoch(
            len(split.y_train) + (len(unlabelled) if unlabelled is not None else 0), config
        )
    ] * members
    schedules = [config.teacher_epochs] * teachers + [epochs] * members
    done = 0

    def report(taken: int, label: str, slot: int, schedule_epochs: int) -> None:
        nonlocal done
        done += taken
        schedules[slot] = schedule_epochs
        if progress:
            progress(done, sum(s * e for s, e in zip(steps, schedules, strict=True)), label)

    def jobs(
        x: NDArray[np.uint8],
        y: NDArray[np.int64],
        until: float,
        planned: int,
        teacher: bool = False,
    ) -> list[MemberJob]:
        deadlines = member_deadlines(time.time(), until - time.time(), members, workers)
        return [
            MemberJob(
                config,
                i,
                x,
                y,
                split.x_val,
                split.y_val,
                deadlines[i],
                steps_per_epoch(len(y), config),
                planned,
                teacher,
            )
            for i in range(members)
        ]

    # Render the held-out rows as scans while the members train: single-threaded Python
    # (160-280 s for 4,200 rows) that would otherwise run after them, on one core, while the
    # other idles. The members' schedules refit to the pace this costs them at first.
    rendering = in_background(scan_like_validation, split.x_val, split.y_val)
    drawing = in_background(cross_writer_tensors)  # the cross-writer set: seconds, likewise
    x_train, y_train, pseudo = split.x_train, split.y_train, None
    with tempfile.TemporaryDirectory() as tmp:
        if unlabelled is not None:
            share = teacher_share(
                config.teacher_epochs,
                len(split.y_train),
                epochs,
                len(split.y_train) + len(unlabelled),
            )
            taught = train_members(
                jobs(
                    x_train, y_train, started + limit * share, config.teacher_epochs, teacher=True
                ),
                workers,
                report,
                Path(tmp),
            )
            if not taught:
                raise TimeoutError(f"no teacher finished within max_minutes={config.max_minutes}")
            x_train, y_train, pseudo = _pseudo_labelled(taught, split, unlabelled, config)
            steps[teachers:] = [steps_per_epoch(len(y_train), config)] * members
        trained = train_members(
            jobs(x_train, y_train, started + limit, epochs), workers, report, Path(tmp)
        )
    if not trained:
        raise TimeoutError(f"no model finished within max_minutes={config.max_minutes}")
    scans = rendering()

    import keras
    import tensorflow as tf

    from model_store.architectures import build_ensemble

    models = [model for model, _ in trained]
    member_cards = [card for _, card in trained]
    model = models[0] if config.ensemble == 1 else build_ensemble(models)
    checked = held_out_card(model, split, scans, drawing())
    wall = time.time() - started
    stopped = any(c["stopped_by_time_limit"] for c in member_cards)

    card: dict[str, Any] = {
        "architecture": config.arch
        if config.ensemble == 1
        else f"ensemble of {len(models)} {config.arch}",
        "parameters": int(model.count_params()),
        "input": "28x28x1 float32 in [0, 1], ink bright on dark (MNIST polarity)",
        "output": "10 softmax probabilities"
        + (" (the mean of the members' probabilities)" if config.ensemble > 1 else ""),
        **data_card(data, split, config.val_fraction),
        "training": {
            "epochs_planned": epochs,
            "epochs_run": min(c["epochs_run"] for c in member_cards),
            "stopped_by_time_limit": stopped or len(models) < config.ensemble,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "precision": "mixed bfloat16 (float32 variables and softmax; saved as float32)"
            if config.precision == "bf16"
            else "float32",
            "augmentation": augmentation(config),
            "label_smoothing": config.label_smoothing,
            "optimizer": "RMSprop"
            if config.arch == "mlp"
            else f"Adam, 1 warm-up epoch to {PEAK_LEARNING_RATE:g} then cosine decay to 0 over "
            "the member's schedule_epochs (the planned epochs, or fewer if they would not fit "
            "its share of max_minutes: members beyond parallel_jobs train in later waves, and "
            "each wave gets an equal share)",
            "ensemble_planned": config.ensemble,
            "parallel_jobs": workers,
            "members": member_cards,
            **({"pseudo_labels": pseudo} if pseudo else {}),
            "max_minutes": config.max_minutes,
            "wall_seconds": round(wall, 1),
            "machine": machine_description(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        **checked,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if config.command:
        card["command"] = config.command
    return register_model(model, card)


def data_card(data: Path, split: Split, val_fraction: float) -> dict[str, Any]:
    """The card's ``training_data`` and ``validation_split``: which file, and which of its rows
    were held out. Promotion compares two cards' held-out figures only when these match (a
    fine-tuned version records its parent's base file, so it is compared with its parent)."""
    return {
        "training_data": {
            "path": data.name,
            "sha256": sha256_file(data),
            "rows": int(len(split.y_train) + len(split.y_val)),
        },
        "validation_split": {
            "method": f"last {val_fraction:.0%} of numpy default_rng({SPLIT_SEED})"
            f".permutation(n) over train.csv data rows",
            "rows": len(split.val_rows),
            "train_rows": len(split.y_train),
        },
    }


def held_out_card(
    model: Any, split: Split, scans: Rendered, writers: WriterTensors
) -> dict[str, Any]:
    """The card's ``validation``, ``scan_validation``, ``cross_writer`` and ``calibration``:
    the temperature fitted on the held-out rows, clean and as scans (``scans``: their rendering),
    and every figure at it. One function for ``train`` and ``fine_tune``, so a fine-tuned
    version is measured exactly as its parent was."""
    probs, scan_probs, scan_labels, refused = held_out_probs(model, split, rendered=scans)
    temperature = fit_temperature(
        np.concatenate([probs, scan_probs]), np.concatenate([split.y_val, scan_labels])
    )
    threshold = get_settings().confidence_threshold
    return {
        "validation": evaluate(probs, split.y_val, temperature, threshold),
        "scan_validation": {
            "method": "the same held-out rows rendered as scans (worker.scan_synth: formats, "
            "modes, polarity, lighting, blur, noise) and preprocessed by worker.images",
            "refused": refused,
            **evaluate(scan_probs, scan_labels, temperature, threshold),
        },
        "cross_writer": cross_writer(model, temperature, threshold, writers),
        "calibration": {
            "method": "temperature scaling fitted on the validation split: clean rows plus the "
            "same rows rendered as scans",
            "temperature": round(temperature, 4),
            "fitted_on_rows": int(len(probs) + len(scan_probs)),
        },
    }


def register_model(model: Any, card: dict[str, Any]) -> ModelVersion:
    """Save ``model`` to a temporary ``.keras`` file and register it with ``card``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return register(path, card)


def machine_description() -> str:
    """Architecture, core count and CPU model: the same recipe's wall time differs several-fold
    between 2-core machines (AVX2-only vs AVX-512 CPUs), so a card's wall time names its CPU.
    Virtual machines often name only the brand ("AMD EPYC"), so the CPU family and model
    numbers follow it: two VMs that both read "AMD EPYC, AVX-512" took 51 s (v3's card) and
    30 s (family 26) per cnn-wide member-epoch."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if key.strip() == "flags":
                break
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    family = (
        f" (family {fields['cpu family']}, model {fields['model']})"
        if "cpu family" in fields and "model" in fields
        else ""
    )
    flags = fields.get("flags", "").split()
    vectors = ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
    return f"{platform.machine()}, {os.cpu_count()} cores, {model}{family}{vectors}"
