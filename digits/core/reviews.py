"""People's decisions on predictions: the review queue, the audit sample and the accuracy
estimate that only reviews can give.

A review is never an edit of a prediction. Every decision is a row in ``reviews``; the newest row
of an item is its current decision (``label`` NULL = undone, back in the queue). The outputs
read ``final_label``: the current reviewed label if there is one, else the prediction's.

The audit sample is what makes the estimate honest. Flagged items are the doubtful ones, so
their review says nothing about the confident ones; a fixed pseudo-random share of the confident
items (``DIGITS_AUDIT_SHARE``, 2 % by default) also enters the queue, marked ``audit``, and the
share of those whose reviewed label equals the model's estimates the accuracy of every unflagged
prediction, with a 95 % Wilson interval. Membership is a multiplicative hash of the item id
(Knuth's 2654435761), computable in SQL on SQLite and PostgreSQL alike: the same items stay in
the sample on every page load, independent of their content, and no column is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    and_,
    cast,
    false,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session

from digits.core.db import session
from digits.core.schema import PROBABILITY_COLUMNS, Batch, Item, Prediction, Review, utcnow

HASH_MULTIPLIER = 2654435761
HASH_SPACE = 2**32
KINDS = ("flagged", "audit", "bulk", "manual")


class ReviewError(ValueError):
    """A decision that cannot be recorded: unknown item, no prediction, label out of range."""


def audit_draw(item_id: int) -> float:
    """The item's fixed pseudo-random draw in [0, 1): below the audit share means audit."""
    return ((item_id * HASH_MULTIPLIER) % HASH_SPACE) / HASH_SPACE


def is_audit(item_id: int, needs_review: bool, share: float) -> bool:
    """Confident items whose draw is below ``share`` are the audit sample."""
    return not needs_review and audit_draw(item_id) < share


def audit_clause(share: float) -> ColumnElement[bool]:
    """``is_audit`` in SQL (64-bit integer arithmetic on both databases)."""
    if share <= 0:
        return false()
    return and_(
        Prediction.needs_review.is_(False),
        (cast(Item.id, BigInteger) * literal(HASH_MULTIPLIER, BigInteger))
        % literal(HASH_SPACE, BigInteger)
        < literal(int(share * HASH_SPACE), BigInteger),
    )


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion (95 % by default); None without data.

    Chosen over the normal approximation because the audit sample is small and its accuracy
    close to 1, where the normal interval runs past 100 % and collapses to zero width."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    """Estimated accuracy of the unflagged predictions, from the reviewed audit items."""

    reviewed: int
    correct: int
    low: float | None
    high: float | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.reviewed if self.reviewed else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy": self.accuracy}

    def text(self) -> str:
        """``98.0 % (95 % CI 93.0–99.4 %, 50 audited)`` or ``no audited items yet``."""
        if not self.reviewed or self.low is None or self.high is None:
            return "no audited items yet"
        return (
            f"{100 * (self.accuracy or 0):.1f} % (95 % CI {100 * self.low:.1f}–"
            f"{100 * self.high:.1f} %, {self.reviewed} audited)"
        )


def estimate_from(pairs: Iterable[tuple[int, int]]) -> Estimate:
    """(reviewed label, model label) pairs of audit items → the estimate."""
    reviewed = correct = 0
    for given, model in pairs:
        reviewed += 1
        correct += int(given == model)
    interval = wilson(correct, reviewed)
    low, high = interval if interval else (None, None)
    return Estimate(reviewed, correct, low, high)


def current_ids() -> Select[int, int]:
    """item id → id of its newest review row (its current decision)."""
    return select(Review.item_id, func.max(Review.id).label("review_id")).group_by(Review.item_id)


def current_decisions(sess: Session, item_ids: Sequence[int] | None = None) -> dict[int, Review]:
    """Each item's current decision (the newest row; an undo has ``label`` None)."""
    newest = current_ids()
    if item_ids is not None:
        if not item_ids:
            return {}
        newest = newest.where(Review.item_id.in_(item_ids))
    sub = newest.subquery()
    rows = sess.scalars(select(Review).join(sub, Review.id == sub.c.review_id))
    return {r.item_id: r for r in rows}


def reviewed_labels(sess: Session, batch_id: int) -> dict[int, int]:
    """item id → its current reviewed label, for the items of one batch that have one."""
    sub = current_ids().subquery()
    rows = sess.execute(
        select(Review.item_id, Review.label)
        .join(sub, Review.id == sub.c.review_id)
        .join(Item, Item.id == Review.item_id)
        .where(Item.batch_id == batch_id, Review.label.is_not(None))
    )
    return {item_id: int(label) for item_id, label in rows if label is not None}


