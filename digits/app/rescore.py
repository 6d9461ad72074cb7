"""Re-scoring a finished batch with another model version, beside the original predictions.

Predictions are unique per (item, model version), so a new version's verdicts are added next
to the ones the batch was pinned to and never replace them: exports and results of the pinned
version stay reproducible, and the two can be compared item by item before a promotion.
Inputs are read exactly as a worker reads them (staged chunks for CSV batches, the
item files for image batches) and scored one batched forward pass per chunk, in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core import staging
from digits.core.db import insert_ignore, session
from digits.core.preprocess import rows_to_tensor
from digits.core.schema import Batch, Chunk, Item, Prediction
from digits.core.settings import get_settings
from model_store.inference import model_for, predict
from model_store.registry import ModelError
from worker.chunks import Claim, read_images
from worker.results import prediction_rows, shape

ProgressFn = Callable[[int, int], None]  # (items scored so far, items to score)


class RescoreError(ValueError):
    """A batch cannot be re-scored (unknown, unfinished, same version, inputs gone)."""


@dataclass(frozen=True)
class Change:
    """An item the two versions label differently."""

    item_id: int
    position: int  # 1-based: the Kaggle ImageId for CSV batches
    source_ref: str
    true_label: int | None
    old_label: int
    new_label: int
    old_confidence: float
    new_confidence: float


@dataclass
class RescoreResult:
    batch_id: int
    old_version: int
    new_version: int
    compared: int = 0  # items with a prediction from both versions
    agreeing: int = 0
    written: int = 0  # new prediction rows (0 when the batch had already been re-scored)
    unreadable: int = 0  # items whose input could not be read again (file since removed, …)
    labelled: int = 0  # compared items with a known true label
    old_correct: int = 0
    new_correct: int = 0
    changed: list[Change] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        return self.agreeing / self.compared if self.compared else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["agreement"] = self.agreement
        return out


@dataclass(frozen=True)
class _ChunkRef:
    chunk_id: int
    ref: str


def _csv_inputs(
    ref: str, chunk_items: list[tuple[int, str]], wanted: set[int]
) -> tuple[list[int], NDArray[np.float32]]:
    """A CSV chunk's staged rows for the wanted items (rows follow item position order)."""

    try:
        pixels = staging.get(ref)  # refuses a reference out of the staging folder
    except (OSError, ValueError) as exc:  # StagingError, or a file that is not an array
        raise RescoreError(f"staged chunk {ref!r} cannot be read: {exc}") from exc
    if len(pixels) != len(chunk_items):
        raise RescoreError(
            f"staged chunk {ref!r} has {len(pixels)} rows, the database {len(chunk_items)} items"
        )
    keep = [i for i, (item_id, _) in enumerate(chunk_items) if item_id in wanted]
    return [chunk_items[i][0] for i in keep], rows_to_tensor(pixels[keep])


def rescore(batch_id: int, version: int, progress: ProgressFn | None = None) -> RescoreResult:
    """Score batch ``batch_id`` with model ``version``, add the predictions, compare.

    Only items the pinned version predicted are re-scored (refused rows and duplicates have
    nothing to compare with). Each chunk is committed on its own with an insert that ignores
    existing (item, version) rows, so an interrupted re-score can simply be run again.
    """
    from sqlalchemy import func, select

    with session() as sess:
        batch = sess.get(Batch, batch_id)
        if batch is None:
            raise RescoreError(f"batch {batch_id} does not exist")
        if batch.status != "done":
            raise RescoreError(
                f"batch {batch_id} is {batch.status}: only a finished (done) batch can be re-scored"
            )
        old_version, kind, source = batch.model_version, batch.kind, batch.source
        if version == old_version:
            raise RescoreError(
                f"batch {batch_id} was scored by v{version} already: "
                "pick another version to compare with"
            )
        chunks = [
            _ChunkRef(c.id, c.ref)
            for c in sess.scalars(
                select(Chunk).where(Chunk.batch_id == batch_id).order_by(Chunk.seq)
            )
        ]
        old = {
            r.item_id: r
            for r in sess.execute(
                select(Prediction.item_id, Prediction.label, Prediction.confidence)
                .join(Item, Item.id == Prediction.item_id)
                .where(Item.batch_id == batch_id, Prediction.model_version == old_version)
            ).all()
        }
        items = {
            r.id: r
            for r in sess.execute(
                select(
                    Item.id,
                    Item.chunk_id,
                    Item.position,
                    Item.source_ref,
                    Item.path,
                    Item.true_label,
                )
                .where(Item.batch_id == batch_id)
                .order_by(Item.position)
            ).all()
        }
        rows_before = (
            sess.scalar(
                select(func.count())
                .select_from(Prediction)
                .join(Item, Item.id == Prediction.item_id)
                .where(Item.batch_id == batch_id, Prediction.model_version == version)
            )
            or 0
        )
    try:
        meta, model = model_for(version)
    except ModelError as exc:
        raise RescoreError(str(exc)) from exc

    result = RescoreResult(batch_id, old_version, version)
    by_chunk: dict[int, list[tuple[int, str]]] = {}
    for item in items.values():  # position order: the order of a CSV chunk's staged rows
        if item.chunk_id is not None:
            by_chunk.setdefault(item.chunk_id, []).append((item.id, item.path or ""))
    total = len(old)
    threshold = get_settings().confidence_threshold
    done = 0
    if progress:
        progress(0, total)
    for chunk in chunks:
        chunk_items = by_chunk.get(chunk.chunk_id, [])
        wanted = {item_id for item_id, _ in chunk_items if item_id in old}
        if not wanted:
            continue
        if kind == "csv":
            ids, tensor = _csv_inputs(chunk.ref, chunk_items, wanted)
        else:
            claim = Claim(chunk.chunk_id, batch_id, kind, chunk.ref, source, version, 0)
            inputs = read_images(claim, [(i, p) for i, p in chunk_items if i in wanted])
            ids, tensor = inputs.item_ids, inputs.tensor
            result.unreadable += len(inputs.errors)
        shaped = shape(predict(model, tensor), meta.temperature, threshold)
        with session(write=True) as sess:
            insert_ignore(
                sess,
                Prediction,
                prediction_rows(ids, shaped, version),
                ["item_id", "model_version"],
            )
        done += len(wanted)
        if progress:
            progress(done, total)

    # Compare what is stored, not what was just computed: after an interrupted or repeated
    # re-score the stored rows are the ones results and exports will show.
    with session() as sess:
        new = sess.execute(
            select(Prediction.item_id, Prediction.label, Prediction.confidence)
            .join(Item, Item.id == Prediction.item_id)
            .where(Item.batch_id == batch_id, Prediction.model_version == version)
        ).all()
    result.written = len(new) - rows_before
    for row in new:
        if row.item_id in old:
            _compare(result, items[row.item_id], old[row.item_id], row)
    result.changed.sort(key=lambda c: c.position)
    return result


def _compare(result: RescoreResult, item: Any, old: Any, new: Any) -> None:
    new_label = int(new.label)
    result.compared += 1
    if item.true_label is not None:
        result.labelled += 1
        result.old_correct += int(old.label == item.true_label)
        result.new_correct += int(new_label == item.true_label)
    if new_label == old.label:
        result.agreeing += 1
        return
    result.changed.append(
        Change(
            item.id,
            item.position,
            item.source_ref,
            item.true_label,
            int(old.label),
            new_label,
            round(float(old.confidence), 6),
            round(float(new.confidence), 6),
        )
    )
