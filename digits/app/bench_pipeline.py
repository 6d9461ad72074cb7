"""`digits bench --null-model`: what the pipeline itself sustains, with a model that costs nothing.

Workers score with the null model (model_store/null_model.py: same shapes, constant output),
so a chunk's time is all pipeline: the broker round trip, the claim, reading the staged rows,
shaping, the bulk upsert and the batch's bookkeeping. Each worker count is timed twice: end
to end (enqueue overlapping the workers, as `digits bench` does) and draining a queue filled
beforehand (the consumer side alone). Run with 2, 4, 8 … worker processes, its items/s
divided by one worker process's model-only rate (the real model, one thread) is how many
scoring cores one database and one broker can feed (docs/scaling.md).

Nothing it writes can reach users' results. Each worker count runs in a deployment made for
it and removed after: a temporary ``DIGITS_HOME`` (staging, logs, the filesystem broker) and,
beside it, a SQLite file there or, when ``DIGITS_DATABASE_URL`` is PostgreSQL, a throwaway
database on that server (``CREATE DATABASE``: the role needs CREATEDB) dropped at the end. Both
names carry ``NULL_BENCH_MARK``, the only databases the settings let ``DIGITS_NULL_MODEL`` run
against. A Redis broker is shared (there is one queue name): the bench refuses to start while
workers are connected to the configured database, as `digits bench` does.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from digits.app.bench import SAMPLE, load_pixels
from digits.app.runner import wait_for
from digits.app.supervision import start_workers, stop_workers
from digits.core import db
from digits.core.db import no_data_here, session, upgrade
from digits.core.preprocess import rows_to_tensor
from digits.core.queries import BatchProgress, batch_progress, connected_workers
from digits.core.schema import Item, Prediction
from digits.core.settings import NULL_BENCH_MARK, Settings, get_settings
from model_store.aliases import resolve_active
from model_store.ceiling import inference_path
from model_store.inference import predict
from model_store.loading import load_for_path
from scheduler.batches import enqueue_csv

#: Server processes whose CPU time the bench reads from /proc during a timed run (by name:
#: on a shared machine it includes anyone else's use of the same servers).
SERVERS = ("postgres", "redis-server")


def reset_caches() -> None:
    """Settings and engines are cached per process: rebuild them after the environment moved."""
    get_settings.cache_clear()
    for engine in db._engines.values():
        engine.dispose()
    db._engines.clear()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """This process's environment (read by the settings and inherited by the workers it
    starts) with ``values`` set, restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    reset_caches()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_caches()


@contextmanager
def bench_deployment(base: Settings) -> Iterator[str]:
    """A deployment of its own for one null-model run (see the module docstring); yields a
    line saying what it is. The temporary folder and the throwaway database are removed
    whatever happens."""
    folder = Path(tempfile.mkdtemp(prefix=NULL_BENCH_MARK))
    home = folder / "var"
    values = {"DIGITS_HOME": str(home), "DIGITS_NULL_MODEL": "1", "DIGITS_PRELOAD_RUNTIME": "0"}
    server = None if base.db_url.startswith("sqlite") else make_url(base.db_url)
    name = f"{NULL_BENCH_MARK}{uuid.uuid4().hex[:10]}"
    try:
        if server is None:
            values["DIGITS_DATABASE_URL"] = f"sqlite:///{home / 'digits.db'}"
            where = f"SQLite in {home}, removed after"
        else:
            _admin(server, f'CREATE DATABASE "{name}"')
            values["DIGITS_DATABASE_URL"] = server.set(database=name).render_as_string(False)
            where = f"throwaway database {name} on {server.host}, dropped after"
        with environment(values):
            upgrade()
            yield where
    finally:
        if server is not None:
            _admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(folder, ignore_errors=True)


def _admin(server: Any, statement: str) -> None:
    """One statement outside a transaction (CREATE/DROP DATABASE) on the configured server."""
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    except Exception as exc:
        raise ValueError(
            f"{statement} on {server.host} failed (the bench's throwaway database: the role "
            f"needs CREATEDB): {exc}"
        ) from exc
    finally:
        engine.dispose()


