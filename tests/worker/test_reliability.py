"""Worker-side faults, measured: poison chunks, broker and database restarts, SQLite under two
workers, warm shutdown, and memory over hundreds of chunks.

Each test prints ``FIGURES <test>: lost=…, duplicates=…, recover_s=…`` (run with ``-s``), the
numbers recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from digits.app.runner import wait_for
from digits.core.db import session
from digits.core.schema import Chunk, Item, ItemError
from scheduler.batches import Enqueued, enqueue_csv, enqueue_files, image_files
from tests.conftest import write_csv
from tests.faultkit import (
    PrivatePostgres,
    PrivateRedis,
    chunk_states,
    discard,
    outcome,
    reload_settings,
    report,
    rss_kib,
    setup_backend,
    wait_until,
    write_scans,
)
from worker.publish import send_chunks

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow


@pytest.fixture(params=["embedded", "services"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """embedded (SQLite + filesystem broker) or services (PostgreSQL + a private Redis)."""
    return setup_backend(request.param, request, monkeypatch)


CRASH_MARK = b"DIGITS-TEST-CRASH"
HANG_MARK = b"DIGITS-TEST-HANG!"
#: Test-only fault injection, loaded by the worker processes of one test through PYTHONPATH
#: (no setting, no code path in the product): decoding a file that starts with CRASH_MARK
#: kills the process with SIGKILL, as a segfault in a native image decoder would; one that
#: starts with HANG_MARK never returns, as a decoder stuck in a loop would.
CRASH_HOOK = f"""
import os, signal, time
import digits.core.images as _images

_decode = _images.image_to_digit

def image_to_digit(data, *args, **kwargs):
    if bytes(data[:{len(CRASH_MARK)}]) == {CRASH_MARK!r}:
        os.kill(os.getpid(), signal.SIGKILL)
    while bytes(data[:{len(HANG_MARK)}]) == {HANG_MARK!r}:
        time.sleep(1)
    return _decode(data, *args, **kwargs)

