"""Web console pages: the dashboard, a batch (counts, charts, the items as a filtered grid,
downloads), an item (its pictures, probabilities, predictions by every version, reviews) and
the item pictures, served by item id only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from digits.core import queries, reviews
from digits.core.settings import get_settings
from digits.web import data, pixels
from digits.web.common import render
from model_store.aliases import active_model
from scheduler.export import ExportError, collect, submission_lines

router = APIRouter()

DASHBOARD_BATCHES = 20


def dashboard_data() -> dict[str, Any]:
    """What the dashboard shows, as JSON (the page renders it and refreshes it from
    ``/api/dashboard`` every two seconds without reloading)."""
    settings = get_settings()
    batches = queries.batch_progress()[-DASHBOARD_BATCHES:][::-1]
    try:
        active: dict[str, Any] | None = active_model().as_dict()
    except Exception as exc:  # a broken alias must not take the dashboard down
        active = {"version": None, "source": "error", "why": str(exc)}
    return {
        "batches": [b.as_dict() | {"shown_status": b.shown_status} for b in batches],
        "queue": queries.queue_depth(),
        "workers": queries.connected_workers(),
        "model": active,
        "exports": queries.last_exports(5),
        "review": reviews.queue_counts(share=settings.audit_share),
        "estimate": reviews.estimate().as_dict() | {"text": reviews.estimate().text()},
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard(request: Request) -> Response:
    return render(request, "dashboard.html", data=dashboard_data())


def not_found(request: Request, what: str) -> Response:
    return render(request, "not_found.html", 404, what=what)


@router.get("/batches/{batch_id:int}", response_class=HTMLResponse, include_in_schema=False)
def batch_page(request: Request, batch_id: int) -> Response:
    stats = data.batch_stats(batch_id)
    if stats is None:
        return not_found(request, f"batch {batch_id} does not exist")
    params = request.query_params
    item_filter, problems = data.parse_filter(params)
    limit, offset = data.page_bounds(params.get("limit"), params.get("offset"))
    total, rows = data.result_page(item_filter, batch_id, limit, offset)
    return render(
        request,
        "batch.html",
        stats=stats,
        batch=stats.progress,
        item_filter=item_filter,
        page_default=data.PAGE_SIZE,
        problems=problems,
        rows=rows,
        pager=data.Pager(total, limit, offset),
        page_sizes=data.PAGE_SIZES,
        label_bars=data.label_bars(stats.label_counts),
        confidence_bars=data.confidence_bars(stats.confidence_bins),
        chart={"width": data.CHART_W, "height": data.CHART_H},
    )


def _download(lines: Iterator[str], name: str, media_type: str) -> Response:
    return StreamingResponse(
        lines,
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/batches/{batch_id:int}/submission.csv", include_in_schema=False)
def batch_submission(request: Request, batch_id: int, partial: bool = False) -> Response:
    """The Kaggle submission as `digits export` writes it (scheduler.export), nothing
    recorded: a download is not an export."""
    try:
        lines = submission_lines(collect(batch_id), partial=partial)
    except ExportError as exc:
        if not queries.batch_exists(batch_id):
            return not_found(request, f"batch {batch_id} does not exist")
        return render(request, "not_found.html", 409, what=str(exc), batch_id=batch_id)
    return _download(iter(lines), f"batch-{batch_id}-submission.csv", "text/csv")


@router.get("/batches/{batch_id:int}/results.{fmt}", include_in_schema=False)
def batch_results(request: Request, batch_id: int, fmt: str) -> Response:
    """Every item of the batch (narrowed by the page's filters) with its reviewed and final
    label, streamed as CSV or JSON."""
    if fmt not in ("csv", "json") or not queries.batch_exists(batch_id):
        return not_found(request, f"batch {batch_id} has no results.{fmt[:10]}")
    item_filter, _ = data.parse_filter(request.query_params)
    rows = data.iter_filtered(item_filter, batch_id)
    if fmt == "csv":
        return _download(data.csv_lines(rows), f"batch-{batch_id}-results.csv", "text/csv")
    return _download(data.json_chunks(rows), f"batch-{batch_id}-results.json", "application/json")


@router.get("/items/{item_id:int}", response_class=HTMLResponse, include_in_schema=False)
def item_page(request: Request, item_id: int) -> Response:
    item = data.item_detail(item_id)
    if item is None:
        return not_found(request, f"item {item_id} does not exist")
    probabilities = item["probabilities"]
    return render(
        request,
        "item.html",
        item=item,
        bars=data.probability_bars(probabilities) if probabilities else [],
    )


def _picture(found: pixels.Picture | None) -> Response:
    if found is None:
        shown = pixels.placeholder("unknown item")
        return Response(
            shown.png,
            404,
            media_type="image/png",
            headers={"Cache-Control": "no-store", "X-Digits-Placeholder": "unknown item"},
        )
    if found.placeholder:
        return Response(
            found.png,
            media_type="image/png",
            headers={"Cache-Control": "no-store", "X-Digits-Placeholder": found.placeholder},
        )
    return Response(
        found.png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/items/{item_id:int}/input.png", include_in_schema=False)
def item_input(item_id: int) -> Response:
    """The original: the image file (read as the workers read it) or the CSV row drawn."""
    return _picture(pixels.input_picture(item_id))


@router.get("/items/{item_id:int}/model.png", include_in_schema=False)
def item_model_input(item_id: int) -> Response:
    """The 28×28 the model saw, through the workers' preprocessing."""
    return _picture(pixels.model_picture(item_id))
