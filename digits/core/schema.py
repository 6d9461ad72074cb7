"""The database schema (SQLAlchemy 2 declarative). Alembic migrations are checked against it.

The database, not the broker, is the source of truth for work: every chunk has a state, an
attempt count and a lease, and every source row or file has exactly one item.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


Stamp = DateTime(timezone=True)


class Batch(Base):
    """One input (a CSV file or a folder/drop of images) pinned to one model version."""

    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # csv | images
    status: Mapped[str] = mapped_column(String(16), default="enqueueing", index=True)
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[int] = mapped_column(Integer)
    model_sha256: Mapped[str] = mapped_column(String(64))
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(Stamp)
    # Who is streaming the input into items (host:pid) and when it last committed a chunk:
    # a batch still ``enqueueing`` whose ingester is gone was interrupted (resume or cancel).
    ingest_owner: Mapped[str | None] = mapped_column(String(255))
    ingest_seen_at: Mapped[datetime | None] = mapped_column(Stamp)


class Chunk(Base):
    """A unit of work: one Celery task. The message carries only this row's id."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("batch_id", "seq"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    ref: Mapped[str] = mapped_column(Text)  # staging file, relative to the staging dir
    item_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(Stamp)
    sent_at: Mapped[datetime | None] = mapped_column(Stamp)
    # when a worker first claimed it: a batch's scoring time runs from its chunks' first claim
    # to their last write, without the wait for workers to start (`digits run`'s rate)
    claimed_at: Mapped[datetime | None] = mapped_column(Stamp)
    error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(Stamp)


class ChunkPayload(Base):
    """A CSV chunk's staged rows (the ``.npy`` bytes) when ``DIGITS_STAGING=database``: every
    worker reads them where it reads the chunk, so workers on other machines need no shared
    disk. Keyed by (batch, seq) because a block is staged before its chunk row is committed
    (digits/core/staging.py). Kept as long as the batch: rescore, reports, the reviewed export
    and item pictures read them after the batch finished; deleting the batch deletes them."""

    __tablename__ = "chunk_payloads"
    batch_id: Mapped[int] = mapped_column(
        ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Item(Base):
    """One source row or image. ``position`` is 1-based: the Kaggle ImageId."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("batch_id", "position"),
        Index("ix_items_chunk_id", "chunk_id"),
        Index("ix_items_sha256", "sha256"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    chunk_id: Mapped[int | None] = mapped_column(ForeignKey("chunks.id", ondelete="SET NULL"))
    position: Mapped[int] = mapped_column(Integer)
    source_ref: Mapped[str] = mapped_column(Text)  # what users see: "file.csv:17", "scan 3.png"
    path: Mapped[str | None] = mapped_column(Text)  # image files: where the worker reads it
    sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    true_label: Mapped[int | None] = mapped_column(SmallInteger)
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("items.id"))


class Prediction(Base):
    """A model version's verdict on an item. UNIQUE(item, version) makes writes idempotent."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("item_id", "model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    model_version: Mapped[int] = mapped_column(Integer)
    label: Mapped[int] = mapped_column(SmallInteger)
    confidence: Mapped[float] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)
    needs_review: Mapped[bool] = mapped_column(Boolean)
    # why the item is flagged beyond a low confidence (e.g. two digit-sized marks on the page)
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    p0: Mapped[float] = mapped_column(Float)
    p1: Mapped[float] = mapped_column(Float)
    p2: Mapped[float] = mapped_column(Float)
    p3: Mapped[float] = mapped_column(Float)
    p4: Mapped[float] = mapped_column(Float)
    p5: Mapped[float] = mapped_column(Float)
    p6: Mapped[float] = mapped_column(Float)
    p7: Mapped[float] = mapped_column(Float)
    p8: Mapped[float] = mapped_column(Float)
    p9: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class ItemError(Base):
    """Why an item has no prediction (bad row, unreadable image, blank, quarantined chunk)."""

    __tablename__ = "item_errors"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class WorkerHeartbeat(Base):
    """Connected workers, as seen by `digits status` and `digits run` (no broker broadcast)."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    # ``worker`` scores chunks; ``scheduler`` sweeps (a lone worker sweeps when none is alive)
    role: Mapped[str] = mapped_column(String(16), default="worker", server_default="worker")
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


PROBABILITY_COLUMNS = [f"p{i}" for i in range(10)]


class ModelAlias(Base):
    """Where an alias (``production``, ``candidate``) points now."""

    __tablename__ = "model_aliases"
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class AliasHistory(Base):
    """Audit trail: what was in production when, and why it moved."""

    __tablename__ = "alias_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), index=True)
    from_version: Mapped[int | None] = mapped_column(Integer)
    to_version: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Export(Base):
    """A written submission: idempotency for the nightly export (one row per batch)."""

    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(String(16))  # manual | nightly
    rows: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    # 1 for a batch's first submission; +1 each time it is written with different labels
    # (reviews changed after the last export)
    revision: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Review(Base):
    """A person's decision on an item, never an edit of the prediction.

    Append-only: the newest row of an item is its current decision; an earlier one stays as the
    record of who said what and when. ``label`` NULL is an undo (the item is back in the queue).
    ``kind`` says why the item was in front of the reviewer: ``flagged`` (needs_review),
    ``audit`` (the random share of confident items behind the accuracy estimate), ``bulk``
    (accepted with "accept all above"), ``manual`` (any other item, from its page)."""

    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_item_id", "item_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    label: Mapped[int | None] = mapped_column(SmallInteger)
    model_label: Mapped[int] = mapped_column(SmallInteger)
    model_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
