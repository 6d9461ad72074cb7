"""Temperature scaling and calibration metrics: pure NumPy, no Keras."""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import NDArray


def apply_temperature(probs: NDArray[np.floating], temperature: float) -> NDArray[np.float64]:
    """Rescale softmax outputs by a temperature (softmax(log p / T)); T=1 is the identity."""
    logits = np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    out: NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return out


def nll(probs: NDArray[np.floating], labels: NDArray[np.integer]) -> float:
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    return float(-np.mean(np.log(picked)))


def fit_temperature(probs: NDArray[np.floating], labels: NDArray[np.integer]) -> float:
    """The temperature minimising validation NLL (a 1-D search: coarse grid, then refine)."""
    grid = np.exp(np.linspace(np.log(0.2), np.log(10.0), 200))
    best = min(grid, key=lambda t: nll(apply_temperature(probs, float(t)), labels))
    fine = np.linspace(best * 0.95, best * 1.05, 101)
    return float(min(fine, key=lambda t: nll(apply_temperature(probs, float(t)), labels)))


def expected_calibration_error(
    probs: NDArray[np.floating], labels: NDArray[np.integer], bins: int = 15
) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (confidence > lo) & (confidence <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)
