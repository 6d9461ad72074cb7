"""Process identity and liveness, for leases and ingestion owners (``host:pid``).

Core-level and stdlib-only: the workers (chunk leases), the scheduler (who ingests a batch) and
the read queries (`digits status` telling a live ingestion from an interrupted one) all ask.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

HOST = socket.gethostname()


def this_process() -> str:
    """``host:pid`` of the calling process (a forked child gets its own)."""
    return f"{HOST}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (a PermissionError means it does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(owner: str | None, seen_at: datetime | None, within: float) -> bool:
    """Whether the ``host:pid`` owner of some work still runs: by its pid on this host; on
    another host (no way to ask), while it showed a sign of life ``within`` seconds."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host == HOST and pid.isdigit():
        return pid_alive(int(pid))
    if seen_at is None:
        return False
    if seen_at.tzinfo is None:  # SQLite hands back naive UTC
        seen_at = seen_at.replace(tzinfo=UTC)
    return seen_at > datetime.now(UTC) - timedelta(seconds=within)


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
