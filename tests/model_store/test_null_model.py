"""The null model (benchmark only): a real model's shapes, a constant answer, no TensorFlow,
and never reachable outside a bench database."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from digits.core.settings import NULL_BENCH_MARK, Settings, get_settings
from model_store import inference
from model_store.inference import model_for, predict
from model_store.null_model import NULL_PROBABILITIES, NullModel


@pytest.mark.parametrize("rows", [0, 1, 1000])
def test_the_null_model_has_a_real_models_shapes(rows: int) -> None:
    """(n, 28, 28, 1) float32 in, (n, 10) probabilities summing to 1 out, through the same
    ``predict`` the workers call; every row the same answer."""
    probs = predict(NullModel(), np.zeros((rows, 28, 28, 1), np.float32))
    assert probs.shape == (rows, 10)
    assert probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs == NULL_PROBABILITIES).all()


def test_the_null_model_refuses_a_wrong_shape() -> None:
    with pytest.raises(ValueError, match="28, 28, 1"):
        NullModel().predict_on_batch(np.zeros((3, 784), np.float32))


@pytest.mark.parametrize(
    "url", [None, "sqlite:////srv/digits/digits.db", "postgresql+psycopg://u@db:5432/digits"]
)
def test_the_null_model_is_refused_outside_a_bench_database(url: str | None, home: Path) -> None:
    """A stray DIGITS_NULL_MODEL=1 with the users' database is a configuration error."""
    with pytest.raises(ValidationError, match="DIGITS_NULL_MODEL"):
        Settings(null_model=True, database_url=url)


def test_workers_get_the_null_model_in_a_bench_database(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model_for hands out the null model with the version's card (its temperature still
    shapes the rows), without importing TensorFlow."""
    bench = home.parent / f"{NULL_BENCH_MARK}x"
    monkeypatch.setenv("DIGITS_DATABASE_URL", f"sqlite:///{bench / 'digits.db'}")
    monkeypatch.setenv("DIGITS_NULL_MODEL", "1")
    get_settings.cache_clear()
    # this process's model cache, not the one later tests see (they must get the real v4)
    monkeypatch.setattr(inference, "_models", {})
    monkeypatch.setattr(inference, "_last_used", {})
    loaded = "tensorflow" in sys.modules
    meta, model = model_for(4)
    assert isinstance(model, NullModel)
    assert meta.version == 4
    assert ("tensorflow" in sys.modules) == loaded
