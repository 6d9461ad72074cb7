"""The clutter check: held-out rows rendered as cluttered scans, one set per kind of clutter
(``digits.core.clutter_scans``), scored through the production image path.

Per kind it counts what a user would care about: right answers, items sent to review (low
confidence or the digit finder's doubt), items refused with a reason, and the one outcome that
must stay rare, a **confident wrong answer** (wrong, yet not flagged).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.clutter_scans import CLUTTER_KINDS, render_cluttered
from digits.core.images import Rejected, image_to_digit
from model_store.calibration import apply_temperature

PER_KIND = 100
"""Rows per kind: 1,100 scans in all, a few seconds to render and score."""

SEED = 2312
"""Fixed, so every version is measured on the very same pictures."""


def measure_clutter(
    model: Any,
    temperature: float,
    threshold: float,
    pixels: NDArray[np.uint8],
    labels: NDArray[np.int64],
    per_kind: int = PER_KIND,
    seed: int = SEED,
) -> dict[str, Any]:
    """Score ``per_kind`` rows of ``pixels`` (held-out rows: never trained on) as each kind of
    cluttered scan. Returns totals and ``kinds``: {kind: {count, right, accuracy, flagged,
    refused, confident_wrong}}; the neighbour kind borrows the row ``per_kind`` places on."""
    rng = np.random.default_rng(seed)
    n = min(per_kind, len(pixels))
    kinds: dict[str, dict[str, Any]] = {}
    for kind in CLUTTER_KINDS:
        tensors, doubts, kept = [], [], []
        for i in range(n):
            data = render_cluttered(
                pixels[i], kind, rng, neighbour=pixels[(i + per_kind) % len(pixels)]
            )
            try:
                found = image_to_digit(data)
            except Rejected:
                continue
            tensors.append(found.tensor)
            doubts.append(found.doubt is not None)
            kept.append(i)
        right = flagged = confident_wrong = 0
        if tensors:
            probs = model.predict(np.stack(tensors), batch_size=500, verbose=0)
            calibrated = apply_temperature(probs, temperature)
            predicted = calibrated.argmax(axis=1)
            sent = (calibrated.max(axis=1) < threshold) | np.array(doubts, bool)
            correct = predicted == labels[kept]
            right = int(correct.sum())
            flagged = int(sent.sum())
            confident_wrong = int((~correct & ~sent).sum())
        kinds[kind] = {
            "count": n,
            "right": right,
            "accuracy": round(right / n, 4),
            "flagged": flagged,
            "refused": n - len(kept),
            "confident_wrong": confident_wrong,
        }
    count = sum(k["count"] for k in kinds.values())
    right = sum(k["right"] for k in kinds.values())
    return {
        "method": f"{n} held-out rows per kind rendered by digits.core.clutter_scans (seed "
        f"{seed}), preprocessed by digits.core.images.image_to_digit",
        "count": count,
        "accuracy": round(right / count, 4) if count else 0.0,
        "confident_wrong": sum(k["confident_wrong"] for k in kinds.values()),
        "kinds": kinds,
    }
