"""Prometheus metrics for the workers and the scheduler, served on ``DIGITS_METRICS_PORT``.

Why it is built this way (Celery prefork):

* Chunks are scored in forked worker *children*; each has its own memory, so ordinary
  in-process counters would be split across children and the parent would hold none. We use
  prometheus-client's **multiprocess mode**: every process writes its samples to small mmapped
  files, and the process answering a scrape merges the files (counters and histograms are
  summed, so the counts of a child that was recycled stay in the worker's totals).
* Files live in ``DIGITS_HOME/metrics/<host>/<group>/`` (we set ``PROMETHEUS_MULTIPROC_DIR``
  ourselves). A group is one process family: ``worker-<celery parent pid>-<start>`` for all
  children of one ``digits worker``, ``scheduler-<pid>-<start>`` for a scheduler; ``<start>``
  is the owner's start time (``/proc``), so a reused pid is never mistaken for a live owner.
* **Cleaned at start:** when a process sets up its group, the groups of owners on this host
  that no longer run are deleted (a restarted worker starts from zero, which Prometheus reads
  as a counter reset). A scrape also ignores dead groups and the live-gauge files of dead
  processes, so a SIGKILLed process does not leave a stale "model version in use".
* **Serving:** whichever process of this host binds ``DIGITS_METRICS_PORT`` first serves the
  merged files of every live group on the host: the scheduler at start-up (``run_scheduler``);
  for ``digits worker``, the first child to score a chunk (the Celery parent imports no
  digits module we could hook without touching ``worker/tasks.py``; a child serving the
  merged files gives the same numbers). If the serving child is replaced (max tasks or memory
  per child), another child takes the port over on its next chunk (retried at most every
  10 s). Under ``digits up`` scheduler and workers share the port: one wins and serves all.
  In compose each container has its own hostname, so each serves only its own processes.
* Nothing is imported or written unless ``DIGITS_METRICS_PORT`` is set.

Labels are bounded: item errors are counted by a fixed category (:func:`error_category`),
never by their text; model versions and chunk states are small sets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from digits.core.db import aware, session
from digits.core.processes import pid_alive
from digits.core.schema import Batch, Chunk, utcnow
from digits.core.settings import get_settings
from model_store.inference import loaded_versions as in_this_process

log = logging.getLogger("digits.metrics")

RETRY_BIND_SECONDS = 10.0
CHUNK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)

#: (substring of the reason, category): first match wins; anything else is "other".
ERROR_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("quarantined", "quarantined"),
    ("blank", "blank"),
    ("not an image", "not_an_image"),
    ("empty file", "empty"),
    ("not accepted", "format"),
    ("truncated or corrupt", "corrupt"),
    ("too large", "too_large"),
    ("too small", "too_small"),
    ("multi-frame", "multi_frame"),
    ("unsupported image mode", "mode"),
    ("outside the batch", "path"),
    ("cannot read file", "unreadable"),
    ("row ", "csv_row"),
)
CATEGORIES = frozenset(c for _, c in ERROR_CATEGORIES) | {"other"}


def error_category(reason: str) -> str:
    """A bounded label for an item error's free-text reason (labels must never be raw text)."""
    low = reason.lower()
    return next((category for needle, category in ERROR_CATEGORIES if needle in low), "other")


# ---------------------------------------------------------------- process groups
def start_time(pid: int) -> str:
    """The process start time in clock ticks since boot (Linux), or "0" if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def alive(pid: int, started: str) -> bool:
    if started != "0":
        return start_time(pid) == started
    return pid_alive(pid)


GROUP = re.compile(r"^(?P<role>[a-z]+)-(?P<pid>\d+)-(?P<start>\d+)$")


def group_alive(name: str) -> bool:
    match = GROUP.match(name)
    return bool(match) and alive(int(match["pid"]), match["start"])  # type: ignore[index]


def host_dir() -> Path:
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
    return get_settings().home.resolve() / "metrics" / host


def group_name(role: str) -> str:
    """Worker children share their Celery parent's group; a scheduler is its own group."""
    owner = os.getppid() if role == "worker" else os.getpid()
    return f"{role}-{owner}-{start_time(owner)}"


def clean_dead_groups(root: Path, keep: str) -> list[str]:
    """Delete the files of process groups on this host whose owner no longer runs."""
    removed = []
    for group in root.iterdir() if root.is_dir() else []:
        if group.name != keep and not group_alive(group.name):
            shutil.rmtree(group, ignore_errors=True)
            removed.append(group.name)
    return removed


def live_files(root: Path) -> list[str]:
    """The sample files a scrape merges: live groups only, minus dead processes' live gauges."""
    files = []
    for group in sorted(root.iterdir()) if root.is_dir() else []:
        if not group_alive(group.name):
            continue
        for path in group.glob("*.db"):
            if path.name.startswith("gauge_live"):
                pid = path.stem.rsplit("_", 1)[-1]
                if pid.isdigit() and not alive(int(pid), start_time(int(pid))):
                    continue
            files.append(str(path))
    return files


