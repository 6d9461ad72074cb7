"""Finished batches written straight into the database with bulk inserts (no scoring): what
`digits results`, `export` and `report` read, in seconds even for 80,000 rows.

Also a script: ``python -m tests.digits.cli.filled N`` fills DIGITS_HOME's database with one
batch of N items (used to measure `digits results --all --format csv`'s peak memory)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from sqlalchemy import func, insert, select

from digits.core.db import session
from digits.core.schema import Batch, Item, ItemError, Prediction


@dataclass(frozen=True)
class Filled:
    batch_id: int
    items: int
    errors: list[int]  # ImageIds of the failed items


def error_reason(position: int) -> str:
    return f"row {position}: expected 785 fields, got 784"


def fill_batch(
    items: int,
    kind: str = "csv",
    error_every: int = 0,
    source: str = "bulk.csv",
    status: str = "done",
) -> Filled:
    """One batch of ``items`` items pinned to version 1, each predicted (label position % 10,
    confidence falling with position, every tenth flagged) except every ``error_every``-th,
    which failed with a reason; image batches name their files ``scan<N>.png``."""
    errors: list[int] = []
    with session(write=True) as sess:
        batch = Batch(
            source=source,
            kind=kind,
            status=status,
            model_version=1,
            model_sha256="0" * 64,
            item_count=items,
        )
        sess.add(batch)
        sess.flush()
        first = (sess.scalar(select(func.max(Item.id))) or 0) + 1
        step = 10_000
        for start in range(1, items + 1, step):
            positions = range(start, min(start + step, items + 1))
            item_rows, predictions, failures = [], [], []
            for p in positions:
                failed = bool(error_every) and p % error_every == 0
                ref = f"scan{p}.png" if kind == "images" else f"{source}:{p}"
                item_id = first + p - 1
                item_rows.append(
                    {
                        "id": item_id,
                        "batch_id": batch.id,
                        "position": p,
                        "source_ref": ref,
                        "status": "error" if failed else "predicted",
                        "true_label": p % 10,
                    }
                )
                if failed:
                    errors.append(p)
                    failures.append({"item_id": item_id, "reason": error_reason(p)})
                    continue
                probs = {f"p{d}": 0.0 for d in range(10)}
                probs[f"p{p % 10}"] = 1.0
                predictions.append(
                    {
                        "item_id": item_id,
                        "model_version": 1,
                        "label": p % 10,
                        "confidence": 1.0 - p / (items + 1),
                        "margin": 0.5,
                        "needs_review": p % 10 == 0,
                        **probs,
                    }
                )
            sess.execute(insert(Item), item_rows)
            if predictions:
                sess.execute(insert(Prediction), predictions)
            if failures:
                sess.execute(insert(ItemError), failures)
        batch.error_count = len(errors)
    return Filled(batch.id, items, errors)


if __name__ == "__main__":
    from digits.core.db import upgrade

    upgrade()
    done = fill_batch(int(sys.argv[1]), error_every=1000)
    print(f"batch {done.batch_id}: {done.items} items, {len(done.errors)} errors")
