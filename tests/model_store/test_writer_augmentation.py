"""`digits train --writers`: each part of the writers augmentation does what the card says on
real MNIST rows, stays an image, is only there when asked, and reaches the card."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from digits.core.csv_input import read_labelled
from model_store import augmentation as aug
from model_store.train_config import TrainConfig
from tests.conftest import KAGGLE_TRAIN, ROOT, SAMPLE

SHEET = ROOT / "docs" / "img" / "writer-augmentation.png"


def _rows(labels: tuple[int, ...] | None = None) -> tuple[NDArray[np.float32], NDArray[Any]]:
    """The sample's rows (all, or those of ``labels``) as (n, 28, 28, 1) ink in [0, 1]."""
    pixels, y = read_labelled(SAMPLE)
    keep = np.isin(y, labels) if labels else np.ones(len(y), bool)
    return (pixels[keep].reshape(-1, 28, 28, 1) / 255).astype(np.float32), y[keep]


def _tf() -> Any:
    import tensorflow as tf

    tf.random.set_seed(0)
    return tf


def _is_image_batch(out: NDArray[Any], images: NDArray[np.float32]) -> bool:
    return bool(
        out.shape == images.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    )


def _grey_equal_pairs(images: NDArray[Any]) -> NDArray[Any]:
    """Per image: the share of its grey (edge) pixels equal to their right neighbour. Blocks
    of an enlarged low-resolution image repeat their grey levels; anti-aliased MNIST edges
    hardly ever do."""
    a, b = images[:, :, :-1, 0], images[:, :, 1:, 0]
    grey = (a > 0.05) & (a < 0.95)
    return ((np.abs(a - b) < 1e-6) & grey).sum(axis=(1, 2)) / np.maximum(grey.sum(axis=(1, 2)), 1)


def _detail(images: NDArray[Any]) -> NDArray[Any]:
    """Per image: Laplacian energy per unit of ink, how much fine stroke detail it holds."""
    x = images[..., 0]
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return np.asarray((lap**2).sum(axis=(1, 2)) / x.sum(axis=(1, 2)))


def _saturated(images: NDArray[Any]) -> NDArray[Any]:
    """Per image: the share of its ink pixels that are solid (MNIST's strokes mostly are)."""
    return np.asarray((images > 0.99).sum(axis=(1, 2, 3)) / (images > 0.05).sum(axis=(1, 2, 3)))


def test_writers_are_on_the_card_only_when_asked() -> None:
    plain = aug.augmentation(TrainConfig())
    assert plain is not None and "writers" not in plain
    assert aug.augmentation(TrainConfig(writers=True)) == plain + aug.WRITERS
    assert aug.augmentation(TrainConfig(arch="mlp", writers=True)) is None  # unaugmented MLP
    assert "crossed" in aug.WRITERS and "serifed" in aug.WRITERS


@pytest.mark.parametrize("elastic", [False, True], ids=["affine", "elastic"])
def test_default_augmentation_is_unchanged_by_the_option(elastic: bool) -> None:
    """Off by default: in the tf.data pipeline a member trains on, ``writers=False`` draws
    exactly what the augmenter without the option draws, and ``writers=True`` differs."""
    tf = _tf()
    images, labels = _rows()
    images, labels = images[:64], labels[:64]

    def batches(**options: bool) -> NDArray[Any]:
        tf.random.set_seed(7)
        data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(32)
        mapped = data.map(aug.augmenter(7, elastic=elastic, **options))
        return np.concatenate([x.numpy() for x, _ in mapped])

    default = batches()
    assert np.array_equal(default, batches(writers=False))
    writers = batches(writers=True)
    assert _is_image_batch(writers, images) and not np.array_equal(default, writers)


def test_writers_augmenter_keeps_images_and_labels() -> None:
    tf = _tf()
    images, labels = _rows()
    out, same = aug.augmenter(0, writers=True)(tf.constant(images), tf.constant(labels))
    assert _is_image_batch(out.numpy(), images)
    assert np.array_equal(same.numpy(), labels)


