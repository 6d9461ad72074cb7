"""Scored batches written straight into the database (bulk inserts, no workers), with the
pixels the pages show: a CSV batch's rows staged in a chunk ``.npy`` exactly where ingestion
puts them, an image batch's files on disk. Real digits: the shipped sample's rows, and scans
rendered from them by ``digits.core.synthetic_scans``."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, insert, select

from digits.core.db import session
from digits.core.schema import Batch, Chunk, Item, ItemError, Prediction
from digits.core.settings import get_settings

SAMPLE = Path(__file__).resolve().parents[3] / "digits" / "samples" / "sample.csv.gz"


def sample(n: int) -> tuple[NDArray[np.uint8], list[int]]:
    """The first ``n`` rows of the shipped labelled sample (n ≤ 200): pixels and labels."""
    with gzip.open(SAMPLE, "rt") as fh:
        lines = fh.read().splitlines()[1 : n + 1]
    values = np.array([[int(v) for v in line.split(",")] for line in lines], np.uint8)
    return values[:, 1:], [int(v) for v in values[:, 0]]


@dataclass(frozen=True)
class Filled:
    batch_id: int
    item_ids: list[int]  # in ImageId order


def confidence_of(position: int) -> float:
    """A spread of calibrated confidences: most above the 0.9 threshold, every fifth item
    in a tail below it (flagged)."""
    spread = ((position * 37) % 100) / 99
    return round(0.35 + 0.5 * spread if position % 5 == 0 else 0.9 + 0.1 * spread, 4)


def prediction(
    item_id: int, version: int, label: int, confidence: float, threshold: float = 0.9
) -> dict[str, object]:
    runner_up = (label + 1) % 10
    probs = {f"p{d}": 0.0 for d in range(10)}
    probs[f"p{label}"] = confidence
    probs[f"p{runner_up}"] = round(1 - confidence, 4)
    return {
        "item_id": item_id,
        "model_version": version,
        "label": label,
        "confidence": confidence,
        "margin": round(2 * confidence - 1, 4),
        "needs_review": confidence < threshold,
        **probs,
    }


def _batch(source: str, kind: str, items: int) -> tuple[int, int]:
    """A finished batch pinned to version 1; returns (batch id, first free item id)."""
    with session(write=True) as sess:
        batch = Batch(
            source=source,
            kind=kind,
            status="done",
            model_version=1,
            model_sha256="0" * 64,
            item_count=items,
            chunk_count=1,
        )
        sess.add(batch)
        sess.flush()
        first = (sess.scalar(select(func.max(Item.id))) or 0) + 1
        return batch.id, first


def _predict_all(
    ids: list[int], labels: list[int], wrong_every: int, errors: dict[int, str]
) -> None:
    """Predictions by version 1 (every ``wrong_every``-th off by one), errors for the rest."""
    rows = []
    for n, item_id in enumerate(ids, start=1):
        if n in errors:
            continue
        label = labels[n - 1]
        if wrong_every and n % wrong_every == 0:
            label = (label + 1) % 10
        rows.append(prediction(item_id, 1, label, confidence_of(n)))
    with session(write=True) as sess:
        if rows:
            sess.execute(insert(Prediction), rows)
        if errors:
            sess.execute(
                insert(ItemError),
                [{"item_id": ids[n - 1], "reason": why} for n, why in errors.items()],
            )


def csv_batch(
    items: int, wrong_every: int = 9, errors: dict[int, str] | None = None, stage: bool = True
) -> Filled:
    """A CSV batch of the sample's first ``items`` rows (true labels kept), staged as one
    chunk like ingestion does; ``errors``: ImageId → reason of rows that failed."""
    errors = errors or {}
    pixels, labels = sample(items)
    batch_id, first = _batch("sample.csv", "csv", items)
    ref = f"b{batch_id}/c000001.npy"
    if stage:
        path = get_settings().staging_dir / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, pixels)
    ids = list(range(first, first + items))
    with session(write=True) as sess:
        chunk = Chunk(batch_id=batch_id, seq=1, ref=ref, item_count=items, state="done")
        sess.add(chunk)
        sess.flush()
        sess.execute(
            insert(Item),
            [
                {
                    "id": item_id,
                    "batch_id": batch_id,
                    "chunk_id": chunk.id,
                    "position": n,
                    "source_ref": f"sample.csv:{n + 1}",
                    "status": "error" if n in errors else "predicted",
                    "true_label": labels[n - 1],
                }
                for n, item_id in enumerate(ids, start=1)
            ],
        )
    _predict_all(ids, labels, wrong_every, errors)
    return Filled(batch_id, ids)


def image_batch(folder: Path, files: dict[str, bytes | None], labels: list[int]) -> Filled:
    """An image batch of ``folder``: each file written (None: recorded but not on disk, as
    a file removed since) and predicted as its label (no true labels: scans carry none)."""
    folder.mkdir(parents=True, exist_ok=True)
    batch_id, first = _batch(str(folder.resolve()), "images", len(files))
    ids = list(range(first, first + len(files)))
    item_rows = []
    for (n, item_id), (name, content) in zip(enumerate(ids, start=1), files.items(), strict=True):
        path = folder / name
        if content is not None:
            path.write_bytes(content)
        item_rows.append(
            {
                "id": item_id,
                "batch_id": batch_id,
                "position": n,
                "source_ref": name,
                "path": str(folder.resolve() / name),
                "sha256": f"{n:064x}",
                "status": "predicted",
            }
        )
    with session(write=True) as sess:
        sess.execute(insert(Item), item_rows)
    _predict_all(ids, labels, 0, {})
    return Filled(batch_id, ids)


def scans(labels_pixels: NDArray[np.uint8], seed: int = 0) -> list[bytes]:
    """PNG scans (pen on paper) rendered from MNIST rows."""
    from digits.core.synthetic_scans import render_scan

    rng = np.random.default_rng(seed)
    return [
        render_scan(row, rng, size=160, fmt="PNG", mode="L", polarity="dark")[0]
        for row in labels_pixels
    ]


def rescore(item_id: int, version: int, label: int, confidence: float) -> None:
    """Another version's prediction of the item (as `digits rescore` writes one)."""
    with session(write=True) as sess:
        sess.execute(insert(Prediction), [prediction(item_id, version, label, confidence)])
