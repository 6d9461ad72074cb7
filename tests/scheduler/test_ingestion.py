"""Interrupted ingestion: never shown as complete, resumable from where it stopped, or
cancelled; a broker lost while enqueueing costs time, never rows; a truncated file leaves
nothing queued. Real `digits` processes, real signals, a real Redis killed and restarted."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from digits.app.runner import wait_for
from digits.core.db import session, sqlite_file
from digits.core.queries import batch_progress
from digits.core.schema import Batch, Chunk, Item
from scheduler.batches import enqueue_csv
from tests.conftest import write_csv
from tests.faultkit import (
    PrivateRedis,
    chunk_states,
    outcome,
    reload_settings,
    report,
    setup_backend,
    wait_until,
)
from worker.sweeper import sweep

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow

ROWS = 16_000  # 80 chunks of 200 rows: ingestion takes long enough to be interrupted


@pytest.fixture(params=["embedded", "services"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """embedded (SQLite + filesystem broker) or services (PostgreSQL + a private Redis)."""
    kind = setup_backend(request.param, request, monkeypatch)  # (clears DIGITS_* first)
    small_chunks_short_leases(monkeypatch)
    return kind


def small_chunks_short_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITS_CHUNK_SIZE", "200")
    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "6")
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", "5")
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    reload_settings()


def big_csv(folder: Path, sample_rows: list[str], rows: int = ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = sample_rows[1:] * (rows // (len(sample_rows) - 1))
    return write_csv(folder / "big.csv", sample_rows[:1] + body)


def cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    """`digits ARGS` as a terminal's foreground job: Ctrl-C (SIGINT) reaches it even when
    this test process was started in the background, where the shell set SIGINT to ignored
    and every child inherits that (the pytest started by `.ci/run` or by `nohup … &` does; the
    SIGINT test then saw its run ignore the signal and finish)."""
    return subprocess.Popen(
        [sys.executable, "-m", "digits.cli", *args],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )  # type: ignore[call-overload]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=timeout,
    )


def the_batch() -> int:
    with session() as sess:
        return int(sess.scalar(select(func.max(Batch.id))) or 0)


def ingested_chunks() -> int:
    """Chunks of the newest batch so far, read without waiting on SQLite's busy timeout
    (60 s): a poll stuck behind the writers once saw the chunks only after the whole run had
    ended, so the signal meant for ingestion came too late (a CI run). A busy poll fails
    fast and the next one tries again."""
    path = sqlite_file()
    if path is None:
        return chunks_of(the_batch())
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.2)) as db:
        row = db.execute(
            "SELECT count(*) FROM chunks WHERE batch_id = (SELECT max(id) FROM batches)"
        ).fetchone()
    return int(row[0])


def chunks_of(batch_id: int) -> int:
    with session() as sess:
        return int(
            sess.scalar(select(func.count()).select_from(Chunk).where(Chunk.batch_id == batch_id))
            or 0
        )


def positions_are_whole(batch_id: int, rows: int) -> bool:
    with session() as sess:
        positions = sess.scalars(select(Item.position).where(Item.batch_id == batch_id)).all()
    return sorted(positions) == list(range(1, rows + 1))


def test_sigkill_mid_ingest_is_interrupted_not_done_and_resume_finishes_it(
    backend: str,
    sample_rows: list[str],
    tmp_path: Path,
    worker_factory: type,
) -> None:
    """`digits enqueue` SIGKILLed half-way through a 40,000-row CSV. Before: the batch stayed
    `enqueueing` for good with the rows read so far, and status showed their share done.
    Now: status says "interrupted" with the rows in so far; `digits resume` reads the rest
    (skipping what was committed) and workers score every row exactly once."""
    source = big_csv(tmp_path / "in", sample_rows)
    proc = cli("enqueue", str(source))
    wait_until(lambda: ingested_chunks() >= 10, 120, what="10 chunks ingested")
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    batch_id = the_batch()
    [state] = batch_progress([batch_id])
    at_kill = state.items
    assert 0 < at_kill < ROWS
    assert (state.status, state.ingest, state.finished) == ("enqueueing", "interrupted", False)
    shown = json.loads(run_cli("status", "--batch", str(batch_id), "--json").stdout)
    [row] = shown["batches"]
    assert row["ingest"] == "interrupted" and row["progress"] == f"{at_kill:,} rows in"
    table = run_cli("status").stdout
    assert f"digits resume {batch_id}" in table and "100%" not in table
    started = time.monotonic()
    resumed = run_cli("resume", str(batch_id), "--quiet")
    resume_seconds = time.monotonic() - started
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed after row {at_kill:,}" in resumed.stdout
    assert positions_are_whole(batch_id, ROWS)
    again = run_cli("resume", str(batch_id))
    assert again.returncode == 1 and "nothing to resume" in again.stderr
    worker = worker_factory()
    worker.wait_ready()
    started = time.monotonic()
    [state] = wait_for([batch_id], timeout=240)
    assert state.status == "done", worker.tail()
    figures = outcome([batch_id])
    assert (figures["items"], figures["predicted"], figures["lost"], figures["duplicates"]) == (
        ROWS,
        ROWS,
        0,
        0,
    )
    report(
        f"sigkill_enqueue_then_resume[{backend}]",
        rows=ROWS,
        ingested_at_kill=at_kill,
        resume_seconds=round(resume_seconds, 1),
        scored_seconds=round(time.monotonic() - started, 1),
        lost=0,
        duplicates=0,
    )


def test_sigint_of_digits_run_says_what_it_leaves_and_cancel_stops_it(
    backend: str,
    sample_rows: list[str],
    tmp_path: Path,
) -> None:
    """Ctrl-C (SIGINT) of `digits run` while it ingests: exit 130, no traceback, one line per
    batch left with the commands that finish or drop it; `digits cancel` then stops the batch:
    no chunk left queued or running, every item predicted or with its reason."""
    source = big_csv(tmp_path / "in", sample_rows, 100_000)  # long enough to interrupt under load
    proc = cli("run", str(source), "--quiet")
    waited = wait_until(lambda: ingested_chunks() >= 10, 180, what="10 chunks ingested")
    assert proc.poll() is None, f"the run ended before it was interrupted ({waited:.1f} s)"
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=90)
    batch_id = the_batch()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"`digits resume {batch_id}` finishes it, `digits cancel {batch_id}` drops it" in err
    [state] = batch_progress([batch_id])
    assert state.ingest == "interrupted"  # released at once, not after a lease
    cancelled = run_cli("cancel", str(batch_id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"batch {batch_id} cancelled (was enqueueing)" in cancelled.stdout
    [state] = batch_progress([batch_id])
    assert state.status == "cancelled" and state.finished
    assert set(chunk_states(batch_id)) <= {"done", "cancelled"}
    figures = outcome([batch_id])
    assert figures["lost"] == 0 and figures["duplicates"] == 0
    assert figures["predicted"] + figures["errors"] == figures["items"]
    with session() as sess:
        reasons = set(sess.scalars(select(Item.status).where(Item.batch_id == batch_id)))
    assert reasons <= {"predicted", "error"}
    again = run_cli("cancel", str(batch_id))
    assert again.returncode == 1 and "already cancelled" in again.stderr
    report(
        f"sigint_run_then_cancel[{backend}]",
        items=figures["items"],
        predicted=figures["predicted"],
        cancelled_items=figures["errors"],
        lost=0,
        duplicates=0,
    )


def test_redis_killed_while_enqueueing_loses_no_row(
    sample_rows: list[str],
    tmp_path: Path,
    worker_factory: type,
    home: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-persistent Redis SIGKILLed while `digits enqueue` streams, back 3 s later.
    Before: rc 1 with a kombu traceback, the batch stuck `enqueueing` with the rows read so
    far. Now: ingestion goes on (the database is the truth), the enqueue ends normally, the
    sweeper sends what was never sent or was lost, every row is scored exactly once."""
    setup_backend("services", request, monkeypatch)
    small_chunks_short_leases(monkeypatch)
    broker: PrivateRedis = request.node.private_redis
    source = big_csv(tmp_path / "in", sample_rows)
    proc = cli("enqueue", str(source))
    wait_until(lambda: ingested_chunks() >= 10, 120, what="10 chunks ingested")
    broker.kill()
    killed_at_chunks = chunks_of(the_batch())
    time.sleep(3)
    broker.start()
    out, err = proc.communicate(timeout=180)
    batch_id = the_batch()
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and out.strip() == str(batch_id)
    assert positions_are_whole(batch_id, ROWS)
    [state] = batch_progress([batch_id])
    assert state.status == "running"
    worker = worker_factory()
    worker.wait_ready()
    started = time.monotonic()
    [state] = wait_for([batch_id], timeout=240)  # sweeps, as `digits run` does
    assert state.status == "done", worker.tail()
    figures = outcome([batch_id])
    assert (figures["predicted"], figures["lost"], figures["duplicates"]) == (ROWS, 0, 0)
    report(
        "redis_killed_while_enqueueing",
        rows=ROWS,
        chunks_at_kill=killed_at_chunks,
        enqueue_rc=proc.returncode,
        scored_seconds=round(time.monotonic() - started, 1),
        lost=0,
        duplicates=0,
    )


def test_a_truncated_gzip_fails_its_batch_and_leaves_nothing_queued(
    backend: str,
    sample_rows: list[str],
    tmp_path: Path,
) -> None:
    """A gzip cut at 60 %: the rows before the cut were ingested (and sent) before the file
    turned out broken. Before: 12 chunks stayed queued inside a failed batch. Now the batch
    fails with the reason, its chunks are cancelled, its items carry the reason."""
    plain = big_csv(tmp_path / "in", sample_rows, 10_000).read_bytes()
    packed = gzip.compress(plain)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(packed[: len(packed) * 6 // 10])
    done = enqueue_csv(cut)
    assert done.failed and "unreadable compressed file" in done.failed
    [state] = batch_progress([done.batch_id])
    assert state.status == "failed" and state.items > 0
    assert set(chunk_states(done.batch_id)) == {"cancelled"}
    sweep()  # nothing of a failed batch is sent again
    assert set(chunk_states(done.batch_id)) == {"cancelled"}
    figures = outcome([done.batch_id])
    assert figures["lost"] == 0 and figures["errors"] == figures["items"]