@dataclass(frozen=True)
class Reviewed:
    """An item with a current reviewed label (what `digits reviews list` and the training
    export read)."""

    item_id: int
    batch_id: int
    batch_kind: str  # csv | images: where the pixels the model saw are found
    position: int
    source: str
    label: int
    model_label: int
    model_version: int
    kind: str
    reviewer: str
    reviewed_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reviewed_items(batch_id: int | None = None) -> list[Reviewed]:
    """Every item whose newest decision gives a label (undone items are left out), in batch
    and position order."""
    sub = current_ids().subquery()
    query = (
        select(Review, Item.batch_id, Batch.kind, Item.position, Item.source_ref)
        .join(sub, Review.id == sub.c.review_id)
        .join(Item, Item.id == Review.item_id)
        .join(Batch, Batch.id == Item.batch_id)
        .where(Review.label.is_not(None))
        .order_by(Item.batch_id, Item.position)
    )
    if batch_id is not None:
        query = query.where(Item.batch_id == batch_id)
    with session() as sess:
        return [
            Reviewed(
                item_id=r.item_id,
                batch_id=int(batch),
                batch_kind=kind,
                position=int(position),
                source=source,
                label=int(r.label or 0),
                model_label=r.model_label,
                model_version=r.model_version,
                kind=r.kind,
                reviewer=r.reviewer,
                reviewed_at=r.created_at.isoformat(),
            )
            for r, batch, kind, position, source in sess.execute(query)
        ]


@dataclass(frozen=True)
class QueueItem:
    """One item waiting for a person, with what the page shows about it."""

    item_id: int
    batch_id: int
    position: int
    source: str
    kind: str  # flagged | audit
    label: int
    confidence: float
    model_version: int
    top3: list[tuple[int, float]]
    review_reason: str | None = None  # why the digit finder doubted the page, if it did

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _queue_query(batch_id: int | None, share: float, kind: str | None) -> Select[Item, Prediction]:
    sub = current_ids().subquery()
    decided = (
        select(Review.item_id)
        .join(sub, Review.id == sub.c.review_id)
        .where(Review.label.is_not(None))
        .scalar_subquery()
    )
    audit = audit_clause(share)
    if kind == "flagged":
        wanted: ColumnElement[bool] = Prediction.needs_review.is_(True)
    elif kind == "audit":
        wanted = audit
    else:
        wanted = or_(Prediction.needs_review.is_(True), audit)
    query: Select[Item, Prediction] = (
        select(Item, Prediction)
        .join(Batch, Batch.id == Item.batch_id)
        .join(
            Prediction,
            and_(Prediction.item_id == Item.id, Prediction.model_version == Batch.model_version),
        )
        .where(wanted, Item.id.not_in(decided))
    )
    if batch_id is not None:
        query = query.where(Item.batch_id == batch_id)
    return query


def _queue_item(item: Item, pred: Prediction) -> QueueItem:
    probs = [float(getattr(pred, c)) for c in PROBABILITY_COLUMNS]
    top = sorted(range(10), key=lambda d: probs[d], reverse=True)[:3]
    return QueueItem(
        item_id=item.id,
        batch_id=item.batch_id,
        position=item.position,
        source=item.source_ref,
        kind="flagged" if pred.needs_review else "audit",
        label=pred.label,
        confidence=float(pred.confidence),
        model_version=pred.model_version,
        top3=[(d, probs[d]) for d in top],
        review_reason=pred.review_reason,
    )


def review_queue(
    batch_id: int | None = None,
    share: float = 0.02,
    limit: int = 50,
    offset: int = 0,
    kind: str | None = None,
) -> list[QueueItem]:
    """Items waiting for a decision, least confident first (so audit items, being confident,
    come after the flagged ones of the same batch)."""
    query = _queue_query(batch_id, share, kind).order_by(Prediction.confidence, Item.id)
    with session() as sess:
        rows = sess.execute(query.limit(limit).offset(offset)).all()
        return [_queue_item(item, pred) for item, pred in rows]


def queue_counts(batch_id: int | None = None, share: float = 0.02) -> dict[str, int]:
    """How many flagged and audit items wait for a decision."""
    counts = {}
    with session() as sess:
        for kind in ("flagged", "audit"):
            query = _queue_query(batch_id, share, kind).with_only_columns(func.count())
            counts[kind] = int(sess.scalar(query.order_by(None)) or 0)
    return counts


