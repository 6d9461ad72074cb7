"""Safe model loading (imports Keras: only worker processes and model commands use it)."""

from __future__ import annotations

from typing import Any

from model_store.registry import ModelError, ModelVersion, verify, verify_file
from model_store.tflite import TFLiteModel


def configure_threads(threads: int) -> None:
    """Limit TensorFlow's thread pools so worker processes share the cores instead of fighting."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        pass  # already initialised in this process: keep what it has


def load(version: ModelVersion) -> Any:
    """Verify the hash, then load with Keras' safe mode: ``.keras`` only, no custom objects."""
    if version.model_file.suffix != ".keras":
        raise ModelError(f"model version {version.version}: only .keras files are loaded")
    verify(version)
    import keras

    try:
        model = keras.saving.load_model(version.model_file, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many kinds for a refused or broken file
        raise ModelError(f"model version {version.version} refused by safe loading: {exc}") from exc
    if tuple(model.input_shape[1:]) != (28, 28, 1) or tuple(model.output_shape[1:]) != (10,):
        raise ModelError(
            f"model version {version.version} has signature {model.input_shape} → "
            f"{model.output_shape}; expected (None, 28, 28, 1) → (None, 10)"
        )
    return model


def load_for_path(version: ModelVersion, path: str, threads: int) -> Any:
    """The model as inference ``path`` runs it with ``threads`` threads: the Keras model for
    float32 (TensorFlow's pools limited first), else the stored TFLite artefact (no TensorFlow).
    """
    if path == "float32":
        configure_threads(threads)
        return load(version)
    return load_tflite(version, path, threads)


def load_tflite(version: ModelVersion, path: str, threads: int | None = None) -> Any:
    """The stored TFLite artefact of inference ``path`` (``model.int8.tflite``), hash-checked
    against the card exactly as ``load`` checks ``model.keras``, and run by LiteRT: no Keras
    load, no conversion, no TensorFlow import. A card without the artefact, a missing file or
    a mismatched hash raises ``ModelError`` (a tampered file is refused, never worked around)."""
    artefact = version.artefact(path)
    if artefact is None:
        raise ModelError(
            f"model version {version.version}: no stored artefact for the {path} inference "
            f"path (run `digits models speed {version.version} --record`)"
        )
    file, expected = artefact
    verify_file(version, file, expected)
    try:
        model = TFLiteModel.from_bytes(file.read_bytes(), threads)
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError for a broken flatbuffer
        raise ModelError(
            f"model version {version.version}: {file.name} not loadable: {exc}"
        ) from exc
    if tuple(model.input_shape[1:]) != (28, 28, 1) or tuple(model.output_shape[1:]) != (10,):
        raise ModelError(
            f"model version {version.version}: {file.name} has signature {model.input_shape} → "
            f"{model.output_shape}; expected (None, 28, 28, 1) → (None, 10)"
        )
    return model
