"""Local workers started by `digits run` and `digits up` die with the process that started
them, however it ends: no orphaned worker keeps ~2 GB and both cores busy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_csv

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("command", ["run", "up"])
def test_local_workers_die_with_their_starter_when_it_is_sigkilled(
    command: str, backend: str, sample_rows: list[str], tmp_path: Path, home: Path
) -> None:
    """SIGKILL of `digits run` (mid-batch) or `digits up`: its worker (Celery parent and
    prefork children) exits within seconds. Before: the worker and its two children lived on
    under PID 1."""
    source = write_csv(tmp_path / "big.csv", sample_rows[:1] + sample_rows[1:] * 200)  # 40,000
    env = {
        **os.environ,
        "DIGITS_CHUNK_SIZE": "100",
        "DIGITS_TF_THREADS": "1",
        "DIGITS_INBOX": str(tmp_path / "inbox"),
    }
    args = ["run", str(source), "--quiet"] if command == "run" else ["up", "--workers", "2"]
    starter = subprocess.Popen(
        [sys.executable, "-m", "digits.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    tree: list[int] = []
    while time.monotonic() < deadline:  # a worker with its prefork children is up
        tree = descendants(starter.pid)
        if len(tree) >= 3:
            break
        assert starter.poll() is None, "the starter ended before its workers were up"
        time.sleep(0.5)
    assert len(tree) >= 3, tree
    time.sleep(8)  # scoring (run) or idle (up): its children have loaded the model
    tree = descendants(starter.pid)
    assert starter.poll() is None, "the run finished before it could be killed: a bigger input"
    os.kill(starter.pid, signal.SIGKILL)
    starter.wait()
    killed = time.monotonic()
    while time.monotonic() - killed < 60 and any(alive(p) for p in tree):
        time.sleep(0.2)
    left = [p for p in tree if alive(p)]
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(tree)} worker processes outlived `digits {command}`"
    print(
        f"[{backend}] digits {command} SIGKILLed: {len(tree)} worker processes gone in "
        f"{time.monotonic() - killed:.1f} s"
    )