def record(
    item_id: int, label: int | None, reviewer: str, share: float, kind: str | None = None
) -> Review:
    """Record a decision (``label`` None withdraws the current one). The model's label and
    version are those of the batch's pinned prediction, as they were when the person decided."""
    if label is not None and not 0 <= label <= 9:
        raise ReviewError(f"label must be a digit 0–9, got {label}")
    reviewer = reviewer.strip()[:255] or "anonymous"
    with session(write=True) as sess:
        row = sess.execute(
            select(Item, Prediction)
            .join(Batch, Batch.id == Item.batch_id)
            .join(
                Prediction,
                and_(
                    Prediction.item_id == Item.id, Prediction.model_version == Batch.model_version
                ),
            )
            .where(Item.id == item_id)
        ).first()
        if row is None:
            exists = sess.get(Item, item_id) is not None
            raise ReviewError(
                f"item {item_id} has no prediction to review"
                if exists
                else f"item {item_id} does not exist"
            )
        item, pred = row
        if kind is None:
            kind = (
                "flagged"
                if pred.needs_review
                else "audit"
                if is_audit(item.id, False, share)
                else "manual"
            )
        review = Review(
            item_id=item.id,
            label=label,
            model_label=pred.label,
            model_version=pred.model_version,
            kind=kind,
            reviewer=reviewer,
            created_at=utcnow(),
        )
        sess.add(review)
        sess.flush()
        return review


def undo_last(reviewer: str, batch_id: int | None = None) -> Review | None:
    """Withdraw the reviewer's newest decision that is still current; None when there is none.
    The withdrawal is a row too (``label`` NULL), so the history keeps both."""
    reviewer = reviewer.strip()[:255] or "anonymous"
    with session(write=True) as sess:
        sub = current_ids().subquery()
        query = (
            select(Review)
            .join(sub, Review.id == sub.c.review_id)
            .where(Review.reviewer == reviewer, Review.label.is_not(None))
            .order_by(Review.id.desc())
            .limit(1)
        )
        if batch_id is not None:
            query = query.join(Item, Item.id == Review.item_id).where(Item.batch_id == batch_id)
        last = sess.scalars(query).first()
        if last is None:
            return None
        undo = Review(
            item_id=last.item_id,
            label=None,
            model_label=last.model_label,
            model_version=last.model_version,
            kind=last.kind,
            reviewer=reviewer,
            created_at=utcnow(),
        )
        sess.add(undo)
        sess.flush()
        return undo


def accept_all_above(batch_id: int, threshold: float, reviewer: str, share: float) -> int:
    """Confirm the model's label for every flagged item of the batch still waiting with a
    confidence at or above ``threshold``. Audit items are left for a person: confirming them
    in bulk would make the accuracy estimate say what the model said."""
    reviewer = reviewer.strip()[:255] or "anonymous"
    query = _queue_query(batch_id, share, "flagged").where(Prediction.confidence >= threshold)
    with session(write=True) as sess:
        rows = sess.execute(query).all()
        now = utcnow()
        sess.add_all(
            Review(
                item_id=item.id,
                label=pred.label,
                model_label=pred.label,
                model_version=pred.model_version,
                kind="bulk",
                reviewer=reviewer,
                created_at=now,
            )
            for item, pred in rows
        )
        return len(rows)


def estimate(batch_id: int | None = None) -> Estimate:
    """Accuracy of the unflagged predictions, from the current decisions on audit items."""
    sub = current_ids().subquery()
    query = (
        select(Review.label, Review.model_label)
        .join(sub, Review.id == sub.c.review_id)
        .where(Review.kind == "audit", Review.label.is_not(None))
    )
    if batch_id is not None:
        query = query.join(Item, Item.id == Review.item_id).where(Item.batch_id == batch_id)
    with session() as sess:
        return estimate_from((int(a), int(b)) for a, b in sess.execute(query) if a is not None)


def history(item_id: int) -> list[dict[str, Any]]:
    """Every decision on an item, oldest first (the item page and the API)."""
    with session() as sess:
        rows = sess.scalars(select(Review).where(Review.item_id == item_id).order_by(Review.id))
        return [
            {
                "id": r.id,
                "label": r.label,
                "model_label": r.model_label,
                "model_version": r.model_version,
                "kind": r.kind,
                "reviewer": r.reviewer,
                "created_at": r.created_at.isoformat(),
            }
            for r in rows
        ]


def overrides(sess: Session, batch_id: int) -> int:
    """How many items of the batch carry a reviewed label different from the model's."""
    sub = current_ids().subquery()
    return int(
        sess.scalar(
            select(func.count())
            .select_from(Review)
            .join(sub, Review.id == sub.c.review_id)
            .join(Item, Item.id == Review.item_id)
            .where(
                Item.batch_id == batch_id,
                Review.label.is_not(None),
                Review.label != Review.model_label,
            )
        )
        or 0
    )


def last_review_at(sess: Session, batch_id: int) -> Any:
    """When a decision on the batch was last made (a re-export is due if after the export)."""
    return sess.scalar(
        select(func.max(Review.created_at))
        .join(Item, Item.id == Review.item_id)
        .where(Item.batch_id == batch_id)
    )
