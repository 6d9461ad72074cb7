"""Result shaping is pure: calibrated probabilities, label, confidence, margin, review flag."""

from __future__ import annotations

import numpy as np
import pytest

from digits.core.preprocess import rows_to_tensor
from worker.results import prediction_rows, shape


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_shape_keeps_the_argmax_and_sums_to_one(temperature: float) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10) * 0.3, size=50).astype(np.float32)
    shaped = shape(probs, temperature, 0.9)
    assert np.array_equal(shaped.labels, probs.argmax(axis=1))
    assert np.allclose(shaped.probabilities.sum(axis=1), 1.0)
    assert np.all(shaped.margin <= shaped.confidence)
    assert np.array_equal(shaped.needs_review, shaped.confidence < 0.9)


def test_higher_temperature_lowers_confidence() -> None:
    probs = np.array([[0.9, 0.05, 0.05, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    assert shape(probs, 2.0, 0.5).confidence[0] < shape(probs, 1.0, 0.5).confidence[0]


def test_prediction_rows_carry_every_probability() -> None:
    probs = np.eye(10, dtype=np.float32)[[3, 7]] * 0.9 + 0.01
    rows = prediction_rows([11, 12], shape(probs, 1.0, 0.5), model_version=4)
    assert [(r["item_id"], r["label"], r["model_version"]) for r in rows] == [
        (11, 3, 4),
        (12, 7, 4),
    ]
    assert all(abs(sum(float(str(r[f"p{k}"])) for k in range(10)) - 1) < 1e-4 for r in rows)


def test_rows_to_tensor_scales_and_reshapes() -> None:
    pixels = np.arange(784 * 2, dtype=np.int64).reshape(2, 784) % 256
    tensor = rows_to_tensor(pixels.astype(np.uint8))
    assert tensor.shape == (2, 28, 28, 1) and tensor.dtype == np.float32
    assert tensor.max() == 1.0 and tensor[0, 0, 1, 0] == pytest.approx(1 / 255)