class HostCollector:
    """Merges every live group's files at scrape time (prometheus-client's own merge)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        for _ in range(3):  # a group deleted mid-scrape: just look again
            try:
                return list(MultiProcessCollector.merge(live_files(self.root), accumulate=True))
            except FileNotFoundError:
                continue
        return []


# ---------------------------------------------------------------- the metrics
@dataclass
class Metrics:
    """The metric objects of this process (created after the multiprocess directory is set)."""

    group: Path
    items: Any
    errors: Any
    chunk_seconds: Any
    confidence: Any
    model_version: Any
    queue_chunks: Any
    oldest_waiting: Any
    versions_seen: set[int] = field(default_factory=set)
    server: Any = None
    next_bind: float = 0.0


_lock = threading.RLock()
_state: dict[str, Metrics] = {}


def _create(group: Path) -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram, values

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(group)
    values.close_all_multiprocess_files()  # a previous group of this process (tests)
    values.ValueClass = values.MultiProcessValue()  # whatever was imported before us
    return Metrics(
        group=group,
        items=Counter(
            "digits_items_scored", "Items given a prediction by a worker.", ["kind"], registry=None
        ),
        errors=Counter(
            "digits_item_errors",
            "Items refused by a worker, by error category.",
            ["reason"],
            registry=None,
        ),
        chunk_seconds=Histogram(
            "digits_chunk_seconds",
            "One chunk from claim to committed results.",
            ["kind"],
            buckets=CHUNK_BUCKETS,
            registry=None,
        ),
        confidence=Histogram(
            "digits_prediction_confidence",
            "Calibrated top-1 confidence of each prediction.",
            buckets=CONFIDENCE_BUCKETS,
            registry=None,
        ),
        model_version=Gauge(
            "digits_model_version_in_use",
            "1 for each model version loaded by a live worker process.",
            ["version"],
            multiprocess_mode="livemax",
            registry=None,
        ),
        queue_chunks=Gauge(
            "digits_queue_chunks",
            "Chunks queued or running (database).",
            ["state"],
            multiprocess_mode="livemax",
            registry=None,
        ),
        oldest_waiting=Gauge(
            "digits_oldest_waiting_item_seconds",
            "Age of the oldest batch with items still waiting (database).",
            multiprocess_mode="livemax",
            registry=None,
        ),
    )


def setup(role: str) -> Metrics | None:
    """This process's metrics (None when DIGITS_METRICS_PORT is unset); cleans dead groups."""
    if get_settings().metrics_port is None:
        return None
    root = host_dir()
    name = group_name(role)
    group = root / name
    with _lock:
        current = _state.get("metrics")
        if current is not None and current.group == group:
            return current
        group.mkdir(parents=True, exist_ok=True)
        removed = clean_dead_groups(root, keep=name)
        if removed:
            log.info("metrics: removed files of stopped processes %s", removed)
        if current is not None:
            stop()
        _state["metrics"] = metrics = _create(group)
        return metrics


def serve(role: str) -> bool:
    """Bind DIGITS_METRICS_PORT unless this process already serves; False if another process
    holds the port (it serves the same merged files) or metrics are off."""
    with _never_raise("serve"):
        return _serve(role)
    return False


def _serve(role: str) -> bool:
    metrics = setup(role)
    port = get_settings().metrics_port
    if metrics is None or port is None:
        return False
    with _lock:
        if metrics.server is not None:
            return True
        if time.monotonic() < metrics.next_bind:
            return False
        metrics.next_bind = time.monotonic() + RETRY_BIND_SECONDS
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(HostCollector(metrics.group.parent))
        try:
            metrics.server = start_http_server(port, registry=registry)
        except OSError as exc:
            log.debug("metrics port %s busy (%s): served by another process", port, exc)
            return False
        log.info("metrics on :%s (%s, pid %s)", port, role, os.getpid())
        return True


def stop() -> None:
    """Stop this process's metrics server (the scheduler on its way out; tests)."""
    with _lock:
        metrics = _state.pop("metrics", None)
        if metrics is not None and metrics.server is not None:
            httpd, thread = metrics.server
            httpd.shutdown()
            httpd.server_close()
            thread.join(5)


@contextlib.contextmanager
def _never_raise(what: str) -> Iterator[None]:
    """Metrics must never fail the work they describe."""
    try:
        yield
    except Exception:
        log.warning("metrics: %s failed", what, exc_info=True)


def record_chunk(
    kind: str,
    model_version: int,
    confidences: Iterable[float],
    errors: Iterable[tuple[int, str]],
    seconds: float,
    loaded_versions: Iterable[int] | None = None,
) -> None:
    """After a chunk's results are committed (worker child): counts, latency, confidence."""
    with _never_raise("record_chunk"):
        metrics = setup("worker")
        if metrics is None:
            return
        if loaded_versions is None:
            loaded_versions = in_this_process()
        serve("worker")
        scores = [float(c) for c in confidences]
        metrics.items.labels(kind).inc(len(scores))
        for score in scores:
            metrics.confidence.observe(score)
        for _, reason in errors:
            metrics.errors.labels(error_category(reason)).inc()
        metrics.chunk_seconds.labels(kind).observe(seconds)
        loaded = {*loaded_versions, model_version}
        metrics.versions_seen |= loaded
        for version in sorted(metrics.versions_seen):
            metrics.model_version.labels(str(version)).set(1 if version in loaded else 0)


def update_queue_gauges() -> None:
    """Queue depth and the oldest waiting batch's age, from the database (scheduler loop)."""
    with _never_raise("update_queue_gauges"):
        metrics = _state.get("metrics")
        if metrics is None:
            return
        from sqlalchemy import func, select

        with session() as sess:
            counts = dict(
                sess.execute(
                    select(Chunk.state, func.count())
                    .where(Chunk.state.in_(("queued", "running")))
                    .group_by(Chunk.state)
                ).all()
            )
            oldest = sess.scalar(
                select(func.min(Batch.created_at))
                .join(Chunk, Chunk.batch_id == Batch.id)
                .where(Chunk.state.in_(("queued", "running")))
            )
        for state in ("queued", "running"):
            metrics.queue_chunks.labels(state).set(int(counts.get(state, 0)))
        age = (utcnow() - aware(oldest)).total_seconds() if oldest is not None else 0.0
        metrics.oldest_waiting.set(max(0.0, age))
