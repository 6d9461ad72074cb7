"""`digits reviews export`: reviewed items as training data, in Kaggle's train format.

Every item with a current reviewed label becomes a row ``label,pixel0..pixel783`` whose pixels
are the 28×28 the model saw, as 0–255 integers: a CSV item's staged row as it is (it is its own
28×28), an image item's file through the very preprocessing the workers apply
(``image_to_tensor``), read with the same size limit. The file is what `digits train --data`
and ``digits.core.csv_input.read_labelled`` read, so a correction becomes a training row.

An item whose pixels cannot be found any more (its staged chunk or its file is gone, or the
file is refused now) is left out and counted: the export says how many, it does not fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from digits.app.report import staged_rows
from digits.core import reviews
from digits.core.db import session
from digits.core.images import Rejected, image_to_tensor
from digits.core.safe_files import read_regular
from digits.core.schema import Batch, Item
from digits.core.settings import get_settings
from scheduler.export import atomic_write

HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))


class ReviewedExportError(ValueError):
    """Nothing can be written (unknown batch, no reviewed item): one line for the user."""


@dataclass
class ReviewedExport:
    path: Path
    rows: int
    missing: list[int] = field(default_factory=list)  # item ids whose pixels are gone
    overrides: int = 0  # rows whose reviewed label differs from the model's

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "rows": self.rows,
            "missing": self.missing,
            "overrides": self.overrides,
        }


def file_rows(item_ids: list[int]) -> dict[int, NDArray[np.uint8]]:
    """Image items: the file preprocessed exactly as the worker does, back to 0–255."""
    settings = get_settings()
    with session() as sess:
        paths = dict(sess.execute(select(Item.id, Item.path).where(Item.id.in_(item_ids))).all())
    out: dict[int, NDArray[np.uint8]] = {}
    for item_id, raw in paths.items():
        if not raw:
            continue
        try:
            data = read_regular(Path(raw), settings.max_file_bytes)
            tensor = image_to_tensor(data, settings.max_image_pixels)
        except (OSError, Rejected):
            continue
        out[item_id] = to_bytes(tensor)
    return out


def to_bytes(tensor: NDArray[np.float32]) -> NDArray[np.uint8]:
    """The model's [0, 1] input as the 784 integers of a Kaggle row."""
    return np.asarray(np.rint(np.clip(tensor.reshape(784), 0.0, 1.0) * 255), np.uint8)


def model_rows(items: list[reviews.Reviewed]) -> dict[int, NDArray[np.uint8]]:
    """item id → the 784 pixels the model saw, for the items still found."""
    csv_ids = [r.item_id for r in items if r.batch_kind == "csv"]
    image_ids = [r.item_id for r in items if r.batch_kind != "csv"]
    return {
        **(staged_rows(csv_ids) if csv_ids else {}),
        **(file_rows(image_ids) if image_ids else {}),
    }


def export_reviewed(out: Path, batch_id: int | None = None) -> ReviewedExport:
    """Write every reviewed item of the batch (or of all batches) to ``out``, atomically."""
    if batch_id is not None:
        with session() as sess:
            if sess.get(Batch, batch_id) is None:
                raise ReviewedExportError(f"batch {batch_id} does not exist")
    items = reviews.reviewed_items(batch_id)
    if not items:
        where = f"batch {batch_id}" if batch_id is not None else "any batch"
        raise ReviewedExportError(f"no reviewed items in {where}: nothing written to {out}")
    pixels = model_rows(items)
    lines = [HEADER + "\n"]
    missing: list[int] = []
    overrides = 0
    for item in items:
        row = pixels.get(item.item_id)
        if row is None:
            missing.append(item.item_id)
            continue
        overrides += int(item.label != item.model_label)
        lines.append(f"{item.label}," + ",".join(map(str, row.tolist())) + "\n")
    if len(lines) == 1:
        raise ReviewedExportError(
            f"the {len(items)} reviewed items' pixels are gone (staging or files removed): "
            f"nothing written to {out}"
        )
    atomic_write(out, lines)
    return ReviewedExport(out, len(lines) - 1, missing, overrides)
