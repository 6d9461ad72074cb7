"""The Celery app's embedded (filesystem) broker set-up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BIND = """
import sys, time
from kombu import Exchange, Queue
from worker.celery_app import make_app
app = make_app()
with app.connection_for_write() as conn:
    conn.default_channel
    time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all bind at the same instant
    Queue(f"q{sys.argv[1]}", Exchange("celery.pidbox", "fanout"))(conn.default_channel).declare()
"""


PROCESSES = 8  # without the fix, 2 of 3 runs at this count lost a process or a binding


def test_processes_binding_at_once_on_the_embedded_broker_all_start(home: Path) -> None:
    """Several processes binding queues to one exchange at the same moment (workers started
    together bind their remote-control queues) all succeed and all bindings are kept: kombu
    alone created the table non-atomically, and a worker read it empty and died."""
    at = str(time.time() + 5)  # after every process has imported kombu and connected
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BIND, str(i), at], stderr=subprocess.PIPE, text=True
        )
        for i in range(PROCESSES)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * PROCESSES, "\n".join(errors)[-3000:]
    table = json.loads((home / "broker" / "control" / "celery.pidbox.exchange").read_text())
    assert sorted(q for _, _, q in table) == sorted(f"q{i}" for i in range(PROCESSES))
