"""Model architectures. Imported only where a model is built (it imports Keras).

Every architecture maps a (28, 28, 1) float image in [0, 1] to 10 softmax probabilities and
uses only standard Keras layers, so versions load with ``safe_mode`` and no custom objects.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from model_store.choices import ARCHITECTURES


def build_mlp() -> Any:
    """The origin notebook's baseline, reproduced: 784-400-10, ReLU, RMSprop."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Flatten()(inputs)
    x = layers.Dense(400, activation="relu")(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="mlp_784_400_10")


def _conv_block(x: Any, filters: int) -> Any:
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
    return x


def build_cnn() -> Any:
    """A compact VGG-style CNN (bundled version 1): 3x3 'same' conv pairs with batch norm,
    a learned 5x5 stride-2 reduction instead of pooling, dropout, a small dense head."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = _conv_block(inputs, 32)
    x = layers.Conv2D(32, 5, strides=2, padding="same", activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dropout(0.25)(x)
    x = _conv_block(x, 64)
    x = layers.Conv2D(64, 5, strides=2, padding="same", activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _conv_bn(x: Any, filters: int, size: int, strides: int = 1, padding: str = "valid") -> Any:
    x = layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.Activation("relu")(x)


def build_cnn_lite(name: str = "cnn_lite", widths: tuple[int, int] = (16, 32)) -> Any:
    """An ensemble member: 2 x ([3x3 valid] x 2 -> 5x5 stride 2) -> 128 -> 10.

    The layout of the strongest single Kaggle MNIST CNNs (valid 3x3 convolutions shrink the
    map cheaply, a learned stride-2 5x5 replaces pooling, heavy dropout), at half their width:
    ~4x fewer multiply-adds than version 1's CNN, so an ensemble of members costs about what
    one wide CNN does at scoring time while averaging away each member's own mistakes.
    """
    inputs = keras.Input((28, 28, 1), name="image")
    x = inputs
    for filters in widths:
        x = _conv_bn(x, filters, 3)
        x = _conv_bn(x, filters, 3)
        x = _conv_bn(x, filters, 5, strides=2, padding="same")
        x = layers.Dropout(0.4)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Dropout(0.4)(x)
    # float32 even under a mixed-precision policy: a bf16 softmax rounds 0.998 to 0.996, too
    # coarse for the loss and for calibration (Keras' mixed-precision guide does the same).
    outputs = layers.Dense(10, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def build(arch: str, name: str | None = None) -> Any:
    if arch == "mlp":
        return build_mlp()
    if arch == "cnn":
        return build_cnn()
    if arch == "cnn-lite":
        return build_cnn_lite(name or "cnn_lite")
    if arch == "cnn-wide":
        # The same layout at the Kaggle nets' full width (32/64 filters): about 4x a cnn-lite
        # member's multiply-adds, so two of them (versions 3 and 4) cost what six cnn-lite
        # members (version 2) do at scoring time, with fewer held-out errors (docs/benchmark.md).
        return build_cnn_lite(name or "cnn_wide", widths=(32, 64))
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def build_ensemble(members: list[Any]) -> Any:
    """One model whose output is the mean of its members' probabilities.

    Saved as a single ``.keras`` file of nested standard models and an ``Average`` layer, so
    a K-member ensemble is one version, one hash, one safe load and one forward pass.
    """
    inputs = keras.Input((28, 28, 1), name="image")
    outputs = layers.Average(name="probabilities")([member(inputs) for member in members])
    return keras.Model(inputs, outputs, name=f"ensemble_of_{len(members)}")
