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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_store.calibration import apply_temperature, expected_calibration_error, fit_temperature
from model_store.data import SPLIT_SEED, VAL_FRACTION, load_split
from model_store.registry import ModelVersion, register, sha256_file

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ProgressFn = Callable[[int, int, str], None]  # (done steps, total steps, description)


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "cnn"
    epochs: int | None = None  # None: the architecture's default
    seed: int = 0
    batch_size: int = 128
    max_minutes: float = 55.0
    val_fraction: float = VAL_FRACTION
    augment: bool | None = None  # None: on for the CNN, off for the origin's MLP

    def resolved_epochs(self) -> int:
        return self.epochs if self.epochs is not None else (10 if self.arch == "mlp" else 30)

    def resolved_augment(self) -> bool:
        return self.augment if self.augment is not None else self.arch != "mlp"


def _augmenter(seed: int) -> Any:
    """Small affine jitter plus scan-like degradations (stroke width, blur, noise)."""
    import keras
    import tensorflow as tf

    affine = keras.Sequential(
        [
            keras.layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 2),
        ]
    )

    def degrade(x: Any) -> Any:
        n = tf.shape(x)[0]
        choice = tf.random.uniform([n, 1, 1, 1])
        thicker = tf.nn.max_pool2d(x, 2, 1, "SAME")
        thinner = -tf.nn.max_pool2d(-x, 2, 1, "SAME")
        blurred = tf.nn.avg_pool2d(x, 3, 1, "SAME")
        x = tf.where(choice < 0.1, thicker, x)
        x = tf.where((choice >= 0.1) & (choice < 0.2), thinner, x)
        x = tf.where((choice >= 0.2) & (choice < 0.3), blurred, x)
        noise = tf.random.normal(tf.shape(x), stddev=0.05)
        x = tf.where(tf.random.uniform([n, 1, 1, 1]) < 0.2, x + noise, x)
        return tf.clip_by_value(x, 0.0, 1.0)

    def apply(x: Any, y: Any) -> tuple[Any, Any]:
        return degrade(affine(x, training=True)), y

    return apply


class _ProgressCallback:
    """Adapts Keras' callback API to a plain progress function (keeps rich out of training)."""

    def __init__(self, progress: ProgressFn | None, steps: int, deadline: float) -> None:
        import keras

        outer = self

        class Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                outer.done += 1
                if progress and outer.done % 5 == 0:
                    progress(outer.done, steps, outer.label)

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = logs or {}
                outer.epochs_run = epoch + 1
                outer.label = (
                    f"epoch {epoch + 1}: loss {logs.get('loss', 0):.4f} "
                    f"val_acc {logs.get('val_accuracy', 0):.4f}"
                )
                if progress:
                    progress(outer.done, steps, outer.label)
                if time.monotonic() > deadline:
                    outer.stopped_early = True
                    self.model.stop_training = True

        self.done = 0
        self.epochs_run = 0
        self.label = "training"
        self.stopped_early = False
        self.callback = Callback()


def evaluate(probs: np.ndarray, labels: np.ndarray, temperature: float,
             threshold: float = 0.9) -> dict[str, Any]:
    """Accuracy, per-class accuracy, confusion matrix, ECE before/after scaling, and what the
    review threshold buys: the share of items above it (coverage) and their accuracy."""
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    scaled = apply_temperature(probs, temperature)
    confident = scaled.max(axis=1) >= threshold
    return {
        "accuracy": float((predicted == labels).mean()),
        "errors": int((predicted != labels).sum()),
        "count": len(labels),
        "per_class_accuracy": [round(float(a), 5) for a in per_class],
        "confusion_matrix": confusion.tolist(),
        "ece_before": round(expected_calibration_error(probs, labels), 5),
        "ece_after": round(expected_calibration_error(scaled, labels), 5),
        "review_threshold": {
            "threshold": threshold,
            "coverage": round(float(confident.mean()), 5),
            "accuracy_above": round(float((predicted[confident] == labels[confident]).mean()), 5)
            if confident.any() else None,
        },
    }


def train(data: Path, config: TrainConfig, progress: ProgressFn | None = None) -> ModelVersion:
    """Train, validate on the fixed held-out split, calibrate, and register a new version."""
    import keras
    import tensorflow as tf

    from model_store.architectures import build

    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    split = load_split(data, config.val_fraction)
    x_train = split.x_train.reshape(-1, 28, 28, 1).astype("float32") / 255.0
    x_val = split.x_val.reshape(-1, 28, 28, 1).astype("float32") / 255.0
    epochs = config.resolved_epochs()
    steps_per_epoch = int(np.ceil(len(x_train) / config.batch_size))

    model = build(config.arch)
    if config.arch == "mlp":
        optimizer: Any = keras.optimizers.RMSprop()
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=steps_per_epoch * epochs, warmup_target=2e-3,
            warmup_steps=steps_per_epoch,
        )
        optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])

    dataset = tf.data.Dataset.from_tensor_slices((x_train, split.y_train))
    dataset = dataset.shuffle(len(x_train), seed=config.seed).batch(config.batch_size)
    if config.resolved_augment():
        dataset = dataset.map(_augmenter(config.seed), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)

    deadline = started + config.max_minutes * 60
    tracker = _ProgressCallback(progress, steps_per_epoch * epochs, deadline)
    model.fit(
        dataset, epochs=epochs, validation_data=(x_val, split.y_val),
        callbacks=[tracker.callback], verbose=0,
    )
    probs = model.predict(x_val, batch_size=1000, verbose=0)
    temperature = fit_temperature(probs, split.y_val)
    from digits.settings import get_settings

    metrics = evaluate(probs, split.y_val, temperature, get_settings().confidence_threshold)
    wall = time.monotonic() - started

    card: dict[str, Any] = {
        "architecture": config.arch,
        "parameters": int(model.count_params()),
        "input": "28x28x1 float32 in [0, 1], ink bright on dark (MNIST polarity)",
        "output": "10 softmax probabilities",
        "training_data": {"path": data.name, "sha256": sha256_file(data), "rows": int(
            len(split.y_train) + len(split.y_val))},
        "validation_split": {
            "method": f"last {config.val_fraction:.0%} of numpy default_rng({SPLIT_SEED})"
            f".permutation(n) over train.csv data rows",
            "rows": len(split.val_rows),
            "train_rows": len(split.y_train),
        },
        "training": {
            "epochs_planned": epochs, "epochs_run": tracker.epochs_run,
            "stopped_by_time_limit": tracker.stopped_early, "seed": config.seed,
            "batch_size": config.batch_size, "augmentation": config.resolved_augment(),
            "optimizer": "RMSprop" if config.arch == "mlp" else "Adam, warmup + cosine decay",
            "max_minutes": config.max_minutes,
            "wall_seconds": round(wall, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "tensorflow": tf.__version__, "keras": keras.__version__,
        },
        "validation": metrics,
        "calibration": {"method": "temperature scaling on the validation split",
                        "temperature": round(temperature, 4)},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return register(path, card)
