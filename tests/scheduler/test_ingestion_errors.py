"""Issue 19 item 3 (the ingestion half) and item 4 (resume of folder batches, refusals).

An unexpected error while ingesting one input fails that batch with its reason and the next
input on the command line is still enqueued, no traceback; a file name that is not UTF-8 is
one refused item, not a crashed folder; an interrupted folder batch resumes without hashing
again what it already ingested; `digits resume`/`cancel` refuse what they cannot do in one line.
No worker runs here: these are about ingestion only, so they stay in the fast lane."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

import scheduler.batches as batches
from digits.core.db import session
from digits.core.processes import HOST
from digits.core.queries import batch_progress
from digits.core.schema import Batch, Chunk, Item, ItemError
from scheduler.batches import enqueue_csv, enqueue_files, image_files
from scheduler.ingestion import resume_batch
from tests.conftest import write_csv
from tests.faultkit import chunk_states, outcome, reload_settings, write_scans


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """A real `digits` process (what a user runs: its stderr shows any traceback)."""
    return subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


#: a real `digits` process whose ``add_chunk`` raises RuntimeError at its Nth call for batch 1
FAULTY = """
import sys
import scheduler.batches as batches
real, calls, nth = batches.add_chunk, [], int(sys.argv[1])
def add_chunk(batch_id, *args):
    calls.append(batch_id)
    if batch_id == 1 and calls.count(1) == nth:
        raise RuntimeError("injected fault")
    return real(batch_id, *args)
batches.add_chunk = add_chunk
sys.argv = ["digits", *sys.argv[2:]]
from digits.cli import main
main()
"""


def run_cli_with_fault(nth: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FAULTY, str(nth), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


def reasons(batch_id: int) -> dict[str, str]:
    with session() as sess:
        rows = sess.execute(
            select(Item.source_ref, ItemError.reason)
            .join(ItemError, ItemError.item_id == Item.id)
            .where(Item.batch_id == batch_id)
        ).all()
    return {str(ref): str(why) for ref, why in rows}


def status_of(batch_id: int) -> tuple[str, str | None]:
    with session() as sess:
        batch = sess.get_one(Batch, batch_id)
        return batch.status, batch.error


def failing_on(nth: int, exc: BaseException, batch_id: int = 1) -> Callable[..., int | None]:
    """``add_chunk`` that raises ``exc`` at its ``nth`` call for ``batch_id``."""
    real = batches.add_chunk
    calls = {"n": 0}

    def add_chunk(bid: int, *args: Any) -> int | None:
        if bid == batch_id:
            calls["n"] += 1
            if calls["n"] == nth:
                raise exc
        return real(bid, *args)

    return add_chunk


def test_a_file_name_that_is_not_utf8_is_one_refused_item_and_the_next_input_goes_on(
    backend: str, tmp_path: Path, sample_rows: list[str]
) -> None:
    """Before: `digits enqueue FOLDER next.csv` with one file named b'caf\\xe9.png' in the
    folder died with a UnicodeEncodeError traceback (the name cannot be stored), left the
    folder's batch `enqueueing` (shown `interrupted`; a resume hit the same error) and never
    enqueued next.csv. Now that file is an item refused with its reason, the other files
    are queued, and next.csv is enqueued."""
    folder = tmp_path / "scans"
    [good] = write_scans(folder, sample_rows, 1)
    os.link(good, os.fsencode(folder) + b"/caf\xe9.png")
    nxt = write_csv(tmp_path / "next.csv", sample_rows[:4])
    done = run_cli("enqueue", str(folder), str(nxt))
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr
    first, second = (int(line) for line in done.stdout.split())
    assert status_of(first)[0] == "running" and status_of(second)[0] == "running"
    refused = reasons(first)
    assert list(refused) == ["caf\\xe9.png"]
    assert refused["caf\\xe9.png"].startswith("file name is not valid UTF-8")
    [state] = batch_progress([first])
    assert (state.items, state.pending, state.errors) == (2, 1, 1)
    [state] = batch_progress([second])
    assert state.items == 3


@pytest.mark.parametrize("kind", ["images", "csv"])
def test_an_unexpected_error_fails_only_its_batch_with_the_reason_and_the_next_input_goes_on(
    kind: str,
    backend: str,
    tmp_path: Path,
    sample_rows: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any exception that is not a database error or an interrupt, raised while the first
    input's second block is committed: that batch fails with `ingestion failed after row N:
    <type>: <message>`, its committed chunk is cancelled (nothing stays queued inside a failed
    batch), and the next input is enqueued; exit 1, no traceback. Before (images): the
    exception escaped `digits enqueue` (a traceback), the batch stayed `enqueueing` and the
    next input was never enqueued."""
    monkeypatch.setenv("DIGITS_IMAGE_CHUNK_SIZE", "2")
    monkeypatch.setenv("DIGITS_CHUNK_SIZE", "2")
    reload_settings()
    if kind == "images":
        first = tmp_path / "scans"
        write_scans(first, sample_rows, 5)
    else:
        first = write_csv(tmp_path / "first.csv", sample_rows[:6])
    nxt = write_csv(tmp_path / "next.csv", sample_rows[:4])
    result = run_cli_with_fault(2, "enqueue", str(first), str(nxt))
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 1, result.stderr
    assert result.stdout.split() == ["1", "2"]
    name = str(first.resolve()) if kind == "images" else first.name
    why = f"{name}: ingestion failed after row 2: RuntimeError: injected fault"
    assert f"batch 1 failed: {why}" in result.stderr
    assert status_of(1) == ("failed", why)
    assert set(chunk_states(1)) == {"cancelled"}
    figures = outcome([1])
    assert (figures["items"], figures["errors"], figures["lost"]) == (2, 2, 0)
    assert set(reasons(1).values()) == {f"batch failed before this item was scored: {why}"}
    assert status_of(2)[0] == "running"