_images.image_to_digit = image_to_digit
"""


def inject_crash_hook(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(CRASH_HOOK)
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p),
    )


def warm_up(worker: object, folder: Path, sample_rows: list[str]) -> None:
    """Score a few one-item chunks so each child has loaded TensorFlow and the model."""
    write_scans(folder, sample_rows, 4, seed=7, prefix="warm")
    warm = enqueue_files(folder.resolve(), image_files(folder.resolve()), chunk_size=1)
    [state] = wait_for([warm.batch_id], timeout=120)
    assert state.status == "done" and state.predicted == 4


def test_poison_chunks_that_hang_or_kill_their_worker_are_quarantined(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """True poison, every attempt, in one batch of four 3-item chunks:

    * chunk 2 hangs: one item's decoder never returns (a test-only hook, as a native decoder
      stuck in a loop would), until the task time limit interrupts the child (a FIFO was used
      before; the workers now refuse anything but a regular file without opening it);
    * chunk 4 kills: one item crashes its decoder (SIGKILL of the child, simulated with a
      test-only hook), so the prefork child dies and the message comes back.

    Our own attempt counter (DIGITS_MAX_ATTEMPTS) quarantines both with a reason; chunks 1
    and 3 are scored meanwhile; the batch finishes; nothing loops."""
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", "16")  # soft limit 8 s, hard 16 s
    monkeypatch.setenv("DIGITS_MAX_ATTEMPTS", "2")
    # the lease must outlive the hard limit (settings refuse less): see "lease shorter than
    # the time limit" in docs/reliability.md for what happened before they did
    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "20")
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    inject_crash_hook(tmp_path / "hook", monkeypatch)
    reload_settings()
    worker = worker_factory()
    worker.wait_ready()
    warm_up(worker, tmp_path / "warm", sample_rows)
    folder = tmp_path / "scans"
    write_scans(folder, sample_rows, 12)
    (folder / "scan10.png").write_bytes(CRASH_MARK + b" (stands for a decoder crash)")
    done = enqueue_files(folder.resolve(), image_files(folder.resolve()), chunk_size=3, send=False)
    (folder / "scan04.png").write_bytes(HANG_MARK + b" (a decoder that never returns)")
    started = time.monotonic()
    send_chunks(done.chunk_ids)
    [state] = wait_for([done.batch_id], timeout=150)
    seconds = time.monotonic() - started
    assert state.status == "done", worker.tail()
    with session() as sess:
        chunks = sess.scalars(
            select(Chunk).where(Chunk.batch_id == done.batch_id).order_by(Chunk.seq)
        ).all()
        reasons = dict(
            sess.execute(
                select(Item.source_ref, ItemError.reason)
                .join(ItemError, ItemError.item_id == Item.id)
                .where(Item.batch_id == done.batch_id)
            ).all()
        )
    log = worker.log.read_text()
    discard(worker)
    assert [c.state for c in chunks] == ["done", "quarantined", "done", "quarantined"], log
    assert [c.attempts for c in chunks] == [1, 2, 1, 2], log
    hang_reason, kill_reason = chunks[1].error or "", chunks[3].error or ""
    assert hang_reason.startswith("failed 2 attempts; last: SoftTimeLimitExceeded"), hang_reason
    # the child's death is noticed by the broker redelivery (WorkerLostError after Celery's
    # 10 s worker_lost_wait) or by the sweeper (lease expired), whichever comes first
    assert kill_reason in (
        "failed 2 attempts; last: its worker died every time (poison input?)",
        "failed 2 attempts; last: lease expired: worker lost",
    ), kill_reason
    assert sorted(reasons) == [f"scan{i:02d}.png" for i in (3, 4, 5, 9, 10, 11)]
    assert all(r.startswith("chunk quarantined: failed 2 attempts") for r in reasons.values())
    figures = outcome([done.batch_id])
    assert (figures["lost"], figures["duplicates"], figures["predicted"]) == (0, 0, 6)
    assert log.count("exited with 'signal 9 (SIGKILL)'") == 2, log[-3000:]  # one per attempt
    report(
        f"poison[{backend}]",
        lost=0,
        duplicates=0,
        quarantined_chunks=2,
        quarantined_items=6,
        attempts_each=2,
        batch_done_s=round(seconds, 1),
        hang_reason=hang_reason[:60],
        kill_reason=kill_reason[:70],
    )


#: the outage tests' two CSVs: long enough that the outage lands with most chunks left
ROWS_PER_FILE = 12_000
CHUNKS = 2 * ROWS_PER_FILE // 250


def big_csvs(folder: Path, sample_rows: list[str], copies: int, files: int = 2) -> list[Path]:
    """``files`` CSVs of ``copies`` × 200 labelled rows each."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_csv(folder / f"part{i}.csv", sample_rows[:1] + sample_rows[1:] * copies)
        for i in range(files)
    ]


def wait_mid_run(batch_ids: list[int], timeout: float = 90) -> None:
    """Until some chunk is done and some is still to do: the moment to break something."""

    def mid() -> bool:
        with session() as sess:
            states = sess.scalars(select(Chunk.state).where(Chunk.batch_id.in_(batch_ids))).all()
        return "done" in states and any(s != "done" for s in states)

    wait_until(mid, timeout, what="a batch half done")


