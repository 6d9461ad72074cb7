"""Each prefork child loads and traces the active model before it asks for its first chunk.

Loading lazily inside the first task put TensorFlow's import, the hash check, the load and
the trace (about 10 s for the 6-member ensemble on a 2-core AVX2-only CPU) inside that
chunk's time limit: a child that replaced a killed one could fail its first chunk with
``SoftTimeLimitExceeded`` on a slow machine (tests/worker/test_reliability.py caught it).
The parent hands a child work only after the child reports up, which happens after
``worker_process_init``; ``worker_proc_alive_timeout`` (worker/celery_app.py) gives it time.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init

from digits.core.settings import get_settings
from model_store.aliases import resolve_active
from model_store.inference import model_for

log = logging.getLogger("digits.worker")


@worker_process_init.connect
def load_active_model(**_: Any) -> None:
    """Load the version new batches are pinned to. A failure is logged, never raised: the
    child must still come up, and a chunk then loads (and reports) what its batch names."""
    try:
        model_for(resolve_active().version)
    except Exception:
        log.exception("could not preload the active model; chunks will load what they need")


def import_runtime() -> str:
    """Import the runtime the configured inference path needs in the worker's parent, before
    the prefork pool forks; returns its module name.

    Each process then starts with the library in memory (shared, copy on write) and only
    loads the model: on 2 cores, two processes importing TensorFlow side by side took ~6 s
    of a cold `digits run` before the first chunk. Safe because the parent never *runs* it
    (no session, no thread pool, no op: TensorFlow is not fork-safe once it has run); the
    thread limits are still set in each process before its first op
    (model_store.loading.configure_threads). ``DIGITS_PRELOAD_RUNTIME=0`` turns it off.

    DIGITS_INFERENCE_PATH=tflite-int8-dynamic imports only LiteRT (~0.1 s, against ~3 s for
    TensorFlow and Keras): its processes load the stored ``model.int8.tflite`` and never
    import TensorFlow. The active version is not looked up here (no database connection is
    opened before the fork), so a version without a stored artefact falls back to float32
    and each process then imports Keras itself."""
    if get_settings().inference_path == "tflite-int8-dynamic":
        import ai_edge_litert.interpreter  # noqa: F401

        return "ai_edge_litert"
    import keras  # noqa: F401  (imports tensorflow as its backend)

    return "keras"
