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

from digits.app.predict import predict_image
from digits.app.runner import wait_for
from digits.app.supervision import start_web, start_workers, stop_workers
from digits.core.csv_input import read_blocks, read_labelled
from digits.core.db import upgrade
from digits.core.preprocess import rows_to_tensor
from digits.core.processes import tree_peak_rss
from digits.core.queries import connected_workers, results
from digits.core.settings import get_settings
from digits.core.synthetic_scans import render_scan
from model_store.aliases import resolve_active
from model_store.ceiling import inference_path
from model_store.flops import ceiling_report, cpu_peak, flops_per_image
from model_store.inference import chosen_path, predict
from model_store.loading import load, load_for_path
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
        peaks = worker_memory(proc.pid)
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
        "worker_peak_rss_mb": peaks,
    }


def worker_memory(pid: int) -> dict[str, Any]:
    """Peak RSS of a started worker's processes before it stops: its prefork parent and the
    processes that score (each holds TensorFlow and the model)."""
    peaks = tree_peak_rss(pid)
    scoring = [kib for p, kib in peaks.items() if p != pid]
    return {
        "parent": round(peaks.get(pid, 0) / 1024, 1),
        "per_process": [round(kib / 1024, 1) for kib in sorted(scoring)],
        "max": round(max(scoring, default=0) / 1024, 1),
    }


def model_only(version: int, pixels: np.ndarray, batch_size: int) -> float:
    """The ceiling for end to end: the same model on the same inference path as the workers
    (DIGITS_INFERENCE_PATH and the version's card), batched, in this process, every core."""
    meta = get_version(version)
    model = load_for_path(meta, chosen_path(meta), os.cpu_count() or 1)
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
            peaks = worker_memory(proc.pid)
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
        "worker_peak_rss_mb": peaks,
    }


def canvas_png(pixels: np.ndarray, side: int = 280) -> bytes:
    """A sample row as the draw page sends it: white ink on a black 280×280 canvas, PNG."""
    import io

    from PIL import Image

    img = Image.fromarray(np.asarray(pixels, np.uint8).reshape(28, 28), mode="L")
    out = io.BytesIO()
    img.resize((side, side), Image.Resampling.BILINEAR).save(out, format="PNG")
    return out.getvalue()


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def _http_predictions(url: str, pngs: list[bytes]) -> tuple[list[float], list[int]]:
    """POST each PNG to ``url``/draw/predict as the page does (CSRF cookie + header, or the
    bearer token when DIGITS_WEB_TOKEN is set); returns seconds per request and labels."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as first:
        cookie = first.headers.get("set-cookie", "").split(";")[0]
    csrf = cookie.split("=", 1)[-1]
    token = get_settings().web_token
    headers = {"Content-Type": "image/png", "Cookie": cookie, "X-CSRF-Token": csrf}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    seconds: list[float] = []
    labels: list[int] = []
    for png in pngs:
        request = urllib.request.Request(f"{url}/draw/predict", png, headers, method="POST")
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            body = json.loads(response.read())
        seconds.append(time.perf_counter() - started)
        labels.append(int(body["label"]))
    return seconds, labels


def _wait_healthy(url: str, proc: Any, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ValueError(f"digits web exited ({proc.returncode}) before answering")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"digits web did not answer at {url} within {timeout:.0f} s")


def draw_bench(count: int, port: int = 0) -> dict[str, Any]:
    """Latency of one draw-page prediction after warm-up, two ways, on held-out sample rows
    drawn as the canvas sends them: ``function`` (digits.app.predict.predict_image in this
    process: decode, the inbox's preprocessing, the model, shaping) and ``http`` (the
    ``/draw/predict`` endpoint of a `digits web` started here, the page's whole round trip
    but the browser). The first prediction of each (the model load) is not counted."""
    import socket

    pixels, labels = read_labelled(SAMPLE)
    pngs = [canvas_png(pixels[i % len(labels)]) for i in range(count)]
    truth = [int(labels[i % len(labels)]) for i in range(count)]
    upgrade()
    predict_image(pngs[0])  # warm-up: loads and traces the model
    seconds: list[float] = []
    got: list[int] = []
    for png in pngs:
        started = time.perf_counter()
        got.append(predict_image(png).label)
        seconds.append(time.perf_counter() - started)
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    settings = get_settings()
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    proc = start_web(port, logs / "bench-web.log")
    try:
        _wait_healthy(url, proc)
        _http_predictions(url, pngs[:1])  # warm-up of the server's model
        http_seconds, http_labels = _http_predictions(url, pngs)
    finally:
        stop_workers(proc, timeout=10)
    return {
        "mode": "draw",
        "predictions": count,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model_version": resolve_active().version,
        "function": _percentiles(seconds),
        "http": _percentiles(http_seconds),
        "accuracy": round(sum(a == b for a, b in zip(got, truth, strict=True)) / count, 4),
        "http_agrees": http_labels == got,
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
        # the model-only rate as FLOP/s against the CPU's float32 peak (model_store/ceiling.py)
        **ceiling_report(flops_per_image(_load(model.version)), ceiling, cpu_peak()),
        "workers_inference_path": inference_path(model.card, settings.inference_path),
        "seed_loop_images_per_s": round(seed, 1),
        "e2e_vs_model_only": round(e2e["e2e_images_per_s"] / ceiling, 3),
        "model_only_vs_seed_loop": round(ceiling / seed, 1),
        "e2e_vs_seed_loop": round(e2e["e2e_images_per_s"] / seed, 1),
        "e2e": e2e,
    }
