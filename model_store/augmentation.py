"""Augmentation: the affine jitter, the scan-like degradations and the elastic distortion that
each member's ``tf.data`` pipeline maps over its batches, and the card's words for them.
"""

from __future__ import annotations

from typing import Any

from model_store.train_config import TrainConfig

AFFINE = "rotation ±10°, zoom ±10%, shift ±10%"
DEGRADATIONS = (
    "; per image 10% thicker strokes, 10% thinner, 10% 3x3 blur, 20% Gaussian noise (σ 0.05)"
)
ELASTIC_SHARE, ELASTIC_ALPHA, ELASTIC_SIGMA = 0.5, 34.0, 4.0
ELASTIC = (
    f"; first, {ELASTIC_SHARE:.0%} of images elastically distorted (Simard et al. 2003: "
    f"uniform displacement field, Gaussian σ {ELASTIC_SIGMA:g} px, α {ELASTIC_ALPHA:g})"
)


def augmentation(config: TrainConfig) -> str | None:
    """The card's words for what ``augmenter`` does under ``config``."""
    if not config.resolved_augment():
        return None
    return (
        AFFINE
        + (DEGRADATIONS if config.degrade else "; no scan degradations")
        + (ELASTIC if config.elastic else "")
    )


def _elastic(x: Any, share: float, alpha: float, sigma: float) -> Any:
    """Elastic distortion of a batch of (n, 28, 28, 1) images (Simard, Steinkraus and Platt,
    2003): a random displacement field, uniform in [-1, 1] per pixel, smoothed by a Gaussian
    of ``sigma`` pixels and scaled by ``alpha``, moves each pixel; bilinear resampling, ink
    pushed past the border is lost. The distortion every affine map misses: strokes bend
    the way different hands bend them. Applied to a ``share`` of the images."""
    import tensorflow as tf

    n, size = tf.shape(x)[0], x.shape[1]
    radius = int(3 * sigma)
    taps = tf.exp(-tf.square(tf.range(-radius, radius + 1, dtype=tf.float32)) / (2 * sigma**2))
    taps /= tf.reduce_sum(taps)
    field = tf.random.uniform([n, size, size, 2], -1.0, 1.0)
    field = tf.nn.depthwise_conv2d(
        field, tf.tile(taps[None, :, None, None], [1, 1, 2, 1]), [1, 1, 1, 1], "SAME"
    )
    field = (
        tf.nn.depthwise_conv2d(
            field, tf.tile(taps[:, None, None, None], [1, 1, 2, 1]), [1, 1, 1, 1], "SAME"
        )
        * alpha
    )
    grid = tf.cast(
        tf.stack(tf.meshgrid(tf.range(size), tf.range(size), indexing="ij"), -1), tf.float32
    )
    where = tf.clip_by_value(grid[None] + field, -1.0, float(size))  # (n, y, x, [row, col])
    padded = tf.pad(x[..., 0], [[0, 0], [1, 1], [1, 1]])  # a zero border: outside is blank
    low = tf.floor(where)
    frac = where - low
    low = tf.cast(low, tf.int32) + 1  # +1: the border

    def at(dy: int, dx: int) -> Any:
        index = tf.clip_by_value(low + tf.constant([dy, dx]), 0, size + 1)
        return tf.gather_nd(padded, index, batch_dims=1)

    fy, fx = frac[..., 0], frac[..., 1]
    moved = (
        (1 - fy) * ((1 - fx) * at(0, 0) + fx * at(0, 1))
        + fy * ((1 - fx) * at(1, 0) + fx * at(1, 1))
    )[..., None]
    return tf.where(tf.random.uniform([n, 1, 1, 1]) < share, moved, x)


def augmenter(seed: int, elastic: bool = False, degrade: bool = True) -> Any:
    """Small affine jitter (after an elastic distortion, if asked) plus, unless ``degrade`` is
    off, scan-like degradations (stroke width, blur, noise): what the inbox's preprocessed
    scans differ from clean MNIST rows by. ``degrade`` off exists to measure what they cost on
    clean rows: nothing, they regularise (the README's ``--no-degrade`` row: 17 held-out
    errors where the same seeds with them made 15)."""
    import keras
    import tensorflow as tf

    affine = keras.Sequential(
        [
            keras.layers.RandomRotation(10 / 360, fill_mode="constant", seed=seed),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 2),
        ]
    )

    def degraded(x: Any) -> Any:
        n = tf.shape(x)[0]
        choice = tf.random.uniform([n, 1, 1, 1])
        thicker = tf.nn.max_pool2d(x, 2, 1, "SAME")
        thinner = -tf.nn.max_pool2d(-x, 2, 1, "SAME")
        blurred = tf.nn.avg_pool2d(x, 3, 1, "SAME")
        x = tf.where(choice < 0.1, thicker, x)
        x = tf.where((choice >= 0.1) & (choice < 0.2), thinner, x)
        x = tf.where((choice >= 0.2) & (choice < 0.3), blurred, x)
        noise = tf.random.normal(tf.shape(x), stddev=0.05)
        x = tf.where(tf.random.uniform([n, 1, 1, 1]) < 0.2, x + noise, x)
        return tf.clip_by_value(x, 0.0, 1.0)

    def apply(x: Any, y: Any) -> tuple[Any, Any]:
        if elastic:
            x = _elastic(x, ELASTIC_SHARE, ELASTIC_ALPHA, ELASTIC_SIGMA)
        x = affine(x, training=True)
        return (degraded(x) if degrade else x), y

    return apply
