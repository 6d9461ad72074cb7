"""A running chunk renews its lease, so a slow chunk is never taken from a live worker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from digits.core.db import aware, session
from digits.core.schema import Chunk
from scheduler.batches import enqueue_csv
from tests.conftest import reset_caches, write_csv
from worker.chunks import claim, lease_kept, owner_name
from worker.sweeper import sweep

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("renewing", [True, False], ids=["renewing", "not-renewing"])
def test_a_chunk_held_past_its_lease_stays_with_a_live_owner_only_while_renewed(
    renewing: bool,
    backend: str,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chunk is held for twice its 6-s lease while the real sweeper runs every second.
    Renewing: it stays ``running`` with this owner, attempt 1, its lease always ahead.
    Not renewing (what every chunk did before): the sweeper takes it back as
    "lease expired: worker lost" although its worker is alive and busy."""
    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "6")
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", "5")
    reset_caches()
    done = enqueue_csv(write_csv(tmp_path / "slow.csv", sample_rows[:21]), chunk_size=20)
    with session() as sess:
        chunk_id = sess.scalars(select(Chunk.id).where(Chunk.batch_id == done.batch_id)).one()
    found = claim(chunk_id)
    assert found is not None and found.attempt == 1
    taken_at = None
    started = time.monotonic()
    hold = lease_kept(chunk_id) if renewing else None
    if hold is not None:
        hold.__enter__()
    try:
        while time.monotonic() - started < 12:
            sweep()
            with session() as sess:
                chunk = sess.get_one(Chunk, chunk_id)
                state, owner, expires = chunk.state, chunk.lease_owner, chunk.lease_expires_at
            if state != "running" and taken_at is None:
                taken_at = time.monotonic() - started
            if renewing:
                assert (state, owner) == ("running", owner_name())
                assert aware(expires).timestamp() > time.time()
            time.sleep(1.0)
    finally:
        if hold is not None:
            hold.__exit__(None, None, None)
    with session() as sess:
        chunk = sess.get_one(Chunk, chunk_id)
    if renewing:
        assert chunk.state == "running" and chunk.attempts == 1 and chunk.error is None
        print(f"[{backend}] renewed: held 12 s on a 6-s lease, never taken back")
    else:
        assert taken_at is not None and 5 <= taken_at <= 10, taken_at
        assert chunk.error == "lease expired: worker lost"
        print(f"[{backend}] not renewed: taken from its live owner after {taken_at:.1f} s")
