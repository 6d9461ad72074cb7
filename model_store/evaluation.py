"""Scoring a model on the fixed held-out rows, clean and rendered as scans, and on the
cross-writer check (digits by other writers, captured at low resolution): the metrics a card
records (``evaluate``, ``cross_writer``) and ``measure``, which re-measures a registered
version the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.images import Rejected, image_to_tensor
from digits.core.preprocess import rows_to_tensor, stack
from digits.core.settings import get_settings
from digits.core.synthetic_scans import render_scan
from digits.core.writer_samples import CROSS_WRITER_SEED, PER_DIGIT, MissingFonts, cross_writer_set
from model_store.calibration import apply_temperature, expected_calibration_error
from model_store.clutter import measure_clutter
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
    members = ensemble_members(model)
    if members:
        result["members"] = member_overlap(
            _member_probs(members, rows_to_tensor(split.x_val)), probs, split.y_val, split.val_rows
        )
    if scans:
        result["scans"] = {
            "refused": refused,
            **evaluate(scan_probs, labels, version.temperature, threshold),
        }
    result["cross_writer"] = cross_writer(model, version.temperature, threshold)
    if scans:
        result["clutter"] = measure_clutter(
            model, version.temperature, threshold, split.x_val, split.y_val
        )
    return result


@dataclass(frozen=True)
class WriterTensors:
    """The cross-writer set after the production preprocessing: what the model is shown.
    ``unavailable`` says why the set is empty (no handwriting font installed)."""

    tensors: NDArray[np.float32]
    labels: NDArray[np.int64]
    styles: NDArray[np.str_]  # each kept image's style
    refused: dict[str, int]  # per style, images the preprocessing refused
    style_names: tuple[str, ...]
    missing: tuple[str, ...]
    per_digit: int
    seed: int
    unavailable: str | None = None


def cross_writer_tensors(
    per_digit: int = PER_DIGIT, seed: int = CROSS_WRITER_SEED
) -> WriterTensors:
    """Draw the cross-writer set (``digits.core.writer_samples``) and run every image through
    ``image_to_tensor``, the function the inbox and the workers use, so the figure includes
    what preprocessing makes of small, blocky digits."""
    try:
        drawn = cross_writer_set(per_digit, seed)
    except MissingFonts as exc:
        empty = np.zeros((0, 28, 28, 1), np.float32)
        return WriterTensors(
            empty, np.zeros(0, np.int64), np.array([], str), {}, (), (), per_digit, seed, str(exc)
        )
    tensors: list[NDArray[np.float32]] = []
    labels: list[int] = []
    styles: list[str] = []
    refused = dict.fromkeys(drawn.styles, 0)
    for sample in drawn.samples:
        try:
            tensors.append(image_to_tensor(sample.data))
        except Rejected:
            refused[sample.style] += 1
            continue
        labels.append(sample.label)
        styles.append(sample.style)
    return WriterTensors(
        stack(tensors),
        np.array(labels, np.int64),
        np.array(styles, str),
        refused,
        drawn.styles,
        drawn.missing,
        per_digit,
        seed,
    )


def cross_writer(
    model: Any, temperature: float, threshold: float, rendered: WriterTensors | None = None
) -> dict[str, Any]:
    """The model on the cross-writer set (drawn now, or ``rendered``): the usual metrics over
    the images preprocessing accepted, the refused count, and accuracy per style. Held-out
    rows are MNIST's own writers; this is the figure for everyone else."""
    data = rendered if rendered is not None else cross_writer_tensors()
    if data.unavailable is not None:
        return {"unavailable": data.unavailable}
    probs = model.predict(data.tensors, batch_size=1000, verbose=0)
    right = probs.argmax(axis=1) == data.labels
    per_style = {}
    for name in data.style_names:
        mine = data.styles == name
        per_style[name] = {
            "accuracy": round(float(right[mine].mean()), 5) if mine.any() else None,
            "errors": int((~right[mine]).sum()),
            "count": int(mine.sum()),
            "refused": data.refused.get(name, 0),
        }
    return {
        "method": "digits drawn in handwriting fonts and pen styles (digits.core.writer_samples"
        f", seed {data.seed}, {data.per_digit} per digit): slanted, rotated, warped, captured "
        "8-16 px tall, enlarged to 60-200 px (nearest or bilinear), JPEG or PNG; preprocessed "
        "by digits.core.images.image_to_tensor",
        "seed": data.seed,
        "per_digit": data.per_digit,
        "refused": sum(data.refused.values()),
        **evaluate(probs, data.labels, temperature, threshold),
        "per_style": per_style,
        "missing_fonts": list(data.missing),
    }


def _member_probs(members: list[Any], x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    """Every member's probabilities from one ``predict`` of one model with a head per member.
    Why not ``predict`` per member: each is a new traced function, and TensorFlow then warns
    about "excessive retracing" on a command that did nothing wrong."""
    import keras

    image = keras.Input((28, 28, 1))
    heads = keras.Model(image, [member(image) for member in members])
    return list(heads.predict(x, batch_size=1000, verbose=0))


def ensemble_members(model: Any) -> list[Any]:
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
