"""The bundled production model, re-measured: its card's figures are what the model does.

Checked on every run where the Kaggle file is present: accuracy on the 4,200 held-out rows of
train.csv (never trained on) recomputed and compared with the card, calibration error after
scaling, and the training-time bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from digits.core.preprocess import rows_to_tensor
from model_store.calibration import apply_temperature, expected_calibration_error
from model_store.data import load_split
from model_store.inference import predict
from model_store.loading import load
from model_store.registry import default_version, sha256_file
from tests.conftest import KAGGLE_TRAIN as TRAIN


@pytest.mark.skipif(not TRAIN.is_file(), reason=f"{TRAIN} not present")
@pytest.mark.slow
def test_bundled_model_matches_its_card_on_the_held_out_rows(home: Path) -> None:
    version = default_version()
    card = version.card
    assert card["training_data"]["sha256"] == sha256_file(TRAIN)  # the same file it trained on
    split = load_split(TRAIN)
    assert len(split.y_val) == card["validation_split"]["rows"] == 4200
    probs = predict(load(version), rows_to_tensor(split.x_val))
    errors = int((probs.argmax(axis=1) != split.y_val).sum())
    accuracy = 1 - errors / len(split.y_val)
    ece = expected_calibration_error(apply_temperature(probs, version.temperature), split.y_val)
    print(f"v{version.version}: {accuracy:.4%} ({errors} errors), ECE after scaling {ece:.4%}")
    assert abs(errors - card["validation"]["errors"]) <= 1  # float round-off across CPUs
    assert ece <= 0.005
    assert card["training"]["wall_seconds"] <= 60 * 60
