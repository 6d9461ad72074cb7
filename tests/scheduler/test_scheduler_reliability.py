"""Scheduler-side faults: `digits scheduler` killed between claiming inbox files and queueing them.

(Named ``test_scheduler_reliability.py``, not ``test_reliability.py``: the test folders are not
packages, so two test modules with one basename would not both be collected.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from digits.db import session
from digits.schema import Batch, Item, ItemError
from model_store.registry import resolve_active
from scheduler.batches import create_batch
from scheduler.runner import wait_for
from tests.faultkit import outcome, report, setup_backend, wait_until, write_scans


@pytest.fixture(params=["embedded", "services"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """embedded (SQLite + filesystem broker) or services (PostgreSQL + a private Redis)."""
    return setup_backend(request.param, request, monkeypatch)


class Scheduler:
    """A real `digits scheduler --no-beat` process in its own process group."""

    def __init__(self, log: Path) -> None:
        self.log = log
        out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "digits.cli", "scheduler", "--no-beat"], stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ))
        out.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def schedulers(home: Path) -> Iterator[list[Scheduler]]:
    started: list[Scheduler] = []
    yield started
    for s in started:
        s.stop()


def drop(folder: Path, files: list[Path]) -> None:
    """Deliver files the careful way: written under a hidden name, then renamed."""
    for f in files:
        tmp = folder / f".{f.name}.tmp"
        tmp.write_bytes(f.read_bytes())
        os.rename(tmp, folder / f.name)


def inbox_items() -> dict[str, int]:
    """source_ref → number of items with that name, over every inbox batch."""
    with session() as sess:
        rows = sess.execute(select(Item.source_ref, func.count()).group_by(Item.source_ref)).all()
    return {ref: int(n) for ref, n in rows}


def all_batches_finished(expected_items: int) -> bool:
    with session() as sess:
        statuses = sess.scalars(select(Batch.status)).all()
        items = sess.scalar(select(func.count()).select_from(Item)) or 0
    return items >= expected_items and bool(statuses) and all(
        s in ("done", "failed") for s in statuses)


def test_scheduler_killed_right_after_claiming_loses_and_repeats_nothing(
    backend: str, worker_factory: type, schedulers: list[Scheduler], sample_rows: list[str],
    tmp_path: Path, home: Path,
) -> None:
    """SIGKILL `digits scheduler` the moment a drop appears in processing/ (claimed: renamed
    out of the inbox, maybe not yet a batch), start a new one: it finishes the drop. Every
    dropped file ends as exactly one item, scored once or refused with a reason."""
    from digits.settings import get_settings

    inbox = get_settings().inbox_dir
    processing = inbox / "processing"
    worker = worker_factory()
    first = Scheduler(home / "scheduler-0.log")
    schedulers.append(first)
    wait_until(processing.is_dir, 30, what="the scheduler to create the inbox")
    worker.wait_ready()
    files = write_scans(tmp_path / "src", sample_rows, 8)
    text = tmp_path / "src" / "notes.png"
    text.write_text("a text file renamed .png\n")
    drop(inbox, [*files, text])
    wait_until(lambda: any(processing.iterdir()), 30, interval=0.002,
               what="a drop to be claimed")
    first.kill()
    killed = time.monotonic()
    with session() as sess:
        committed = sess.scalar(select(func.count()).select_from(Batch)) or 0
    left = sorted(p.name for p in processing.iterdir())
    second = Scheduler(home / "scheduler-1.log")
    schedulers.append(second)
    wait_until(lambda: all_batches_finished(9), 90, interval=0.2,
               what="the drop to be finished by the new scheduler")
    recovered = time.monotonic() - killed
    with session() as sess:
        batch_ids = list(sess.scalars(select(Batch.id)).all())
        reasons = dict(sess.execute(select(Item.source_ref, ItemError.reason)
                                    .join(ItemError, ItemError.item_id == Item.id)).all())
    wait_for(batch_ids, timeout=30)
    counts = inbox_items()
    assert counts == {f.name: 1 for f in [*files, text]}, counts  # none lost, none twice
    assert reasons == {"notes.png": "not an image"}
    figures = outcome(batch_ids)
    assert (figures["lost"], figures["duplicates"], figures["predicted"]) == (0, 0, 8)
    assert not any(processing.iterdir())
    processed = sorted(p.name for p in (inbox / "processed").rglob("*") if p.is_file())
    assert processed == sorted(f.name for f in files) or len(processed) >= 8
    report(f"scheduler-killed-after-claim[{backend}]", files=9, lost=0, duplicates=0,
           items_per_file=1, batches_committed_at_kill=committed, drops_left=len(left),
           recover_s=round(recovered, 1))


def test_scheduler_killed_half_way_through_enqueueing_a_drop_is_redone(
    backend: str, worker_factory: type, sample_rows: list[str], tmp_path: Path,
) -> None:
    """The narrowest window, made deterministic: the batch row of a claimed drop was committed
    but the scheduler died before its items and chunks were (status still ``enqueueing``).
    Start-up reconciliation must redo that drop, not take it as committed."""
    from digits.settings import get_settings
    from scheduler.inbox import SOURCE_PREFIX, Inbox

    inbox = Inbox(get_settings().inbox_dir)
    claimed = inbox.root / "processing" / "20260101T000000-cccccc"
    files = write_scans(claimed, sample_rows, 5)
    partial = create_batch(SOURCE_PREFIX + claimed.name, "images", resolve_active(), None)
    worker = worker_factory()
    inbox.reconcile()
    worker.wait_ready()
    with session() as sess:
        batch_ids = list(sess.scalars(select(Batch.id)).all())
    states = wait_for(batch_ids, timeout=60)
    assert all(s.status == "done" for s in states), [(s.batch_id, s.status) for s in states]
    assert inbox_items() == {f.name: 1 for f in files}
    figures = outcome(batch_ids)
    assert (figures["lost"], figures["duplicates"], figures["predicted"]) == (0, 0, 5)
    report(f"scheduler-killed-mid-enqueue[{backend}]", files=5, lost=0, duplicates=0,
           partial_batch=partial, batches_after=batch_ids)
