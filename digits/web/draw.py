"""Draw a digit (``/draw``) and ``POST /api/predict``: one image answered at once by the
production model, through the inbox's own preprocessing and result shaping
(digits/app/predict.py). TensorFlow is imported on the first prediction only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from digits.app.predict import Rejected, predict_image
from digits.core.settings import get_settings
from digits.web.common import Writer, render

router = APIRouter()


def answer(data: bytes) -> dict[str, Any]:
    """The JSON of one prediction, or 413/422 with the reason the inbox would record."""
    try:
        return predict_image(data).as_dict()
    except Rejected as exc:
        status = 413 if str(exc).startswith("file too large") else 422
        raise HTTPException(status, f"cannot score this image: {exc}") from None


async def read_limited(request: Request) -> bytes:
    """The request body, refused once it passes DIGITS_MAX_FILE_BYTES (read in pieces)."""
    limit = get_settings().max_file_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"image larger than DIGITS_MAX_FILE_BYTES ({limit:,} bytes)")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise HTTPException(413, f"image larger than DIGITS_MAX_FILE_BYTES ({limit:,} bytes)")
    return bytes(body)


@router.get("/draw", response_class=HTMLResponse, include_in_schema=False)
def draw_page(request: Request) -> Response:
    return render(request, "draw.html", threshold=get_settings().confidence_threshold)


@router.post("/draw/predict", include_in_schema=False)
async def draw_predict(request: Request, _: str = Writer) -> dict[str, Any]:
    """The canvas as a PNG body (``canvas.toBlob``), answered like ``/api/predict``."""
    data = await read_limited(request)
    return await run_in_threadpool(answer, data)


@router.post("/api/predict", tags=["api"])
async def api_predict(
    file: Annotated[
        UploadFile, File(description="One image file (PNG, JPEG, TIFF, BMP, WebP, GIF).")
    ],
    _: str = Writer,
) -> dict[str, Any]:
    """Score one uploaded image now with the production model, through the inbox's
    preprocessing: ``label``, calibrated ``confidence``, ``margin``, ``needs_review``,
    ``top3``, the ten calibrated ``probabilities``, ``model_version`` and ``seen`` (the 28×28
    the model saw, a ``data:image/png`` URL). Writer-protected: bearer token or CSRF header."""
    limit = get_settings().max_file_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"image larger than DIGITS_MAX_FILE_BYTES ({limit:,} bytes)")
    return await run_in_threadpool(answer, data)
