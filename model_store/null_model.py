"""The null model: benchmark-only, it costs nothing and answers the same for every image.

`digits bench --null-model` (digits/app/bench_pipeline.py) starts workers with
``DIGITS_NULL_MODEL=1`` so that everything a chunk does except the forward pass (claim, read
the staged rows, shape, the bulk upsert, the batch's bookkeeping, the broker round trip) is
what is timed: the pipeline's own ceiling. Same signature as a real version, (n, 28, 28, 1)
float32 in, (n, 10) probabilities out, and the ``predict_on_batch`` method
``model_store.inference.predict`` and ``warm`` call, with no TensorFlow import.

It must never score a user's batch: the setting is refused unless the database URL names a
bench database (``NULL_BENCH_MARK``, digits/core/settings.py), which only the bench creates,
in a temporary folder or as a throwaway PostgreSQL database it drops afterwards.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: One fixed answer: "0" at 0.95, the rest shared. Confident enough that, after a version's
#: temperature, items are not all flagged for review (the write is the usual row either way).
NULL_PROBABILITIES: NDArray[np.float32] = np.array([0.95] + [0.05 / 9] * 9, np.float32)


class NullModel:
    """A stand-in for a loaded Keras model: the same shapes, a constant output."""

    input_shape = (None, 28, 28, 1)
    output_shape = (None, 10)

    def predict_on_batch(self, tensor: NDArray[np.float32]) -> NDArray[np.float32]:
        """The fixed probabilities for each image (a new array: callers may write into it)."""
        if tensor.ndim != 4 or tuple(tensor.shape[1:]) != (28, 28, 1):
            raise ValueError(f"expected (n, 28, 28, 1) images, got {tensor.shape}")
        return np.tile(NULL_PROBABILITIES, (len(tensor), 1))
