"""Safe loading refuses anything but an intact, plain ``.keras`` model with the 28x28x1 → 10
signature; the worker's model cache loads a new version before it drops idle ones."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from model_store.registry import (
    CARD_FILE,
    ModelError,
    ModelVersion,
    default_version,
    get_version,
    register,
    sha256_file,
)

CARD = {"architecture": "test", "validation": {"accuracy": 0.0}}


@pytest.fixture(autouse=True)
def empty_model_cache() -> Iterator[None]:
    """Version numbers restart in every test's fresh home: never reuse another test's model."""
    from model_store.inference import evict_idle

    evict_idle(max_idle=-1)
    yield
    evict_idle(max_idle=-1)


def small_model(
    input_shape: tuple[int, ...] = (28, 28, 1), outputs: int = 10, with_lambda: bool = False
) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = inputs
    if with_lambda:
        x = layers.Lambda(lambda t: t * 1.0)(x)  # arbitrary Python: must never be deserialised
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(outputs, activation="softmax")(x))


def saved(model: Any, path: Path) -> Path:
    model.save(path)
    return path


def copy_of_default() -> ModelVersion:
    """A registered byte-for-byte copy of the bundled model (a fresh, loadable version)."""
    bundled = default_version()
    return register(
        bundled.model_file,
        {k: v for k, v in bundled.card.items() if k not in ("sha256", "version")},
    )


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def lambda_layer(tmp: Path) -> ModelVersion:
    return register(saved(small_model(with_lambda=True), tmp / "lambda.keras"), CARD)


def hdf5_posing_as_keras(tmp: Path) -> ModelVersion:
    """A legacy HDF5 save registered under the name model.keras (hash matches its card)."""
    return register(saved(small_model(), tmp / "legacy.h5"), CARD)


def h5_file_only(tmp: Path) -> ModelVersion:
    """A version folder holding model.h5 and a card for it, but no model.keras."""
    from digits.core.settings import get_settings

    h5 = saved(small_model(), tmp / "legacy.h5")
    folder = get_settings().local_models_dir / "v90"
    folder.mkdir(parents=True)
    (folder / "model.h5").write_bytes(h5.read_bytes())
    card = {**CARD, "sha256": sha256_file(h5), "version": 90}
    (folder / CARD_FILE).write_text(json.dumps(card))
    return get_version(90)


def tampered(tmp: Path) -> ModelVersion:
    version = copy_of_default()
    flip_byte(version.model_file)
    return version


def input_32x32(tmp: Path) -> ModelVersion:
    return register(saved(small_model(input_shape=(32, 32, 1)), tmp / "big.keras"), CARD)


def five_outputs(tmp: Path) -> ModelVersion:
    return register(saved(small_model(outputs=5), tmp / "five.keras"), CARD)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda_layer, r"(?s)refused by safe loading.*`Lambda` layer"),
        (hdf5_posing_as_keras, r"(?s)refused by safe loading.*`\.keras` zip file"),
        (h5_file_only, "model.keras is missing"),
        (tampered, "sha256 mismatch"),
        (input_32x32, r"signature \(None, 32, 32, 1\)"),
        (five_outputs, r"signature .* \(None, 5\)"),
    ],
    ids=[
        "lambda-layer",
        "hdf5-named-keras",
        "h5-file-only",
        "tampered-hash",
        "input-32x32",
        "five-outputs",
    ],
)
def test_safe_loading_refuses(
    make: Callable[[Path], ModelVersion], message: str, home: Path, tmp_path: Path
) -> None:
    from model_store.loading import load

    version = make(tmp_path)
    with pytest.raises(ModelError, match=message):
        load(version)


def test_intact_copy_loads_with_the_expected_signature(home: Path) -> None:
    from model_store.loading import load

    model = load(copy_of_default())
    assert tuple(model.input_shape[1:]) == (28, 28, 1)
    assert tuple(model.output_shape[1:]) == (10,)


def test_model_cache_loads_the_new_version_before_evicting_idle_ones(home: Path) -> None:
    from model_store import inference as classify

    old, new = copy_of_default(), copy_of_default()
    broken = tampered(home)
    classify.model_for(old.version)
    classify._last_used[old.version] -= classify.IDLE_SECONDS + 1  # as if idle for 10+ minutes
    with pytest.raises(ModelError, match="sha256 mismatch"):
        classify.model_for(broken.version)
    assert classify.loaded_versions() == [old.version]  # a failed load drops nothing
    classify.model_for(new.version)
    assert classify.loaded_versions() == [new.version]  # loaded, then the idle one evicted


def test_recently_used_versions_stay_cached(home: Path) -> None:
    import time

    from model_store import inference as classify

    first, second = copy_of_default(), copy_of_default()
    classify.model_for(first.version)
    classify.model_for(second.version)
    assert classify.loaded_versions() == [first.version, second.version]
    assert classify.evict_idle(keep=second.version) == []
    soon = time.monotonic() + classify.IDLE_SECONDS + 1
    assert classify.evict_idle(keep=second.version, now=soon) == [first.version]
    assert classify.loaded_versions() == [second.version]


INT8 = "tflite-int8-dynamic"


def copy_with_int8(damage: str | None = None) -> ModelVersion:
    """A registered copy of the bundled model with its stored int8 artefact and card entry,
    the artefact then tampered with (one byte flipped) or missing if ``damage`` says so."""
    import shutil

    from model_store.registry import INT8_FILE

    bundled = default_version()
    version = copy_of_default()
    card = json.loads((version.path / CARD_FILE).read_text())
    card["inference_paths"] = bundled.card["inference_paths"]
    (version.path / CARD_FILE).write_text(json.dumps(card))
    if damage != "missing":
        shutil.copyfile(bundled.path / INT8_FILE, version.path / INT8_FILE)
    if damage == "tampered":
        flip_byte(version.path / INT8_FILE)
    return get_version(version.version)


def test_the_bundled_int8_artefact_matches_its_card() -> None:
    """The shipped model.int8.tflite is the file the card's sha256 names (a release that
    forgot to re-record it would make every int8 worker refuse the version)."""
    bundled = default_version()
    artefact = bundled.artefact(INT8)
    assert artefact is not None
    file, expected = artefact
    assert sha256_file(file) == expected
    assert bundled.card["inference_paths"][INT8]["bytes"] == file.stat().st_size


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("tampered", "model.int8.tflite sha256 mismatch"),
        ("missing", "model.int8.tflite is missing"),
    ],
)
def test_a_damaged_int8_artefact_is_refused_like_a_tampered_model(
    damage: str, message: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the int8 path a worker refuses the version (ModelError: its chunks fail with the
    reason, as for a tampered model.keras) instead of quietly scoring another way."""
    from digits.core.settings import get_settings
    from model_store import inference as classify
    from model_store.loading import load_tflite

    monkeypatch.setenv("DIGITS_INFERENCE_PATH", INT8)
    get_settings.cache_clear()
    version = copy_with_int8(damage)
    with pytest.raises(ModelError, match=message):
        load_tflite(version, INT8)
    with pytest.raises(ModelError, match=message):
        classify.model_for(version.version)
    assert version.version not in classify.loaded_versions()


