"""`digits run`'s summary (issue 21 item 8): items, errors and items flagged for review, with
the right singular or plural, and a throughput over the scoring time (first claim to last
write, from the database) rather than the wall time that includes starting the workers."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import func, select

from digits.app.runner import RunSummary
from digits.core.db import session, upgrade
from digits.core.queries import batch_progress
from digits.core.schema import Chunk, Item, Prediction
from scheduler.batches import enqueue_csv
from tests.conftest import write_csv


def score_in_process(batch_id: int) -> None:
    """Score a batch's chunks here, one by one (no worker processes)."""
    from worker.chunks import process_chunk

    with session() as sess:
        ids = sess.scalars(select(Chunk.id).where(Chunk.batch_id == batch_id)).all()
    assert [process_chunk(c) for c in ids] == ["done"] * len(ids)


def printed(summary: RunSummary) -> str:
    buffer = io.StringIO()
    summary.print(Console(file=buffer, width=200))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("rows", "said"), [(1, "1 item, 0 errors, "), (30, "30 items, 0 errors, ")]
)
def test_summary_counts_flagged_items_and_rates_over_scoring_time(
    rows: int,
    said: str,
    home: Path,
    tmp_path: Path,
    sample_rows: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch waits 1.5 s before its first claim (workers starting up): that wait is in the
    batch's elapsed time, not in its scoring time, and the rate is items / scoring time."""
    monkeypatch.setenv("DIGITS_CONFIDENCE_THRESHOLD", "0.999")  # flag some of the sample
    from digits.core.settings import get_settings

    get_settings.cache_clear()
    upgrade()
    done = enqueue_csv(write_csv(tmp_path / "some.csv", sample_rows[: rows + 1]), chunk_size=10)
    time.sleep(1.5)
    score_in_process(done.batch_id)
    [state] = batch_progress([done.batch_id])
    with session() as sess:
        flagged = sess.scalar(
            select(func.count())
            .select_from(Prediction)
            .join(Item, Item.id == Prediction.item_id)
            .where(Item.batch_id == done.batch_id, Prediction.needs_review)
        )
        first_claim, last_write = sess.execute(
            select(func.min(Chunk.claimed_at), func.max(Chunk.finished_at)).where(
                Chunk.batch_id == done.batch_id
            )
        ).one()
    assert state.flagged == flagged
    assert state.scoring_seconds is not None
    assert state.scoring_seconds == pytest.approx(
        (last_write - first_claim).total_seconds(), abs=0.01
    )
    assert state.seconds is not None and state.scoring_seconds < state.seconds - 1.0
    summary = RunSummary([state], seconds=60.0)
    text = printed(summary)
    total = text.splitlines()[-1]
    assert total.startswith(f"{said}{flagged} flagged for review; "), total
    said_rate = re.search(r"scored in ([\d.]+) s \(([\d,.]+) items/s\)", total)
    assert said_rate, total
    assert float(said_rate[1]) == pytest.approx(state.scoring_seconds, abs=0.05)
    rate = float(said_rate[2].replace(",", ""))
    assert rate == pytest.approx(rows / state.scoring_seconds, rel=0.05, abs=0.05)
    assert "60.0 s in all" in total and "(0 items/s)" not in text
    assert f"{flagged} flagged for review" in text.splitlines()[0]
    data = summary.as_json()
    assert data["flagged"] == flagged
    assert data["scoring_seconds"] == pytest.approx(state.scoring_seconds, abs=0.001)
