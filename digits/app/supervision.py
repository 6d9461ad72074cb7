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
from pathlib import Path

from digits.core.settings import get_settings
from scheduler.service import install_stop_handlers, run_scheduler

log = logging.getLogger("digits.scheduler")


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
        env={**os.environ},
        start_new_session=True,
    )


def stop_workers(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Warm shutdown (SIGTERM: finish the current chunk), then SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def up(workers: int | None = None) -> None:
    """Scheduler + local workers in the foreground; restarts a worker that dies."""
    settings = get_settings()
    stop = threading.Event()
    install_stop_handlers(stop)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    proc = start_workers(workers or settings.workers, logs / "worker.log")

    def keep_workers() -> None:
        nonlocal proc
        while not stop.wait(2.0):
            if proc.poll() is not None:
                log.warning("worker exited (%s): restarting", proc.returncode)
                proc = start_workers(workers or settings.workers, logs / "worker.log")

    threading.Thread(target=keep_workers, daemon=True, name="keep-workers").start()
    try:
        run_scheduler(stop)
    finally:
        stop.set()
        stop_workers(proc, timeout=60)
