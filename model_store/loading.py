"""Safe model loading (imports Keras: only worker processes and model commands use it)."""

from __future__ import annotations

from typing import Any

from model_store.registry import ModelError, ModelVersion, verify


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
