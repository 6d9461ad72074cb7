"""A finished batch written straight into the database (no scoring), for the tests of what
reads predictions: reviews, the export, the web pages."""

from __future__ import annotations

from sqlalchemy import func, insert, select

from digits.core.db import session
from digits.core.schema import Batch, Item, Prediction


def make_batch(items: int, flag_every: int = 5) -> tuple[int, list[int]]:
    """A batch pinned to version 1: item p predicted p % 10, confidence rising with p, every
    ``flag_every``-th item flagged (confidence below 0.9). Returns (batch id, item ids)."""
    with session(write=True) as sess:
        batch = Batch(
            source="t.csv",
            kind="csv",
            status="done",
            model_version=1,
            model_sha256="0" * 64,
            item_count=items,
        )
        sess.add(batch)
        sess.flush()
        first = (sess.scalar(select(func.max(Item.id))) or 0) + 1
        ids = list(range(first, first + items))
        sess.execute(
            insert(Item),
            [
                {
                    "id": i,
                    "batch_id": batch.id,
                    "position": n + 1,
                    "source_ref": f"t.csv:{n + 1}",
                    "status": "predicted",
                }
                for n, i in enumerate(ids)
            ],
        )
        rows = []
        for n, i in enumerate(ids):
            flagged = (n + 1) % flag_every == 0
            confidence = 0.5 + 0.3 * n / items if flagged else 0.95 + 0.04 * n / items
            probs = {f"p{d}": 0.0 for d in range(10)}
            probs[f"p{n % 10}"] = confidence
            probs[f"p{(n + 1) % 10}"] = 1 - confidence
            rows.append(
                {
                    "item_id": i,
                    "model_version": 1,
                    "label": n % 10,
                    "confidence": confidence,
                    "margin": 2 * confidence - 1,
                    "needs_review": flagged,
                    **probs,
                }
            )
        sess.execute(insert(Prediction), rows)
        return batch.id, ids
