"""Batch classification with per-process model caching and idle eviction.

A model is loaded the first time a process needs a version (always after the prefork fork,
never in the parent; each child loads the active version as it starts, see worker/warmup.py)
and kept while it is in use; a batch names its pinned version, so a
process can hold several versions during a hot swap. A version unused for more than
``IDLE_SECONDS`` is dropped, but only after the newly needed version has loaded: if the new
load fails (tampered file, bad signature) the process keeps serving what it already has, and
a long-lived worker does not accumulate every model it has ever seen.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.settings import get_settings
from model_store.ceiling import inference_path
from model_store.loading import load_for_path
from model_store.null_model import NullModel
from model_store.registry import ModelVersion, get_version

log = logging.getLogger("digits.worker")

#: Versions not used for this long are evicted (when another version is next needed).
IDLE_SECONDS = 600.0

_models: dict[int, tuple[ModelVersion, Any]] = {}
_last_used: dict[int, float] = {}


def model_for(version: int) -> tuple[ModelVersion, Any]:
    """The loaded model for ``version`` (hash-verified, safe mode), cached per process."""
    cached = _models.get(version)
    if cached is None and get_settings().null_model:
        # benchmark only (`digits bench --null-model`, in a bench database the settings
        # check): the version's card and temperature, a constant model, no TensorFlow
        log.warning("model version %d: NULL MODEL (benchmark only): constant output", version)
        cached = (get_version(version), NullModel())
        _models[version] = cached
    if cached is None:
        meta = get_version(version)
        # may raise (a tampered model.keras or model.int8.tflite: ModelError, the chunk fails
        # with its reason): then nothing below runs or is dropped
        model = load_for_path(meta, chosen_path(meta), get_settings().threads_per_worker())
        cached = (meta, warm(model))
        _models[version] = cached
        _last_used[version] = time.monotonic()
        evict_idle(keep=version)
    else:
        _last_used[version] = time.monotonic()
    return cached


def chosen_path(meta: ModelVersion) -> str:
    """The inference path DIGITS_INFERENCE_PATH names, for a version whose card records that
    path as checked (labels and calibration on the held-out rows) with its stored artefact;
    any other version runs float32. The artefact's hash is checked when it loads."""
    settings = get_settings()
    path = inference_path(meta.card, settings.inference_path)
    if path != settings.inference_path:
        # a new version has no checked int8 file until `digits models speed V --record`
        log.info(
            "model version %d: inference path %s not checked with a stored artefact on its "
            "card; using float32",
            meta.version,
            settings.inference_path,
        )
    log.info("model version %d runs on the %s inference path", meta.version, path)
    return path


def warm(model: Any) -> Any:
    """Trace the forward pass before the first chunk needs it.

    Keras traces ``predict_on_batch`` for the first batch size it sees, again for the second,
    and then switches to a shape-relaxed function that serves every size. Paying both traces
    at load time (several times longer for the 6-member ensemble than for one CNN) keeps them
    out of the latency of the first inbox drops a fresh worker process scores.
    """
    for size in (1, 2):
        model.predict_on_batch(np.zeros((size, 28, 28, 1), np.float32))
    return model


def evict_idle(
    keep: int | None = None, max_idle: float = IDLE_SECONDS, now: float | None = None
) -> list[int]:
    """Drop cached versions unused for more than ``max_idle`` seconds (never ``keep``).

    Called right after a new version has loaded, so the swap is load-new-then-drop-old.
    Returns the evicted versions. The model objects are freed once no running forward pass
    holds a reference (a chunk in progress keeps its own reference until it finishes).
    """
    now = time.monotonic() if now is None else now
    stale = [v for v in _models if v != keep and now - _last_used.get(v, now) > max_idle]
    for version in stale:
        del _models[version]
        _last_used.pop(version, None)
    if stale:
        gc.collect()
        log.info("evicted model versions %s (idle > %.0f s)", stale, max_idle)
    return stale


def predict(model: Any, tensor: NDArray[np.float32], max_batch: int = 4096) -> NDArray[np.float32]:
    """One forward pass over the whole chunk.

    ``predict_on_batch`` runs Keras' compiled predict step: faster than an eager ``model(x)``
    call (measured by hand while choosing, about a third less per image on one core) and far
    less setup than ``predict()``. A 1,000-image
    pass peaks at about 1.6 GB RSS; only chunks above ``max_batch`` are sliced, so memory stays
    bounded whatever DIGITS_CHUNK_SIZE says.
    """
    if len(tensor) == 0:
        return np.zeros((0, 10), np.float32)
    outputs = [
        np.asarray(model.predict_on_batch(tensor[i : i + max_batch]))
        for i in range(0, len(tensor), max_batch)
    ]
    return np.concatenate(outputs).astype(np.float32)


def loaded_versions() -> list[int]:
    return sorted(_models)
