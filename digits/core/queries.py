"""Read-only queries behind `digits status`, `digits results` and `digits run`'s progress."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import aliased

from digits.core.db import aware, session
from digits.core.processes import owner_alive
from digits.core.reviews import current_ids
from digits.core.schema import (
    Batch,
    Chunk,
    Export,
    Item,
    ItemError,
    Prediction,
    Review,
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
    flagged: int = 0  # predictions by the pinned version with needs_review
    # its chunks' first claim and last write: the scoring time, without the wait for workers
    first_claim: datetime | None = None
    last_write: datetime | None = None

    @property
    def scoring_seconds(self) -> float | None:
        """First claim to last write (None before a chunk was written)."""
        if self.first_claim is None or self.last_write is None:
            return None
        return max(0.0, (self.last_write - self.first_claim).total_seconds())

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

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
        return {
            **asdict(self),
            "first_claim": self.first_claim.isoformat() if self.first_claim else None,
            "last_write": self.last_write.isoformat() if self.last_write else None,
            "scoring_seconds": self.scoring_seconds,
            "accuracy": self.accuracy,
            "progress": self.progress,
        }


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
        flagged: dict[int, int] = dict(
            sess.execute(
                select(Item.batch_id, func.count())
                .join(Prediction, Prediction.item_id == Item.id)
                .join(Batch, Batch.id == Item.batch_id)
                .where(
                    Item.batch_id.in_(ids),
                    Prediction.needs_review,
                    Prediction.model_version == Batch.model_version,
                )
                .group_by(Item.batch_id)
            ).all()
        )
        scoring = {
            batch_id: (first, last)
            for batch_id, first, last in sess.execute(
                select(Chunk.batch_id, func.min(Chunk.claimed_at), func.max(Chunk.finished_at))
                .where(Chunk.batch_id.in_(ids))
                .group_by(Chunk.batch_id)
            ).all()
        }
    out = []
    lease = get_settings().lease_seconds
    for b in batches:
        end = aware(b.finished_at) if b.finished_at else utcnow()
        ingest = None
        if b.status == "enqueueing":
            alive = owner_alive(b.ingest_owner, b.ingest_seen_at, lease)
            ingest = "ingesting" if alive else "interrupted"
        labelled, correct = accuracy.get(b.id, (0, 0))
        first, last = scoring.get(b.id, (None, None))
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
                flagged=flagged.get(b.id, 0),
                first_claim=aware(first) if first else None,
                last_write=aware(last) if last else None,
            )
        )
    return out


def finished_since(after: datetime) -> list[int]:
    """Batches that finished (done, failed or cancelled) at or after ``after``, by id."""
    with session() as sess:
        return list(
            sess.scalars(
                select(Batch.id).where(Batch.finished_at >= after).order_by(Batch.id)
            ).all()
        )


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


def last_exports(limit: int = 5, batch_id: int | None = None) -> list[dict[str, Any]]:
    """The newest exports (of one batch only, with ``batch_id``)."""
    query = select(Export).order_by(Export.id.desc()).limit(limit)
    if batch_id is not None:
        query = query.where(Export.batch_id == batch_id)
    with session() as sess:
        rows = sess.scalars(query).all()
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
    "reviewed_label",  # a person's current decision (digits.core.reviews), if any
    "final_label",  # what the exports write: the reviewed label, else the predicted one
    "review_reason",  # why it is flagged beyond a low confidence (digit finder's doubt), if so
]


def results_query(
    batch_id: int | None = None,
    below: float | None = None,
    source_like: str | None = None,
    model_version: int | None = None,
) -> Select[*tuple[Any, ...]]:
    """The SELECT behind :func:`results`, :func:`iter_results` and :func:`count_results`."""
    version = model_version if model_version is not None else Batch.model_version
    newest = current_ids().subquery()
    decision = aliased(Review)
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
            decision.label,
            func.coalesce(decision.label, Prediction.label),
            Prediction.review_reason,
        )
        .join(Batch, Batch.id == Item.batch_id)
        # a duplicate shows the prediction of the item it repeats
        .outerjoin(
            Prediction,
            (Prediction.item_id == func.coalesce(Item.duplicate_of, Item.id))
            & (Prediction.model_version == version),
        )
        .outerjoin(ItemError, ItemError.item_id == Item.id)
        # a duplicate carries the decision on the item it repeats, as it carries its prediction
        .outerjoin(newest, newest.c.item_id == func.coalesce(Item.duplicate_of, Item.id))
        .outerjoin(decision, decision.id == newest.c.review_id)
        .order_by(Item.batch_id, Item.position)
    )
    if batch_id is not None:
        query = query.where(Item.batch_id == batch_id)
    if below is not None:
        query = query.where(Prediction.confidence < below)
    if source_like:
        # literal text: "%" and "_" are characters here, not LIKE wildcards
        query = query.where(Item.source_ref.contains(source_like, autoescape=True))
    return query


def results(
    batch_id: int | None = None,
    below: float | None = None,
    limit: int | None = None,
    source_like: str | None = None,
    model_version: int | None = None,
) -> list[dict[str, Any]]:
    """One row per item with its prediction by the batch's pinned version (or ``model_version``).
    A list: for a few rows; :func:`iter_results` streams any number."""
    return list(iter_results(batch_id, below, limit, source_like, model_version))


#: Rows fetched from the database at a time by :func:`iter_results`.
RESULT_PAGE = 1000


def iter_results(
    batch_id: int | None = None,
    below: float | None = None,
    limit: int | None = None,
    source_like: str | None = None,
    model_version: int | None = None,
) -> Iterator[dict[str, Any]]:
    """:func:`results` one row at a time, read in pages of :data:`RESULT_PAGE` (a server-side
    cursor on PostgreSQL), so 80,000 rows take no more memory than 1,000: `digits results
    --all` writes them as they come. The session stays open until the iterator is exhausted
    or closed."""
    query = results_query(batch_id, below, source_like, model_version)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, not {limit}")
        query = query.limit(limit)
    with session() as sess:
        for row in sess.execute(query.execution_options(yield_per=RESULT_PAGE)):
            yield dict(zip(RESULT_COLUMNS, row, strict=True))


def count_results(
    batch_id: int | None = None,
    below: float | None = None,
    source_like: str | None = None,
    model_version: int | None = None,
) -> int:
    """How many rows :func:`results` gives without a limit (for "N more; use --all")."""
    query = results_query(batch_id, below, source_like, model_version).order_by(None)
    with session() as sess:
        return int(sess.scalar(select(func.count()).select_from(query.subquery())) or 0)


def batch_exists(batch_id: int) -> bool:
    with session() as sess:
        return sess.get(Batch, batch_id) is not None
