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
