"""The scheduler domain's Celery task: the nightly export, published by the scheduler's beat
and run by any worker (Celery's ``include`` loads this module in worker processes; the
worker package never imports it)."""

from __future__ import annotations

from scheduler.export import export_since_last
from worker.celery_app import TASK_EXPORT, app


@app.task(name=TASK_EXPORT, acks_late=True)
def nightly_export() -> list[str]:
    """Write Kaggle submissions for every CSV batch completed since the last export."""
    return [str(path) for path in export_since_last()]