def cpu_seconds(pids: set[int] | None = None, names: tuple[str, ...] = ()) -> dict[str, float]:
    """User + system CPU seconds so far of live processes: ``pids`` and their descendants
    (key ``tree``), and every process whose name is in ``names`` (one key per name). Linux
    /proc; zeros elsewhere."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    stats: dict[int, tuple[str, int, float]] = {}
    try:
        entries = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        entries = []
    for pid in entries:
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        fields = raw.rsplit(")", 1)[1].split()
        stats[pid] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    out = {name: 0.0 for name in names}
    for comm, _, used in stats.values():
        if comm in out:
            out[comm] += used
    if pids is not None:
        tree = set(pids)
        grew = True
        while grew:
            below = {p for p, (_, parent, _) in stats.items() if parent in tree} - tree
            grew = bool(below)
            tree |= below
        out["tree"] = sum(stats[p][2] for p in tree if p in stats)
    return out


def written_once(batch_id: int) -> dict[str, int]:
    """Items of the batch, predictions written for them, and distinct items predicted: all
    three equal when every item was written exactly once."""
    with session() as sess:
        items = sess.scalar(select(func.count()).where(Item.batch_id == batch_id)) or 0
        rows, distinct = sess.execute(
            select(func.count(Prediction.id), func.count(func.distinct(Prediction.item_id)))
            .join(Item, Item.id == Prediction.item_id)
            .where(Item.batch_id == batch_id)
        ).one()
    return {"items": int(items), "predictions": int(rows), "items_predicted": int(distinct)}


def _cores(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU used between two ``cpu_seconds`` readings, in cores (CPU seconds / wall seconds)."""
    return {
        ("workers" if key == "tree" else key): round((after[key] - before[key]) / seconds, 2)
        for key in after
    }


def _checked(state: BatchProgress) -> dict[str, Any]:
    if state.status != "done":
        raise ValueError(f"bench batch {state.batch_id} ended {state.status}: {state.error}")
    counts = written_once(state.batch_id)
    same = counts["items"] == counts["predictions"] == counts["items_predicted"]
    return {**counts, "exactly_once": same}


def _first_claim(batch_id: int, timeout: float) -> None:
    """Return as soon as a worker has claimed one of the batch's chunks."""
    deadline = time.monotonic() + timeout
    while batch_progress([batch_id])[0].first_claim is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no worker claimed a chunk of batch {batch_id} in {timeout:.0f} s")
        time.sleep(0.02)


