"""Workers score through the inference path DIGITS_INFERENCE_PATH names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digits.app.runner import wait_for
from digits.core.csv_input import read_labelled
from digits.core.preprocess import rows_to_tensor
from digits.core.queries import results
from model_store.calibration import apply_temperature
from model_store.inference import predict
from model_store.loading import load
from model_store.registry import get_version
from scheduler.batches import enqueue_csv
from tests.conftest import SAMPLE


def test_workers_score_with_the_int8_path_and_agree_with_float32(
    backend: str, worker_factory: type, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    """A real worker with DIGITS_INFERENCE_PATH=tflite-int8-dynamic loads v4 on that path
    (its log says so) and labels the shipped sample's 200 rows as float32 does in-process
    (at most one label apart, confidences within 0.02). Its processes run the stored
    model.int8.tflite through LiteRT: no process of the worker (the parent that preloads the
    runtime, nor its children) has TensorFlow's libraries mapped, and LiteRT's are."""
    monkeypatch.setenv("DIGITS_INFERENCE_PATH", "tflite-int8-dynamic")
    worker = worker_factory()
    done = enqueue_csv(SAMPLE, chunk_size=100)
    worker.wait_ready()
    [state] = wait_for([done.batch_id], timeout=180)
    assert state.status == "done", worker.tail()
    assert "runs on the tflite-int8-dynamic inference path" in worker.log.read_text()
    pids = [worker.proc.pid, *worker.children()]
    assert len(pids) == 3, pids  # the parent and its two pool processes
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "tensorflow" not in maps, f"process {pid} loaded TensorFlow"
        assert "ai_edge_litert" in maps, f"process {pid} has no LiteRT"
    rows = sorted(results(done.batch_id), key=lambda r: r["image_id"])
    pixels, _ = read_labelled(SAMPLE)
    probs = predict(load(get_version(4)), rows_to_tensor(pixels))
    labels = np.array([r["label"] for r in rows])
    assert len(labels) == len(probs) == 200
    assert int((labels != probs.argmax(axis=1)).sum()) <= 1
    # the worker stores temperature-scaled confidences: compare with float32 scaled alike
    scaled = apply_temperature(probs, get_version(4).temperature).max(axis=1)
    confidence = np.array([r["confidence"] for r in rows])
    assert np.abs(confidence - scaled).max() < 0.02
