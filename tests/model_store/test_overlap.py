"""member_overlap: which of an ensemble's errors its members share."""

from __future__ import annotations

import numpy as np
import pytest

from model_store.overlap import member_overlap


def onehot(labels: list[int]) -> np.ndarray:
    return np.eye(10)[labels]


LABELS = np.array([0, 1, 2, 3])
ROWS = np.array([7, 11, 20, 31])


@pytest.mark.parametrize(
    ("members", "ensemble", "expected"),
    [
        # Both members miss row 11; the ensemble too: shared.
        ([[0, 9, 2, 3], [0, 9, 2, 3]], [0, 9, 2, 3], ([1, 1], [11], 1)),
        # Each misses a different row; the ensemble misses one of them: not shared.
        ([[9, 1, 2, 3], [0, 1, 9, 3]], [9, 1, 2, 3], ([1, 1], [7], 0)),
        # Members right, the average wrong (possible with soft votes): not shared.
        ([[0, 1, 2, 3], [0, 1, 2, 3]], [0, 1, 2, 9], ([0, 0], [31], 0)),
        ([[0, 1, 2, 3]], [0, 1, 2, 3], ([0], [], 0)),
    ],
)
def test_member_overlap(
    members: list[list[int]], ensemble: list[int], expected: tuple[list[int], list[int], int]
) -> None:
    result = member_overlap([onehot(m) for m in members], onehot(ensemble), LABELS, ROWS)
    errors, rows, shared = expected
    assert result == {
        "member_errors": errors,
        "ensemble_errors": len(rows),
        "made_by_every_member": shared,
        "error_rows": rows,
    }