def test_a_card_without_a_stored_artefact_runs_float32(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version whose card records no int8 artefact (a registered copy: register keeps only
    model.keras) is served on float32 even when DIGITS_INFERENCE_PATH asks for int8."""
    from digits.core.settings import get_settings
    from model_store import inference as classify
    from model_store.loading import load_tflite
    from model_store.tflite import TFLiteModel

    monkeypatch.setenv("DIGITS_INFERENCE_PATH", INT8)
    get_settings.cache_clear()
    version = copy_of_default()
    assert "inference_paths" not in version.card
    with pytest.raises(ModelError, match="no stored artefact"):
        load_tflite(version, INT8)
    assert classify.chosen_path(version) == "float32"
    assert not isinstance(classify.model_for(version.version)[1], TFLiteModel)


def test_the_stored_int8_artefact_answers_like_float32(home: Path) -> None:
    """The hash-checked artefact loads (LiteRT) with the 28x28x1 → 10 signature and labels
    the shipped sample as the Keras model does (at most one label apart)."""
    import numpy as np

    from digits.core.csv_input import read_labelled
    from digits.core.preprocess import rows_to_tensor
    from model_store.inference import predict
    from model_store.loading import load, load_tflite
    from tests.conftest import SAMPLE

    version = copy_with_int8()
    model = load_tflite(version, INT8, threads=1)
    assert tuple(model.input_shape[1:]) == (28, 28, 1)
    assert tuple(model.output_shape[1:]) == (10,)
    tensor = rows_to_tensor(read_labelled(SAMPLE)[0])
    int8 = predict(model, tensor).argmax(axis=1)
    float32 = predict(load(version), tensor).argmax(axis=1)
    assert int(np.sum(int8 != float32)) <= 1


def test_loading_the_int8_artefact_never_imports_tensorflow(home: Path) -> None:
    """What a worker on the int8 path runs (choose the path, load, score) in a fresh
    interpreter: TensorFlow and Keras stay out of the process."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from model_store.loading import load_for_path
from model_store.registry import default_version
model = load_for_path(default_version(), "tflite-int8-dynamic", 1)
assert model.predict_on_batch(np.zeros((3, 28, 28, 1), np.float32)).shape == (3, 10)
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
