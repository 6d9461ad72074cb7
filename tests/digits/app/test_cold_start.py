"""Cold start (issue 24): `digits run --json` says where its time went, starts as few worker
processes as the input needs, returns once everything is committed (not after its workers'
shutdown), and a run right after it starts its own workers instead of waiting on dying ones;
`digits bench --cold` measures all of that from fresh directories."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digits.app.runner import chunks_upper_bound
from digits.core.processes import tree_peak_rss
from digits.core.queries import connected_workers
from digits.core.settings import get_settings
from scheduler.inputs import Planned
from tests.conftest import SAMPLE, digits_cli

KAGGLE_TEST = SAMPLE.parents[3] / "shared" / "data" / "digit-recognizer" / "test.csv.gz"

PHASES = {"startup", "workers", "workers_ready", "enqueue", "scoring", "finish", "shutdown"}


def _photo(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    page = np.full((120, 120), 230, np.uint8)
    page[30:90, 55:65] = 20  # a 1
    path = folder / "one.png"
    Image.fromarray(page).save(path)
    return path


@pytest.mark.parametrize(
    ("kind", "count", "at_least"),
    [("csv", 0, 1), ("files", 3, 1), ("folder", 7, 1), ("folder", 600, 3)],
)
def test_the_chunk_bound_is_never_below_what_the_input_makes(
    kind: str,
    count: int,
    at_least: int,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A small input gets one worker process; the bound is generous, never short."""
    monkeypatch.setenv("DIGITS_IMAGE_CHUNK_SIZE", "250")
    get_settings.cache_clear()
    if kind == "csv":
        planned = Planned("csv", (SAMPLE,))  # 200 rows: one chunk of 1,000
        assert chunks_upper_bound([planned]) == 1
        return
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(count):
        (folder / f"{i}.png").write_bytes(b"")
    files = tuple(sorted(folder.iterdir()))
    planned = Planned(kind, files if kind == "files" else (folder,))
    bound = chunks_upper_bound([planned])
    assert bound >= at_least and bound >= -(-count // 250)


@pytest.mark.skipif(not KAGGLE_TEST.is_file(), reason=f"{KAGGLE_TEST} not present")
def test_the_chunk_bound_of_kaggles_test_csv_covers_its_28_chunks(home: Path) -> None:
    assert chunks_upper_bound([Planned("csv", (KAGGLE_TEST,))]) >= 28


def test_peak_memory_is_read_for_a_process_and_its_children() -> None:
    child = subprocess.Popen(["sleep", "5"])
    try:
        peaks = tree_peak_rss(os.getpid())
        assert peaks[os.getpid()] > 10_000  # KiB: this interpreter holds more than 10 MB
        assert child.pid in peaks
    finally:
        child.kill()
        child.wait()


@pytest.mark.slow
@pytest.mark.parametrize("preload", ["1", "0"])
def test_run_reports_phases_and_the_next_run_starts_its_own_workers(
    preload: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs back to back: the first returns as soon as its batch is committed (its
    worker still shutting down), and is out of the connected workers at once, so the second
    starts its own instead of waiting on it; both say where their time went. With and
    without TensorFlow imported in the worker's parent before it forks."""
    monkeypatch.setenv("DIGITS_PRELOAD_RUNTIME", preload)
    first = digits_cli("run", str(SAMPLE), "--json")
    assert first.returncode == 0, first.stderr[-2000:]
    report = json.loads(first.stdout)
    phases = report["phases"]
    assert set(phases) == PHASES | {"total"}
    assert phases["workers"] == "started 1"  # 200 rows are one chunk: one process
    spans = [phases[k] for k in PHASES - {"workers"}]
    assert all(v is not None and v >= 0 for v in spans), phases
    assert phases["total"] >= phases["startup"] + phases["workers_ready"]
    assert phases["scoring"] == pytest.approx(report["scoring_seconds"], abs=0.002)
    # the rate is 200 / the unrounded scoring time; scoring_seconds is rounded to 1 ms, which
    # at 37 ms of scoring is 1.4 % of it
    seconds = report["scoring_seconds"]
    assert 200 / (seconds + 0.0005) - 0.1 <= report["items_per_second"]
    assert report["items_per_second"] <= 200 / max(seconds - 0.0005, 1e-4) + 0.1
    assert connected_workers() == []  # gone at the stop signal, not after the drain

    second = digits_cli("run", str(_photo(tmp_path / "drop")), "--json")
    assert second.returncode == 0, second.stderr[-2000:]
    again = json.loads(second.stdout)
    assert again["predicted"] == 1 and again["phases"]["workers"] == "started 1"


@pytest.mark.slow
def test_bench_cold_measures_fresh_runs_and_a_run_through_a_running_worker(home: Path) -> None:
    done = digits_cli("bench", "--cold", "--json", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["mode"] == "cold" and report["deployment"]["database"] == "sqlite"
    runtime = report["runtime"]
    assert runtime["import_s"] > 0 and runtime["load_s"] > 0
    cold, warm, sample = report["one_image_cold"], report["one_image_warm"], report["sample_cold"]
    assert cold["items"] == warm["items"] == 1 and sample["items"] == 200
    assert cold["phases"]["workers"] == "started 1" and warm["phases"]["workers"] == "reused"
    assert cold["target_s"] == pytest.approx(runtime["import_s"] + runtime["load_s"] + 1.5, 0.01)
    # a running worker spares the TensorFlow import and the model load
    assert warm["wall_s"] < cold["wall_s"] - runtime["import_s"]
    assert cold["phases"]["workers_ready"] > warm["phases"]["workers_ready"]
    assert all(r["peak_rss_mb"] > 10 for r in (cold, warm, sample))
    assert "csv_cold" not in report  # only with --data
