"""`digits up`: scheduler + workers in the foreground; SIGTERM stops everything cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from digits.db import session
from digits.schema import Chunk, Item, Prediction
from worker.scan_synth import render_scan


def workers_of(home: Path) -> list[int]:
    """Worker processes (any pid) started for this DIGITS_HOME and still alive."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"digits.cli\x00worker" in cmd and f"DIGITS_HOME={home}".encode() in env:
            found.append(int(proc.name))
    return found


def test_up_scores_dropped_files_and_stops_cleanly_on_sigterm(
    backend: str, home: Path, sample_rows: list[str], tmp_path: Path
) -> None:
    log = tmp_path / "up.log"
    proc = subprocess.Popen([sys.executable, "-m", "digits.cli", "up", "--workers", "2"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=dict(os.environ), start_new_session=True)
    try:
        from digits.settings import get_settings

        inbox = get_settings().inbox_dir
        deadline = time.monotonic() + 60
        while not (inbox / "processing").is_dir() and time.monotonic() < deadline:
            time.sleep(0.2)
        rng = np.random.default_rng(3)
        for i, line in enumerate(sample_rows[1:9]):
            pixels = np.array(line.split(",")[1:], dtype=np.int64).astype(np.uint8)
            data, ext = render_scan(pixels, rng)
            tmp = inbox / f".up{i}.tmp"
            tmp.write_bytes(data)
            os.rename(tmp, inbox / f"up{i}{ext}")
        predicted = 0
        while predicted < 8 and time.monotonic() < deadline:
            with session() as sess:
                predicted = sess.scalar(select(func.count(Prediction.id))) or 0
            time.sleep(0.2)
        assert predicted == 8, log.read_text()[-3000:]
        assert workers_of(home), "the check below would be vacuous"
    finally:
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        stopped = time.monotonic() - started
    survivors = workers_of(home)
    print(f"digits up stopped {stopped:.1f} s after SIGTERM, exit code {code}")
    assert code == 0, log.read_text()[-3000:]
    assert stopped < 30 and survivors == []
    with session() as sess:
        assert sess.scalar(select(func.count()).select_from(Chunk)
                           .where(Chunk.state != "done")) == 0
        assert sess.scalar(select(func.count()).select_from(Item)
                           .where(Item.status == "pending")) == 0
    processed = [p for p in (inbox / "processed").rglob("*") if p.is_file()]
    assert len(processed) == 8
