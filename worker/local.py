"""Local worker processes for `digits run` and `digits up` (no servers needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from digits.processes import pid_alive

__all__ = ["pid_alive", "start_workers", "stop_workers", "watch_parent"]


def watch_parent(parent: int, on_gone: Callable[[], None], every: float = 0.5) -> None:
    """Call ``on_gone`` once ``parent`` is no longer this process's parent (it died: the
    process was re-parented to init or a subreaper). A thread polling getppid() works for any
    way the parent ends, SIGKILL included, where an atexit hook or a signal handler in the
    parent cannot run; PR_SET_PDEATHSIG would fire on the death of the forking *thread*."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        on_gone()

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def start_workers(concurrency: int, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """One Celery worker (prefork parent + ``concurrency`` children) as a child process that
    shuts down (warm: the chunk in hand is finished) when this process dies, however."""
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "digits.cli", "worker", "--concurrency", str(concurrency),
         "--exit-with-parent", str(os.getpid())],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ}, start_new_session=True,
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
