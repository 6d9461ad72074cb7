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


def started_at() -> float:
    """When this process started (epoch seconds), from the kernel: a command's own start-up
    (the interpreter, imports) counts in the phases it reports, which a clock started in
    ``main`` would miss. Linux /proc; elsewhere the time of this module's import."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat(5): starttime, clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])  # seconds since boot, to 10 ms
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


def tree_peak_rss(pid: int) -> dict[int, int]:
    """Peak resident memory (KiB, the kernel's VmHWM) of ``pid`` and every live process
    below it, by pid: what a worker (its prefork parent and each child) has held at most so
    far. Linux /proc; empty elsewhere or once the process is gone."""
    children: dict[int, list[int]] = {}
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return {}
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(entry)
    peaks: dict[int, int] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                line = next(x for x in f if x.startswith("VmHWM:"))
            peaks[current] = int(line.split()[1])
        except (OSError, StopIteration, ValueError, IndexError):
            continue
        todo.extend(children.get(current, []))
    return peaks
