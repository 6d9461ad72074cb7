"""Presence in the database: workers, so `digits status` and `digits run` see connected
workers on every broker (the embedded filesystem broker has no reliable remote-control
broadcast), and sweepers (`digits scheduler`, `digits up`, a waiting `digits run`), so a worker
knows when nobody sweeps expired leases and does it itself."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta
from typing import Any

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from sqlalchemy import delete, exists, select

from digits.core.db import session
from digits.core.schema import WorkerHeartbeat, utcnow
from digits.core.settings import get_settings
from worker.sweeper import sweep

log = logging.getLogger("digits.worker")
INTERVAL = 5.0
SWEEPER = "scheduler"
_stop = threading.Event()


def worker_name(pid: int | None = None) -> str:
    """``host:pid`` of a worker's prefork parent (this process unless ``pid`` is given)."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def worker_gone(pid: int) -> None:
    """Remove the heartbeat of the local worker ``pid``, which has been told to stop: its
    starter (`digits run`) does not wait for the drain, and whoever asks next for connected
    workers must not count it. Never raises: presence is advisory."""
    try:
        with session(write=True) as sess:
            sess.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == worker_name(pid)))
    except Exception as exc:
        log.warning("could not remove heartbeat: %s", exc)


def sweeper_name() -> str:
    return f"{SWEEPER}@{worker_name()}"


def beat_once(concurrency: int, role: str = "worker", name: str | None = None) -> None:
    name = name or worker_name()
    with session(write=True) as sess:
        row = sess.get(WorkerHeartbeat, name)
        if row is None:
            sess.add(WorkerHeartbeat(name=name, role=role, concurrency=concurrency))
        else:
            row.last_seen = utcnow()
            row.concurrency = concurrency


def sweeper_beat() -> None:
    """Called by every process that sweeps on a schedule: the scheduler and a waiting
    `digits run`. Never raises: presence is advisory."""
    try:
        beat_once(0, SWEEPER, sweeper_name())
    except Exception as exc:
        log.warning("sweeper heartbeat failed: %s", exc)


def sweeper_gone() -> None:
    try:
        with session(write=True) as sess:
            sess.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == sweeper_name()))
    except Exception as exc:
        log.warning("could not remove sweeper heartbeat: %s", exc)


def sweeper_alive() -> bool:
    """Whether some process swept recently (three sweep intervals, at least 15 s)."""
    settings = get_settings()
    cutoff = utcnow() - timedelta(seconds=max(3 * settings.sweep_seconds, 15.0))
    with session() as sess:
        return bool(
            sess.scalar(
                select(
                    exists().where(
                        WorkerHeartbeat.role == SWEEPER, WorkerHeartbeat.last_seen >= cutoff
                    )
                )
            )
        )


def sweep_if_alone() -> None:
    """A worker with no scheduler alive sweeps itself, so a lone `digits worker` recovers the
    chunks of a killed worker within one lease instead of never (embedded broker) or after
    Redis's visibility timeout. Several lone workers may sweep at once: a chunk re-sent twice
    is claimed once."""
    if sweeper_alive():
        return

    report = sweep()
    if report.requeued or report.resent or report.quarantined:
        log.info(
            "event=lone_sweep requeued=%s resent=%s quarantined=%s",
            report.requeued,
            report.resent,
            report.quarantined,
        )


def _loop(concurrency: int) -> None:
    next_sweep = 0.0
    while not _stop.wait(INTERVAL):
        try:
            beat_once(concurrency)
        except Exception as exc:  # a database outage must not kill the worker
            log.warning("heartbeat failed: %s", exc)
        if time.monotonic() < next_sweep:
            continue
        next_sweep = time.monotonic() + get_settings().sweep_seconds
        try:
            sweep_if_alone()
        except Exception as exc:  # the database or broker may be down: next time
            log.warning("lone-worker sweep failed: %s", exc)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    concurrency = int(getattr(getattr(sender, "controller", None), "concurrency", 0) or 0)
    try:
        beat_once(concurrency)
    except Exception as exc:
        log.warning("heartbeat failed: %s", exc)
    threading.Thread(target=_loop, args=(concurrency,), daemon=True, name="heartbeat").start()


@worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    """Leave the list of connected workers as soon as the stop signal arrives, not after the
    pool's drain: `digits run` no longer waits for its workers' shutdown, and a run started
    right after must start its own workers rather than count on this one. (In a thread: this
    runs inside the signal handler.)"""
    threading.Thread(target=_on_shutdown, name="heartbeat-gone", daemon=True).start()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    _stop.set()
    try:
        with session(write=True) as sess:
            sess.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.name == worker_name()))
    except Exception as exc:
        log.warning("could not remove heartbeat: %s", exc)
