"""`digits up`: scheduler + workers in the foreground; SIGTERM stops everything cleanly."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from digits.core.db import session
from digits.core.schema import Batch, Chunk, Item, Prediction
from digits.core.synthetic_scans import render_scan

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "digits.cli", "up", "--workers", "2"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ),
        start_new_session=True,
    )
    try:
        from digits.core.settings import get_settings

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
        assert (
            sess.scalar(select(func.count()).select_from(Chunk).where(Chunk.state != "done")) == 0
        )
        assert (
            sess.scalar(select(func.count()).select_from(Item).where(Item.status == "pending")) == 0
        )
    processed = [p for p in (inbox / "processed").rglob("*") if p.is_file()]
    assert len(processed) == 8


def test_a_missing_production_model_is_logged_once_and_the_drop_waits_for_the_fix(
    backend: str, sample_rows: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The production alias names a version that is gone: the scheduler says so in one line
    (not a traceback every 2 s), keeps the drop, and enqueues it once the alias is moved."""
    from digits.core.settings import get_settings
    from model_store.aliases import set_alias
    from model_store.registry import default_version, register
    from scheduler.service import run_scheduler

    bundled = default_version()
    gone = register(
        bundled.model_file,
        {k: v for k, v in bundled.card.items() if k not in ("sha256", "version")},
    )
    set_alias("production", gone.version, "release")
    shutil.rmtree(gone.path)
    caplog.set_level(logging.INFO, logger="digits.scheduler")
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler, args=(stop, False), daemon=True)
    thread.start()
    try:
        inbox = get_settings().inbox_dir
        deadline = time.monotonic() + 30
        while not inbox.is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        pixels = np.array(sample_rows[1].split(",")[1:], dtype=np.int64).astype(np.uint8)
        data, ext = render_scan(pixels, np.random.default_rng(0))
        (inbox / f".drop{ext}").write_bytes(data)
        os.rename(inbox / f".drop{ext}", inbox / f"drop{ext}")

        def failures() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "iteration failed" in r.getMessage()]

        while not failures() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(5)  # at least two more failed iterations (one every 2 s)
        assert len(failures()) == 1, [r.getMessage() for r in failures()]
        assert f"names version {gone.version}, which is not installed" in failures()[0].getMessage()
        assert failures()[0].exc_info is None
        with session() as sess:
            assert sess.scalar(select(func.count(Batch.id))) == 0
        set_alias("production", bundled.version, "fix")
        batches, fixed = 0, time.monotonic()
        while batches == 0 and time.monotonic() < fixed + 60:  # its own budget: a loaded CI
            with session() as sess:
                batches = sess.scalar(select(func.count(Batch.id))) or 0
            time.sleep(0.2)
        assert batches == 1, [r.getMessage() for r in caplog.records]
        with session() as sess:
            assert sess.scalar(select(Batch.model_version)) == bundled.version
        assert any("succeeded again" in r.getMessage() for r in caplog.records)
    finally:
        stop.set()
        thread.join(30)
