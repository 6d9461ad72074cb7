"""Batches of flagged items written straight into the database (bulk inserts, no scoring),
each item with a real input behind it: a CSV batch's rows staged in a chunk file exactly as
ingestion stages them (scheduler.batches.stage), or an image batch's files written as PNG
scans. The digits are the shipped sample's held-out rows, so the pictures are real digits.

Predictions: the true digit, except every third item, which the model gets wrong (true + 1);
confidence rising from 0.40 with the position (so the queue's order is the position order),
the rest on two other digits (the true one second when the model is wrong); every item
flagged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import func, insert, select

from digits.core.db import session
from digits.core.schema import Batch, Chunk, Item, Prediction
from scheduler.batches import stage


@dataclass(frozen=True)
class Flagged:
    batch_id: int
    item_ids: list[int]  # in queue order (least confident first)
    truth: list[int]  # the true digit of each item
    predicted: list[int]  # the model's label of each item
    pixels: np.ndarray  # (n, 784) uint8: the sample rows used


def confidence_of(position: int, n: int) -> float:
    """The calibrated confidence of the item at ``position`` (1-based) of ``n``."""
    return 0.40 + 0.45 * position / (n + 1)


def sample_digits(rows: list[str], n: int) -> tuple[np.ndarray, list[int]]:
    """The first ``n`` labelled sample rows (header skipped): pixels and true labels."""
    values = np.array([[int(v) for v in line.split(",")] for line in rows[1 : n + 1]], np.uint8)
    return values[:, 1:], [int(v) for v in values[:, 0]]


def write_scan(pixels: np.ndarray, path: Path) -> Path:
    """A 28×28 row as a 'scan': dark ink on white paper, 4× larger, with a margin."""
    ink = 255 - pixels.reshape(28, 28)
    img = Image.fromarray(ink, "L").resize((112, 112), Image.Resampling.BILINEAR)
    paper = Image.new("L", (160, 160), 255)
    paper.paste(img, (24, 24))
    paper.save(path)
    return path


def flagged_batch(
    rows: list[str], n: int, kind: str = "csv", folder: Path | None = None
) -> Flagged:
    pixels, truth = sample_digits(rows, n)
    assert len(truth) == n, f"the sample has only {len(truth)} rows"
    predicted = [(t + 1) % 10 if p % 3 == 0 else t for p, t in enumerate(truth, start=1)]
    source = "flagged.csv" if kind == "csv" else str(folder)
    with session(write=True) as sess:
        batch = Batch(
            source=source,
            kind=kind,
            status="done",
            model_version=1,
            model_sha256="0" * 64,
            item_count=n,
            chunk_count=1,
        )
        sess.add(batch)
        sess.flush()
        chunk_id = None
        if kind == "csv":
            ref = stage(batch.id, 1, pixels)
            chunk = Chunk(batch_id=batch.id, seq=1, ref=ref, item_count=n, state="done")
            sess.add(chunk)
            sess.flush()
            chunk_id = chunk.id
        first = (sess.scalar(select(func.max(Item.id))) or 0) + 1
        ids = list(range(first, first + n))
        items = []
        for p, item_id in enumerate(ids, start=1):
            path = None
            ref_name = f"{source}:{p}"
            if kind == "images":
                assert folder is not None
                path = str(write_scan(pixels[p - 1], folder / f"scan{p:03d}.png"))
                ref_name = f"scan{p:03d}.png"
            items.append(
                {
                    "id": item_id,
                    "batch_id": batch.id,
                    "chunk_id": chunk_id,
                    "position": p,
                    "source_ref": ref_name,
                    "path": path,
                    "status": "predicted",
                }
            )
        sess.execute(insert(Item), items)
        predictions = []
        for p, (item_id, label) in enumerate(zip(ids, predicted, strict=True), start=1):
            confidence = confidence_of(p, n)
            runner_up = truth[p - 1] if label != truth[p - 1] else (label + 1) % 10
            probs = {f"p{d}": 0.0 for d in range(10)}
            probs[f"p{label}"] = confidence
            probs[f"p{runner_up}"] = (1 - confidence) * 0.65
            probs[f"p{(label + 5) % 10}"] = (1 - confidence) * 0.35
            predictions.append(
                {
                    "item_id": item_id,
                    "model_version": 1,
                    "label": label,
                    "confidence": confidence,
                    "margin": confidence - (1 - confidence) * 0.65,
                    "needs_review": True,
                    **probs,
                }
            )
        sess.execute(insert(Prediction), predictions)
        return Flagged(batch.id, ids, truth, predicted, pixels)
