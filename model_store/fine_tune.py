"""``digits train --from V``: learning from corrections. Continue training a registered version
on a small labelled CSV (what ``digits reviews export`` writes) mixed with replayed rows of its
original training data, and register the result as a new version whose card names its parent.

Why replay: a few hundred rows of one kind of digit, trained on alone, pull every weight towards
that kind, and the model forgets the rest (catastrophic forgetting). A random sample of the
original training rows in every batch keeps the old task in the loss. Why a low rate: the
parent's weights are already at a good minimum; a peak of 1e-4 (the parent's was 2e-3) moves
them towards the new rows without leaving it. The replay rows come only from the training part
of the base file's fixed split, never from its held-out rows, so the new card's held-out
figures are measured exactly as the parent's were (``training.held_out_card``), on rows neither
model trained on, and promotion can compare the two.

Checks that need no Keras (``plan``) run first, so a wrong version, file or option is refused
in a second with one line.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.csv_input import read_labelled
from model_store.augmentation import augmentation
from model_store.data import VAL_FRACTION, Split, load_split
from model_store.evaluation import (
    cross_writer_tensors,
    ensemble_members,
    scan_like_validation,
)
from model_store.fit import MemberJob
from model_store.loading import load
from model_store.member_pool import in_background, train_members
from model_store.pseudo import not_held_out
from model_store.registry import ModelVersion, get_version, sha256_file
from model_store.schedule import member_deadlines
from model_store.train_config import TrainConfig
from model_store.training import (
    ProgressFn,
    data_card,
    held_out_card,
    machine_description,
    register_model,
    steps_per_epoch,
)

DEFAULT_REPLAY = 2000
DEFAULT_EPOCHS = 5
DEFAULT_LEARNING_RATE = 1e-4


@dataclass(frozen=True)
class FineTuneConfig:
    """One ``digits train --from`` run: which version, on which rows, for how long."""

    parent: int
    data: Path  # the labelled corrections (Kaggle train format)
    base_data: Path  # the parent's original training CSV: replay rows and the held-out split
    replay: int = DEFAULT_REPLAY  # original training rows mixed in (0: none)
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE  # the schedule's peak
    seed: int = 0
    max_minutes: float = 55.0
    jobs: int = 0  # members fine-tuned side by side; 0: one per core
    command: str | None = None
    writers: bool | None = None  # add (True) or drop (False) --writers; None: as the parent


@dataclass(frozen=True)
class Plan:
    """Everything checked and read before any Keras: what ``fine_tune`` trains on."""

    config: FineTuneConfig
    parent: ModelVersion
    recipe: TrainConfig  # the parent's augmentation, smoothing and batch size, our seed
    x: NDArray[np.uint8]  # the corrections (held-out duplicates dropped), then the replay rows
    y: NDArray[np.int64]
    data_rows: int  # rows in the corrections file
    data_used: int  # of them trained on
    replay_rows: int
    split: Split
    data_sha256: str
    base_sha256: str
    started: float
    warnings: list[str] = field(default_factory=list)


def _parent_recipe(parent: ModelVersion, config: FineTuneConfig) -> tuple[TrainConfig, list[str]]:
    """The parent's recipe as a ``TrainConfig``: its augmentation (the configuration whose card
    words are the parent card's), label smoothing and batch size; the member count is the
    parent's, the seed ours. A parent whose words no configuration gives (a newer or older
    recipe) keeps the closest reading of them, and a warning says so."""
    card = parent.card
    training = card.get("training", {})
    words = training.get("augmentation")
    architecture = str(card.get("architecture", ""))
    base = TrainConfig(
        arch="mlp" if architecture == "mlp" else architecture.split()[-1] or "cnn-lite",
        seed=config.seed,
        batch_size=int(training.get("batch_size", 128)),
        max_minutes=config.max_minutes,
        augment=words is not None,
        label_smoothing=float(training.get("label_smoothing") or 0.0),
        jobs=config.jobs,
        command=config.command,
    )
    if words is None:
        return base, []
    chosen, warnings = _read_recipe(base, str(words), parent.version)
    if config.writers is not None and config.writers != chosen.writers:
        chosen = replace(chosen, writers=config.writers)  # asked for: --writers / --no-writers
    return chosen, warnings


def _read_recipe(base: TrainConfig, words: str, version: int) -> tuple[TrainConfig, list[str]]:
    """The configuration whose card words are ``words``, or the closest reading of them."""
    options = [
        replace(base, elastic=elastic, degrade=degrade, writers=writers)
        for elastic in (False, True)
        for degrade in (True, False)
        for writers in (False, True)
    ]
    for option in options:
        if augmentation(option) == words:
            return option, []
    guess = replace(
        base,
        elastic="elastic" in words,
        degrade="no scan degradations" not in words,
        writers="other writers" in words,
    )
    return guess, [
        f"v{version}'s augmentation is not one this version of digits reproduces "
        f"exactly; fine-tuning with: {augmentation(guess)}"
    ]


def plan(config: FineTuneConfig) -> Plan:
    """Check and read everything (no Keras): the version exists, both CSVs are labelled and
    valid, the options are in range. Raises ``ModelError``, ``CsvFileError`` or ``ValueError``
    with a one-line message. A base file other than the parent's (its sha256 differs from the
    card's) is a warning, not an error: the held-out split is then of another file, which the
    new card records, and promotion will not compare held-out figures across the two."""
    started = time.time()
    if config.replay < 0:
        raise ValueError(f"--replay must be at least 0, not {config.replay}")
    if config.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, not {config.epochs}")
    if not 0 < config.learning_rate < 1:
        raise ValueError(f"--learning-rate must be above 0 and below 1, not {config.learning_rate}")
    parent = get_version(config.parent)
    recipe, warnings = _parent_recipe(parent, config)
    corrections, labels = read_labelled(config.data)
    split = load_split(config.base_data, VAL_FRACTION)
    base_sha = sha256_file(config.base_data)
    recorded = parent.card.get("training_data", {})
    if recorded.get("sha256") and recorded["sha256"] != base_sha:
        warnings.append(
            f"{config.base_data.name} (sha256 {base_sha[:12]}…) is not v{parent.version}'s "
            f"training data ({recorded.get('path', '?')}, sha256 {recorded['sha256'][:12]}…): "
            "its held-out rows are not the ones the parent was validated on, so promotion "
            "will not compare the two versions' held-out accuracy"
        )
    fresh = not_held_out(corrections, split.x_val)
    if not fresh.any():
        raise ValueError(
            f"every row of {config.data.name} is a held-out row of {config.base_data.name}: "
            "nothing to fine-tune on"
        )
    if not fresh.all():
        warnings.append(
            f"{int((~fresh).sum())} rows of {config.data.name} are held-out rows of "
            f"{config.base_data.name}: left out, so the held-out figures stay honest"
        )
    rng = np.random.default_rng(config.seed)
    replay = rng.choice(len(split.y_train), min(config.replay, len(split.y_train)), replace=False)
    return Plan(
        config,
        parent,
        recipe,
        np.concatenate([corrections[fresh], split.x_train[replay]]),
        np.concatenate([labels[fresh], split.y_train[replay]]),
        len(labels),
        int(fresh.sum()),
        len(replay),
        split,
        sha256_file(config.data),
        base_sha,
        started,
        warnings,
    )


def fine_tune(plan: Plan, progress: ProgressFn | None = None) -> ModelVersion:
    """Fine-tune every member of the parent on the plan's rows (side by side, as ``train``
    trains them: ``model_store.member_pool``), average them again, measure, calibrate and
    register the new version."""
    config, recipe, split = plan.config, plan.recipe, plan.split
    # Rendered while the members train, as in ``train``: the scans are 2-4 minutes of
    # single-threaded work, longer than fine-tuning itself, so they start first.
    rendering = in_background(scan_like_validation, split.x_val, split.y_val)
    drawing = in_background(cross_writer_tensors)
    parent_model = load(plan.parent)
    members = ensemble_members(parent_model) or [parent_model]
    recipe = replace(recipe, ensemble=len(members))
    workers = recipe.resolved_jobs()
    steps = steps_per_epoch(len(plan.y), recipe)
    schedules = [config.epochs] * len(members)
    done = 0

    def report(taken: int, label: str, slot: int, schedule_epochs: int) -> None:
        nonlocal done
        done += taken
        schedules[slot] = schedule_epochs
        if progress:
            progress(done, steps * sum(schedules), label)

    with tempfile.TemporaryDirectory() as tmp:
        starts = []
        for index, member in enumerate(members):
            starts.append(Path(tmp) / f"parent_{index}.keras")
            member.save(starts[-1])
        deadlines = member_deadlines(
            time.time(), plan.started + config.max_minutes * 60 - time.time(), len(members), workers
        )
        jobs = [
            MemberJob(
                recipe,
                index,
                plan.x,
                plan.y,
                split.x_val,
                split.y_val,
                deadlines[index],
                steps,
                config.epochs,
                start=start,
                peak_learning_rate=config.learning_rate,
            )
            for index, start in enumerate(starts)
        ]
        trained = train_members(jobs, workers, report, Path(tmp))
    if len(trained) < len(members):
        raise TimeoutError(
            f"{len(members) - len(trained)} of {len(members)} members did not start within "
            f"max_minutes={config.max_minutes}; nothing was registered"
        )
    models = [model for model, _ in trained]
    member_cards = [card for _, card in trained]
    if len(models) == 1:
        model = models[0]
    else:
        from model_store.architectures import build_ensemble

        model = build_ensemble(models)
    checked = held_out_card(model, split, rendering(), drawing())
    return register_model(model, _card(plan, recipe, model, member_cards, workers, checked))


def _card(
    plan: Plan,
    recipe: TrainConfig,
    model: Any,
    member_cards: list[dict[str, Any]],
    workers: int,
    checked: dict[str, Any],
) -> dict[str, Any]:
    """The new version's card: the parent's description, the base data and split (so its
    held-out figures compare with the parent's), the run, the measurements, and
    ``parent``/``fine_tune``: what it learnt from."""
    import keras
    import tensorflow as tf

    config, parent = plan.config, plan.parent
    wall = round(time.time() - plan.started, 1)
    stopped = any(c["stopped_by_time_limit"] for c in member_cards)
    card: dict[str, Any] = {
        "architecture": parent.card.get("architecture", "?"),
        "parameters": int(model.count_params()),
        "input": parent.card.get("input", "28x28x1 float32 in [0, 1]"),
        "output": parent.card.get("output", "10 softmax probabilities"),
        **data_card(config.base_data, plan.split, VAL_FRACTION),
        "parent": parent.version,
        "fine_tune": {
            "path": config.data.name,
            "sha256": plan.data_sha256,
            "rows": plan.data_rows,
            "rows_used": plan.data_used,
            "held_out_duplicates_dropped": plan.data_rows - plan.data_used,
            "rows_per_class": np.bincount(plan.y[: plan.data_used], minlength=10).tolist(),
            "replay_rows": plan.replay_rows,
            "replay_from": f"{config.base_data.name}: a uniform sample (seed {config.seed}) of "
            "the training part of its fixed split, never a held-out row",
            "base_matches_parent": plan.base_sha256
            == parent.card.get("training_data", {}).get("sha256"),
            "epochs": config.epochs,
            "learning_rate": config.learning_rate,
            "seed": config.seed,
            "wall_seconds": wall,
            **({"command": config.command} if config.command else {}),
        },
        "training": {
            "epochs_planned": config.epochs,
            "epochs_run": min(c["epochs_run"] for c in member_cards),
            "stopped_by_time_limit": stopped,
            "seed": config.seed,
            "batch_size": recipe.batch_size,
            "precision": "float32",
            "augmentation": augmentation(recipe),
            "label_smoothing": recipe.label_smoothing,
            "optimizer": f"Adam (fresh), fine-tuning v{parent.version}'s weights: 1 warm-up "
            f"epoch to {config.learning_rate:g} then cosine decay over the member's "
            "schedule_epochs",
            "ensemble_planned": len(member_cards),
            "parallel_jobs": workers,
            "members": member_cards,
            "max_minutes": config.max_minutes,
            "wall_seconds": wall,
            "machine": machine_description(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        **checked,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if config.command:
        card["command"] = config.command
    return card
