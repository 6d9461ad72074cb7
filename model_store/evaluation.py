"""Scoring a model on the fixed held-out rows, clean and rendered as scans: the metrics a card
records (``evaluate``) and ``measure``, which re-measures a registered version the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.images import Rejected, image_to_tensor
from digits.core.preprocess import rows_to_tensor, stack
from digits.core.settings import get_settings
from digits.core.synthetic_scans import render_scan
from model_store.calibration import apply_temperature, expected_calibration_error
from model_store.data import SPLIT_SEED, Split, load_split
from model_store.loading import load
from model_store.overlap import member_overlap
from model_store.registry import ModelVersion


def evaluate(
    probs: np.ndarray, labels: np.ndarray, temperature: float, threshold: float = 0.9
) -> dict[str, Any]:
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
            if confident.any()
            else None,
        },
    }


def scan_like_validation(
    pixels: NDArray[np.uint8], labels: NDArray[np.int64], seed: int = SPLIT_SEED
) -> tuple[NDArray[np.float32], NDArray[np.int64], int]:
    """The held-out rows rendered as realistic scans and run through the production
    preprocessing, so calibration sees what the inbox sees; returns (tensors, labels, refused).
    """

    rng = np.random.default_rng(seed)
    tensors: list[NDArray[np.float32]] = []
    kept: list[int] = []
    for i, row in enumerate(pixels):
        data, _ = render_scan(row, rng)
        try:
            tensors.append(image_to_tensor(data))
        except Rejected:
            continue
        kept.append(i)
    return stack(tensors), labels[kept], len(pixels) - len(kept)


def measure(version: ModelVersion, data: Path, scans: bool = True) -> dict[str, Any]:
    """Re-measure a registered version on the fixed held-out rows of ``data`` (clean, and
    rendered as scans), with the same evaluation its card was written with."""

    split = load_split(data)
    model = load(version)
    threshold = get_settings().confidence_threshold
    probs, scan_probs, labels, refused = held_out_probs(model, split, scans)
    result: dict[str, Any] = {
        "version": version.version,
        "rows": len(split.y_val),
        "clean": evaluate(probs, split.y_val, version.temperature, threshold),
    }
    members = _members(model)
    if members:
        result["members"] = member_overlap(
            _member_probs(members, rows_to_tensor(split.x_val)), probs, split.y_val, split.val_rows
        )
    if scans:
        result["scans"] = {
            "refused": refused,
            **evaluate(scan_probs, labels, version.temperature, threshold),
        }
    return result


def _member_probs(members: list[Any], x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    """Every member's probabilities from one ``predict`` of one model with a head per member.
    Why not ``predict`` per member: each is a new traced function, and TensorFlow then warns
    about "excessive retracing" on a command that did nothing wrong."""
    import keras

    image = keras.Input((28, 28, 1))
    heads = keras.Model(image, [member(image) for member in members])
    return list(heads.predict(x, batch_size=1000, verbose=0))


def _members(model: Any) -> list[Any]:
    """An ensemble's member models (``build_ensemble`` nests them whole); [] for one model."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model)]


Rendered = tuple[NDArray[np.float32], NDArray[np.int64], int]  # scan_like_validation's result


def held_out_probs(
    model: Any, split: Split, scans: bool = True, rendered: Rendered | None = None
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64], int]:
    """Probabilities on the held-out rows, clean and (if ``scans``) rendered as scans (or
    ``rendered``, the same rendering done already): what both training (to calibrate and
    write the card) and ``measure`` score.
    Returns (clean probs, scan probs, scan labels, scans refused by preprocessing)."""
    probs = model.predict(rows_to_tensor(split.x_val), batch_size=1000, verbose=0)
    if not scans:
        return probs, np.zeros((0, 10), np.float32), split.y_val[:0], 0
    tensors, labels, refused = rendered or scan_like_validation(split.x_val, split.y_val)
    return probs, model.predict(tensors, batch_size=1000, verbose=0), labels, refused
