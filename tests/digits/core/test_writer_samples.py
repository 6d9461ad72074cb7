"""The cross-writer set's generator: deterministic, every style draws every digit legibly
enough for our image path, and the digit really is captured at low resolution."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digits.core.images import image_to_tensor
from digits.core.writer_samples import (
    FONT_PACKAGES,
    FONT_STYLES,
    GLYPH_PX,
    SIDE_PX,
    MissingFonts,
    Style,
    available_styles,
    cross_writer_set,
    render_writer_sample,
)

ROOT = Path(__file__).resolve().parents[3]
STYLES, MISSING = available_styles()
GONE = Style("gone", ("/nonexistent/gone.ttf",), "fonts-gone")


def test_the_same_seed_draws_the_same_set_and_another_seed_another() -> None:
    first, again = cross_writer_set(per_digit=3, seed=5), cross_writer_set(per_digit=3, seed=5)
    other = cross_writer_set(per_digit=3, seed=6)
    assert [(s.data, s.label, s.style) for s in first.samples] == [
        (s.data, s.label, s.style) for s in again.samples
    ]
    assert [s.label for s in first.samples] == [d for d in range(10) for _ in range(3)]
    assert all(a.data != b.data for a, b in zip(first.samples, other.samples, strict=True))


def test_the_set_takes_every_style_in_turn_for_every_digit() -> None:
    drawn = cross_writer_set(per_digit=len(STYLES), seed=1)
    assert drawn.styles == tuple(s.name for s in STYLES)
    for digit in range(10):
        styles = [s.style for s in drawn.samples if s.label == digit]
        assert sorted(styles) == sorted(drawn.styles)


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
def test_every_style_draws_ten_different_digits_our_image_path_reads(style: Style) -> None:
    """Drawn with the same random choices, a font lacking digits would give ten copies of
    one box; each image must also go through ``image_to_tensor`` (the inbox's path)."""
    tensors = []
    for digit in range(10):
        data = render_writer_sample(
            digit, style, np.random.default_rng(3), glyph_px=14, side=112, fmt="PNG"
        )
        tensor = image_to_tensor(data)
        assert tensor.shape == (28, 28, 1) and tensor.max() > 0.5
        tensors.append(tensor)
    for a, b in itertools.combinations(range(10), 2):
        assert np.abs(tensors[a] - tensors[b]).mean() > 0.03, f"{style.name}: {a} looks like {b}"


@pytest.mark.parametrize("glyph_px", [GLYPH_PX[0], 12, GLYPH_PX[1]])
def test_the_digit_is_captured_small_and_enlarged_in_blocks(glyph_px: int) -> None:
    """Nearest-neighbour enlargement of a capture ``glyph_px`` tall: the image is made of
    runs of identical rows and columns, no more of them than the capture had pixels (the
    glyph plus at most 0.6 of its height of margin on each side)."""
    side = 150
    data = render_writer_sample(
        8,
        STYLES[0],
        np.random.default_rng(11),
        glyph_px=glyph_px,
        side=side,
        resample="nearest",
        fmt="PNG",
    )
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.int16)
    assert min(pixels.shape) == side
    most = round(glyph_px * 2.2) + 1
    rows = 1 + int((np.diff(pixels, axis=0) != 0).any(axis=1).sum())
    cols = 1 + int((np.diff(pixels, axis=1) != 0).any(axis=0).sum())
    assert glyph_px <= rows <= most and cols <= most, (rows, cols)
    ink_rows = (pixels < pixels.mean() - 40).any(axis=1)
    blocks = 1 + int((np.diff(pixels[ink_rows], axis=0) != 0).any(axis=1).sum())
    assert blocks <= glyph_px + 1  # the dark rows come from no more than the glyph's pixels


def test_images_are_jpeg_or_png_of_the_documented_size() -> None:
    drawn = cross_writer_set(per_digit=4, seed=2)
    formats = set()
    for sample in drawn.samples:
        with Image.open(io.BytesIO(sample.data)) as img:
            formats.add(img.format)
            assert SIDE_PX[0] <= min(img.size) <= SIDE_PX[1] + 1
    assert formats == {"JPEG", "PNG"}


def test_missing_fonts_are_left_out_and_named() -> None:
    installed = next(s for s in FONT_STYLES if s.font_path() is not None)
    drawn = cross_writer_set(per_digit=1, seed=1, fonts=[GONE, installed])
    assert drawn.styles == (installed.name, "pen-european", "pen-rounded")
    assert drawn.missing == ("gone (fonts-gone: /nonexistent/gone.ttf)",)
    assert len(drawn.samples) == 10


def test_no_handwriting_font_is_a_clear_error_naming_the_packages() -> None:
    with pytest.raises(MissingFonts, match="apt-get install fonts-gone"):
        cross_writer_set(per_digit=1, fonts=[GONE])


def test_ci_installs_every_font_package() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert [p for p in FONT_PACKAGES if p not in ci] == []
    assert not MISSING, f"apt-get install {' '.join(sorted({s.package for s in MISSING}))}"
