"""The worker domain's Celery tasks (scoring, the lease sweep): thin, they take ids, call
library functions, and are safe to run twice. The scheduler registers its own
(scheduler/tasks.py), as each domain does."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from sqlalchemy.exc import DBAPIError, OperationalError

from worker import heartbeat as _heartbeat  # noqa: F401  (registers worker signals)
from worker import warmup as _warmup  # noqa: F401  (children load the model before work)
from worker.celery_app import TASK_SCORE, TASK_SWEEP, app
from worker.chunks import process_chunk
from worker.sweeper import sweep as run_sweep

log = logging.getLogger("digits.worker")


@app.task(name=TASK_SCORE, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def score_chunk(self: Task, chunk_id: int) -> str:
    """Score chunk ``chunk_id``. Errors are retried with backoff; our own attempt counter (in
    the database) quarantines a chunk that keeps failing, so this never loops forever."""

    try:
        chunk_id = int(chunk_id)
    except (TypeError, ValueError):  # a malformed message: no retry can ever fix it
        log.error("refused a message whose chunk id is not an integer: %.100r", chunk_id)
        return "refused"
    try:
        return process_chunk(chunk_id)
    except (OperationalError, DBAPIError) as exc:  # database unreachable: wait, then retry
        countdown = min(30, 2 ** min(self.request.retries, 5))
        log.warning("chunk %s: database error, retry in %ss: %s", chunk_id, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown) from exc
    except Exception as exc:
        countdown = min(30, 1 + self.request.retries * 2)
        log.exception("chunk %s failed; retry in %ss", chunk_id, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc


@app.task(name=TASK_SWEEP, acks_late=True)
def sweep() -> dict[str, Any]:
    """Re-send chunks whose lease expired or whose message was lost (beat runs this)."""

    return run_sweep().as_dict()