def test_an_interrupted_folder_batch_resumes_without_hashing_again_what_it_ingested(
    backend: str, tmp_path: Path, sample_rows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder of 7 scans in chunks of 2, interrupted (KeyboardInterrupt) at its third chunk:
    4 files in. Resume recomputes the sorted file list, skips the positions present and
    ingests the other 3: every position once, chunk seqs 1-4. Before: resume read and hashed
    all 7 files again (and checked each for links) to ingest 3."""
    folder = tmp_path / "scans"
    write_scans(folder, sample_rows, 7)
    folder = folder.resolve()
    with monkeypatch.context() as patch:
        patch.setattr(batches, "add_chunk", failing_on(3, KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            enqueue_files(folder, image_files(folder), chunk_size=2)
    [state] = batch_progress([1])
    assert (state.status, state.items) == ("enqueueing", 4)
    hashed: list[str] = []
    real = batches.regular_sha256

    def counting(path: Path, within: Any = ()) -> str | None:
        hashed.append(path.name)
        return real(path, within=within)

    monkeypatch.setattr(batches, "regular_sha256", counting)
    monkeypatch.setenv("DIGITS_IMAGE_CHUNK_SIZE", "2")
    reload_settings()
    done, after = resume_batch(1)
    assert after == 4 and done.items == 7 and not done.failed
    assert hashed == ["scan04.png", "scan05.png", "scan06.png"]
    with session() as sess:
        positions = sorted(sess.scalars(select(Item.position).where(Item.batch_id == 1)))
        seqs = sorted(sess.scalars(select(Chunk.seq).where(Chunk.batch_id == 1)))
    assert positions == list(range(1, 8)) and seqs == [1, 2, 3, 4]
    [state] = batch_progress([1])
    assert (state.status, state.ingest) == ("running", None)


def test_resume_and_cancel_refuse_what_they_cannot_do_in_one_line(
    backend: str, tmp_path: Path, sample_rows: list[str]
) -> None:
    """No such batch; a batch fully ingested (nothing to resume); a batch a live process
    still ingests (resume and cancel both refuse: two ingesters would race); a CSV changed
    since it was enqueued (its row numbers would not match)."""
    source = write_csv(tmp_path / "in.csv", sample_rows[:11])
    batch_id = enqueue_csv(source).batch_id
    for args, said in (
        (("resume", "999"), "batch 999 does not exist"),
        (("cancel", "999"), "batch 999 does not exist"),
        (("resume", str(batch_id)), f"batch {batch_id} is running: its input is fully"),
    ):
        done = run_cli(*args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert said in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        with session(write=True) as sess:
            sess.execute(
                update(Batch)
                .where(Batch.id == batch_id)
                .values(status="enqueueing", ingest_owner=f"{HOST}:{alive.pid}")
            )
        [state] = batch_progress([batch_id])
        assert state.ingest == "ingesting" and state.progress == "10 rows in"
        for command in ("resume", "cancel"):
            done = run_cli(command, str(batch_id))
            assert done.returncode == 1, done.stdout
            assert f"{HOST}:{alive.pid}" in done.stderr, done.stderr
    finally:
        alive.kill()
        alive.wait()
    [state] = batch_progress([batch_id])
    assert state.ingest == "interrupted"
    source.write_text(source.read_text() + sample_rows[11] + "\n")
    done = run_cli("resume", str(batch_id))
    assert done.returncode == 1 and "changed since it was enqueued" in done.stderr, done.stderr
    done = run_cli("cancel", str(batch_id))
    assert done.returncode == 0 and f"batch {batch_id} cancelled (was enqueueing)" in done.stdout
