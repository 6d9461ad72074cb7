"""Read-only queries behind `digits status`, `digits results` and `digits run`'s progress."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import case, func, select

from digits.core.db import aware, session
from digits.core.processes import owner_alive
from digits.core.schema import (
    Batch,
    Chunk,
    Export,
    Item,
    ItemError,
    Prediction,
    WorkerHeartbeat,
    utcnow,
)
from digits.core.settings import get_settings

WORKER_STALE_SECONDS = 20


@dataclass
class BatchProgress:
    batch_id: int
    source: str
    kind: str
    status: str
    model_version: int
    items: int
    predicted: int
    errors: int
    duplicates: int
    pending: int
    chunks: dict[str, int]
    correct: int  # predictions matching a known true label
    labelled: int
    error: str | None
    seconds: float | None
    # for a batch still ``enqueueing``: "ingesting" while its ingester runs, "interrupted"
    # once it is gone (resume or cancel it); None otherwise
    ingest: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @property
    def shown_status(self) -> str:
        """What status tables show: never a bare "enqueueing" that hides a dead ingester."""
        return self.ingest or self.status

    @property
    def progress(self) -> str:
        """Share of items finished, only once the whole input is ingested: a half-ingested
        batch whose items are all scored is not 100 % done."""
        if self.status == "enqueueing":
            return f"{self.items:,} rows in"
        done = self.predicted + self.errors + self.duplicates
        return f"{done / self.items:.0%}" if self.items else "-"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "progress": self.progress}


def batch_progress(
    batch_ids: list[int] | None = None, active_only: bool = False
) -> list[BatchProgress]:
    with session() as sess:
        query = select(Batch).order_by(Batch.id)
        if batch_ids:
            query = query.where(Batch.id.in_(batch_ids))
        if active_only:
            query = query.where(Batch.status.in_(("enqueueing", "running")))
        batches = sess.scalars(query).all()
        ids = [b.id for b in batches]
        counts: dict[tuple[int, str], int] = {}
        for batch_id, status, n in sess.execute(
            select(Item.batch_id, Item.status, func.count())
            .where(Item.batch_id.in_(ids))
            .group_by(Item.batch_id, Item.status)
        ).all():
            counts[(batch_id, status)] = n
        chunk_counts: dict[int, dict[str, int]] = {}
        for batch_id, state, n in sess.execute(
            select(Chunk.batch_id, Chunk.state, func.count())
            .where(Chunk.batch_id.in_(ids))
            .group_by(Chunk.batch_id, Chunk.state)
        ).all():
            chunk_counts.setdefault(batch_id, {})[state] = n
        accuracy: dict[int, tuple[int, int]] = {}
        for batch_id, labelled, correct in sess.execute(
            select(
                Item.batch_id,
                func.count(),
                func.sum(case((Prediction.label == Item.true_label, 1), else_=0)),
            )
            .join(Prediction, Prediction.item_id == Item.id)
            .join(Batch, Batch.id == Item.batch_id)
            .where(
                Item.batch_id.in_(ids),
                Item.true_label.is_not(None),
                Prediction.model_version == Batch.model_version,
            )
            .group_by(Item.batch_id)
        ).all():
            accuracy[batch_id] = (int(labelled), int(correct or 0))
    out = []
    lease = get_settings().lease_seconds
    for b in batches:
        end = aware(b.finished_at) if b.finished_at else utcnow()
        ingest = None
        if b.status == "enqueueing":
            alive = owner_alive(b.ingest_owner, b.ingest_seen_at, lease)
            ingest = "ingesting" if alive else "interrupted"
        labelled, correct = accuracy.get(b.id, (0, 0))
        out.append(
            BatchProgress(
                batch_id=b.id,
                source=b.source,
                kind=b.kind,
                status=b.status,
                model_version=b.model_version,
                items=sum(v for (i, _), v in counts.items() if i == b.id),
                predicted=counts.get((b.id, "predicted"), 0),
                errors=counts.get((b.id, "error"), 0),
                duplicates=counts.get((b.id, "duplicate"), 0),
                pending=counts.get((b.id, "pending"), 0),
                chunks=chunk_counts.get(b.id, {}),
                correct=correct,
                labelled=labelled,
                error=b.error,
                seconds=round((end - aware(b.created_at)).total_seconds(), 3),
                ingest=ingest,
            )
        )
    return out


def connected_workers() -> list[dict[str, Any]]:
    cutoff = utcnow() - timedelta(seconds=WORKER_STALE_SECONDS)
    with session() as sess:
        rows = sess.scalars(
            select(WorkerHeartbeat)
            .where(WorkerHeartbeat.last_seen >= cutoff, WorkerHeartbeat.role == "worker")
            .order_by(WorkerHeartbeat.name)
        ).all()
        return [
            {
                "name": r.name,
                "concurrency": r.concurrency,
                "last_seen": aware(r.last_seen).isoformat(),
            }
            for r in rows
        ]


def queue_depth() -> dict[str, int]:
    with session() as sess:
        rows = sess.execute(
            select(Chunk.state, func.count())
            .where(Chunk.state.in_(("queued", "running")))
            .group_by(Chunk.state)
        ).all()
    return {state: int(n) for state, n in rows}


def last_exports(limit: int = 5) -> list[dict[str, Any]]:
    with session() as sess:
        rows = sess.scalars(select(Export).order_by(Export.id.desc()).limit(limit)).all()
        return [
            {
                "batch_id": r.batch_id,
                "path": r.path,
                "trigger": r.trigger,
                "rows": r.rows,
                "created_at": aware(r.created_at).isoformat(),
            }
            for r in rows
        ]


RESULT_COLUMNS = [
    "batch_id",
    "item_id",
    "image_id",
    "source",
    "status",
    "label",
    "confidence",
    "margin",
    "needs_review",
    "model_version",
    "true_label",
    "error",
]


def results(
    batch_id: int | None = None,
    below: float | None = None,
    limit: int | None = None,
    source_like: str | None = None,
    model_version: int | None = None,
) -> list[dict[str, Any]]:
    """One row per item with its prediction by the batch's pinned version (or ``model_version``)."""
    version = model_version if model_version is not None else Batch.model_version
    query = (
        select(
            Item.batch_id,
            Item.id,
            Item.position,
            Item.source_ref,
            Item.status,
            Prediction.label,
            Prediction.confidence,
            Prediction.margin,
            Prediction.needs_review,
            Prediction.model_version,
            Item.true_label,
            ItemError.reason,
        )
        .join(Batch, Batch.id == Item.batch_id)
        # a duplicate shows the prediction of the item it repeats
        .outerjoin(
            Prediction,
            (Prediction.item_id == func.coalesce(Item.duplicate_of, Item.id))
            & (Prediction.model_version == version),
        )
        .outerjoin(ItemError, ItemError.item_id == Item.id)
        .order_by(Item.batch_id, Item.position)
    )
    if batch_id is not None:
        query = query.where(Item.batch_id == batch_id)
    if below is not None:
        query = query.where(Prediction.confidence < below)
    if source_like:
        # literal text: "%" and "_" are characters here, not LIKE wildcards
        query = query.where(Item.source_ref.contains(source_like, autoescape=True))
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, not {limit}")
        query = query.limit(limit)
    with session() as sess:
        rows = sess.execute(query).all()
    return [dict(zip(RESULT_COLUMNS, row, strict=True)) for row in rows]
