"""Local worker processes for `digits run` and `digits up` (no servers needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


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
