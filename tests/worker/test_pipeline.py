"""The pipeline end to end with a real Celery worker process, on both deployments."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from digits.app.runner import wait_for
from digits.core.db import session
from digits.core.schema import Chunk, Item, ItemError, Prediction
from scheduler.batches import enqueue_csv
from scheduler.export import ExportError, export_batch
from tests.conftest import write_csv


def prediction_counts(batch_id: int) -> dict[int, int]:
    """item id → number of predictions (every item listed, 0 when it has none)."""
    with session() as sess:
        rows = sess.execute(
            select(Item.id, func.count(Prediction.id))
            .outerjoin(Prediction, Prediction.item_id == Item.id)
            .where(Item.batch_id == batch_id)
            .group_by(Item.id)
        ).all()
    return {item_id: n for item_id, n in rows}


def test_csv_batch_scored_with_errors_recorded(
    backend: str, worker_factory: type, sample_rows: list[str], tmp_path: Path
) -> None:
    lines = sample_rows[:101]
    lines.insert(10, "3," + ",".join(["0"] * 783))  # too few fields: data row 10
    lines.insert(50, "7," + ",".join(["300"] * 784))  # out of range: data row 50
    source = write_csv(tmp_path / "mixed.csv", lines)
    worker = worker_factory()
    done = enqueue_csv(source, chunk_size=25)
    assert (done.items, done.errors, done.chunks) == (102, 2, 5)
    worker.wait_ready()
    [state] = wait_for([done.batch_id], timeout=120)
    assert state.status == "done", worker.tail()
    assert (state.predicted, state.errors, state.pending) == (100, 2, 0)
    counts = prediction_counts(done.batch_id)
    assert len(counts) == 102
    assert sorted(counts.values()) == [0, 0] + [1] * 100
    assert state.correct / state.labelled >= 0.95
    with session() as sess:
        reasons = sess.execute(
            select(Item.position, ItemError.reason)
            .join(ItemError, ItemError.item_id == Item.id)
            .where(Item.batch_id == done.batch_id)
            .order_by(Item.position)
        ).all()
        probs = sess.execute(
            select(
                Prediction.p0
                + Prediction.p1
                + Prediction.p2
                + Prediction.p3
                + Prediction.p4
                + Prediction.p5
                + Prediction.p6
                + Prediction.p7
                + Prediction.p8
                + Prediction.p9,
                Prediction.confidence,
                Prediction.margin,
            )
        ).all()
    assert [tuple(r) for r in reasons] == [
        (10, "row 10: expected 785 fields, got 784"),
        (50, "row 50: pixel0 out of range 0–255: 300"),
    ]
    assert all(
        abs(total - 1) < 1e-4 and 0 < conf <= 1 and 0 <= margin <= conf
        for total, conf, margin in probs
    )
    with pytest.raises(ExportError, match="2 ImageIds have no label"):
        export_batch(done.batch_id, tmp_path / "sub.csv")
    path, rows, _ = export_batch(done.batch_id, tmp_path / "sub.csv", partial=True)
    assert rows == 100 and path.read_text().startswith("ImageId,Label\n1,")


def test_export_is_valid_atomic_and_byte_identical(
    backend: str, worker_factory: type, sample_rows: list[str], tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "clean.csv", sample_rows)
    worker = worker_factory()
    done = enqueue_csv(source, chunk_size=64)
    worker.wait_ready()
    wait_for([done.batch_id], timeout=120)
    first, rows, sha1 = export_batch(done.batch_id, tmp_path / "a" / "submission.csv")
    second, _, sha2 = export_batch(done.batch_id, tmp_path / "b" / "submission.csv")
    lines = first.read_text().splitlines()
    assert rows == 200 and lines[0] == "ImageId,Label"
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(1, 201))
    assert {line.split(",")[1] for line in lines[1:]} <= set("0123456789")
    assert first.read_bytes() == second.read_bytes() and sha1 == sha2
    assert [p.name for p in first.parent.iterdir()] == ["submission.csv"]  # no temp file left


def test_redelivered_chunk_changes_nothing(
    backend: str, worker_factory: type, sample_rows: list[str], tmp_path: Path
) -> None:
    from worker.chunks import process_chunk

    source = write_csv(tmp_path / "clean.csv", sample_rows[:51])
    worker = worker_factory()
    done = enqueue_csv(source, chunk_size=25)
    worker.wait_ready()
    wait_for([done.batch_id], timeout=120)
    with session() as sess:
        chunk_ids = sess.scalars(select(Chunk.id).where(Chunk.batch_id == done.batch_id)).all()
    assert [process_chunk(c) for c in chunk_ids] == ["skipped", "skipped"]
    assert set(prediction_counts(done.batch_id).values()) == {1}


def test_worker_child_killed_mid_run_leaves_exactly_one_prediction(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL a prefork child while it holds a chunk: the chunk is redelivered and finished."""
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    source = write_csv(tmp_path / "big.csv", sample_rows[:1] + sample_rows[1:] * 40)  # 8,000
    worker = worker_factory()
    worker.wait_ready()
    done = enqueue_csv(source, chunk_size=1000)
    # A 1,000-row chunk is scored in about 0.1 s on the int8 path, so a child read as the
    # holder of a running chunk may have committed it (and be idle) by the time it is killed:
    # then nothing is redelivered. Kill until a child dies holding one (its chunk is still
    # "running" after the kill), and follow that chunk.
    held = None
    for _ in range(5):
        chunk_id, victim = running_chunk(done.batch_id)
        assert victim in worker.children(), (victim, worker.children(), worker.tail())
        os.kill(victim, signal.SIGKILL)
        with session() as sess:
            if sess.scalar(select(Chunk.state).where(Chunk.id == chunk_id)) == "running":
                held = chunk_id
                break
    assert held is not None, "no child was killed while it held a chunk, in 5 tries"
    [state] = wait_for([done.batch_id], timeout=180)
    assert state.status == "done", worker.tail()
    counts = prediction_counts(done.batch_id)
    assert len(counts) == 8000 and set(counts.values()) == {1}
    with session() as sess:
        attempts = sess.scalar(select(Chunk.attempts).where(Chunk.id == held))
        assert attempts is not None and attempts >= 2  # the killed chunk was claimed again


def running_chunk(batch_id: int, timeout: float = 60) -> tuple[int, int]:
    """A chunk of the batch being scored now, and the pid of the child holding it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session() as sess:
            row = sess.execute(
                select(Chunk.id, Chunk.lease_owner)
                .where(Chunk.batch_id == batch_id, Chunk.state == "running")
                .limit(1)
            ).first()
        if row is not None and row.lease_owner:
            return int(row.id), int(row.lease_owner.rsplit(":", 1)[1])
        time.sleep(0.01)
    raise AssertionError(f"no chunk of batch {batch_id} running within {timeout:.0f} s")
