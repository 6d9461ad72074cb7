"""Faults: whole worker killed, the same chunk twice at once, a poison chunk."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from digits.app.runner import wait_for
from digits.core.db import session
from digits.core.schema import Batch, Chunk
from scheduler.batches import enqueue_csv
from tests.conftest import write_csv
from tests.worker.test_pipeline import prediction_counts

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow


def test_whole_worker_killed_then_restarted_completes(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL the worker and all its children: in-flight messages may be lost for good (the
    embedded broker) or held until the visibility timeout (Redis). Leases in the database and
    the sweeper bring every chunk back; recovery takes about one lease."""
    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "6")
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", "5")  # the lease must outlive it
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    from digits.core.settings import get_settings

    get_settings.cache_clear()
    source = write_csv(tmp_path / "big.csv", sample_rows[:1] + sample_rows[1:] * 30)  # 6,000
    batch_id, killed_at = _kill_mid_batch(worker_factory, source)
    second = worker_factory()
    [state] = wait_for([batch_id], timeout=180)
    recovery = time.monotonic() - killed_at
    assert state.status == "done", second.tail()
    counts = prediction_counts(batch_id)
    assert len(counts) == 6000 and set(counts.values()) == {1}
    assert recovery < 60, f"recovery took {recovery:.1f} s"
    print(f"[{backend}] whole-worker kill: 0 lost, 0 duplicates, recovered in {recovery:.1f} s")


def test_same_chunk_twice_at_once_writes_once(
    backend: str, sample_rows: list[str], tmp_path: Path
) -> None:
    """Two processes (here: threads with their own connections) score one chunk together."""
    from worker.chunks import claim, write_results

    source = write_csv(tmp_path / "small.csv", sample_rows[:41])
    done = enqueue_csv(source, chunk_size=40)
    with session() as sess:
        chunk_id = sess.scalar(select(Chunk.id).where(Chunk.batch_id == done.batch_id))
    assert chunk_id is not None
    found = claim(chunk_id)
    assert found is not None
    # the lease holder (this process) is alive, so another process's claim is refused ...
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from worker.chunks import process_chunk; print(process_chunk({chunk_id}))",
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert other.stdout.strip() == "skipped", other.stderr[-2000:]
    # ... and two writers racing on the same results both finish, one row per item
    rows = [
        {
            "item_id": i,
            "model_version": found.model_version,
            "label": 1,
            "confidence": 0.5,
            "margin": 0.1,
            "needs_review": True,
            **{f"p{k}": 0.1 for k in range(10)},
        }
        for i in range(1, 41)
    ]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            write_results(found, rows, [])
        except BaseException as exc:  # the test reports any escape
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert set(prediction_counts(done.batch_id).values()) == {1}
    with session() as sess:
        assert sess.scalar(select(Batch.status).where(Batch.id == done.batch_id)) == "done"


def test_poison_chunk_is_quarantined_and_the_rest_goes_on(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk whose input kills its worker every time: quarantined after N attempts."""
    monkeypatch.setenv("DIGITS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "6")
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", "5")  # the lease must outlive it
    from digits.core.settings import get_settings

    get_settings.cache_clear()
    source = write_csv(tmp_path / "poison.csv", sample_rows[:61])
    done = enqueue_csv(source, chunk_size=20)
    with session() as sess:
        poison = sess.scalars(
            select(Chunk).where(Chunk.batch_id == done.batch_id, Chunk.seq == 2)
        ).one()
        ref = poison.ref
    staged = get_settings().staging_dir / ref
    staged.write_bytes(b"not an array")  # every attempt to read it fails
    worker = worker_factory()
    worker.wait_ready()
    [state] = wait_for([done.batch_id], timeout=120)
    assert state.status == "done"
    assert (state.predicted, state.errors) == (40, 20)
    with session() as sess:
        chunk = sess.get_one(Chunk, poison.id)
        assert chunk.state == "quarantined" and chunk.attempts == 2
        assert "failed 2 attempts" in (chunk.error or "")
    assert set(prediction_counts(done.batch_id).values()) == {0, 1}


def _kill_mid_batch(worker_factory: type, source: Path) -> tuple[int, float]:
    """Start a worker, enqueue, SIGKILL the whole worker once a chunk runs and one is done."""
    first = worker_factory()
    first.wait_ready()
    done = enqueue_csv(source, chunk_size=500)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session() as sess:
            states = sess.scalars(select(Chunk.state).where(Chunk.batch_id == done.batch_id)).all()
        if "running" in states and "done" in states:
            break
        time.sleep(0.02)
    first.kill_all()
    return done.batch_id, time.monotonic()


def test_a_lone_worker_sweeps_and_recovers_within_the_lease(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A whole worker SIGKILLed mid-batch, then a new `digits worker` with no scheduler and no
    `digits run` (nothing else sweeps; this test only reads). Before: its chunks stayed
    ``running`` for good on the embedded broker (100 s seen) and until Redis's 300-s
    visibility timeout on Redis. Now the worker sweeps when no scheduler heartbeat is fresh."""
    from digits.core.queries import batch_progress

    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "6")
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", "5")
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    from digits.core.settings import get_settings

    get_settings.cache_clear()
    source = write_csv(tmp_path / "big.csv", sample_rows[:1] + sample_rows[1:] * 30)  # 6,000
    batch_id, killed_at = _kill_mid_batch(worker_factory, source)
    second = worker_factory()
    deadline = killed_at + 90
    while time.monotonic() < deadline:
        [state] = batch_progress([batch_id])
        if state.finished:
            break
        time.sleep(0.5)
    recovery = time.monotonic() - killed_at
    assert state.status == "done", f"not done after {recovery:.0f} s: {second.tail()}"
    counts = prediction_counts(batch_id)
    assert len(counts) == 6000 and set(counts.values()) == {1}
    assert recovery < 45, f"recovery took {recovery:.1f} s"
    print(
        f"[{backend}] lone worker: 0 lost, 0 duplicates, done {recovery:.1f} s after the kill "
        "(lease 6 s)"
    )
