"""What the batch and item pages and the JSON API show, read from the database and shaped by
pure functions (so the numbers and the chart geometry are tested without a server).

The batch's counts come from :func:`digits.core.queries.batch_progress` (what `digits status`
shows); its items from :func:`digits.core.queries.results_query` (what `digits results`
reads) narrowed by an :class:`ItemFilter`; the label distribution, confidence histogram and
confusion matrix are SQL aggregates, so an 80,000-item batch costs three GROUP BYs, not a
Python loop over its rows. Every row carries ``reviewed_label`` (the current decision of a
person, if any) and ``final_label`` (that, else the prediction): what the outputs write.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, Select, case, func, select

from digits.core import queries, reviews
from digits.core.db import aware, session
from digits.core.queries import RESULT_COLUMNS
from digits.core.schema import PROBABILITY_COLUMNS, Batch, Item, ItemError, Prediction, Review
from digits.core.settings import get_settings

CONFIDENCE_BINS = 20
PAGE_SIZES = (24, 48, 96)
PAGE_SIZE = 48
API_LIMIT = 1000
"""Most rows one API call returns (page on with ``offset``)."""
RESULT_FIELDS = list(RESULT_COLUMNS)  # it carries reviewed_label and final_label already


# ---------------------------------------------------------------- filters
@dataclass(frozen=True)
class ItemFilter:
    """The batch page's and the API's filters (GET parameters, so a filtered view is a link).

    ``label``: predicted digit; ``below``: calibrated confidence strictly below; ``needs_review``:
    flagged items only; ``errors``: items that failed (no prediction) only."""

    label: int | None = None
    below: float | None = None
    needs_review: bool = False
    errors: bool = False

    @property
    def active(self) -> bool:
        return self != ItemFilter()

    def params(self) -> dict[str, str]:
        """The filter as query parameters (only those set)."""
        out: dict[str, str] = {}
        if self.label is not None:
            out["label"] = str(self.label)
        if self.below is not None:
            out["below"] = f"{self.below:g}"
        if self.needs_review:
            out["needs_review"] = "1"
        if self.errors:
            out["errors"] = "1"
        return out

    def query(self, **extra: Any) -> str:
        """``?label=3&below=0.9&offset=48`` (empty string when nothing is set)."""
        params = self.params() | {k: str(v) for k, v in extra.items() if v not in (None, "", 0)}
        return "?" + urlencode(params) if params else ""


TRUE = {"1", "true", "on", "yes"}


def parse_filter(params: Mapping[str, str]) -> tuple[ItemFilter, list[str]]:
    """The filter from a page's query string, and what was ignored and why (a page shows the
    problem instead of failing; the API validates strictly through its typed parameters)."""
    problems: list[str] = []
    label: int | None = None
    below: float | None = None
    raw_label = (params.get("label") or "").strip()
    if raw_label:
        if raw_label.isdigit() and 0 <= int(raw_label) <= 9:
            label = int(raw_label)
        else:
            problems.append(f"label must be a digit 0–9, not {raw_label[:20]!r}: ignored")
    raw_below = (params.get("below") or "").strip()
    if raw_below:
        try:
            value = float(raw_below)
        except ValueError:
            value = math.nan
        if 0 < value <= 1:
            below = value
        else:
            problems.append(
                f"below must be a confidence in (0, 1], not {raw_below[:20]!r}: ignored"
            )
    return (
        ItemFilter(
            label=label,
            below=below,
            needs_review=(params.get("needs_review") or "").lower() in TRUE,
            errors=(params.get("errors") or "").lower() in TRUE,
        ),
        problems,
    )


def page_bounds(raw_limit: str | None, raw_offset: str | None) -> tuple[int, int]:
    """A page size among :data:`PAGE_SIZES` (default :data:`PAGE_SIZE`) and an offset ≥ 0."""
    limit = int(raw_limit) if raw_limit and raw_limit.isdigit() else PAGE_SIZE
    offset = int(raw_offset) if raw_offset and raw_offset.isdigit() else 0
    return (limit if limit in PAGE_SIZES else PAGE_SIZE), offset


@dataclass(frozen=True)
class Pager:
    total: int
    limit: int
    offset: int

    @property
    def first(self) -> int:
        """1-based number of the first row shown (0 when none)."""
        return min(self.offset + 1, self.total) if self.total else 0

    @property
    def last(self) -> int:
        return min(self.offset + self.limit, self.total)

    @property
    def previous(self) -> int | None:
        return max(0, self.offset - self.limit) if self.offset > 0 else None

    @property
    def next(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None


# ---------------------------------------------------------------- results
def filtered_query(f: ItemFilter, batch_id: int | None = None) -> Select[Any]:
    """`digits results`' query narrowed by the filter (items in batch and ImageId order)."""
    query = queries.results_query(batch_id=batch_id, below=f.below)
    if f.label is not None:
        query = query.where(Prediction.label == f.label)
    if f.needs_review:
        query = query.where(Prediction.needs_review.is_(True))
    if f.errors:
        query = query.where(Item.status == "error")
    return query


