"""Pseudo-labels from the teachers' probabilities (``model_store.pseudo``): pure functions."""

from __future__ import annotations

import numpy as np
import pytest

from model_store.pseudo import confident_labels, not_held_out

PROBS = np.array(
    [
        [0.995, 0.005] + [0.0] * 8,  # confident 0
        [0.0, 0.0, 0.6, 0.4] + [0.0] * 6,  # hesitates between 2 and 3
        [0.0] * 9 + [1.0],  # certain 9
        [0.0] * 7 + [0.99, 0.01, 0.0],  # exactly at 0.99: 7
    ]
)


@pytest.mark.parametrize(
    ("threshold", "rows", "labels"),
    [
        (0.99, [0, 2, 3], [0, 9, 7]),  # at the threshold counts
        (0.999, [2], [9]),
        (0.5, [0, 1, 2, 3], [0, 2, 9, 7]),  # the top label, never a mixture
        (1.0, [2], [9]),
    ],
)
def test_confident_labels_keep_the_rows_at_or_above_the_threshold(
    threshold: float, rows: list[int], labels: list[int]
) -> None:
    keep, kept_labels = confident_labels(PROBS, threshold)
    assert keep.tolist() == rows and kept_labels.tolist() == labels
    assert keep.dtype == kept_labels.dtype == np.int64


@pytest.mark.parametrize(
    ("unlabelled_rows", "expected"),
    [
        ([0, 1, 2], [False, True, True]),  # row 0 is the held-out row
        ([1, 2], [True, True]),
        ([0, 0], [False, False]),  # every copy of it
    ],
)
def test_held_out_rows_are_never_pseudo_labelled(
    unlabelled_rows: list[int], expected: list[bool]
) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 784), dtype=np.uint8)
    held_out = np.stack([images[0], rng.integers(0, 256, 784, dtype=np.uint8)])
    assert not_held_out(images[unlabelled_rows], held_out).tolist() == expected


def test_a_pixel_changed_is_another_row() -> None:
    row = np.zeros((1, 784), np.uint8)
    other = row.copy()
    other[0, 400] = 1
    assert not_held_out(other, row).tolist() == [True]
