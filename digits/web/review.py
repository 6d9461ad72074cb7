"""Web console: the review queue (`/review`).

The page is a shell; its script (static/review.js) loads the queue a page at a time from
``/review/queue.json`` and prefetches the next page and the next items' images, so a person
going through a hundred items with the keyboard never waits for a reload. Every decision is a
POST that adds a row to ``reviews`` (digits.core.reviews): decide, undo (the reviewer's last
decision, withdrawn by another row), and accept-all-above for one batch's flagged items
(never audit items: the accuracy estimate must rest on what a person saw). Every write goes
through the ``Writer`` dependency (token when one is set, CSRF token always for browsers).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from digits.core import reviews
from digits.core.db import session
from digits.core.schema import Batch
from digits.core.settings import get_settings
from digits.web.common import Writer, render

router = APIRouter(tags=["review"])

PAGE_SIZE = 25
"""Items per queue.json page: the script asks for the next page when 8 are left."""


class Decision(BaseModel):
    item_id: int
    label: int = Field(ge=0, le=9, description="The digit the person sees.")


class Undo(BaseModel):
    batch_id: int | None = Field(None, description="Only the last decision in this batch.")


class Accept(BaseModel):
    batch_id: int
    threshold: float = Field(ge=0, le=1, description="Confirm flagged items at or above.")


def _share() -> float:
    return get_settings().audit_share


def _known_batch(batch_id: int | None) -> None:
    if batch_id is None:
        return
    with session() as sess:
        if sess.get(Batch, batch_id) is None:
            raise HTTPException(404, f"batch {batch_id} does not exist")


def queue_entry(item: reviews.QueueItem) -> dict[str, Any]:
    """A queue item as the page needs it: the model's answer and where its pictures are."""
    return item.as_dict() | {
        "input_url": f"/items/{item.item_id}/input.png",
        "model_url": f"/items/{item.item_id}/model.png",
        "item_url": f"/items/{item.item_id}",
    }


@router.get("/review", response_class=HTMLResponse, include_in_schema=False)
def review_page(request: Request, batch: int | None = None) -> Response:
    try:
        _known_batch(batch)
    except HTTPException as exc:
        return render(request, "review.html", 404, batch=batch, counts=None, error=exc.detail)
    counts = reviews.queue_counts(batch, share=_share())
    return render(
        request,
        "review.html",
        batch=batch,
        counts=counts,
        error=None,
        page_size=PAGE_SIZE,
        threshold=get_settings().confidence_threshold,
    )


@router.get("/review/queue.json")
def review_queue(
    batch: int | None = None,
    offset: int = Query(0, ge=0),
    limit: int = Query(PAGE_SIZE, ge=1, le=500),
) -> dict[str, Any]:
    """Items waiting for a decision, least confident first (flagged, then audit items of
    equal confidence order), across batches or for ``batch``; with the waiting counts."""
    _known_batch(batch)
    share = _share()
    items = reviews.review_queue(batch, share=share, limit=limit, offset=offset)
    return {
        "items": [queue_entry(i) for i in items],
        "counts": reviews.queue_counts(batch, share=share),
        "offset": offset,
        "limit": limit,
    }


def _counts_for(batch_id: int | None) -> dict[str, int]:
    return reviews.queue_counts(batch_id, share=_share())


@router.post("/review/decide")
def decide(decision: Decision, reviewer: str = Writer) -> dict[str, Any]:
    """Record the person's label for an item (a second decision supersedes the first; both
    stay). No counts in the answer: counting the queue costs more than the decision, and
    the page adjusts its counts itself (and takes the true ones with every queue page)."""
    try:
        row = reviews.record(decision.item_id, decision.label, reviewer, share=_share())
    except reviews.ReviewError as exc:
        status = 404 if "does not exist" in str(exc) else 409
        raise HTTPException(status, str(exc)) from None
    return {
        "review_id": row.id,
        "item_id": row.item_id,
        "label": row.label,
        "model_label": row.model_label,
        "kind": row.kind,
        "reviewer": row.reviewer,
    }


@router.post("/review/undo")
def undo(body: Undo, reviewer: str = Writer) -> dict[str, Any]:
    """Withdraw the reviewer's newest decision (in ``batch_id`` if given); the item returns
    to the queue. ``item_id`` is None when there was nothing to undo."""
    row = reviews.undo_last(reviewer, body.batch_id)
    return {
        "item_id": row.item_id if row else None,
        "counts": _counts_for(body.batch_id),
    }


@router.post("/review/accept")
def accept(body: Accept, reviewer: str = Writer) -> dict[str, Any]:
    """Confirm the model's label for every flagged item of the batch still waiting with a
    confidence at or above ``threshold`` (audit items stay in the queue)."""
    _known_batch(body.batch_id)
    share = _share()
    done = reviews.accept_all_above(body.batch_id, body.threshold, reviewer, share=share)
    return {"accepted": done, "counts": reviews.queue_counts(body.batch_id, share=share)}
