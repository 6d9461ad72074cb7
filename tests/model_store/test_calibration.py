"""Temperature scaling: fitted on held-out data, it lowers the calibration error."""

from __future__ import annotations

import numpy as np

from model_store.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)


def overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A model that is right 80% of the time but says 99%."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    predicted = np.where(rng.random(n) < 0.8, labels, (labels + 1) % 10)
    probs = np.full((n, 10), 0.01 / 9)
    probs[np.arange(n), predicted] = 0.99
    return probs, labels


def test_fitted_temperature_reduces_ece_on_an_overconfident_model() -> None:
    probs, labels = overconfident()
    temperature = fit_temperature(probs, labels)
    before = expected_calibration_error(probs, labels)
    after = expected_calibration_error(apply_temperature(probs, temperature), labels)
    assert temperature > 1.0
    assert before > 0.15 and after < 0.02


def test_temperature_one_is_identity() -> None:
    probs, _ = overconfident(50)
    assert np.allclose(apply_temperature(probs, 1.0), probs)
