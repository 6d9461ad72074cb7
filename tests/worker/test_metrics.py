"""Prometheus metrics scraped over HTTP from a real prefork worker and from the scheduler."""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from digits.app.runner import wait_for
from digits.core.synthetic_scans import render_scan
from model_store.registry import default_version
from scheduler.batches import enqueue_csv, enqueue_files, image_files
from tests.conftest import write_csv
from worker.metrics import CATEGORIES, error_category

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format → {(name, labels): value} (a tiny parser: no client imports)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            out[(match["name"], labels)] = float(match["value"])
    return out


def total(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_scrape(port: int, ready: object, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    last: Exception | dict | None = None
    while time.monotonic() < deadline:
        try:
            last = scrape(port)
            if ready(last):  # type: ignore[operator]
                return last
        except OSError as exc:  # not bound yet
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"metrics never ready on :{port}: {last}")


@pytest.fixture
def metrics_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """DIGITS_METRICS_PORT for the processes started in the test; the multiprocess directory
    the scheduler sets in this process is put back afterwards."""
    from digits.core.settings import get_settings

    port = free_port()
    monkeypatch.setenv("DIGITS_METRICS_PORT", str(port))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored (removed) after the test
    get_settings.cache_clear()
    yield port
    from worker import metrics

    metrics.stop()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_worker_serves_metrics_after_scoring_a_batch(
    backend: str,
    metrics_env: int,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each prefork child writes its own files; the port answers with the merged totals."""
    from digits.core.settings import get_settings
    from scheduler.service import run_scheduler

    worker = worker_factory(concurrency=2)
    worker.wait_ready()
    csv = enqueue_csv(write_csv(tmp_path / "b.csv", sample_rows[:121]), chunk_size=30)
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, line in enumerate(sample_rows[1:4]):
        values = np.array(line.split(","), dtype=np.int64)[1:].astype(np.uint8)
        data, ext = render_scan(values, rng, fmt="PNG")
        (folder / f"s{i}{ext}").write_bytes(data)
    (folder / "notes.png").write_bytes(b"plain text")
    images = enqueue_files(folder, image_files(folder))
    states = wait_for([csv.batch_id, images.batch_id], timeout=120)
    assert [s.status for s in states] == ["done", "done"], worker.tail()

    samples = wait_scrape(metrics_env, lambda s: total(s, "digits_items_scored_total") >= 123)
    assert total(samples, "digits_items_scored_total", kind="csv") == 120  # the batch size
    assert total(samples, "digits_items_scored_total", kind="images") == 3
    assert total(samples, "digits_item_errors_total", reason="not_an_image") == 1
    in_use = str(default_version().version)
    assert total(samples, "digits_model_version_in_use", version=in_use) == 1
    assert total(samples, "digits_prediction_confidence_count") == 123
    assert total(samples, "digits_prediction_confidence_bucket", le="+Inf") == 123
    assert 0 < total(samples, "digits_prediction_confidence_sum") <= 123
    assert total(samples, "digits_chunk_seconds_count", kind="csv") == 4
    assert total(samples, "digits_chunk_seconds_count", kind="images") == 1

    # the scheduler serves too (its own port): the queue from the database
    worker.stop()
    scheduler_port = free_port()
    monkeypatch.setenv("DIGITS_METRICS_PORT", str(scheduler_port))
    get_settings.cache_clear()
    waiting = enqueue_csv(write_csv(tmp_path / "waiting.csv", sample_rows[:11]))  # no worker
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler, args=(stop,), kwargs={"beat": False})
    thread.start()
    try:
        samples = wait_scrape(
            scheduler_port,
            lambda s: total(s, "digits_queue_chunks", state="queued") == waiting.chunks,
        )
        assert total(samples, "digits_queue_chunks", state="running") == 0
        assert total(samples, "digits_oldest_waiting_item_seconds") > 0
        # the stopped worker's files are ignored: its group no longer runs
        assert total(samples, "digits_items_scored_total") == 0
    finally:
        stop.set()
        thread.join(30)
    with pytest.raises(OSError):
        scrape(scheduler_port)  # the scheduler released its port on the way out


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("blank", "blank"),
        ("not an image", "not_an_image"),
        ("truncated or corrupt image: broken data stream", "corrupt"),
        ("image too large: 9000x9000 pixels", "too_large"),
        ("file too large: 9 bytes", "too_large"),
        ("format PSD not accepted", "format"),
        ("cannot read file: No such file", "unreadable"),
        ("chunk quarantined: failed 3 attempts; last: blank", "quarantined"),
        ("row 10: expected 785 fields, got 784", "csv_row"),
        ("something nobody foresaw 'with quotes' and\nnewlines", "other"),
    ],
)
def test_error_reasons_become_a_bounded_label(reason: str, category: str) -> None:
    assert error_category(reason) == category
    assert category in CATEGORIES
