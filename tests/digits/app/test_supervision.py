"""`digits up` on the console (issue 21 item 9): one line per finished or failed batch, where
the logs are, and no library chatter (Alembic's INFO lines, kombu's hostname warning)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from digits.core.db import session, upgrade
from digits.core.schema import Chunk, utcnow
from scheduler.batches import enqueue_csv
from tests.conftest import write_csv


def test_each_finished_batch_is_announced_once(
    home: Path, tmp_path: Path, sample_rows: list[str]
) -> None:
    from digits.app.supervision import finished_lines
    from worker.chunks import process_chunk

    upgrade()
    since = utcnow() - timedelta(seconds=1)
    good = enqueue_csv(write_csv(tmp_path / "good.csv", sample_rows[:4]))
    bad = enqueue_csv(write_csv(tmp_path / "bad.csv", ["not,a,digits,header", "1,2,3,4"]))
    with session() as sess:
        ids = sess.scalars(select(Chunk.id).where(Chunk.batch_id == good.batch_id)).all()
    for chunk_id in ids:
        process_chunk(chunk_id)
    seen: set[int] = set()
    lines = finished_lines(since, seen)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"batch {good.batch_id} done: good.csv: 3 items, 0 errors, ")
    assert "flagged for review" in lines[0] and lines[0].endswith(" s")
    assert lines[1].startswith(f"batch {bad.batch_id} failed: bad.csv: "), lines[1]
    assert finished_lines(since, seen) == []  # once each


def scans(folder: Path, sample_rows: list[str], n: int) -> Path:
    from digits.core.synthetic_scans import render_scan

    folder.mkdir()
    rng = np.random.default_rng(3)
    for i, line in enumerate(sample_rows[1 : n + 1]):
        data, ext = render_scan(np.array(line.split(","), dtype=np.int64)[1:].astype(np.uint8), rng)
        (folder / f"scan{i}{ext}").write_bytes(data)
    return folder


@pytest.mark.slow
def test_up_prints_finished_batches_and_where_the_logs_are(
    home: Path, tmp_path: Path, sample_rows: list[str]
) -> None:
    env = {**os.environ, "DIGITS_INBOX_SETTLE_SECONDS": "0.5"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "digits.cli", "up", "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + 120
        dropped = False
        while time.monotonic() < deadline and not any(" done: " in line for line in lines):
            chunk = proc.stdout.readline()
            if chunk:
                lines.append(chunk.rstrip("\n"))
                continue
            if not dropped and any(line.startswith("digits up:") for line in lines):
                scans(tmp_path / "scans", sample_rows, 5).rename(home / "inbox" / "scans")
                dropped = True
            assert proc.poll() is None, "\n".join(lines)
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rest, _ = proc.communicate()
    lines += rest.splitlines()
    text = "\n".join(lines)
    banner = next(line for line in lines if line.startswith("digits up:"))
    assert f"logs in {home / 'logs'}" in banner, banner
    done = next(line for line in lines if " done: " in line)
    assert ": 5 items, 0 errors, " in done and "flagged for review" in done, text
    assert "alembic" not in text and "No hostname was supplied" not in text, text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _web_pid(parent: int) -> int | None:
    """The `digits web` child of ``parent``, by its command line (/proc)."""
    for pid in subprocess.run(
        ["pgrep", "-P", str(parent)], capture_output=True, text=True
    ).stdout.split():
        if b"\x00web\x00" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_up_web_serves_the_console_and_takes_it_down(home: Path, how: signal.Signals) -> None:
    """`digits up --web --web-port P`: the console answers on P with the scheduler and the
    workers; it stops with `up`, on Ctrl-C and even when `up` is killed (--exit-with-parent)."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "up",
            "--workers",
            "1",
            "--web",
            "--web-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    web_pid = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("the console did not answer")
        assert "<canvas" in httpx.get(f"http://127.0.0.1:{port}/draw").text
        web_pid = _web_pid(proc.pid)
        assert web_pid is not None
        os.kill(proc.pid, how)
        proc.wait(90)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{web_pid}").exists():
            status = Path(f"/proc/{web_pid}/status").read_text()
            if "State:\tZ" in status:
                break
            time.sleep(0.2)
        gone = (
            not Path(f"/proc/{web_pid}").exists()
            or "State:\tZ" in Path(f"/proc/{web_pid}/status").read_text()
        )
        assert gone, "digits web outlived digits up"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if web_pid and Path(f"/proc/{web_pid}").exists():
            os.kill(web_pid, signal.SIGKILL)


def test_up_web_refuses_a_public_address_without_a_token(home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", "up", "--web"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DIGITS_WEB_HOST": "0.0.0.0"},
    )
    assert result.returncode == 2
    assert "refusing to serve the console on 0.0.0.0 without a token" in result.stderr
    assert "Traceback" not in result.stderr
