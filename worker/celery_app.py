"""The Celery application. Importing it is cheap: no TensorFlow, no database connection.

Delivery is at-least-once by design (``acks_late`` + ``reject_on_worker_lost``); the database
makes it effectively-once (chunk leases, UNIQUE(item, model version) + upsert). JSON only:
a pickled message is refused before any code runs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery

from digits.core.settings import Settings, get_settings

TASK_SCORE = "digits.score_chunk"
TASK_SWEEP = "digits.sweep"
TASK_EXPORT = "digits.nightly_export"
QUEUE = "digits"


#: The exchanges our processes bind on the filesystem broker: the task queue's and Celery's
#: remote-control (pidbox) fanout, which every worker binds its own queue to.
EMBEDDED_EXCHANGES = (QUEUE, "celery.pidbox")


def _create_exchange_table(path: Path) -> None:
    """Create kombu's binding table for one exchange, atomically, if it is missing.

    kombu's filesystem transport creates the table on the first bind by opening it for
    writing and only then locking it; a second process binding at that moment locks and
    reads the still-empty file, and its worker dies of a JSONDecodeError on start-up (two
    `digits worker` started together, tests/worker/test_reliability.py). With the table
    already there (an empty JSON list, linked into place whole), every bind takes kombu's
    exclusive-lock read-modify-write path, which serialises them."""
    if path.exists():
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".new-")
    try:
        os.write(fd, b"[]")
        os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(tmp, path)  # atomic: the table appears whole or not at all
    finally:
        os.unlink(tmp)


def broker_options(settings: Settings) -> dict[str, Any]:
    if settings.embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        for exchange in EMBEDDED_EXCHANGES:
            _create_exchange_table(folder / "control" / f"{exchange}.exchange")
        return {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            # keep processed files on the same filesystem: the claim is then an atomic rename
            "store_processed": True,
            "polling_interval": 0.1,
        }
    return {
        # Redis redelivers an unacknowledged task after this; the hard time limit sits below
        # it so a running task is never handed to a second worker while still alive.
        "visibility_timeout": settings.visibility_timeout,
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "retry_on_timeout": True,
        "health_check_interval": 10,
    }


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("digits", broker=settings.broker, include=["worker.tasks", "scheduler.tasks"])
    if settings.embedded_broker:  # kombu's filesystem transport, with atomic message writes
        app.conf.broker_transport = "worker.fs_broker:Transport"
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        task_time_limit=settings.task_time_limit,
        # 10 s before the hard limit, but never under half of it: a 1 s soft limit (any
        # DIGITS_TASK_TIME_LIMIT below 12) interrupted a child's first model load half-way,
        # which broke that child's TensorFlow import for good (tests/worker/test_reliability.py)
        task_soft_time_limit=settings.task_time_limit - min(10, settings.task_time_limit // 2),
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # A child reports up only after loading the active model (worker/warmup.py): allow
        # for a slow CPU instead of Celery's 4 s, after which the parent kills the child.
        worker_proc_alive_timeout=120.0,
        worker_max_tasks_per_child=2000,
        worker_max_memory_per_child=4_000_000,  # KiB: recycle a child past 4 GB (a pass peaks ~1.6)
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        timezone="UTC",
    )
    return app


def app_key(settings: Settings) -> tuple[str, str]:
    return settings.broker, str(settings.broker_dir) if settings.embedded_broker else ""


app = make_app()
_apps: dict[tuple[str, str], Celery] = {app_key(get_settings()): app}


def sending_app() -> Celery:
    """An app for publishing under the *current* settings (tests and long-lived processes may
    change DIGITS_BROKER_URL after this module was imported; workers never do)."""
    settings = get_settings()
    key = app_key(settings)
    if key not in _apps:
        _apps[key] = make_app(settings)
    return _apps[key]
