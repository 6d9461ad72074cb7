"""Model architectures. Imported only where a model is built (it imports Keras)."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

ARCHITECTURES = ("mlp", "cnn")


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
    """A compact VGG-style CNN: small enough to train on two CPU cores, deep enough for 99.5%+.

    Two 3x3 conv pairs with batch norm, then a 5x5 stride-2 reduction instead of pooling
    (learned down-sampling is a known win on MNIST), dropout, and a small dense head.
    """
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


def build(arch: str) -> Any:
    if arch == "mlp":
        return build_mlp()
    if arch == "cnn":
        return build_cnn()
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
