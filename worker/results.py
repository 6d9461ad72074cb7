"""Result shaping: model outputs → rows to store. Pure NumPy, no I/O, no Keras."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from model_store.calibration import apply_temperature


@dataclass(frozen=True)
class Shaped:
    labels: NDArray[np.int64]
    confidence: NDArray[np.float64]  # calibrated top-1 probability
    margin: NDArray[np.float64]  # top-1 minus top-2 (calibrated)
    needs_review: NDArray[np.bool_]
    probabilities: NDArray[np.float64]  # calibrated, rows sum to 1
    review_reasons: list[str | None] | None = None  # why an item is in doubt beyond confidence


def shape(
    probs: NDArray[np.floating],
    temperature: float,
    threshold: float,
    doubts: list[str | None] | None = None,
) -> Shaped:
    """Calibrate with the model's temperature and derive label, confidence, margin, review flag.

    ``doubts`` (one per item, from the digit finder: e.g. two digit-sized marks on the page)
    flag an item for review whatever its confidence: the model is sure about the mark it was
    shown, not that it was shown the right one."""
    calibrated = apply_temperature(probs, temperature)
    top2 = np.sort(calibrated, axis=1)[:, -2:]
    confidence = top2[:, 1]
    needs_review = confidence < threshold
    if doubts is not None:
        needs_review = needs_review | np.array([d is not None for d in doubts], bool)
    return Shaped(
        labels=calibrated.argmax(axis=1),
        confidence=confidence,
        margin=top2[:, 1] - top2[:, 0],
        needs_review=needs_review,
        probabilities=calibrated,
        review_reasons=doubts,
    )


def prediction_rows(
    item_ids: list[int], shaped: Shaped, model_version: int
) -> list[dict[str, object]]:
    """Rows for the predictions table, in item order (floats rounded to 6 places)."""
    rows: list[dict[str, object]] = []
    probs = np.round(shaped.probabilities, 6)
    for i, item_id in enumerate(item_ids):
        row: dict[str, object] = {
            "item_id": item_id,
            "model_version": model_version,
            "label": int(shaped.labels[i]),
            "confidence": round(float(shaped.confidence[i]), 6),
            "margin": round(float(shaped.margin[i]), 6),
            "needs_review": bool(shaped.needs_review[i]),
            "review_reason": shaped.review_reasons[i] if shaped.review_reasons else None,
        }
        for k in range(10):
            row[f"p{k}"] = float(probs[i, k])
        rows.append(row)
    return rows
