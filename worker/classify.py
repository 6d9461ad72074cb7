"""Batch classification with per-process model caching.

A model is loaded the first time a process needs a version (always after the prefork fork,
never in the parent) and kept for the life of the process; a batch names its pinned version,
so a process can hold several versions during a hot swap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.settings import get_settings
from model_store.registry import ModelVersion, get_version

_models: dict[int, tuple[ModelVersion, Any]] = {}


def model_for(version: int) -> tuple[ModelVersion, Any]:
    """The loaded model for ``version`` (hash-verified, safe mode), cached per process."""
    cached = _models.get(version)
    if cached is None:
        from model_store.loading import configure_threads, load

        configure_threads(get_settings().threads_per_worker())
        meta = get_version(version)
        cached = (meta, load(meta))
        _models[version] = cached
    return cached


def predict(model: Any, tensor: NDArray[np.float32], batch_size: int = 1024) -> NDArray[np.float32]:
    """One batched forward pass over a chunk (``model(x)`` avoids predict()'s per-call setup)."""
    if len(tensor) == 0:
        return np.zeros((0, 10), np.float32)
    outputs = [
        np.asarray(model(tensor[i : i + batch_size], training=False))
        for i in range(0, len(tensor), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def loaded_versions() -> list[int]:
    return sorted(_models)
