"""The JSON API under /api/: the same data as the pages (batches, results with filters and
paging, items with every prediction and review, reviews), with pydantic response models so the
OpenAPI schema at ``/api/openapi.json`` (and its page ``/api/docs``) says what each field is.

``/api/docs`` is Swagger UI served from the pinned ``swagger-ui-bundle`` package (no CDN: the
console runs offline) with its start-up code in a static file (the CSP forbids inline scripts).
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, Field

from digits.core import queries
from digits.web import data
from digits.web.common import render
from digits.web.pages import dashboard_data

router = APIRouter(prefix="/api", tags=["api"])


@router.get("/dashboard")
def dashboard() -> dict[str, Any]:
    """Batches with progress, queue depth, workers, the production model, the last exports,
    items waiting for review and the estimated accuracy (what the dashboard shows)."""
    return dashboard_data()


# ---------------------------------------------------------------- response models
class BatchOut(BaseModel):
    """A batch and its progress (what `digits status` shows)."""

    batch_id: int
    source: str = Field(description="The input: a CSV file or a folder of images.")
    kind: str = Field(description="csv or images")
    status: str = Field(description="enqueueing, running, done, failed or cancelled")
    shown_status: str = Field(description="status, or ingesting/interrupted while enqueueing")
    model_version: int = Field(description="The model version the batch is pinned to.")
    items: int
    predicted: int
    errors: int
    duplicates: int
    pending: int
    flagged: int = Field(description="Predictions flagged needs_review.")
    labelled: int = Field(description="Items with a true label and a prediction.")
    correct: int
    accuracy: float | None = Field(description="correct / labelled; null without true labels.")
    progress: str
    chunks: dict[str, int]
    error: str | None
    seconds: float | None
    scoring_seconds: float | None
    first_claim: str | None
    last_write: str | None
    ingest: str | None


class EstimateOut(BaseModel):
    """Estimated accuracy of the unflagged predictions, from the reviewed audit items."""

    reviewed: int
    correct: int
    accuracy: float | None
    low: float | None = Field(description="95 % Wilson interval, lower bound.")
    high: float | None
    text: str


class ExportOut(BaseModel):
    batch_id: int
    path: str
    trigger: str
    rows: int
    created_at: str


class BatchDetail(BatchOut):
    """A batch with its charts' counts, reviews and exports (what the batch page shows)."""

    label_counts: list[int] = Field(description="Items predicted 0, 1, …, 9.")
    confidence_bins: list[int] = Field(
        description=f"Items per calibrated-confidence bin of width 1/{data.CONFIDENCE_BINS}."
    )
    confusion: list[list[int]] | None = Field(
        description="10×10 counts, rows true digit, columns predicted; null without labels."
    )
    reviewed: int = Field(description="Items with a current reviewed label.")
    overrides: int = Field(description="Reviewed labels that differ from the model's.")
    review_waiting: dict[str, int] = Field(description="Flagged and audit items waiting.")
    estimate: EstimateOut
    exports: list[ExportOut]
    review_threshold: float


class ResultRow(BaseModel):
    """One item with its prediction by the batch's pinned version."""

    batch_id: int
    item_id: int
    image_id: int = Field(description="1-based position in the input: the Kaggle ImageId.")
    source: str
    status: str = Field(description="pending, predicted, error or duplicate")
    label: int | None = Field(description="The model's label.")
    confidence: float | None
    margin: float | None
    needs_review: bool | None
    model_version: int | None
    true_label: int | None
    error: str | None
    reviewed_label: int | None = Field(description="A person's current label, if any.")
    final_label: int | None = Field(description="reviewed_label if any, else label.")
    review_reason: str | None = Field(
        default=None, description="Why it is flagged beyond a low confidence, if so."
    )


class ResultsPage(BaseModel):
    total: int = Field(description="Rows matching the filters, in all.")
    limit: int
    offset: int
    items: list[ResultRow]


class PredictionOut(BaseModel):
    model_version: int
    label: int
    confidence: float
    margin: float
    needs_review: bool
    review_reason: str | None = None
    probabilities: list[float] = Field(description="Calibrated probability of 0, 1, …, 9.")
    top3: list[tuple[int, float]]
    created_at: str | None
    pinned: bool = Field(description="This is the version the batch is pinned to.")


class ReviewOut(BaseModel):
    id: int
    label: int | None = Field(description="The label given; null: a decision withdrawn.")
    model_label: int
    model_version: int
    kind: str = Field(description="flagged, audit, bulk or manual")
    reviewer: str
    created_at: str


class ItemOut(BaseModel):
    """An item with every prediction (one per model version) and every decision."""

    item_id: int
    batch_id: int
    batch_kind: str
    batch_source: str
    image_id: int
    source: str
    status: str
    sha256: str | None
    true_label: int | None
    duplicate_of: int | None
    error: str | None
    model_version: int
    label: int | None
    confidence: float | None
    needs_review: bool | None
    review_reason: str | None = None
    probabilities: list[float] | None
    reviewed_label: int | None
    final_label: int | None
    predictions: list[PredictionOut]
    reviews: list[ReviewOut] = Field(description="Oldest first; the last one is current.")
    input_url: str = Field(description="The original, as a PNG.")
    model_input_url: str = Field(description="The 28×28 the model saw, as a PNG.")


class ReviewRow(ReviewOut):
    item_id: int
    batch_id: int
    image_id: int
    source: str
    current: bool = Field(description="The item's newest decision (what the outputs read).")


class ReviewsPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[ReviewRow]


