"""Realistic scans score within 1 point of the clean rows they were rendered from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from digits.core.images import Rejected, image_to_tensor
from digits.core.preprocess import rows_to_tensor
from digits.core.synthetic_scans import render_scan
from model_store.data import load_split
from model_store.inference import predict
from model_store.loading import load
from model_store.registry import default_version
from tests.conftest import KAGGLE_TRAIN as TRAIN

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow

ROWS = 500


@pytest.mark.skipif(not TRAIN.is_file(), reason=f"{TRAIN} not present")
def test_scan_accuracy_is_within_one_point_of_clean(home: Path) -> None:
    split = load_split(TRAIN)  # only held-out rows: the model never trained on them
    pixels, labels = split.x_val[:ROWS], split.y_val[:ROWS]
    model = load(default_version())
    clean = float((predict(model, rows_to_tensor(pixels)).argmax(axis=1) == labels).mean())
    rng = np.random.default_rng(2026)
    tensors, kept = [], []
    formats: dict[str, int] = {}
    for i in range(ROWS):
        data, ext = render_scan(pixels[i], rng)
        formats[ext] = formats.get(ext, 0) + 1
        try:
            tensors.append(image_to_tensor(data))
            kept.append(i)
        except Rejected:
            continue  # counted as wrong below
    predicted = predict(model, np.stack(tensors)).argmax(axis=1)
    scans = float((predicted == labels[kept]).sum() / ROWS)
    print(
        f"clean {clean:.4f} vs scans {scans:.4f} on {ROWS} held-out rows "
        f"({ROWS - len(kept)} refused); formats {dict(sorted(formats.items()))}"
    )
    assert len(formats) >= 5
    assert clean - scans <= 0.01
