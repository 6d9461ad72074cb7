"""Worker presence in the database, so `digits status` and `digits run` see connected workers
on every broker (the embedded filesystem broker has no reliable remote-control broadcast)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown
from sqlalchemy import delete

from digits.db import session
from digits.schema import WorkerHeartbeat, utcnow

log = logging.getLogger("digits.worker")
INTERVAL = 5.0
_stop = threading.Event()


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def beat_once(concurrency: int) -> None:
    with session(write=True) as sess:
        row = sess.get(WorkerHeartbeat, worker_name())
        if row is None:
            sess.add(WorkerHeartbeat(name=worker_name(), concurrency=concurrency))
        else:
            row.last_seen = utcnow()
            row.concurrency = concurrency


def _loop(concurrency: int) -> None:
    while not _stop.wait(INTERVAL):
        try:
            beat_once(concurrency)
        except Exception as exc:  # a database outage must not kill the worker
            log.warning("heartbeat failed: %s", exc)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    concurrency = int(getattr(getattr(sender, "controller", None), "concurrency", 0) or 0)
    try:
        beat_once(concurrency)
    except Exception as exc:
        log.warning("heartbeat failed: %s", exc)
    threading.Thread(target=_loop, args=(concurrency,), daemon=True, name="heartbeat").start()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    _stop.set()
    try:
        with session(write=True) as sess:
            sess.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == worker_name()))
    except Exception as exc:
        log.warning("could not remove heartbeat: %s", exc)
