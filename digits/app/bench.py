"""`digits bench`: three throughputs from one run, reported as ratios.

* ``e2e_images_per_s``: enqueue → workers → predictions committed, on warm workers, through
  the configured broker and database (Redis + PostgreSQL when configured).
* ``model_only_images_per_s``: the same model's batched forward pass over the same array in
  this process with every core: the ceiling for end to end.
* ``seed_loop_images_per_s``: the origin's loop, one ``predict`` call per image, on a sample.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from digits.app.runner import wait_for
from digits.app.supervision import start_workers, stop_workers
from digits.core.csv_input import read_blocks, read_labelled
from digits.core.db import upgrade
from digits.core.preprocess import rows_to_tensor
from digits.core.queries import connected_workers, results
from digits.core.settings import get_settings
from digits.core.synthetic_scans import render_scan
from model_store.aliases import resolve_active
from model_store.inference import predict
from model_store.loading import load
from model_store.registry import get_version
from scheduler.batches import enqueue_csv, enqueue_files, image_files

SAMPLE = Path(__file__).resolve().parents[2] / "digits" / "samples" / "sample.csv.gz"


def load_pixels(path: Path) -> np.ndarray:
    blocks = [b.pixels for _, b in read_blocks(path, 5000)]
    return np.concatenate(blocks) if blocks else np.zeros((0, 784), np.uint8)


def end_to_end(data: Path, workers: int, timeout: float) -> dict[str, Any]:

    settings = get_settings()
    upgrade()
    if connected_workers():
        raise ValueError("other workers are connected to this broker: stop them for a clean bench")
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = start_workers(workers, log_dir / "bench-worker.log")
    try:
        warm = enqueue_csv(SAMPLE, chunk_size=max(1, 200 // workers))  # load TF + model
        wait_for([warm.batch_id], timeout)
        started = time.perf_counter()
        done = enqueue_csv(data)
        enqueued = time.perf_counter() - started
        [state] = wait_for([done.batch_id], timeout)
        seconds = time.perf_counter() - started
    finally:
        stop_workers(proc)
    if state.status != "done":
        raise ValueError(f"bench batch {done.batch_id} ended {state.status}: {state.error}")
    return {
        "batch_id": done.batch_id,
        "items": state.items,
        "predicted": state.predicted,
        "seconds": round(seconds, 3),
        "enqueue_seconds": round(enqueued, 3),
        "e2e_images_per_s": round(state.predicted / seconds, 1),
    }


def model_only(version: int, pixels: np.ndarray, batch_size: int) -> float:

    model = _load(version)
    tensor = rows_to_tensor(pixels)
    predict(model, tensor[:batch_size], batch_size)  # warm-up: graph tracing, allocations
    started = time.perf_counter()
    for i in range(0, len(tensor), batch_size):
        predict(model, tensor[i : i + batch_size], batch_size)
    return len(tensor) / (time.perf_counter() - started)


def seed_loop(version: int, pixels: np.ndarray) -> float:
    """The origin notebook's serving loop: ``model.predict`` once per image."""

    model = _load(version)
    tensor = rows_to_tensor(pixels)
    model.predict(tensor[:1], verbose=0)
    started = time.perf_counter()
    for i in range(len(tensor)):
        model.predict(tensor[i : i + 1], verbose=0)
    return len(tensor) / (time.perf_counter() - started)


def _load(version: int) -> Any:

    return load(get_version(version))


def generate_scans(folder: Path, count: int, size: int = 300, seed: int = 0) -> list[int]:
    """Write ``count`` realistic JPEG scans (from the shipped sample's labelled rows)."""

    pixels, labels = read_labelled(SAMPLE)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = []
    for i in range(count):
        k = i % len(labels)
        data, ext = render_scan(pixels[k], rng, size=size, fmt="JPEG", mode="RGB")
        (folder / f"scan-{i:06d}{ext}").write_bytes(data)
        truth.append(int(labels[k]))
    return truth


def image_bench(
    count: int, workers: int, size: int = 300, timeout: float = 1800.0
) -> dict[str, Any]:
    """End-to-end scans/s on a generated folder of ~size×size JPEG scans (warm workers)."""
    import tempfile

    settings = get_settings()
    upgrade()
    if connected_workers():
        raise ValueError("other workers are connected to this broker: stop them for a clean bench")
    with tempfile.TemporaryDirectory(prefix="digits-bench-") as tmp:
        folder = Path(tmp) / "scans"
        generate_scans(folder / "warm", 2 * workers, size, seed=1)
        truth = generate_scans(folder / "main", count, size)
        log_dir = settings.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        proc = start_workers(workers, log_dir / "bench-worker.log")
        try:
            warm = folder / "warm"
            w = enqueue_files(warm, image_files(warm), chunk_size=1)
            wait_for([w.batch_id], timeout)
            main = folder / "main"
            files = image_files(main)
            started = time.perf_counter()
            done = enqueue_files(main, files)
            [state] = wait_for([done.batch_id], timeout)
            seconds = time.perf_counter() - started
        finally:
            stop_workers(proc)

    rows = results(done.batch_id)
    correct = sum(1 for r in rows if r["label"] == truth[r["image_id"] - 1])
    return {
        "scans": count,
        "size": size,
        "predicted": state.predicted,
        "errors": state.errors,
        "seconds": round(seconds, 3),
        "e2e_scans_per_s": round(count / seconds, 1),
        "accuracy": round(correct / count, 4),
    }


def run_bench(
    data: Path | None,
    workers: int = 2,
    seed_sample: int = 300,
    timeout: float = 1800.0,
    quiet: bool = False,
    images: int = 0,
) -> dict[str, Any]:
    settings = get_settings()
    if images:
        return {
            "mode": "images",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "deployment": {
                "broker": settings.broker.split("://")[0],
                "database": settings.db_url.split(":")[0],
                "workers": workers,
                "chunk_size": settings.image_chunk_size,
            },
            **image_bench(images, workers, timeout=timeout),
        }
    source = data or settings.data
    if source is None or not Path(source).is_file():
        raise ValueError("pass --data PATH to a Kaggle CSV (e.g. test.csv.gz) or set DIGITS_DATA")
    model = resolve_active()
    e2e = end_to_end(Path(source), workers, timeout)
    pixels = load_pixels(Path(source))
    ceiling = model_only(model.version, pixels, settings.chunk_size)
    seed = seed_loop(model.version, pixels[:seed_sample])
    return {
        "data": str(source),
        "items": e2e["items"],
        "model_version": model.version,
        "architecture": model.card.get("architecture"),
        "deployment": {
            "broker": settings.broker.split("://")[0],
            "database": settings.db_url.split(":")[0],
            "workers": workers,
            "chunk_size": settings.chunk_size,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "e2e_images_per_s": e2e["e2e_images_per_s"],
        "model_only_images_per_s": round(ceiling, 1),
        "seed_loop_images_per_s": round(seed, 1),
        "e2e_vs_model_only": round(e2e["e2e_images_per_s"] / ceiling, 3),
        "model_only_vs_seed_loop": round(ceiling / seed, 1),
        "e2e_vs_seed_loop": round(e2e["e2e_images_per_s"] / seed, 1),
        "e2e": e2e,
    }
