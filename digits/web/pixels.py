"""Item images, served by item id only: never a path from the request.

``/items/{id}/input.png`` is what the item looked like (an image file decoded with the inbox's
limits, at most :data:`INPUT_SIDE` pixels on a side; a CSV row drawn from its staged chunk, a
Kaggle row being its own original); ``/items/{id}/model.png`` is the 28×28 the model saw,
through the very preprocessing the workers apply (``digits.core.images.image_to_tensor``; a CSV
row as staged). The file is read the way the workers read it: its folder must really lie in
the batch's folder or the inbox, the entry is opened with O_NOFOLLOW (a symbolic link is
refused, never followed) and must be a regular file within the size limit. Anything missing,
refused or undecodable gives a small placeholder image and a reason, never a traceback.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from digits.app.report import staged_pixels
from digits.core.db import session
from digits.core.images import Rejected, decode_image, image_to_tensor
from digits.core.safe_files import OUTSIDE, read_regular, real, refusal
from digits.core.schema import Batch, Item
from digits.core.settings import get_settings

INPUT_SIDE = 320
"""An image file is shown at most this many pixels on a side."""


@dataclass(frozen=True)
class Picture:
    """PNG bytes; ``placeholder`` says why the real picture could not be given (None: it is)."""

    png: bytes
    placeholder: str | None = None


def to_png(gray: NDArray[np.floating] | NDArray[np.uint8], side: int | None = None) -> bytes:
    """A 2-D grayscale array (floats in [0, 1] or uint8) as PNG, shrunk to ``side`` at most."""
    from PIL import Image

    array = np.asarray(gray)
    if array.dtype != np.uint8:
        array = np.rint(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    img = Image.fromarray(array.reshape(array.shape[0], array.shape[1]), mode="L")
    if side is not None:
        img.thumbnail((side, side))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def placeholder(reason: str) -> Picture:
    """A light square with a grey cross: "no picture here" without words to translate."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (56, 56), 236)
    draw = ImageDraw.Draw(img)
    draw.line((16, 16, 40, 40), fill=150, width=3)
    draw.line((16, 40, 40, 16), fill=150, width=3)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return Picture(buffer.getvalue(), reason)


@dataclass(frozen=True)
class Located:
    kind: str  # csv | images
    path: str | None
    batch_source: str


def locate(item_id: int) -> Located | None:
    """Where the item's pixels are, from the database only; None for an unknown item."""
    with session() as sess:
        row = sess.execute(
            select(Batch.kind, Item.path, Batch.source)
            .join(Batch, Batch.id == Item.batch_id)
            .where(Item.id == item_id)
        ).first()
    return None if row is None else Located(row[0], row[1], row[2])


def read_item_file(raw: str | None, batch_source: str) -> bytes:
    """The item's file, read as the workers read it (``worker.chunks.read_images``): its
    folder must really lie in the batch's folder or the inbox, the entry must be a regular
    file (a symbolic link is refused, never followed), within ``DIGITS_MAX_FILE_BYTES``.
    OSError with the reason otherwise."""
    settings = get_settings()
    if not raw:
        raise OSError("no file recorded for this item")
    path = Path(raw)
    roots = [Path(batch_source).resolve(), settings.inbox_dir.resolve()]
    folder = real(path.parent)
    if folder is None or not any(folder.is_relative_to(root) for root in roots):
        raise OSError(OUTSIDE)
    why = refusal(path)
    if why:
        raise OSError(why)
    return read_regular(path, settings.max_file_bytes, within=roots)


def _csv_row(item_id: int) -> NDArray[np.float32] | None:
    return staged_pixels([item_id]).get(item_id)


def _picture(
    item_id: int,
    decode: Callable[[bytes, int], NDArray[Any]],
    undecodable: str,
    side: int | None = None,
) -> Picture | None:
    """An item's picture: a CSV item's staged row, or its file through ``decode``; a
    placeholder saying why when there is none (None: unknown item)."""
    found = locate(item_id)
    if found is None:
        return None
    if found.kind == "csv":
        row = _csv_row(item_id)
        return placeholder("staged row gone") if row is None else Picture(to_png(row))
    try:
        data = read_item_file(found.path, found.batch_source)
        pixels = decode(data, get_settings().max_image_pixels)
    except OSError:
        return placeholder("file missing or refused")
    except Rejected:
        return placeholder(undecodable)
    return Picture(to_png(pixels, side))


def input_picture(item_id: int) -> Picture | None:
    """The original (None: unknown item)."""
    return _picture(item_id, decode_image, "file not decodable", INPUT_SIDE)


def model_picture(item_id: int) -> Picture | None:
    """The 28×28 the model saw (None: unknown item)."""
    return _picture(
        item_id,
        lambda data, limit: image_to_tensor(data, limit).reshape(28, 28),
        "refused by preprocessing",
    )
