"""Completing a batch when two transactions each finish part of it at once, on PostgreSQL.

READ COMMITTED lets each of two concurrent transactions miss the other's uncommitted change;
the state machine must still complete the batch the moment the later one commits, not at the
next sweep. The two transactions are interleaved by hand on two real connections, in the one
order that used to leave the batch "running" with every chunk done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select, update

from digits.core.db import session, upgrade
from digits.core.schema import Batch, Chunk
from digits.core.state_machine import complete_batch_if_finished, settle_batch
from scheduler.batches import finish_enqueue
from tests.conftest import reset_caches


@pytest.fixture
def on_postgres(home: object, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DIGITS_DATABASE_URL", pg_url)
    reset_caches()
    upgrade()
    yield
    reset_caches()


def make_batch(status: str, chunk_states: list[str]) -> tuple[int, list[int]]:
    with session(write=True) as sess:
        batch = Batch(
            source="t.csv", kind="csv", status=status, model_version=4, model_sha256="0" * 64
        )
        sess.add(batch)
        sess.flush()
        chunks = [
            Chunk(batch_id=batch.id, seq=i, ref=f"r{i}", item_count=1, state=state)
            for i, state in enumerate(chunk_states)
        ]
        sess.add_all(chunks)
        sess.flush()
        return batch.id, [c.id for c in chunks]


def status_of(batch_id: int) -> str:
    with session() as sess:
        return str(sess.scalar(select(Batch.status).where(Batch.id == batch_id)))


def finish_chunk_uncommitted(chunk_id: int, batch_id: int) -> tuple[object, bool]:
    """What a worker's write_results does up to its commit: the chunk done, then the check
    inside the same transaction. Returns the open session (commit it later) and the check."""
    context = session(write=True)
    sess = context.__enter__()
    sess.execute(update(Chunk).where(Chunk.id == chunk_id).values(state="done"))
    return context, complete_batch_if_finished(sess, batch_id)


def test_worker_finishing_the_only_chunk_while_the_run_marks_it_enqueued(on_postgres: None) -> None:
    """A photo: the worker's check runs while the batch is still "enqueueing"; `digits run`
    then marks it fully enqueued before the worker commits. Each transaction saw the other's
    part as unfinished; the worker's check after its commit completes the batch."""
    batch_id, [chunk] = make_batch("enqueueing", ["running"])
    worker, completed = finish_chunk_uncommitted(chunk, batch_id)
    assert not completed  # still enqueueing, as far as the worker can see
    finish_enqueue(batch_id, items=1, errors=0, chunks=1)  # commits; its checks miss the chunk
    assert status_of(batch_id) == "running"
    worker.__exit__(None, None, None)  # the worker commits
    assert status_of(batch_id) == "running"  # what the sweep used to find 5 s later
    assert settle_batch(batch_id)  # what write_results now does after committing
    assert status_of(batch_id) == "done"
    assert not settle_batch(batch_id)  # safe twice


def test_two_workers_finishing_the_last_two_chunks_at_once(on_postgres: None) -> None:
    batch_id, [a, b] = make_batch("running", ["running", "running"])
    first, first_completed = finish_chunk_uncommitted(a, batch_id)
    second, second_completed = finish_chunk_uncommitted(b, batch_id)
    assert not first_completed and not second_completed  # each sees the other's as running
    first.__exit__(None, None, None)
    assert not settle_batch(batch_id)  # the second has not committed yet
    second.__exit__(None, None, None)
    assert status_of(batch_id) == "running"
    assert settle_batch(batch_id)  # the later check, after both commits
    assert status_of(batch_id) == "done"
