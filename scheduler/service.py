"""Service mode: the scheduler loop (inbox + sweeper + Celery beat) and `digits up`.

The loop runs in the main thread; Celery beat runs embedded in a thread and only publishes the
nightly export. Stopping (Ctrl-C / SIGTERM) finishes the current scan, stops beat, and, in
`digits up`, gives the local workers a warm shutdown so the chunk in hand is finished.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from digits.core.settings import get_settings
from model_store.registry import ModelError
from scheduler.inbox import Inbox
from worker import metrics
from worker.celery_app import TASK_EXPORT, sending_app
from worker.heartbeat import sweeper_beat, sweeper_gone
from worker.sweeper import sweep

log = logging.getLogger("digits.scheduler")


def beat_schedule() -> dict[str, Any]:
    """The nightly export: a crontab in the configured time zone, or every N s for tests."""
    from celery.schedules import crontab

    settings = get_settings()
    schedule: Any = settings.export_schedule_seconds or crontab(
        hour=settings.export_hour, minute=settings.export_minute
    )
    return {"nightly-export": {"task": TASK_EXPORT, "schedule": schedule}}


def start_beat() -> Any:
    """Celery beat embedded as a thread (it publishes; a worker runs the export)."""
    from celery.beat import EmbeddedService

    settings = get_settings()
    app = sending_app()
    app.conf.beat_schedule = beat_schedule()
    app.conf.timezone = settings.export_timezone
    state = settings.home.resolve() / "beat-schedule"
    state.parent.mkdir(parents=True, exist_ok=True)
    service = EmbeddedService(app, thread=True, schedule_filename=str(state))
    service.start()
    return service


def watch(root: Path, wake: threading.Event, inbox: Inbox | None = None) -> Any:
    """Filesystem events (watchdog) only shorten the wait; the poll is the source of truth.
    A close-write (inotify IN_CLOSE_WRITE), or a rename into the inbox, tells it a writer
    finished a file: the fast path that lets it claim the file without waiting out the
    settle time."""
    try:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if inbox is not None and not event.is_directory:
                    if event.event_type == "closed":  # written and closed
                        inbox.note_closed(Path(str(event.src_path)))
                    elif event.event_type == "moved":  # renamed into place: complete
                        inbox.note_closed(Path(str(event.dest_path)))
                wake.set()

        observer = Observer()
        observer.schedule(Handler(), str(root), recursive=False)
        observer.daemon = True
        observer.start()
        return observer
    except Exception as exc:  # no inotify (some volumes): polling alone still works
        log.warning("filesystem events unavailable, polling only: %s", exc)
        return None


def run_scheduler(stop: threading.Event, beat: bool = True) -> None:
    """Scan the inbox, sweep leases, file failures, until ``stop`` is set."""

    settings = get_settings()
    inbox = Inbox(settings.inbox_dir, settings.inbox_settle_seconds)
    for done in inbox.reconcile():
        log.info("recovered drop %s as batch %s", done.drop, done.batch_id)
    wake = threading.Event()
    observer = watch(inbox.root, wake, inbox)
    service = start_beat() if beat else None
    metrics.serve("scheduler")  # only when DIGITS_METRICS_PORT is set
    next_sweep = 0.0
    failing: str | None = None  # the error the last iteration failed with, if it failed
    log.info("scheduler watching %s", inbox.root)
    try:
        while not stop.is_set():
            try:
                inbox.scan()  # logs event=drop_enqueued per batch
                if time.monotonic() >= next_sweep:
                    sweeper_beat()  # workers sweep themselves only when this goes stale
                    sweep()
                    inbox.file_failures()
                    next_sweep = time.monotonic() + settings.sweep_seconds
                metrics.update_queue_gauges()
                if failing is not None:
                    log.info("scheduler iteration succeeded again after: %s", failing)
                    failing = None
            except Exception as exc:  # the database or broker may be down: log, wait, go on
                failing = _log_failure(exc, failing)
                stop.wait(2.0)
            # an event wakes the loop early; the scan itself decides what is complete
            wake.wait(settings.inbox_poll_seconds)
            if wake.is_set():
                wake.clear()
                stop.wait(0.1)  # let a burst of events land in one scan
    finally:
        sweeper_gone()
        if observer is not None:
            observer.stop()
        if service is not None:
            service.stop()
        metrics.stop()


def _log_failure(exc: Exception, previous: str | None) -> str:
    """Log a failed scheduler iteration once, not every 2 s while the cause lasts (a database
    that is down, a production alias naming a missing model); returns the error's text.
    A ``ModelError`` already says what is wrong and how to fix it: one line, no traceback."""
    text = f"{type(exc).__name__}: {exc}"
    if text != previous:
        if isinstance(exc, ModelError):
            log.error("scheduler iteration failed; retrying every 2 s until fixed: %s", exc)
        else:
            log.exception("scheduler iteration failed; retrying every 2 s")
    return text


def install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
