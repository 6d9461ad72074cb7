"""Upload (``/upload``): image files or CSVs dropped into the browser become batches by the
inbox's route (digits/app/uploads.py); the page then follows their progress."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from digits.app.uploads import UploadRefused, enqueue_upload
from digits.core import queries
from digits.core.settings import get_settings
from digits.web.common import Writer, render

router = APIRouter()
#: Multipart overhead allowed per file on top of DIGITS_MAX_FILE_BYTES (headers, boundary).
PART_OVERHEAD = 64 * 1024


@router.get("/upload", response_class=HTMLResponse, include_in_schema=False)
def upload_page(request: Request) -> Response:
    settings = get_settings()
    return render(
        request,
        "upload.html",
        workers=len(queries.connected_workers()),
        max_files=settings.max_upload_files,
        max_bytes=settings.max_file_bytes,
    )


@router.post("/upload", tags=["api"])
async def upload(request: Request, _: str = Writer) -> dict[str, Any]:
    """Multipart ``files`` (one or more image files or Kaggle CSVs) → the batches made:
    ``{"batches": [{"batch_id", "kind", "name", "items", "errors", "failed"}], "workers"}``.
    Refused whole (nothing created) when a file is too big (413), there are too many files
    (413) or a file is neither an accepted image nor a digits CSV (415)."""
    settings = get_settings()
    declared = request.headers.get("content-length", "")
    ceiling = settings.max_upload_files * (settings.max_file_bytes + PART_OVERHEAD)
    if declared.isdigit() and int(declared) > ceiling:
        raise HTTPException(413, "upload larger than DIGITS_MAX_UPLOAD_FILES × MAX_FILE_BYTES")
    try:
        form = await request.form(max_files=settings.max_upload_files + 1, max_fields=100)
    except StarletteHTTPException as exc:  # the parser's own limits, or a malformed body
        if "Too many files" in str(exc.detail):
            raise HTTPException(
                413,
                f"more than {settings.max_upload_files:,} files in one upload "
                "(DIGITS_MAX_UPLOAD_FILES)",
            ) from None
        raise HTTPException(400, f"cannot read this upload: {exc.detail}") from None
    files = [v for v in form.getlist("files") if isinstance(v, UploadFile)]
    try:
        made = await run_in_threadpool(
            enqueue_upload, [(f.filename or "unnamed", f.file) for f in files]
        )
    except UploadRefused as exc:
        raise HTTPException(exc.status, str(exc)) from None
    finally:
        await form.close()
    return {
        "batches": [b.as_dict() for b in made],
        "workers": len(queries.connected_workers()),
    }


@router.get("/upload/progress", tags=["api"])
def upload_progress(batch: Annotated[list[int] | None, Query()] = None) -> dict[str, Any]:
    """Progress of the batches an upload made (``?batch=3&batch=4``) and how many workers are
    connected: what the upload page polls until every batch has finished."""
    rows = queries.batch_progress(batch[:100]) if batch else []
    return {
        "batches": [
            b.as_dict() | {"shown_status": b.shown_status, "finished": b.finished} for b in rows
        ],
        "workers": len(queries.connected_workers()),
    }