def pipeline_run(data: Path, workers: int, timeout: float) -> dict[str, Any]:
    """Two timed runs of ``data`` in the current (bench) deployment, with the CPU each part
    used meanwhile:

    * end to end: warm workers, from ``enqueue`` to the last committed prediction. The
      scheduler streams, validates and stages the file in one process while the workers drain
      it, so with a free model this is bounded by the enqueue.
    * drain: the same file enqueued first (staged, every chunk's message waiting in the
      broker), then workers started; from their first claim to the last commit. That is the
      consumer side alone: broker, claim, staged read, shaping, upsert, bookkeeping.
    """
    settings = get_settings()
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    proc = start_workers(workers, logs / "bench-worker.log")
    try:
        # every child up and the code paths warm; with the null model there is nothing to load
        warm = enqueue_csv(SAMPLE, chunk_size=max(1, 200 // workers))
        wait_for([warm.batch_id], timeout)
        cpu_before = cpu_seconds({proc.pid}, SERVERS)
        own_before = time.process_time()
        wall = time.time()
        started = time.perf_counter()
        done = enqueue_csv(data)
        enqueued = time.perf_counter() - started
        [state] = wait_for([done.batch_id], timeout)
        polled = time.perf_counter() - started
        own = time.process_time() - own_before
        cpu_after = cpu_seconds({proc.pid}, SERVERS)
    finally:
        stop_workers(proc)
    e2e = _checked(state)
    # the last commit's own time stamp, not the poll that saw it (polls are 0.2 s apart)
    last = state.last_write.timestamp() - wall if state.last_write else polled
    seconds = min(polled, max(last, enqueued))

    staged = enqueue_csv(data)
    proc = start_workers(workers, logs / "bench-worker.log")
    try:
        _first_claim(staged.batch_id, timeout)
        drain_before = cpu_seconds({proc.pid}, SERVERS)
        [drained] = wait_for([staged.batch_id], timeout)
        drain_after = cpu_seconds({proc.pid}, SERVERS)
    finally:
        stop_workers(proc)
    drain = _checked(drained)
    drain_seconds = drained.scoring_seconds or 0.0
    return {
        "workers": workers,
        **e2e,
        "seconds": round(seconds, 3),
        "enqueue_seconds": round(enqueued, 3),
        "enqueue_items_per_s": round(e2e["items"] / enqueued, 1),
        "items_per_s": round(state.predicted / seconds, 1),
        "cpu_cores": {
            **_cores(cpu_before, cpu_after, seconds),
            "bench_process": round(own / seconds, 2),
        },
        "drain": {
            **drain,
            "seconds": round(drain_seconds, 3),
            "items_per_s": round(drained.predicted / max(drain_seconds, 1e-3), 1),
            "cpu_cores": _cores(drain_before, drain_after, max(drain_seconds, 1e-3)),
        },
    }


def model_per_core(data: Path, rows: int) -> dict[str, Any]:
    """One worker process's model-only rate: the version the configured deployment pins new
    batches to, on the inference path its workers would run it on, one thread, over the
    first ``rows`` rows of ``data`` in chunks of DIGITS_CHUNK_SIZE (imports TensorFlow in
    this process)."""
    settings = get_settings()
    meta = resolve_active()
    path = inference_path(meta.card, settings.inference_path)
    model = load_for_path(meta, path, 1)
    tensor = rows_to_tensor(load_pixels(data)[:rows])
    size = settings.chunk_size
    predict(model, tensor[:size])  # warm-up: tracing, allocations
    started = time.perf_counter()
    for i in range(0, len(tensor), size):
        predict(model, tensor[i : i + size])
    rate = len(tensor) / (time.perf_counter() - started)
    return {
        "model_version": meta.version,
        "inference_path": path,
        "rows": len(tensor),
        "images_per_s": round(rate, 1),
    }


def _workers_connected() -> bool:
    """Whether workers are connected to the configured deployment (they would share the
    broker's queue with the bench's). A database with no digits tables has none."""
    if no_data_here() is not None:
        return False
    try:
        return bool(connected_workers())
    except DBAPIError:  # not a digits database (yet): nobody works from it
        return False


def worker_counts(text: str) -> list[int]:
    """``"2,4,8"`` → ``[2, 4, 8]``; a ValueError (the CLI's one-line refusal) otherwise."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--sweep takes worker counts like 2,4,8; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--sweep takes worker counts of 1 or more; got {text!r}")
    return counts


def null_bench(
    data: Path | None,
    worker_counts: list[int],
    ceiling_rows: int = 5000,
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """The pipeline's ceiling at each worker count, and how many scoring cores it feeds."""
    base = get_settings()
    source = data or base.data
    if source is None or not Path(source).is_file():
        raise ValueError("pass --data PATH to a Kaggle CSV (e.g. test.csv.gz) or set DIGITS_DATA")
    if not worker_counts or min(worker_counts) < 1:
        raise ValueError("worker counts must be 1 or more")
    if not base.embedded_broker and _workers_connected():
        raise ValueError("other workers are connected to this broker: stop them for a clean bench")
    load_before = os.getloadavg()[0]
    runs = []
    for workers in worker_counts:
        with bench_deployment(base) as where:
            runs.append({**pipeline_run(Path(source), workers, timeout), "isolation": where})
    report: dict[str, Any] = {
        "mode": "null-model",
        "data": str(source),
        "items": runs[0]["items"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": round(load_before, 2),
        "deployment": {
            "broker": base.broker.split("://")[0],
            "database": base.db_url.split(":")[0].split("+")[0],
            "chunk_size": base.chunk_size,
            "staging": base.staging,
        },
        "runs": runs,
    }
    best = max(runs, key=lambda r: r["items_per_s"])
    report["best"] = {"workers": best["workers"], "items_per_s": best["items_per_s"]}
    best_drain = max(runs, key=lambda r: r["drain"]["items_per_s"])
    report["best_drain"] = {
        "workers": best_drain["workers"],
        "items_per_s": best_drain["drain"]["items_per_s"],
    }
    if ceiling_rows:
        per_core = model_per_core(Path(source), ceiling_rows)
        report["model_only_per_core"] = per_core
        for run in runs:
            run["cores_fed"] = round(run["items_per_s"] / per_core["images_per_s"], 1)
            run["drain"]["cores_fed"] = round(
                run["drain"]["items_per_s"] / per_core["images_per_s"], 1
            )
        report["best"]["cores_fed"] = best["cores_fed"]
        report["best_drain"]["cores_fed"] = best_drain["drain"]["cores_fed"]
    return report
