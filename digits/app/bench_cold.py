"""`digits bench --cold`: what a user waits for, from a fresh directory, with nothing running.

Each measurement is a `digits run` as a separate process in a new temporary directory (its
own ``DIGITS_HOME``: a new embedded database and broker, or the configured PostgreSQL and
Redis), timed from outside and with the phases the run reports (``digits run --json``):

* ``runtime``: importing TensorFlow + Keras and loading the production model with its two
  warm-up traces, in a fresh process: the floor of any cold start;
* ``one_image_cold``: one photo, no worker running (target: ``runtime`` + 1.5 s);
* ``one_image_warm``: one photo while a `digits worker` already runs (target: 1 s);
* ``sample_cold``: the shipped 200-row sample, whose summary must report a throughput of
  scoring, not of start-up;
* ``csv_cold`` (with ``--data``): a whole CSV, e.g. Kaggle's 28,000-row test.csv.gz.

Peak resident memory (``peak_rss_mb``) is the run process's own, from ``wait4``; the worker
processes' peaks are in the warm bench (digits/app/bench.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from digits.app.supervision import start_workers, stop_workers
from digits.core.csv_input import read_labelled
from digits.core.db import upgrade
from digits.core.queries import connected_workers
from digits.core.settings import get_settings
from digits.core.synthetic_scans import render_scan

SAMPLE = Path(__file__).resolve().parents[2] / "digits" / "samples" / "sample.csv.gz"

# the runtime a worker process starts with: LiteRT on the int8 path, else TensorFlow + Keras
RUNTIME_PROBE = """
import json, time
from digits.core.settings import get_settings
started = time.perf_counter()
if get_settings().inference_path == "tflite-int8-dynamic":
    import ai_edge_litert.interpreter  # noqa: F401
else:
    import keras  # noqa: F401  (and tensorflow, its backend)
imported = time.perf_counter()
from model_store.aliases import resolve_active
from model_store.inference import chosen_path, warm
from model_store.loading import load_for_path
meta = resolve_active()
path = chosen_path(meta)
warm(load_for_path(meta, path, get_settings().threads_per_worker()))
print(json.dumps({"import_s": imported - started, "load_s": time.perf_counter() - imported,
                  "inference_path": path}))
"""


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "DIGITS_HOME": str(home)}


def _timed(args: list[str], home: Path, timeout: float) -> tuple[float, dict[str, Any], int]:
    """Run ``args`` (a `digits` command line, or a ``-c`` probe) in ``home``; wall seconds,
    its JSON line, and its peak RSS in KiB (from ``wait4``: that process alone, not the
    workers it started, which it does not wait for)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=home, env=_env(home), stdout=out, stderr=err
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        raise ValueError(f"{' '.join(args[:4])}… exited {proc.returncode}: {' / '.join(tail)}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return seconds, json.loads(lines[-1]) if lines else {}, usage.ru_maxrss


def _run(path: Path, home: Path, timeout: float, workers: int | None) -> dict[str, Any]:
    args = ["-m", "digits.cli", "run", str(path), "--json"]
    if workers:
        args += ["--workers", str(workers)]
    seconds, report, peak = _timed(args, home, timeout)
    return {
        "wall_s": round(seconds, 3),
        "items": report.get("items"),
        "items_per_second": report.get("items_per_second"),
        "phases": report.get("phases"),
        "peak_rss_mb": round(peak / 1024, 1),
    }


def _photo(folder: Path) -> Path:
    """One ~300×300 JPEG scan of a sample digit, as a phone or scanner would give it."""
    pixels, _ = read_labelled(SAMPLE)
    data, ext = render_scan(pixels[0], np.random.default_rng(0), size=300, fmt="JPEG", mode="RGB")
    path = folder / f"photo{ext}"
    path.write_bytes(data)
    return path


def _with_worker(home: Path, photo: Path, timeout: float) -> dict[str, Any]:
    """One photo through a `digits worker` that is already up and has scored once."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # a new embedded database first: the worker's heartbeat at start-up (what makes `digits
    # run` count it as running) fails on a database without tables, and the next one is 5 s on
    _timed(["-m", "digits.cli", "db", "upgrade"], home, timeout)
    saved = os.environ.get("DIGITS_HOME")
    os.environ["DIGITS_HOME"] = str(home)
    try:
        proc = start_workers(1, logs / "worker.log")
    finally:
        if saved is None:
            os.environ.pop("DIGITS_HOME")
        else:
            os.environ["DIGITS_HOME"] = saved
    try:
        _run(photo, home, timeout, None)  # the worker's first chunk: it is warm after this
        return _run(photo, home, timeout, None)
    finally:
        stop_workers(proc)


def cold_bench(
    data: Path | None, workers: int | None = None, timeout: float = 900.0
) -> dict[str, Any]:
    """Cold and warm-service runs from fresh directories (see the module docstring)."""
    settings = get_settings()
    upgrade()  # a new PostgreSQL database has no tables yet
    if not settings.embedded_broker and connected_workers():
        raise ValueError("other workers are connected to this broker: stop them for a cold bench")
    report: dict[str, Any] = {
        "mode": "cold",
        "deployment": {
            "broker": settings.broker.split("://")[0],
            "database": settings.db_url.split(":")[0],
        },
    }
    # the last run's workers may still be finishing their shutdown in there
    with tempfile.TemporaryDirectory(prefix="digits-cold-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        photo = _photo(root)

        def fresh(name: str) -> Path:
            home = root / name
            home.mkdir()
            return home

        seconds, probe, _ = _timed(["-c", RUNTIME_PROBE], fresh("probe"), timeout)
        runtime = probe["import_s"] + probe["load_s"]
        report["runtime"] = {
            "import_s": round(probe["import_s"], 3),
            "load_s": round(probe["load_s"], 3),
            "process_s": round(seconds, 3),
            "inference_path": probe.get("inference_path"),
        }
        one = _run(photo, fresh("one"), timeout, workers)
        report["one_image_cold"] = one | {"target_s": round(runtime + 1.5, 3)}
        report["one_image_warm"] = _with_worker(fresh("warm"), photo, timeout) | {"target_s": 1.0}
        report["sample_cold"] = _run(SAMPLE, fresh("sample"), timeout, workers)
        if data is not None:
            report["csv_cold"] = _run(data, fresh("csv"), timeout, workers) | {"data": str(data)}
    return report
