"""Ingestion that was interrupted: resume it from where it stopped, or cancel the batch.

Ingestion commits block by block (scheduler/batches.py add_chunk: a chunk, its items and its
refused rows in one transaction), so what an interrupted `digits run`/`enqueue` left is
exactly the rows up to the highest committed position. Resume re-reads the same input (the
CSV's sha256 must match), skips those rows without parsing them and goes on with new chunks;
nothing is ingested twice because positions are UNIQUE per batch. Inbox drops are resumed by
the scheduler itself (scheduler/inbox.py ``recover``), which redoes a drop that was never sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from digits.core.db import session
from digits.core.processes import owner_alive
from digits.core.schema import Batch, Chunk, Item, utcnow
from digits.core.settings import get_settings
from digits.core.state_machine import FINISHED_BATCH, stop_batch
from model_store.registry import file_sha256_or_none
from scheduler.batches import (
    Enqueued,
    ProgressFn,
    enqueue_files,
    image_files,
    ingest_csv,
    ingester_name,
    listed_files,
)

INBOX_PREFIX = "inbox:"


class IngestionError(ValueError):
    """A resume or cancel that cannot be done, with the reason a user can act on."""


@dataclass(frozen=True)
class Cancelled:
    batch_id: int
    was: str
    unscored: int  # items that got "batch cancelled …" as their reason
    predicted: int  # predictions already written, kept


def ingester_alive(owner: str | None, seen_at: datetime | None) -> bool:
    """Whether the process ingesting a batch still runs (by pid on this host; elsewhere,
    while it committed a block within one lease)."""
    return owner_alive(owner, seen_at, get_settings().lease_seconds)


def _claim_for_resume(batch_id: int) -> tuple[Batch, int, int]:
    """Take over an interrupted batch's ingestion; returns it, its last ingested position and
    its last chunk seq."""
    with session(write=True) as sess:
        batch = sess.get(Batch, batch_id, with_for_update=True)
        if batch is None:
            raise IngestionError(f"batch {batch_id} does not exist")
        if batch.status != "enqueueing":
            raise IngestionError(
                f"batch {batch_id} is {batch.status}: its input is fully "
                "ingested (or it ended), there is nothing to resume"
            )
        if batch.source.startswith(INBOX_PREFIX):
            raise IngestionError(
                f"batch {batch_id} is an inbox drop: the scheduler resumes "
                "it by itself (`digits scheduler` or `digits up`)"
            )
        if (
            ingester_alive(batch.ingest_owner, batch.ingest_seen_at)
            and batch.ingest_owner != ingester_name()
        ):
            raise IngestionError(
                f"batch {batch_id} is still being ingested by {batch.ingest_owner}"
            )
        last = sess.scalar(select(func.max(Item.position)).where(Item.batch_id == batch_id))
        seq = sess.scalar(select(func.max(Chunk.seq)).where(Chunk.batch_id == batch_id))
        batch.ingest_owner = ingester_name()
        batch.ingest_seen_at = utcnow()
        sess.flush()
        sess.expunge(batch)
    return batch, int(last or 0), int(seq or 0)


def resume_batch(batch_id: int, progress: ProgressFn | None = None) -> tuple[Enqueued, int]:
    """Ingest the rest of an interrupted batch; returns the result and the rows it started
    after. A CSV whose content changed since is refused: its row numbers would not match."""
    batch, last, seq = _claim_for_resume(batch_id)
    source = Path(batch.source)
    if batch.kind == "csv":
        if not source.is_file():
            raise IngestionError(f"batch {batch_id}: its input {source} is gone")
        if batch.source_sha256 and file_sha256_or_none(source) != batch.source_sha256:
            raise IngestionError(
                f"batch {batch_id}: {source} changed since it was enqueued "
                "(sha256 differs); cancel it and enqueue the file again"
            )
        return ingest_csv(
            batch_id, source, progress=progress, skip_rows=last, first_seq=seq + 1
        ), last
    if not source.is_dir():
        raise IngestionError(f"batch {batch_id}: its folder {source} is gone")
    files = listed_files(batch_id)  # image files named one by one: the same files again
    if files is None:
        files = image_files(source)
    return enqueue_files(source, files, resume=(batch_id, last, seq)), last


def cancel_batch(batch_id: int) -> Cancelled:
    """Stop a batch: queued and running chunks are cancelled (a worker finishing one writes
    nothing), items not scored yet get the reason, predictions already written stay."""
    with session(write=True) as sess:
        batch = sess.get(Batch, batch_id, with_for_update=True)
        if batch is None:
            raise IngestionError(f"batch {batch_id} does not exist")
        if batch.status in FINISHED_BATCH:
            raise IngestionError(f"batch {batch_id} is already {batch.status}: nothing to cancel")
        if (
            batch.status == "enqueueing"
            and batch.ingest_owner != ingester_name()
            and ingester_alive(batch.ingest_owner, batch.ingest_seen_at)
        ):
            raise IngestionError(
                f"batch {batch_id} is being ingested by "
                f"{batch.ingest_owner}: stop that process first"
            )
        was = batch.status
        unscored = stop_batch(
            sess,
            batch_id,
            "cancelled",
            "cancelled by the user",
            "batch cancelled before this item was scored",
        )
        predicted = (
            sess.scalar(
                select(func.count())
                .select_from(Item)
                .where(Item.batch_id == batch_id, Item.status == "predicted")
            )
            or 0
        )
    return Cancelled(batch_id, was, unscored, int(predicted))


@dataclass(frozen=True)
class LeftBehind:
    """A batch an interrupted `digits run`/`enqueue` leaves, and what the user can do."""

    batch_id: int
    source: str
    status: str
    items: int
    finished_items: int

    def line(self) -> str:
        name = Path(self.source).name
        b = self.batch_id
        if self.status == "enqueueing":
            return (
                f"batch {b} ({name}) interrupted after {self.items:,} rows were ingested: "
                f"`digits resume {b}` finishes it, `digits cancel {b}` drops it"
            )
        return (
            f"batch {b} ({name}): {self.finished_items:,} of {self.items:,} items scored; "
            f"the rest is queued and is scored when a worker runs (`digits worker` or "
            f"`digits up`); `digits cancel {b}` drops it"
        )


def left_behind(batch_ids: list[int]) -> list[LeftBehind]:
    """After an interruption: release this process's unfinished ingestions (so `digits status`
    shows them as interrupted at once, not after a lease) and list every batch of
    ``batch_ids`` or of this process that is not finished."""
    me = ingester_name()
    with session(write=True) as sess:
        mine = sess.scalars(
            select(Batch.id).where(Batch.status == "enqueueing", Batch.ingest_owner == me)
        ).all()
        ids = sorted({*batch_ids, *mine})
        batches = sess.scalars(
            select(Batch).where(Batch.id.in_(ids), Batch.status.not_in(FINISHED_BATCH))
        ).all()
        for batch in batches:
            if batch.ingest_owner == me:
                batch.ingest_owner = None
        counts = dict(
            sess.execute(
                select(Item.batch_id, func.count())
                .where(Item.batch_id.in_(ids))
                .group_by(Item.batch_id)
            ).all()
        )
        finished = dict(
            sess.execute(
                select(Item.batch_id, func.count())
                .where(Item.batch_id.in_(ids), Item.status != "pending")
                .group_by(Item.batch_id)
            ).all()
        )
        return [
            LeftBehind(
                b.id, b.source, b.status, int(counts.get(b.id, 0)), int(finished.get(b.id, 0))
            )
            for b in batches
        ]