@pytest.mark.parametrize("digit_px", [8, 12, 16], ids=["8px", "12px", "16px"])
def test_low_resolution_enlarged_nearest_loses_detail_in_blocks(digit_px: int) -> None:
    tf = _tf()
    images, _ = _rows()
    out = aug._low_resolution(tf.constant(images), 1.0, (digit_px,), 0.0, ("nearest",)).numpy()
    assert _is_image_batch(out, images)
    assert (_detail(out) < _detail(images)).all()
    if digit_px <= 12:  # larger blocks than the area-sampling back to 28 px smooths away
        assert _grey_equal_pairs(out).mean() > 3 * _grey_equal_pairs(images).mean()


def test_low_resolution_enlarged_bilinear_is_smooth_until_re_thresholded() -> None:
    """Bilinear enlargement leaves a soft grey digit; the ramp digits.core.images applies to
    scans makes its strokes solid again, as MNIST's are, without bringing the detail back."""
    tf = _tf()
    images, _ = _rows()
    soft = aug._low_resolution(tf.constant(images), 1.0, (8,), 0.0, ("bilinear",)).numpy()
    ramped = aug._low_resolution(tf.constant(images), 1.0, (8,), 1.0, ("bilinear",)).numpy()
    assert _is_image_batch(soft, images) and _is_image_batch(ramped, images)
    assert (_detail(soft) < _detail(images)).all() and (_detail(ramped) < _detail(images)).all()
    assert _saturated(soft).mean() < _saturated(images).mean() / 10
    assert _saturated(ramped).mean() > _saturated(images).mean() / 2


def test_low_resolution_only_on_its_share() -> None:
    tf = _tf()
    images, _ = _rows()
    out = aug._low_resolution(tf.constant(images), 0.5, aug.LOW_RES_DIGIT, 0.5).numpy()
    changed = np.abs(out - images).reshape(len(images), -1).max(axis=1) > 0
    assert 0.3 < changed.mean() < 0.7


@pytest.mark.parametrize("shear", [0.3, -0.3], ids=["forward", "backward"])
def test_shear_moves_the_top_against_the_bottom(shear: float) -> None:
    tf = _tf()
    images, _ = _rows()
    out = aug._shear(tf.constant(images), tf.fill([len(images)], shear)).numpy()
    assert _is_image_batch(out, images)

    def lean(x: NDArray[Any]) -> NDArray[Any]:
        """Centre column of the top half's ink minus the bottom half's."""
        cols = np.arange(28)
        top, bottom = x[:, :14, :, 0].sum(axis=1), x[:, 14:, :, 0].sum(axis=1)
        return np.asarray((top @ cols) / top.sum(axis=1) - (bottom @ cols) / bottom.sum(axis=1))

    # The halves' centres are some 7-10 rows apart: a shear s moves them s times that apart.
    moved = (lean(out) - lean(images)) * np.sign(shear)
    assert (moved > 1).all() and (moved < 4).all()
    ink = out.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    assert np.abs(ink - 1).max() < 0.05  # a shear keeps the area


def test_stroke_width_makes_strokes_thicker_or_thinner() -> None:
    tf = _tf()
    images, _ = _rows()
    out = aug._pen(tf.constant(images), 1.0, 0.0).numpy()
    assert _is_image_batch(out, images)
    ink = out.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    thicker, thinner = ink > 1.2, ink < 0.9
    assert (thicker | thinner).all() and thicker.any() and thinner.any()
    assert (ink >= 0.5).all()  # a thin pen's stroke turns grey, it does not vanish


def test_pen_pressure_fades_ink_unevenly() -> None:
    tf = _tf()
    images, _ = _rows()
    out = aug._pen(tf.constant(images), 0.0, 1.0).numpy()
    assert _is_image_batch(out, images)
    assert (out <= images + 1e-6).all()  # pressure only takes ink away
    ink = images > 0.5
    ratio = [o[i] / x[i] for o, x, i in zip(out, images, ink, strict=True)]
    assert all(r.min() >= 0.5 * 0.4 - 1e-6 and r.max() <= 1 + 1e-6 for r in ratio)
    uneven = np.mean([r.max() / r.min() > 1.1 for r in ratio])
    assert uneven > 0.5  # along most digits the pressure changes


def _added(images: NDArray[Any], out: NDArray[Any]) -> NDArray[Any]:
    return np.asarray(out - images)[..., 0]


def test_crossed_seven_adds_a_bar_across_the_stem_only_to_sevens() -> None:
    tf = _tf()
    images, labels = _rows((7, 1, 4, 9))
    out = aug._styles(tf.constant(images), tf.constant(labels), 1.0, 0.0).numpy()
    assert _is_image_batch(out, images)
    added = _added(images, out)
    assert (added >= 0).all()
    others = ~np.isin(labels, (7, 1))
    assert not added[others].any()  # a 4 or a 9 is never styled
    for image, extra in zip(images[labels == 7, ..., 0], added[labels == 7], strict=True):
        rows = np.flatnonzero(image.max(axis=1) > 0.5)
        top, height = rows[0], rows[-1] - rows[0]
        bar_rows = np.flatnonzero(extra.sum(axis=1) > 0.5)
        bar_cols = np.flatnonzero(extra.sum(axis=0) > 0.2)
        assert bar_cols.size > bar_rows.size >= 1  # wider than high: a horizontal bar
        middle = (bar_rows.mean() - top) / height
        assert 0.3 < middle < 0.75  # around mid-height
        # across the stem: the digit's own ink in the bar's rows lies inside its span
        stem = np.flatnonzero(image[bar_rows].max(axis=0) > 0.5)
        assert bar_cols[0] < stem.mean() < bar_cols[-1]


@pytest.mark.parametrize("foot", [0.0, 1.0], ids=["flag", "flag-and-foot"])
def test_serifed_one_adds_a_flag_only_to_ones(foot: float) -> None:
    tf = _tf()
    images, labels = _rows((1, 7, 4, 9))
    out = aug._styles(tf.constant(images), tf.constant(labels), 1.0, foot).numpy()
    assert _is_image_batch(out, images)
    added = _added(images, out)
    assert not added[~np.isin(labels, (7, 1))].any()
    footed = []
    for image, extra in zip(images[labels == 1, ..., 0], added[labels == 1], strict=True):
        rows = np.flatnonzero(image.max(axis=1) > 0.5)
        top, bottom = rows[0], rows[-1]
        head = np.flatnonzero(image[top : top + 2].max(axis=0) > 0.5).mean()
        base = np.flatnonzero(image[bottom - 1 : bottom + 1].max(axis=0) > 0.5).mean()
        upper = extra[: (top + bottom) // 2]
        assert upper.sum() > 2  # a flag of a few pixels' ink
        # it hangs from the top, to the left of where the stroke starts
        assert np.flatnonzero(upper.sum(axis=1) > 0.2)[0] <= top + 1
        assert (upper.sum(axis=0) @ np.arange(28)) / upper.sum() < head
        lean = abs(head - base) / (bottom - top)
        footed.append((lean, extra[bottom - 1 :].sum() > 2))
    # the foot bar, when asked, under upright 1s only: a slanted 1 with one reads as a Z
    assert [f for lean, f in footed if lean < 0.2] == [bool(foot)] * sum(
        lean < 0.2 for lean, _ in footed
    )
    assert not any(f for lean, f in footed if lean > 0.45)
    assert min(lean for lean, _ in footed) < 0.2 < 0.45 < max(lean for lean, _ in footed)


def test_styles_go_to_their_share_of_sevens_and_ones() -> None:
    tf = _tf()
    images, labels = _rows((7, 1))
    many, many_labels = np.tile(images, (10, 1, 1, 1)), np.tile(labels, 10)
    out = aug._styles(tf.constant(many), tf.constant(many_labels), aug.STYLE_SHARE, 0.0).numpy()
    styled = _added(many, out).reshape(len(many), -1).max(axis=1) > 0
    assert abs(styled.mean() - aug.STYLE_SHARE) < 0.1


def test_contact_sheet_of_writers_samples() -> None:
    """64 training samples as ``--writers`` draws them (16 sevens, 16 ones, 32 others, the
    default degradations too) into docs/img/writer-augmentation.png, to look at."""
    from PIL import Image

    tf = _tf()
    images, labels = _rows()
    sevens, ones = np.flatnonzero(labels == 7)[:16], np.flatnonzero(labels == 1)[:16]
    order = np.concatenate([sevens, ones, np.flatnonzero(~np.isin(labels, (7, 1)))[:32]])
    data = tf.data.Dataset.from_tensor_slices((images[order], labels[order])).batch(64)
    out = next(iter(data.map(aug.augmenter(0, writers=True))))[0].numpy()[..., 0]
    assert out.shape == (64, 28, 28)
    tiles = np.pad(out, ((0, 0), (1, 1), (1, 1)), constant_values=0.25).reshape(8, 8, 30, 30)
    sheet = (tiles.transpose(0, 2, 1, 3).reshape(240, 240) * 255).round().astype(np.uint8)
    SHEET.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).resize((480, 480), Image.Resampling.NEAREST).save(SHEET)
    assert Image.open(SHEET).size == (480, 480)


def _train(*args: str) -> subprocess.CompletedProcess[str]:
    """``digits train ARGS`` in a new process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "digits.cli", "train", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )


def test_train_refuses_writers_for_the_mlp(home: Path) -> None:
    result = _train("--data", str(SAMPLE), "--arch", "mlp", "--writers")
    assert result.returncode != 0
    assert "--writers needs a CNN architecture" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.skipif(not KAGGLE_TRAIN.is_file(), reason="Kaggle's train.csv.gz is not here")
def test_train_with_writers_records_them_on_the_card(home: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.csv"
    with gzip.open(KAGGLE_TRAIN, "rt") as source:
        small.write_text("".join(next(source) for _ in range(601)))  # header + 600 rows
    result = _train(
        "--data", str(small), "--arch", "cnn-lite", "--epochs", "1", "--max-minutes", "3",
        "--writers", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (card_path,) = (home / "models").glob("v*/card.json")
    card = json.loads(card_path.read_text())
    assert card["training"]["augmentation"] == aug.augmentation(TrainConfig(writers=True))
    assert card["training"]["augmentation"].endswith(aug.WRITERS)
    assert "--writers" in card["command"]


@pytest.mark.slow
def test_writers_cost_little_beside_a_training_step() -> None:
    """CPU time (this process, all threads: robust to other work on the machine) per batch of
    128 of the augmentation in a tf.data pipeline without and with ``writers``, and of a
    cnn-lite training step; ``pytest -s`` prints them. The writers' extra must stay within
    15 % of a step, the budget they were given."""
    import time

    import keras

    from model_store.architectures import build

    tf = _tf()
    images, labels = _rows()
    options = tf.data.Options()  # no background prefetching: next() does the batch's work
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(128)

    def pipeline(writers: bool) -> Any:
        mapped = data.map(aug.augmenter(0, writers=writers)).with_options(options)
        batches = iter(mapped)
        next(batches)  # traced
        return batches

    def cpu_ms(step: Any, times: int = 20) -> float:
        started = time.process_time()
        for _ in range(times):
            step()
        return (time.process_time() - started) / times * 1000

    plain, writers = pipeline(False), pipeline(True)
    model = build("cnn-lite", None)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    x, y = next(plain)
    model.train_on_batch(x, y)  # traced
    costs: dict[str, list[float]] = {"plain": [], "writers": [], "step": []}
    for _ in range(3):  # interleaved, the least of three: other work only adds
        costs["plain"].append(cpu_ms(lambda: next(plain)))
        costs["writers"].append(cpu_ms(lambda: next(writers)))
        costs["step"].append(cpu_ms(lambda: model.train_on_batch(x, y)))
    plain_ms, writers_ms, step_ms = (min(costs[k]) for k in ("plain", "writers", "step"))
    print(
        f"\naugmentation per batch of 128: {plain_ms:.2f} ms CPU, with --writers "
        f"{writers_ms:.2f} ms; a cnn-lite training step {step_ms:.1f} ms CPU: the writers add "
        f"{(writers_ms - plain_ms) / (step_ms + plain_ms):.1%} to a step and its batch"
    )
    assert writers_ms - plain_ms < 0.15 * (step_ms + plain_ms)
