"""The one preprocessing path: CSV rows and image files both end as (n, 28, 28, 1) float32.

CSV rows are already in MNIST's normalised form (20x20 box, centred by mass, ink bright), so
they only need scaling; image files go through ``worker.images`` (decode → MNIST recipe).
Pure functions: no I/O, no Keras.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def rows_to_tensor(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
    """(n, 784) uint8 rows → (n, 28, 28, 1) float32 in [0, 1]."""
    out: NDArray[np.float32] = pixels.reshape(-1, 28, 28, 1).astype(np.float32) / np.float32(255)
    return out


def stack(tensors: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    """Stack per-image (28, 28, 1) tensors into one batch (empty-safe)."""
    if not tensors:
        return np.zeros((0, 28, 28, 1), np.float32)
    return np.stack(tensors).astype(np.float32)
