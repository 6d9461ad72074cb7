"""Loading a labelled Kaggle CSV for training and the fixed validation split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from digits.core.csv_input import read_labelled

#: The split is fixed by its own seed, independent of the training seed, so every model
#: trained on the same file is validated on exactly the same held-out rows.
SPLIT_SEED = 20261124
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Split:
    x_train: NDArray[np.uint8]
    y_train: NDArray[np.int64]
    x_val: NDArray[np.uint8]
    y_val: NDArray[np.int64]
    val_rows: NDArray[np.int64]  # 0-based data-row indices of train.csv held out


def validation_rows(n: int, fraction: float = VAL_FRACTION) -> NDArray[np.int64]:
    """Held-out rows: the last ``fraction`` of a permutation of range(n) by SPLIT_SEED."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    return np.sort(order[n - round(n * fraction) :]).astype(np.int64)


def load_split(path: Path, fraction: float = VAL_FRACTION) -> Split:
    pixels, labels = read_labelled(path)
    val = validation_rows(len(labels), fraction)
    mask = np.zeros(len(labels), dtype=bool)
    mask[val] = True
    return Split(pixels[~mask], labels[~mask], pixels[mask], labels[mask], val)