def with_reviews(row: dict[str, Any], reviewed: Mapping[int, int]) -> dict[str, Any]:
    """Add ``reviewed_label`` (a person's current label, else None) and ``final_label``
    (reviewed if any, else predicted; None for an item without either)."""
    given = reviewed.get(row["item_id"])
    return row | {
        "reviewed_label": given,
        "final_label": given if given is not None else row["label"],
    }


def _reviewed_of(decisions: Mapping[int, Review]) -> dict[int, int]:
    return {i: int(r.label) for i, r in decisions.items() if r.label is not None}


def result_page(
    f: ItemFilter, batch_id: int | None = None, limit: int = PAGE_SIZE, offset: int = 0
) -> tuple[int, list[dict[str, Any]]]:
    """(rows matching in all, this page's rows with their reviewed and final labels)."""
    query = filtered_query(f, batch_id)
    with session() as sess:
        total = int(
            sess.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
        )
        rows = [
            dict(zip(RESULT_COLUMNS, r, strict=True))
            for r in sess.execute(query.limit(limit).offset(offset))
        ]
        reviewed = _reviewed_of(reviews.current_decisions(sess, [r["item_id"] for r in rows]))
    return total, [with_reviews(r, reviewed) for r in rows]


def iter_filtered(f: ItemFilter, batch_id: int) -> Iterator[dict[str, Any]]:
    """Every matching row of one batch, streamed (pages of ``queries.RESULT_PAGE`` from the
    database), for the CSV and JSON downloads."""
    with session() as sess:
        reviewed = reviews.reviewed_labels(sess, batch_id)
        query = filtered_query(f, batch_id).execution_options(yield_per=queries.RESULT_PAGE)
        for r in sess.execute(query):
            yield with_reviews(dict(zip(RESULT_COLUMNS, r, strict=True)), reviewed)


def csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """``digits results --format csv`` with the two review columns, one line at a time."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, RESULT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def json_chunks(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    """A JSON array written one row at a time (a download of any size in constant memory)."""
    import json

    yield "["
    for n, row in enumerate(rows):
        yield ("," if n else "") + "\n" + json.dumps(row)
    yield "\n]\n"


# ---------------------------------------------------------------- batch
@dataclass
class BatchStats:
    """A batch's page: its progress (as `digits status`), the charts' counts, reviews."""

    progress: queries.BatchProgress
    label_counts: list[int]
    confidence_bins: list[int]
    confusion: list[list[int]] | None
    reviewed: int
    overrides: int
    waiting: dict[str, int]
    estimate: reviews.Estimate
    exports: list[dict[str, Any]]
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.progress.as_dict(),
            "shown_status": self.progress.shown_status,
            "label_counts": self.label_counts,
            "confidence_bins": self.confidence_bins,
            "confusion": self.confusion,
            "reviewed": self.reviewed,
            "overrides": self.overrides,
            "review_waiting": self.waiting,
            "estimate": self.estimate.as_dict() | {"text": self.estimate.text()},
            "exports": self.exports,
            "review_threshold": self.threshold,
        }


def bins_from(buckets: Mapping[int, int], bins: int = CONFIDENCE_BINS) -> list[int]:
    """Counts per bucket ``int(confidence * bins)`` → ``bins`` counts (1.0 falls in the last)."""
    out = [0] * bins
    for bucket, n in buckets.items():
        out[min(max(int(bucket), 0), bins - 1)] += int(n)
    return out


def confusion_from(triples: Sequence[tuple[int, int, int]]) -> list[list[int]]:
    """(true, predicted, count) → 10×10 counts, rows = true digit, columns = predicted."""
    matrix = [[0] * 10 for _ in range(10)]
    for true, predicted, n in triples:
        matrix[int(true)][int(predicted)] += int(n)
    return matrix


def batch_stats(batch_id: int) -> BatchStats | None:
    """None for an unknown batch."""
    found = queries.batch_progress([batch_id])
    if not found:
        return None
    pinned = (
        select(Prediction.label, Prediction.confidence, Item.true_label)
        .join(Item, Item.id == Prediction.item_id)
        .join(Batch, Batch.id == Item.batch_id)
        .where(Item.batch_id == batch_id, Prediction.model_version == Batch.model_version)
        .subquery()
    )
    # bin index = how many bin edges the confidence reaches: the same on SQLite and PostgreSQL
    # (a CAST to integer truncates on one and rounds on the other; FLOOR is not in SQLite)
    reached = [
        case((pinned.c.confidence >= edge / CONFIDENCE_BINS, 1), else_=0)
        for edge in range(1, CONFIDENCE_BINS)
    ]
    bucket: ColumnElement[int] = reached[0]
    for term in reached[1:]:
        bucket = bucket + term
    with session() as sess:
        labels: dict[int, int] = dict(
            sess.execute(select(pinned.c.label, func.count()).group_by(pinned.c.label)).all()
        )
        buckets: dict[int, int] = dict(
            sess.execute(select(bucket, func.count()).group_by(bucket)).all()
        )
        triples = sess.execute(
            select(pinned.c.true_label, pinned.c.label, func.count())
            .where(pinned.c.true_label.is_not(None))
            .group_by(pinned.c.true_label, pinned.c.label)
        ).all()
        reviewed = len(reviews.reviewed_labels(sess, batch_id))
        overrides = reviews.overrides(sess, batch_id)
    settings = get_settings()
    return BatchStats(
        progress=found[0],
        label_counts=[int(labels.get(d, 0)) for d in range(10)],
        confidence_bins=bins_from(buckets),
        confusion=confusion_from([(t, p, n) for t, p, n in triples]) if triples else None,
        reviewed=reviewed,
        overrides=overrides,
        waiting=reviews.queue_counts(batch_id, share=settings.audit_share),
        estimate=reviews.estimate(batch_id),
        exports=queries.last_exports(5, batch_id),
        threshold=settings.confidence_threshold,
    )


def batch_list() -> list[dict[str, Any]]:
    """Every batch with its progress, newest first (the API's ``/api/batches``)."""
    return [b.as_dict() | {"shown_status": b.shown_status} for b in queries.batch_progress()[::-1]]


# ---------------------------------------------------------------- charts (SVG geometry)
@dataclass(frozen=True)
class Bar:
    """One bar of a server-drawn SVG chart: geometry as SVG attributes (no inline CSS, which
    the console's Content-Security-Policy forbids)."""

    x: float
    y: float
    width: float
    height: float
    value: int | float
    label: str
    title: str


CHART_W = 400
CHART_H = 140


def column_bars(
    values: Sequence[int],
    labels: Sequence[str],
    titles: Sequence[str],
    width: float = CHART_W,
    height: float = CHART_H,
    log: bool = False,
) -> list[Bar]:
    """Vertical bars filling ``width`` × ``height`` (the tallest reaches the top). ``log``:
    heights ∝ log(1 + n), so a histogram piled up near 1.0 still shows its thin tail; a
    non-zero count is never drawn thinner than one unit."""
    scale = [math.log1p(v) if log else float(v) for v in values]
    top = max(scale, default=0.0) or 1.0
    step = width / max(len(values), 1)
    bars = []
    for n, (value, s) in enumerate(zip(values, scale, strict=True)):
        h = height * s / top
        if value and h < 1:
            h = 1.0
        bars.append(
            Bar(
                x=round(n * step + step * 0.1, 2),
                y=round(height - h, 2),
                width=round(step * 0.8, 2),
                height=round(h, 2),
                value=value,
                label=labels[n],
                title=titles[n],
            )
        )
    return bars


def label_bars(counts: Sequence[int]) -> list[Bar]:
    total = sum(counts) or 1
    return column_bars(
        counts,
        [str(d) for d in range(10)],
        [f"{d}: {n:,} items ({n / total:.1%})" for d, n in enumerate(counts)],
    )


def confidence_bars(bins: Sequence[int]) -> list[Bar]:
    width = 1 / len(bins)
    return column_bars(
        bins,
        [f"{i * width:.2f}" for i in range(len(bins))],
        [f"{i * width:.2f}–{(i + 1) * width:.2f}: {n:,} items" for i, n in enumerate(bins)],
        log=True,
    )


def probability_bars(probabilities: Sequence[float], width: float = 300) -> list[Bar]:
    """Horizontal bars, one row per digit, length ∝ probability (the item page)."""
    row = 22
    return [
        Bar(
            x=0,
            y=d * row,
            width=round(width * max(0.0, min(1.0, p)), 2),
            height=row - 6,
            value=p,
            label=str(d),
            title=f"{d}: {p:.4f}",
        )
        for d, p in enumerate(probabilities)
    ]


# ---------------------------------------------------------------- item
def top3(probabilities: Sequence[float]) -> list[tuple[int, float]]:
    """The three most probable digits, most probable first (ties: the smaller digit)."""
    ranked = sorted(range(len(probabilities)), key=lambda d: (-probabilities[d], d))
    return [(d, probabilities[d]) for d in ranked[:3]]


def item_detail(item_id: int) -> dict[str, Any] | None:
    """An item with every prediction (one per model version: a rescore adds rows), its
    decisions oldest first, and its reviewed and final labels; None when unknown."""
    with session() as sess:
        found = sess.execute(
            select(Item, Batch, ItemError.reason)
            .join(Batch, Batch.id == Item.batch_id)
            .outerjoin(ItemError, ItemError.item_id == Item.id)
            .where(Item.id == item_id)
        ).first()
        if found is None:
            return None
        item, batch, reason = found
        scored_id = item.duplicate_of or item.id  # a duplicate shows its original's verdicts
        predictions = [
            {
                "model_version": p.model_version,
                "label": p.label,
                "confidence": p.confidence,
                "margin": p.margin,
                "needs_review": p.needs_review,
                "review_reason": p.review_reason,
                "probabilities": [float(getattr(p, c)) for c in PROBABILITY_COLUMNS],
                "top3": top3([float(getattr(p, c)) for c in PROBABILITY_COLUMNS]),
                "created_at": aware(p.created_at).isoformat() if p.created_at else None,
                "pinned": p.model_version == batch.model_version,
            }
            for p in sess.scalars(
                select(Prediction)
                .where(Prediction.item_id == scored_id)
                .order_by(Prediction.model_version)
            )
        ]
        info = {
            "item_id": item.id,
            "batch_id": item.batch_id,
            "batch_kind": batch.kind,
            "batch_source": batch.source,
            "image_id": item.position,
            "source": item.source_ref,
            "status": item.status,
            "sha256": item.sha256,
            "true_label": item.true_label,
            "duplicate_of": item.duplicate_of,
            "error": reason,
            "model_version": batch.model_version,
        }
    history = reviews.history(item_id)
    pinned = next((p for p in predictions if p["pinned"]), None)
    current = history[-1] if history else None
    reviewed = current["label"] if current else None
    label = pinned["label"] if pinned else None
    return info | {
        "label": label,
        "confidence": pinned["confidence"] if pinned else None,
        "needs_review": pinned["needs_review"] if pinned else None,
        "review_reason": pinned["review_reason"] if pinned else None,
        "probabilities": pinned["probabilities"] if pinned else None,
        "reviewed_label": reviewed,
        "final_label": reviewed if reviewed is not None else label,
        "predictions": predictions,
        "reviews": history,
    }


def review_rows(
    batch_id: int | None = None, limit: int = 100, offset: int = 0
) -> tuple[int, list[dict[str, Any]]]:
    """Every decision (undos and superseded ones too, newest first), of one batch or all;
    ``current``: the item's newest decision, the one the outputs read."""
    query = select(Review, Item.batch_id, Item.position, Item.source_ref).join(
        Item, Item.id == Review.item_id
    )
    if batch_id is not None:
        query = query.where(Item.batch_id == batch_id)
    with session() as sess:
        total = int(
            sess.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
        )
        rows = sess.execute(query.order_by(Review.id.desc()).limit(limit).offset(offset)).all()
        current = reviews.current_decisions(sess, sorted({r.item_id for r, *_ in rows}))
        return total, [
            {
                "id": r.id,
                "item_id": r.item_id,
                "batch_id": int(b),
                "image_id": int(pos),
                "source": src,
                "label": r.label,
                "model_label": r.model_label,
                "model_version": r.model_version,
                "kind": r.kind,
                "reviewer": r.reviewer,
                "created_at": aware(r.created_at).isoformat(),
                "current": current.get(r.item_id) is not None and current[r.item_id].id == r.id,
            }
            for r, b, pos, src in rows
        ]