def test_redis_restarted_mid_run_every_batch_completes_exactly_once(
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """A non-persistent Redis SIGKILLed mid-run and restarted on the same port 3 s later: every
    message it held is gone. Workers reconnect by themselves; the sweeper (here: inside
    wait_for, as in `digits run`) re-sends chunks whose message is older than the lease."""
    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "6")
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", "5")  # the lease must outlive it
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    setup_backend("services", request, monkeypatch)
    # Everything is queued before the worker starts: on the int8 path a worker running
    # during the enqueue had scored nearly every chunk by the time it returned, and the
    # outage then broke nothing (84-95 of 96 chunks done at the kill)
    sources = big_csvs(tmp_path / "in", sample_rows, ROWS_PER_FILE // 200)
    batch_ids = [enqueue_csv(p, chunk_size=250).batch_id for p in sources]
    worker = worker_factory()
    worker.wait_ready()
    broker: PrivateRedis = request.node.private_redis
    times: dict[str, float] = {}
    before: dict[str, int] = {}

    def outage() -> None:  # while the main thread waits, exactly as `digits run` does
        wait_mid_run(batch_ids)
        for b in batch_ids:
            for state, count in chunk_states(b).items():
                before[state] = before.get(state, 0) + count
        broker.kill()
        times["killed"] = time.monotonic()
        time.sleep(3)
        broker.start()
        times["restarted"] = time.monotonic()

    workers = [worker]

    def supervise() -> None:
        """What `digits run`, `digits up` and compose's `restart: unless-stopped` do: start
        a worker again if it exited (kombu can kill the worker on a Redis connection loss:
        'Unrecoverable error: AttributeError(... 'hostname')', see docs/reliability.md)."""
        if workers[-1].proc.poll() is not None:
            workers.append(worker_factory())

    breaker = threading.Thread(target=outage)
    breaker.start()
    try:
        states = wait_for(batch_ids, timeout=150, keep_alive=supervise)
    finally:
        breaker.join(60)
    restarted = times["restarted"]
    recovered = time.monotonic() - restarted
    log = "".join(w.log.read_text() for w in workers)
    discard(*workers)
    assert all(s.status == "done" for s in states), log[-3000:]
    figures = outcome(batch_ids)
    assert (figures["lost"], figures["duplicates"]) == (0, 0), figures
    assert figures["predicted"] == 2 * ROWS_PER_FILE
    assert before.get("done", 0) < CHUNKS and "Connection to broker lost" in log, log[-3000:]
    # The chunks left at the kill were finished through the restarted broker: by the worker
    # reconnecting, or by its replacement after kombu's crash. Which one, and whether kombu
    # logged the reconnection before the crash, varies from run to run (a CI run had one
    # "Connected" line and the crash at the end of the log): reported, not asserted.
    report(
        "redis-restart[services]",
        lost=0,
        duplicates=0,
        items=2 * ROWS_PER_FILE,
        chunks=CHUNKS,
        chunks_done_before_kill=before.get("done", 0),
        outage_s=round(restarted - times["killed"], 1),
        recover_s=round(recovered, 1),
        reclaimed_chunks=figures["reclaimed_chunks"],
        reconnects=log.count("Connected to redis://"),
        worker_crashed=len(workers) - 1,
    )


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    why = PrivatePostgres.unavailable()
    if why:
        pytest.skip(f"cannot start a private PostgreSQL cluster: {why}")
    cluster = PrivatePostgres()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


def test_postgres_stopped_20s_mid_run_every_batch_completes_exactly_once(
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    private_postgres: PrivatePostgres,
) -> None:
    """A private PostgreSQL cluster (never the shared one) stopped with `pg_ctl stop -m fast`
    mid-run, kept down 20 s, started again. Tasks retry database errors with backoff; the pool
    pre-pings, so the first use after the restart reconnects; `digits run`'s wait rides it out.
    """
    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "10")
    monkeypatch.setenv("DIGITS_TASK_TIME_LIMIT", "8")  # the lease must outlive it
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    setup_backend("services", request, monkeypatch)  # private Redis too
    monkeypatch.setenv("DIGITS_DATABASE_URL", private_postgres.create_database("digits"))
    reload_settings()
    from digits.core.db import upgrade

    upgrade()
    # Everything is queued before the worker starts: on the int8 path a worker running
    # during the enqueue had scored nearly every chunk by the time it returned, and the
    # outage then broke nothing (84-95 of 96 chunks done at the kill)
    sources = big_csvs(tmp_path / "in", sample_rows, ROWS_PER_FILE // 200)
    batch_ids = [enqueue_csv(p, chunk_size=250).batch_id for p in sources]
    worker = worker_factory()
    worker.wait_ready()
    times: dict[str, float] = {}
    before: dict[str, int] = {}

    def outage() -> None:
        wait_mid_run(batch_ids)
        for b in batch_ids:
            for state, count in chunk_states(b).items():
                before[state] = before.get(state, 0) + count
        private_postgres.stop("fast")
        times["stopped"] = time.monotonic()
        time.sleep(20)
        private_postgres.start()
        times["started"] = time.monotonic()

    breaker = threading.Thread(target=outage)
    breaker.start()
    try:
        states = wait_for(batch_ids, timeout=200)
    finally:
        breaker.join(90)
    recovered = time.monotonic() - times["started"]
    assert all(s.status == "done" for s in states), worker.tail()
    figures = outcome(batch_ids)
    assert (figures["lost"], figures["duplicates"]) == (0, 0), figures
    assert figures["predicted"] == 2 * ROWS_PER_FILE
    log = worker.log.read_text()
    discard(worker)
    assert before.get("done", 0) < CHUNKS and "database error, retry in" in log, log[-3000:]
    report(
        "postgres-stop-20s[services]",
        lost=0,
        duplicates=0,
        items=2 * ROWS_PER_FILE,
        chunks=CHUNKS,
        chunks_done_before_stop=before.get("done", 0),
        outage_s=round(times["started"] - times["stopped"], 1),
        recover_s=round(recovered, 1),
        reclaimed_chunks=figures["reclaimed_chunks"],
        db_error_retries=log.count("database error, retry in"),
    )


def test_sqlite_two_worker_processes_never_hit_database_is_locked(
    home: Path,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """The embedded default under write contention: two `digits worker` processes (two prefork
    children each) plus the enqueuer and the sweeper all write one SQLite file, 150 small
    chunks (= 150 claims + 150 result transactions + 150 sends) for 3,000 items. WAL + busy
    timeout + BEGIN IMMEDIATE: no "database is locked", no retry, every chunk first time."""
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    setup_backend("embedded", request, monkeypatch)
    workers = [worker_factory(), worker_factory()]
    for w in workers:
        w.wait_ready()
    [source] = big_csvs(tmp_path / "in", sample_rows, 15, files=1)  # 3,000 rows
    started = time.monotonic()
    done = enqueue_csv(source, chunk_size=20)
    [state] = wait_for([done.batch_id], timeout=240)
    seconds = time.monotonic() - started
    logs = "".join(w.log.read_text() for w in workers)
    served = [w.log.read_text().count("event=chunk_done") for w in workers]
    # Each names itself digits-<pid>@<host>, so Celery remote control can tell them apart.
    named = [f"digits-{w.proc.pid}@" in w.log.read_text() for w in workers]
    discard(*workers)
    assert state.status == "done", logs[-3000:]
    figures = outcome([done.batch_id])
    assert (figures["lost"], figures["duplicates"], figures["predicted"]) == (0, 0, 3000)
    locked = logs.lower().count("database is locked")
    retries = logs.count("retry in")
    assert locked == 0 and retries == 0, logs[-3000:]
    assert figures["reclaimed_chunks"] == 0  # every chunk done on its first attempt
    assert min(served) > 0, served  # both processes really wrote
    assert named == [True, True], logs[-3000:]
    report(
        "sqlite-two-workers[embedded]",
        items=3000,
        chunks=150,
        lost=0,
        duplicates=0,
        database_is_locked=locked,
        task_retries=retries,
        chunks_per_worker=served,
        seconds=round(seconds, 1),
    )


def test_sigterm_mid_batch_is_a_warm_shutdown_and_nothing_waits_for_a_lease(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM (what `docker stop`, systemd and `digits up` send) while chunks are running:
    Celery's warm shutdown lets the running chunks finish and commit (acks_late: they are
    acknowledged only then), and gives back what it had reserved. A new worker finishes the
    batch at once: far below the 60 s lease, so nothing waited for the sweeper."""
    monkeypatch.setenv("DIGITS_LEASE_SECONDS", "60")
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    reload_settings()
    first = worker_factory()
    first.wait_ready()
    [source] = big_csvs(tmp_path / "in", sample_rows, 30, files=1)  # 6,000 rows
    done = enqueue_csv(source, chunk_size=500)  # 12 chunks
    wait_mid_run([done.batch_id])
    with session() as sess:
        running = set(
            sess.scalars(
                select(Chunk.id).where(Chunk.batch_id == done.batch_id, Chunk.state == "running")
            ).all()
        )
    first.proc.send_signal(signal.SIGTERM)
    term = time.monotonic()
    first.proc.wait(60)
    shutdown = time.monotonic() - term
    with session() as sess:
        after = dict(
            sess.execute(select(Chunk.id, Chunk.state).where(Chunk.batch_id == done.batch_id)).all()
        )
    finished_in_flight = sum(1 for c in running if after[c] == "done")
    assert "running" not in after.values(), first.tail()  # nothing left half-done
    second = worker_factory()
    restarted = time.monotonic()
    [state] = wait_for([done.batch_id], timeout=120)
    recovered = time.monotonic() - restarted
    discard(second)
    assert state.status == "done", second.tail()
    figures = outcome([done.batch_id])
    assert (figures["lost"], figures["duplicates"], figures["predicted"]) == (0, 0, 6000)
    assert recovered < 45, f"finished {recovered:.1f} s after the restart: waited for a lease?"
    report(
        f"sigterm-warm-shutdown[{backend}]",
        lost=0,
        duplicates=0,
        items=6000,
        chunks=12,
        running_at_sigterm=len(running),
        finished_in_flight=finished_in_flight,
        left_queued=list(after.values()).count("queued"),
        reclaimed_chunks=figures["reclaimed_chunks"],
        shutdown_s=round(shutdown, 1),
        restart_to_done_s=round(recovered, 1),
        sigterm_to_done_s=round(time.monotonic() - term, 1),
    )


def test_500_chunks_in_a_row_worker_memory_plateaus(
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """500 two-row chunks through one prefork child: its RSS, sampled from /proc, stops
    growing once the model is loaded (the recycle caps — 2,000 tasks or 4 GB per child —
    are the backstop for a leak, not what keeps memory flat)."""
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    setup_backend("services", request, monkeypatch)
    worker = worker_factory(concurrency=1)
    worker.wait_ready()
    [child] = worker.children()
    [source] = big_csvs(tmp_path / "in", sample_rows, 5, files=1)  # 1,000 rows
    enqueued: list[Enqueued] = []
    enqueuer = threading.Thread(target=lambda: enqueued.append(enqueue_csv(source, chunk_size=2)))
    started = time.monotonic()
    enqueuer.start()  # the worker scores while the 500 chunks are still being enqueued
    samples: list[tuple[int, int]] = []  # (chunks done, child RSS KiB)
    while True:
        with session() as sess:
            finished = len(sess.scalars(select(Chunk.id).where(Chunk.state == "done")).all())
        rss = rss_kib(child)
        assert rss is not None, f"child {child} is gone: {worker.tail()}"
        samples.append((finished, rss))
        if finished == 500:
            break
        assert time.monotonic() - started < 200, worker.tail()
        time.sleep(0.25)
    seconds = time.monotonic() - started
    enqueuer.join(30)
    [done] = enqueued
    assert done.chunks == 500
    [state] = wait_for([done.batch_id], timeout=30)
    assert state.status == "done"
    assert worker.children() == [child]  # the same child did all 500 (no recycle needed)
    discard(worker)

    def rss_at(fraction: float) -> int:
        return next(r for n, r in samples if n >= fraction * 500)

    early, middle, end = rss_at(0.1), rss_at(0.5), samples[-1][1]
    peak = max(r for _, r in samples)
    growth_mib = (end - early) / 1024
    assert growth_mib < 40, samples[::20]
    figures = outcome([done.batch_id])
    assert (figures["lost"], figures["duplicates"]) == (0, 0)
    report(
        "memory-500-chunks[services]",
        chunks=500,
        items=1000,
        seconds=round(seconds, 1),
        rss_mib_at_10pct=round(early / 1024),
        rss_mib_at_50pct=round(middle / 1024),
        rss_mib_at_end=round(end / 1024),
        rss_mib_peak=round(peak / 1024),
        growth_10pct_to_end_mib=round(growth_mib, 1),
        child_recycled=False,
    )