# ---------------------------------------------------------------- endpoints
def _unknown_batch(batch_id: int) -> HTTPException:
    return HTTPException(404, f"batch {batch_id} does not exist")


@router.get("/batches")
def batches() -> list[BatchOut]:
    """Every batch with its progress, newest first."""
    return [BatchOut.model_validate(b) for b in data.batch_list()]


@router.get("/batches/{batch_id}", responses={404: {"description": "No such batch."}})
def batch(batch_id: int) -> BatchDetail:
    """One batch: its progress, label distribution, confidence histogram, confusion matrix
    (when it has true labels), reviews, accuracy estimate and exports."""
    stats = data.batch_stats(batch_id)
    if stats is None:
        raise _unknown_batch(batch_id)
    return BatchDetail.model_validate(stats.as_dict())


@router.get("/results", responses={404: {"description": "No such batch."}})
def results(
    batch: int | None = Query(None, description="One batch (default: every batch)."),
    label: int | None = Query(None, ge=0, le=9, description="Predicted label."),
    below: float | None = Query(None, gt=0, le=1, description="Confidence strictly below."),
    needs_review: bool = Query(False, description="Flagged items only."),
    errors: bool = Query(False, description="Failed items only."),
    limit: int = Query(100, ge=1, le=data.API_LIMIT),
    offset: int = Query(0, ge=0),
) -> ResultsPage:
    """Items with their predictions, reviewed and final labels, in batch and ImageId order,
    filtered and paged (``total`` counts every match)."""
    if batch is not None and not queries.batch_exists(batch):
        raise _unknown_batch(batch)
    item_filter = data.ItemFilter(label, below, needs_review, errors)
    total, rows = data.result_page(item_filter, batch, limit, offset)
    return ResultsPage(
        total=total, limit=limit, offset=offset, items=[ResultRow.model_validate(r) for r in rows]
    )


@router.get("/items/{item_id}", responses={404: {"description": "No such item."}})
def item(item_id: int) -> ItemOut:
    """One item: its prediction by every model version and every decision on it."""
    found = data.item_detail(item_id)
    if found is None:
        raise HTTPException(404, f"item {item_id} does not exist")
    return ItemOut.model_validate(
        found
        | {
            "input_url": f"/items/{item_id}/input.png",
            "model_input_url": f"/items/{item_id}/model.png",
        }
    )


@router.get("/reviews", responses={404: {"description": "No such batch."}})
def review_list(
    batch: int | None = Query(None, description="One batch (default: every batch)."),
    limit: int = Query(100, ge=1, le=data.API_LIMIT),
    offset: int = Query(0, ge=0),
) -> ReviewsPage:
    """Every decision, newest first, withdrawn and superseded ones included (``current``
    marks the one that counts)."""
    if batch is not None and not queries.batch_exists(batch):
        raise _unknown_batch(batch)
    total, rows = data.review_rows(batch, limit, offset)
    return ReviewsPage(
        total=total, limit=limit, offset=offset, items=[ReviewRow.model_validate(r) for r in rows]
    )


# ---------------------------------------------------------------- offline API docs
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def openapi_30(node: Any) -> Any:
    """FastAPI's OpenAPI 3.1 schema rewritten as 3.0, which the pinned Swagger UI (4.15)
    renders ("does not specify a valid version field" otherwise): ``anyOf [X, null]`` becomes
    X with ``nullable``, a numeric ``exclusiveMinimum``/``exclusiveMaximum`` a bound with the
    boolean flag, ``prefixItems`` (a tuple) ``items`` of any of them, ``const`` a one-value
    ``enum``, ``examples`` one ``example``. ``/api/openapi.json`` itself stays 3.1."""
    if isinstance(node, list):
        return [openapi_30(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_30(v) for k, v in node.items()}
    if isinstance(out.get("openapi"), str):
        out["openapi"] = "3.0.3"
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            del out[key]
            if len(rest) == 1 and "$ref" in rest[0]:
                out["allOf"] = rest
            elif len(rest) == 1:
                out = rest[0] | out
            else:
                out[key] = rest
            out["nullable"] = True
    if isinstance(out.get("type"), list):
        types = [t for t in out["type"] if t != "null"]
        out["nullable"] = len(types) < len(out["type"])
        out["type"] = types[0] if types else "string"
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[flag] = value
            out[bound] = True
    if "prefixItems" in out:
        out["items"] = {"anyOf": out.pop("prefixItems")}
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list) and "type" in out:
        examples = out.pop("examples")
        if examples:
            out["example"] = examples[0]
    return out


@router.get("/docs/openapi.json", include_in_schema=False)
def api_docs_schema(request: Request) -> dict[str, Any]:
    """The schema as OpenAPI 3.0, for the docs page."""
    return dict(openapi_30(request.app.openapi()))


@functools.cache
def swagger_dir() -> Path:
    """The swagger-ui dist folder the package ships (``swagger_ui_bundle.swagger_ui_path``;
    imported by name: the package has no type information)."""
    return Path(importlib.import_module("swagger_ui_bundle").swagger_ui_path)


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def api_docs(request: Request) -> Response:
    """Swagger UI, from vendored files, started by /static/api-docs.js (no inline script)."""
    return render(request, "api_docs.html")


@router.get("/docs/assets/{name}", include_in_schema=False)
def api_docs_asset(name: str) -> Response:
    """Swagger UI's files from the pinned swagger-ui-bundle package: a fixed list of names,
    never a path from the request."""
    if name not in SWAGGER_FILES:
        raise HTTPException(404, "no such file")
    return FileResponse(
        swagger_dir() / name,
        media_type=SWAGGER_FILES[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )
