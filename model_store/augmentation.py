"""Augmentation: the affine jitter, the scan-like degradations, the elastic distortion and
other writers' styles and capture (``--writers``) that each member's ``tf.data`` pipeline maps
over its batches, and the card's words for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from digits.core.images import THRESH_HI, THRESH_LO
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


# ``--writers``: what capture by other writers adds (docs/models.md). Shares are per image.
STYLE_SHARE = 0.3  # of the 7s crossed, and of the 1s serifed
FOOT_SHARE = 0.3  # of the serifed 1s that also get a foot bar (if nearly upright)
SLANT_SHARE, SLANT = 0.5, 0.3  # sheared by a factor uniform in ±SLANT
WIDTH_SHARE = 0.3  # strokes ~2 px thicker (half of these) or thinner (the other half)
PRESSURE_SHARE = 0.3  # pen pressure: ink scaled and uneven along the strokes
LOW_RES_SHARE = 0.3  # captured at low resolution, then brought back
LOW_RES_DIGIT = (8, 10, 12, 14, 16)  # the digit's height (px) when captured; 20 in MNIST
RAMP_SHARE = 0.75  # of the low-resolution ones, re-thresholded as digits.core.images does
WRITERS = (
    f"; other writers' capture (--writers): before the jitter {STYLE_SHARE:.0%} of 7s crossed "
    f"(a bar across the stem at mid-height), {STYLE_SHARE:.0%} of 1s serifed (a flag from the "
    f"top down-left; {FOOT_SHARE:.0%} of the upright ones a foot bar too) and "
    f"{SLANT_SHARE:.0%} of images slanted (shear uniform in ±{SLANT:g}); after it "
    f"{WIDTH_SHARE / 2:.0%} strokes ~2 px thicker and {WIDTH_SHARE / 2:.0%} thinner, "
    f"{PRESSURE_SHARE:.0%} pen pressure (ink scaled 0.5-1, fading by up to 60% along the "
    f"strokes), {LOW_RES_SHARE:.0%} captured at low resolution (digit "
    f"{', '.join(map(str, LOW_RES_DIGIT[:-1]))} or {LOW_RES_DIGIT[-1]} px high, area-sampled, "
    f"enlarged back nearest or bilinear: one size and method per batch; {RAMP_SHARE:.0%} of "
    f"them re-thresholded as scans are)"
)


def augmentation(config: TrainConfig) -> str | None:
    """The card's words for what ``augmenter`` does under ``config``."""
    if not config.resolved_augment():
        return None
    return (
        AFFINE
        + (DEGRADATIONS if config.degrade else "; no scan degradations")
        + (ELASTIC if config.elastic else "")
        + (WRITERS if config.writers else "")
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


def _some(x: Any, chosen: Any, change: Callable[[Any, Any], Any]) -> Any:
    """``x`` with ``change`` applied only to the images ``chosen`` ((n,) booleans): gathered,
    changed (``change(images, their indices)``) and scattered back, so that a transform
    costs in proportion to its share of the batch rather than the whole batch."""
    import tensorflow as tf

    where = tf.where(chosen)  # (k, 1)
    return tf.tensor_scatter_nd_update(x, where, change(tf.gather_nd(x, where), where[:, 0]))


def _stroke(p0: Any, p1: Any, width: Any) -> Any:
    """One straight pen stroke per image in a (k, 28, 28) ink map: from ``p0`` to ``p1``
    ((k, 2) floats, row and column) ``width`` px wide ((k,)), anti-aliased over a pixel."""
    import tensorflow as tf

    grid = tf.cast(tf.stack(tf.meshgrid(tf.range(28), tf.range(28), indexing="ij"), -1), "float32")
    start, along = p0[:, None, None, :], (p1 - p0)[:, None, None, :]
    t = tf.reduce_sum((grid[None] - start) * along, -1) / tf.maximum(
        tf.reduce_sum(tf.square(along), -1), 1e-6
    )
    nearest = start + tf.clip_by_value(t, 0.0, 1.0)[..., None] * along
    distance = tf.sqrt(tf.reduce_sum(tf.square(grid[None] - nearest), -1))
    return tf.clip_by_value(width[:, None, None] / 2 + 0.5 - distance, 0.0, 1.0)


def _styles(x: Any, y: Any, share: float, foot_share: float) -> Any:
    """Writer styles MNIST (American writers) hardly has, drawn on a ``share`` of the digits
    of their label: the crossed 7 (a short bar across the stem at mid-height) and the serifed
    1 (a flag from the top down to the left, on ``foot_share`` of the nearly upright ones a
    foot bar too), in the digit's own stroke width and ink. ``y``: the batch's integer
    labels."""
    import tensorflow as tf

    label = tf.cast(tf.reshape(y, [-1]), tf.int32)
    chosen = (tf.equal(label, 7) | tf.equal(label, 1)) & (
        tf.random.uniform(tf.shape(label)) < share
    )
    return _some(x, chosen, lambda some, index: _styled(some, tf.gather(label, index), foot_share))


def _styled(x: Any, label: Any, foot_share: float) -> Any:
    """The 7s in ``x`` crossed and the 1s serifed (see ``_styles``), found from the ink: the
    rows it spans, and the ink's centre and mass (the stroke's width) near the rows the
    strokes start from."""
    import tensorflow as tf

    ink = x[..., 0]
    k = tf.shape(x)[0]
    rows = tf.range(28, dtype=tf.float32)
    solid = tf.reduce_max(ink, axis=2) > 0.5  # (k, 28): rows with solid ink
    top = tf.reduce_min(tf.where(solid, rows, 28.0), axis=1)
    bottom = tf.reduce_max(tf.where(solid, rows, -1.0), axis=1)
    height = bottom - top

    def across(row: Any) -> tuple[Any, Any]:
        """The ink's centre column and its mass per row (the stroke's width), near ``row``."""
        weight = tf.nn.relu(1.0 - tf.abs(rows[None, :] - row[:, None]))  # (k, 28)
        profile = tf.einsum("kr,krc->kc", weight, ink)
        mass = tf.reduce_sum(profile, axis=1)
        cols = rows  # the same 0..27, as column indices
        centre = tf.reduce_sum(profile * cols[None, :], axis=1) / tf.maximum(mass, 1e-6)
        return centre, mass / tf.maximum(tf.reduce_sum(weight, axis=1), 1e-6)

    def uniform(low: float, high: float) -> Any:
        return tf.random.uniform([k], low, high)

    middle = top + uniform(0.45, 0.6) * height
    stem, stem_width = across(middle)
    width = tf.clip_by_value(stem_width, 1.5, 3.5)
    half, tilt = uniform(2.5, 4.5), uniform(-0.6, 0.6)
    bar = _stroke(
        tf.stack([middle - tilt, stem - half], 1), tf.stack([middle + tilt, stem + half], 1), width
    )
    head, _ = across(top + 1.0)
    base, _ = across(bottom - 1.0)
    # The flag leaves the top down to the left, turned 25-50° from the stem but kept 30-65°
    # below level: flatter, on a 1 leaning right, it would be a 7's bar.
    lean = head - base  # > 0: the top is right of the foot
    stem_angle = tf.atan2(height, lean)  # below level, going down from the top
    angle = tf.clip_by_value(stem_angle - uniform(0.45, 0.85), 0.52, 1.13)
    length = uniform(0.25, 0.4) * height
    flag = _stroke(
        tf.stack([top + 0.5, head], 1),
        tf.stack([top + 0.5 + length * tf.sin(angle), head - length * tf.cos(angle)], 1),
        width,
    )
    half = uniform(2.5, 4.5)
    foot = _stroke(tf.stack([bottom, base - half], 1), tf.stack([bottom, base + half], 1), width)
    # Only under a nearly upright stem: a slanted 1 with a foot and a flag reads as a Z or a 2.
    footed = (uniform(0.0, 1.0) < foot_share) & (tf.abs(lean) < 0.3 * height)
    foot = tf.where(footed[:, None, None], foot, 0.0)
    added = tf.where(tf.equal(label, 7)[:, None, None], bar, tf.maximum(flag, foot))
    added = tf.where((height >= 8)[:, None, None], added, 0.0)  # a digit, not a speck or blank
    pen = tf.reduce_max(ink, axis=[1, 2])[:, None, None]
    return tf.maximum(ink, added * pen)[..., None]


def _slant(x: Any, share: float, most: float) -> Any:
    """A ``share`` of the images slanted: sheared by a factor uniform in ±``most``."""
    import tensorflow as tf

    def sheared(some: Any, index: Any) -> Any:
        return _shear(some, tf.random.uniform([tf.shape(some)[0]], -most, most))

    return _some(x, tf.random.uniform([tf.shape(x)[0]]) < share, sheared)


def _shear(x: Any, shear: Any) -> Any:
    """Each image sheared about the field's centre row by its factor in ``shear`` ((n,)):
    positive leans the top right, as a forward slant does. The slant writers differ by, which
    the rotation (it turns the whole digit, bars too) does not give."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    ones, zeros = tf.ones([n]), tf.zeros([n])
    # Output (col, row) reads input (col + shear (row - 14), row).
    transforms = tf.stack([ones, shear, -14.0 * shear, zeros, ones, zeros, zeros, zeros], 1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=[28, 28],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _pen(x: Any, width_share: float, pressure_share: float) -> Any:
    """Stroke width and pen pressure: on ``width_share`` of the images strokes ~2 px thicker
    (a 3x3 dilation: a felt tip) or thinner (a 2x2 erosion that leaves half-intensity ink
    where the stroke was thinner than that: a fine pen, grey after scaling down); on
    ``pressure_share`` the ink scaled by 0.5-1 and fading by up to 60 % along the strokes (a
    smooth random field), as a pen pressed unevenly, or a faint pencil, writes."""
    import tensorflow as tf

    def pressed(some: Any, index: Any) -> Any:
        k = tf.shape(some)[0]
        field = tf.image.resize(tf.random.uniform([k, 4, 4, 1]), [28, 28], "bilinear")
        fade = tf.random.uniform([k, 1, 1, 1], 0.0, 0.6)
        return some * tf.random.uniform([k, 1, 1, 1], 0.5, 1.0) * (1.0 - fade * field)

    n = tf.shape(x)[0]
    choice = tf.random.uniform([n])
    x = _some(x, choice < width_share / 2, lambda some, _: tf.nn.max_pool2d(some, 3, 1, "SAME"))
    x = _some(
        x,
        (choice >= width_share / 2) & (choice < width_share),
        lambda some, _: tf.maximum(-tf.nn.max_pool2d(-some, 2, 1, "SAME"), 0.5 * some),
    )
    return _some(x, tf.random.uniform([n]) < pressure_share, pressed)


def _low_resolution(
    x: Any,
    share: float,
    digit_px: tuple[int, ...],
    ramp_share: float,
    methods: tuple[str, ...] = ("nearest", "bilinear"),
) -> Any:
    """A ``share`` of the images as a low-resolution capture brings them to the model: the
    field area-sampled so the digit (20 px high) is one of ``digit_px`` high, enlarged back
    (nearest: the blocky image a user enlarged; or bilinear, as ours upscales small images
    smoothly), and on ``ramp_share`` of them the soft threshold digits.core.images applies to
    every scan (ink from 0.30 to 0.65 of the contrast), at twice the resolution and then
    area-sampled, as its fit into 20 px does. Checked against what ``image_to_tensor`` makes
    of MNIST rows shrunk and enlarged: its 3x3 blur before the ramp, done here at our coarser
    resolution, rounded the blocks more than it does there, so it is left out."""
    import tensorflow as tf

    def enlarged(some: Any, px: int, method: str) -> Any:
        small = tf.image.resize(some, [round(28 * px / 20)] * 2, "area")
        return tf.image.resize(small, [56, 56], method)

    choices = [(px, method) for px in digit_px for method in methods]

    def captured(some: Any, index: Any) -> Any:
        # One size and method per batch: a choice per image would cost a resize per choice.
        branch = tf.random.uniform([], 0, len(choices), tf.int32)
        big = tf.switch_case(
            branch, [lambda px=px, m=m: enlarged(some, px, m) for px, m in choices]
        )
        contrast = tf.maximum(tf.reduce_max(big, axis=[1, 2, 3], keepdims=True), 1e-3)
        ramped = tf.clip_by_value(
            (big - THRESH_LO * contrast) / ((THRESH_HI - THRESH_LO) * contrast), 0.0, 1.0
        )
        big = tf.where(tf.random.uniform([tf.shape(some)[0], 1, 1, 1]) < ramp_share, ramped, big)
        # clipped: the area resize's rounding leaves solid ink a hair above 1
        return tf.clip_by_value(tf.nn.avg_pool2d(big, 2, 2, "VALID"), 0.0, 1.0)

    return _some(x, tf.random.uniform([tf.shape(x)[0]]) < share, captured)


def augmenter(seed: int, elastic: bool = False, degrade: bool = True, writers: bool = False) -> Any:
    """Small affine jitter (after an elastic distortion, if asked) plus, unless ``degrade`` is
    off, scan-like degradations (stroke width, blur, noise): what the inbox's preprocessed
    scans differ from clean MNIST rows by. ``degrade`` off exists to measure what they cost on
    clean rows: nothing, they regularise (the README's ``--no-degrade`` row: 17 held-out
    errors where the same seeds with them made 15). ``writers`` adds what capture by writers
    other than MNIST's differs by (``WRITERS``): their styles and slant before the jitter,
    pen and resolution after it. It needs the batch's labels (the styles are a 7's and a
    1's), so the returned function maps (images, integer labels) pairs."""
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
        if writers:
            x = _slant(_styles(x, y, STYLE_SHARE, FOOT_SHARE), SLANT_SHARE, SLANT)
        x = affine(x, training=True)
        if writers:
            x = _pen(x, WIDTH_SHARE, PRESSURE_SHARE)
            x = _low_resolution(x, LOW_RES_SHARE, LOW_RES_DIGIT, RAMP_SHARE)
        return (degraded(x) if degrade else x), y

    return apply
