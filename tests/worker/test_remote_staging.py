"""A worker on "another machine": its own DIGITS_HOME (an empty folder), sharing only
PostgreSQL and Redis with the process that enqueued a CSV batch (issue 24).

With ``DIGITS_STAGING=database`` it scores the batch completely; with the folder store it
cannot see the staged files, and every chunk ends quarantined with a reason that says why,
instead of a crash or a batch that never finishes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from digits.app.runner import wait_for
from digits.core.db import session, upgrade
from digits.core.schema import Chunk, Item, ItemError, Prediction
from scheduler.batches import enqueue_csv
from tests.conftest import SAMPLE, WorkerProcess, reset_caches


def start_remote_worker(
    worker_factory: type, monkeypatch: pytest.MonkeyPatch, home: Path, elsewhere: Path
) -> WorkerProcess:
    """A real `digits worker` whose DIGITS_HOME is ``elsewhere``; this process keeps ``home``
    (the worker takes the environment when it starts)."""
    monkeypatch.setenv("DIGITS_HOME", str(elsewhere))
    worker: WorkerProcess = worker_factory()
    monkeypatch.setenv("DIGITS_HOME", str(home))
    return worker


@pytest.mark.parametrize("store", ["database", "folder"])
def test_a_worker_with_another_home_scores_a_csv_batch_staged_in_the_database(
    home: Path,
    pg_url: str,
    redis_url: str,
    worker_factory: type,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    store: str,
) -> None:
    monkeypatch.setenv("DIGITS_DATABASE_URL", pg_url)
    monkeypatch.setenv("DIGITS_BROKER_URL", redis_url)
    monkeypatch.setenv("DIGITS_STAGING", store)
    reset_caches()
    upgrade()
    elsewhere = tmp_path / "other-machine"
    elsewhere.mkdir()
    worker = start_remote_worker(worker_factory, monkeypatch, home, elsewhere)
    done = enqueue_csv(SAMPLE, chunk_size=40)
    assert (done.items, done.chunks) == (200, 5)
    worker.wait_ready()
    [state] = wait_for([done.batch_id], timeout=180)
    assert state.status == "done", worker.tail()
    assert not (elsewhere / "staging").exists()  # the worker never had a staged file
    with session() as sess:
        per_item = dict(
            sess.execute(
                select(Item.id, func.count(Prediction.id))
                .outerjoin(Prediction, Prediction.item_id == Item.id)
                .where(Item.batch_id == done.batch_id)
                .group_by(Item.id)
            ).all()
        )
        chunk_errors = sess.scalars(
            select(Chunk.error).where(Chunk.batch_id == done.batch_id)
        ).all()
        reasons = sess.scalars(
            select(ItemError.reason)
            .join(Item, Item.id == ItemError.item_id)
            .where(Item.batch_id == done.batch_id)
        ).all()
    assert len(per_item) == 200
    if store == "database":
        assert sorted(per_item.values()) == [1] * 200  # every row scored, once
        assert (state.predicted, state.errors) == (200, 0)
        assert state.correct / state.labelled >= 0.95
        assert all(error is None for error in chunk_errors)
    else:
        assert sorted(per_item.values()) == [0] * 200
        assert (state.predicted, state.errors) == (0, 200)
        assert len(chunk_errors) == 5
        for reason in [*chunk_errors, *reasons]:
            assert reason is not None and "is not in" in reason, reason
            assert "DIGITS_STAGING=database" in reason, reason
