"""How an ensemble's errors relate to its members' errors. Pure NumPy, no Keras.

Why it exists: averaging members only removes the mistakes they do not share. The one-hour
ensembles measured so far landed at most about two errors below their members' mean, because
most of their errors are made by every member (ambiguous or mislabelled rows). This makes
that measurable, and names the rows, so anyone can look at them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def member_overlap(
    members: list[NDArray[np.floating]],
    ensemble: NDArray[np.floating],
    labels: NDArray[np.integer],
    rows: NDArray[np.integer],
) -> dict[str, Any]:
    """Each member's error count, the ensemble's wrong rows (``rows``: their 0-based data-row
    numbers in the source CSV), and how many of those every member gets wrong too."""
    wrong = ensemble.argmax(axis=1) != labels
    member_wrong = [m.argmax(axis=1) != labels for m in members]
    shared = np.logical_and.reduce([wrong, *member_wrong])
    return {
        "member_errors": [int(w.sum()) for w in member_wrong],
        "ensemble_errors": int(wrong.sum()),
        "made_by_every_member": int(shared.sum()),
        "error_rows": [int(r) for r in rows[wrong]],
    }
