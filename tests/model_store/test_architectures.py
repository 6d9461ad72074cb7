"""Every architecture `digits train --arch` offers: the serving signature, standard layers only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_store.architectures import ARCHITECTURES, build


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_has_the_serving_signature_and_loads_in_safe_mode(
    arch: str, tmp_path: Path
) -> None:
    import keras

    model = build(arch)
    assert tuple(model.input_shape) == (None, 28, 28, 1)
    assert tuple(model.output_shape) == (None, 10)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    probs = loaded.predict(np.random.default_rng(0).random((4, 28, 28, 1), np.float32), verbose=0)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs >= 0).all()


def test_unknown_architecture_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="choose one of mlp, cnn, cnn-lite, cnn-wide"):
        build("resnet")
