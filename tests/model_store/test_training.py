"""`digits train` end to end on a small labelled file: a new immutable version with a full card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_store.training import evaluate
from tests.conftest import SAMPLE


def test_train_registers_a_version_with_its_card(home: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", "train", "--data", str(SAMPLE), "--arch", "mlp",
         "--epochs", "2", "--quiet"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered model version 2 (mlp)" in result.stdout
    card = json.loads((home / "models" / "v2" / "card.json").read_text())
    assert card["architecture"] == "mlp" and card["version"] == 2
    assert card["validation"]["count"] == 20 and card["validation_split"]["train_rows"] == 180
    assert len(card["validation"]["per_class_accuracy"]) == 10
    assert len(card["validation"]["confusion_matrix"]) == 10
    assert card["training"]["epochs_run"] == 2 and card["training"]["wall_seconds"] > 0
    assert card["calibration"]["temperature"] > 0
    assert 0 <= card["validation"]["review_threshold"]["coverage"] <= 1
    listed = subprocess.run([sys.executable, "-m", "digits.cli", "models", "list", "--json"],
                            capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert [v["version"] for v in json.loads(listed.stdout)] == [1, 2]


@pytest.mark.parametrize(("threshold", "coverage"), [(0.0, 1.0), (0.95, 0.5), (1.01, 0.0)])
def test_review_threshold_reports_coverage_and_accuracy(threshold: float,
                                                        coverage: float) -> None:
    probs = np.array([[0.99] + [0.01 / 9] * 9, [0.5, 0.5] + [0.0] * 8])
    report = evaluate(probs, np.array([0, 1]), 1.0, threshold)["review_threshold"]
    assert report["coverage"] == coverage
    assert report["accuracy_above"] == (None if coverage == 0 else 1.0 if coverage == 0.5
                                        else 0.5)
