"""Local worker processes for `digits run`, and `digits up`: the scheduler and its workers
in one foreground process tree (no servers needed)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from digits.core.queries import BatchProgress, batch_progress, finished_since
from digits.core.schema import utcnow
from digits.core.settings import get_settings
from scheduler.service import install_stop_handlers, run_scheduler

log = logging.getLogger("digits.scheduler")


def plural(n: int, word: str) -> str:
    """``1 item``, ``2 items``, ``1,234 errors``: a summary a person reads."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def start_workers(concurrency: int, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """One Celery worker (prefork parent + ``concurrency`` children) as a child process that
    shuts down (warm: the chunk in hand is finished) when this process dies, however."""
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "worker",
            "--concurrency",
            str(concurrency),
            "--exit-with-parent",
            str(os.getpid()),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        # the worker shares the cores between its own processes (threads per process)
        env={**os.environ, "DIGITS_WORKERS": str(concurrency)},
        start_new_session=True,
    )


def start_web(port: int | None = None, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """The web console (`digits web`) as a child process that stops when this process dies,
    however (`digits up --web`). It listens where DIGITS_WEB_HOST says (127.0.0.1 unless set)."""
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    port_args = ["--port", str(port)] if port else []
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "web",
            *port_args,
            "--exit-with-parent",
            str(os.getpid()),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ},
        start_new_session=True,
    )


def stop_workers(proc: subprocess.Popen[bytes], timeout: float = 30.0, wait: bool = True) -> None:
    """Warm shutdown (SIGTERM: finish the current chunk), then SIGKILL if it hangs. Without
    ``wait`` only the signal: the worker finishes shutting down alone (and exits anyway once
    its starter is gone, ``--exit-with-parent``), for a caller whose work is all committed."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def finished_line(b: BatchProgress) -> str:
    """One line for a batch that has just finished: what `digits up` prints for it."""
    name = Path(b.source).name
    if b.status == "failed":
        return f"batch {b.batch_id} failed: {name}: {b.error or 'no reason recorded'}"
    counts = (
        f"{plural(b.items, 'item')}, {plural(b.errors, 'error')}, {b.flagged} flagged for review"
    )
    if b.duplicates:
        counts += f", {plural(b.duplicates, 'duplicate')}"
    return f"batch {b.batch_id} {b.status}: {name}: {counts}, {b.seconds or 0:.1f} s"


def finished_lines(since: datetime, seen: set[int]) -> list[str]:
    """A line for each batch finished since ``since`` not in ``seen`` (which then holds it)."""
    fresh = [i for i in finished_since(since) if i not in seen]
    if not fresh:
        return []
    seen.update(fresh)
    return [finished_line(b) for b in batch_progress(fresh)]


def watch_batches(stop: threading.Event, announce: Callable[[str], None]) -> None:
    """Announce every batch that finishes from now on, once (batches finished before start,
    allowing a minute of clock skew between hosts, are never announced)."""
    since = utcnow() - timedelta(minutes=1)
    seen: set[int] = set()
    try:
        seen.update(finished_since(since))
    except Exception as exc:  # the database briefly down: the loop retries
        log.warning("cannot read finished batches, will retry: %s", exc)
    while not stop.wait(1.0):
        try:
            lines = finished_lines(since, seen)
        except Exception as exc:
            log.warning("cannot read finished batches, will retry: %s", exc)
            continue
        for line in lines:
            announce(line)


def up(
    workers: int | None = None,
    announce: Callable[[str], None] | None = None,
    web: bool = False,
    web_port: int | None = None,
) -> None:
    """Scheduler + local workers in the foreground; restarts a worker that dies; says each
    batch that finishes through ``announce`` (default: the log). With ``web`` also the web
    console (a child `digits web`, its log in ``logs/web.log``; not restarted: a console that
    cannot listen would fail again)."""
    settings = get_settings()
    stop = threading.Event()
    install_stop_handlers(stop)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    proc = start_workers(workers or settings.workers, logs / "worker.log")
    console = start_web(web_port, logs / "web.log") if web else None
    threading.Thread(
        target=watch_batches, args=(stop, announce or log.info), daemon=True, name="batches"
    ).start()

    def keep_workers() -> None:
        nonlocal proc, console
        while not stop.wait(2.0):
            if proc.poll() is not None:
                log.warning("worker exited (%s): restarting", proc.returncode)
                proc = start_workers(workers or settings.workers, logs / "worker.log")
            if console is not None and console.poll() is not None:
                log.warning("web console exited (%s): see %s", console.returncode, logs / "web.log")
                console = None

    threading.Thread(target=keep_workers, daemon=True, name="keep-workers").start()
    try:
        run_scheduler(stop)
    finally:
        stop.set()
        if console is not None:
            stop_workers(console, timeout=10)
        stop_workers(proc, timeout=60)
