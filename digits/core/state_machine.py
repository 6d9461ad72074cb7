"""Work-state transitions shared by the scheduler, the sweeper and the workers.

Every transition is one SQL transaction; completion is a single conditional UPDATE so that a
worker finishing the last chunk and the scheduler finishing enqueueing can race safely.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from digits.core.db import get_engine, insert_ignore, session
from digits.core.schema import Batch, Chunk, Item, ItemError, utcnow

TERMINAL_CHUNK = ("done", "quarantined", "cancelled")
ACTIVE_BATCH = ("enqueueing", "running")
FINISHED_BATCH = ("done", "failed", "cancelled")


def complete_batch_if_finished(sess: Session, batch_id: int, now: datetime | None = None) -> bool:
    """Mark a fully enqueued batch done once no chunk is left to score. Safe to call anytime."""
    pending = exists().where(Chunk.batch_id == batch_id, Chunk.state.not_in(TERMINAL_CHUNK))
    errors = (
        select(func.count())
        .select_from(Item)
        .where(Item.batch_id == batch_id, Item.status == "error")
        .scalar_subquery()
    )
    result = sess.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == "running", ~pending)
        .values(status="done", finished_at=now or utcnow(), error_count=errors)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def settle_batch(batch_id: int) -> bool:
    """Complete the batch, if it is finished, in a transaction of its own, after the caller's
    has committed (on a server database; SQLite runs one write transaction at a time, so the
    check inside it already sees everything).

    On PostgreSQL's READ COMMITTED, two transactions that may each finish a batch do not see
    each other's uncommitted changes: two workers finishing its last two chunks, or a worker
    finishing the only chunk of a photo while `digits run` marks the batch fully enqueued,
    each found the other's chunk or the batch's state not yet final, neither completed it,
    and the batch stayed "running" with every chunk done until the next sweep (5 s added to
    one warm one-photo run in 8). Checking again after committing closes that: the later of
    the two checks runs after both commits. A conditional UPDATE, so it is safe twice."""
    engine = get_engine()
    if engine.dialect.name == "sqlite":
        return False
    with session(write=True) as sess:
        return complete_batch_if_finished(sess, batch_id)


def record_item_errors(sess: Session, errors: list[tuple[int, str]]) -> None:
    """Give each item its reason (first reason wins) and mark it as an error."""
    if not errors:
        return
    insert_ignore(
        sess, ItemError, [{"item_id": i, "reason": r[:1000]} for i, r in errors], ["item_id"]
    )
    sess.execute(
        update(Item)
        .where(Item.id.in_([i for i, _ in errors]), Item.status == "pending")
        .values(status="error")
        .execution_options(synchronize_session=False)
    )


def quarantine(sess: Session, chunk: Chunk, reason: str) -> None:
    """Take a chunk out of circulation: its unscored items get the reason as their error."""
    chunk.state = "quarantined"
    chunk.error = reason
    chunk.lease_owner = None
    chunk.lease_expires_at = None
    chunk.finished_at = utcnow()
    item_ids = sess.scalars(
        select(Item.id).where(Item.chunk_id == chunk.id, Item.status == "pending")
    ).all()
    record_item_errors(sess, [(i, f"chunk quarantined: {reason}") for i in item_ids])
    complete_batch_if_finished(sess, chunk.batch_id)


def stop_batch(sess: Session, batch_id: int, status: str, error: str, reason: str) -> int:
    """End a batch that will not be completed (``failed`` or ``cancelled``): its unfinished
    chunks are cancelled, so nothing stays queued inside it and a worker holding one writes
    nothing (write_results skips a terminal chunk); the batch records ``error`` and every item
    not scored yet gets ``reason``. Predictions already written stay. Returns how many items
    got the reason."""
    sess.execute(
        update(Chunk)
        .where(Chunk.batch_id == batch_id, Chunk.state.not_in(TERMINAL_CHUNK))
        .values(
            state="cancelled",
            lease_owner=None,
            lease_expires_at=None,
            error=error,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    pending = sess.scalars(
        select(Item.id).where(Item.batch_id == batch_id, Item.status == "pending")
    ).all()
    record_item_errors(sess, [(i, reason) for i in pending])
    sess.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(status=status, error=error, finished_at=utcnow(), ingest_owner=None)
        .execution_options(synchronize_session=False)
    )
    return len(pending)
