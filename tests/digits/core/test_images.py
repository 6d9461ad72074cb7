"""Scan decoding and MNIST-style normalisation: every accepted format and pixel mode, both ink
polarities, EXIF, alpha, 16-bit, centring, blank pages and every kind of refused upload.

Digits come from the small labelled sample when the repo has one (real MNIST strokes);
otherwise they are drawn with Pillow, so the tests never need the shared data set.
"""

from __future__ import annotations

import csv
import gzip
import io
import pickle
import struct
import warnings
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digits.core.images import (
    ACCEPTED_FORMATS,
    Rejected,
    decode_image,
    image_to_tensor,
    normalize_digit,
)
from digits.core.synthetic_scans import EXTENSIONS, FORMAT_MODES, render_scan

ROOT = Path(__file__).resolve().parents[3]
SAMPLES = (
    ROOT / "tests" / "data" / "sample_labelled.csv",
    ROOT / "digits" / "samples" / "sample.csv.gz",
)


# ---------------------------------------------------------------------------------- helpers


def _drawn_digits() -> list[np.ndarray]:
    """MNIST-like 28x28 uint8 digits: drawn at 4x inside the central 20x20 box, downsampled
    (anti-aliased strokes) and shifted so the centre of mass is on (14, 14), as MNIST does."""
    shapes = []
    for draw_fn in (_draw_seven, _draw_zero, _draw_four):
        big = Image.new("L", (112, 112), 0)
        draw_fn(ImageDraw.Draw(big))
        small = np.asarray(big.resize((28, 28), Image.Resampling.BOX))
        cy, cx = com(small.astype(np.float64))
        dy, dx = round(14 - cy), round(14 - cx)
        moved = np.zeros_like(small)
        moved[max(dy, 0) : 28 + min(dy, 0), max(dx, 0) : 28 + min(dx, 0)] = small[
            max(-dy, 0) : 28 - max(dy, 0), max(-dx, 0) : 28 - max(dx, 0)
        ]
        shapes.append(moved)
    return shapes


def _draw_seven(d: ImageDraw.ImageDraw) -> None:
    d.line([(24, 22), (88, 22), (50, 90)], fill=255, width=12, joint="curve")


def _draw_zero(d: ImageDraw.ImageDraw) -> None:
    d.ellipse((34, 16, 78, 95), outline=255, width=12)


def _draw_four(d: ImageDraw.ImageDraw) -> None:
    d.line([(62, 22), (26, 66), (86, 66)], fill=255, width=12)
    d.line([(70, 42), (70, 90)], fill=255, width=12)


@cache
def digits() -> tuple[np.ndarray, ...]:
    """A few 28x28 uint8 MNIST-format digits (white ink on black)."""
    for path in SAMPLES:
        if not path.exists():
            continue
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as fh:
            rows = [r for r in csv.reader(fh) if len(r) == 785 and r[0].isdigit()][:6]
        if rows:
            return tuple(np.array(r[1:], np.uint8).reshape(28, 28) for r in rows)
    return tuple(_drawn_digits())


def com(img: np.ndarray) -> tuple[float, float]:
    img = np.asarray(img).reshape(28, 28)
    ys, xs = np.mgrid[0:28, 0:28]
    m = img.sum()
    return float((img * ys).sum() / m), float((img * xs).sum() / m)


def bbox(img: np.ndarray, level: float = 0.0) -> tuple[int, int]:
    mask = np.asarray(img).reshape(28, 28) > level
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def assert_mnist_like(t: np.ndarray) -> None:
    t = np.asarray(t)
    assert t.dtype == np.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert t.max() > 0.9  # saturated stroke cores, like MNIST
    cy, cx = com(t)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    h, w = bbox(t)
    assert max(h, w) <= 20 and max(h, w) >= 19


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def page(
    size: tuple[int, int] = (240, 180),
    at: tuple[int, int] = (60, 40),
    digit_px: int = 100,
    ink: int = 30,
    paper: int = 235,
    digit: int = 0,
) -> np.ndarray:
    """A uint8 grayscale page (W x H = size) with digit ``digit`` ~digit_px tall at ``at``."""
    w, h = size
    glyph = Image.fromarray(digits()[digit]).resize((digit_px, digit_px), Image.Resampling.BICUBIC)
    cover = np.zeros((h, w), np.float32)
    x, y = at
    cover[y : y + digit_px, x : x + digit_px] = (
        np.asarray(glyph, np.float32)[: h - y, : w - x] / 255
    )
    return np.clip(np.rint(paper * (1 - cover) + ink * cover), 0, 255).astype(np.uint8)


def reason(data: bytes, **kwargs: int) -> str:
    with pytest.raises(Rejected) as info:
        image_to_tensor(data, **kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.reason == str(info.value)
    return info.value.reason


# ------------------------------------------------------------- formats, modes and polarity

FORMAT_MODE_CASES = [(fmt, mode) for fmt, modes in FORMAT_MODES.items() for mode in modes]


@pytest.mark.parametrize("polarity", ["dark", "light"])
@pytest.mark.parametrize(("fmt", "mode"), FORMAT_MODE_CASES)
def test_every_format_and_mode_normalises_to_mnist(fmt: str, mode: str, polarity: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{fmt}-{mode}-{polarity}".encode()))
    digit = digits()[len(fmt + mode) % len(digits())]
    data, ext = render_scan(digit, rng, size=160, fmt=fmt, mode=mode, polarity=polarity)
    assert ext == EXTENSIONS[fmt]
    assert Image.open(io.BytesIO(data)).format == fmt

    gray = decode_image(data)
    assert gray.ndim == 2 and gray.dtype == np.float32
    assert gray.min() >= 0.0 and gray.max() <= 1.0
    # Original polarity is kept: paper (the border) is bright under pen ink, dark under chalk.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    assert (np.median(border) > 0.5) == (polarity == "dark")

    tensor = image_to_tensor(data)
    assert tensor.shape == (28, 28, 1)
    assert_mnist_like(tensor)
    assert corr(tensor, normalize_digit(digit.astype(np.float32) / 255)) > 0.5


def test_accepted_formats_are_the_documented_ones() -> None:
    assert frozenset({"JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF"}) == ACCEPTED_FORMATS


@pytest.mark.parametrize("seed", range(6))
def test_random_scans_match_their_source_digit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    digit = digits()[seed % len(digits())]
    data, _ = render_scan(digit, rng)
    tensor = image_to_tensor(data)
    assert_mnist_like(tensor)
    assert corr(tensor, normalize_digit(digit.astype(np.float32) / 255)) > 0.5


@pytest.mark.parametrize("ink_on", ["paper", "board"])
def test_polarity_survives_strong_uneven_lighting(ink_on: str) -> None:
    base = page(ink=20, paper=235).astype(np.float32) / 255
    if ink_on == "board":
        base = 1.0 - base
    h, w = base.shape
    light = np.linspace(0.45, 1.0, w, dtype=np.float32)[None, :] * np.ones((h, 1), np.float32)
    scan = base * light
    out = normalize_digit(scan)
    assert_mnist_like(out)
    clean = normalize_digit(page(ink=20, paper=235).astype(np.float32) / 255)
    assert corr(out, clean) > 0.9


def test_mnist_input_stays_close_to_itself() -> None:
    for digit in digits():
        x = digit.astype(np.float32) / 255
        out = normalize_digit(x)
        assert corr(out, x) > 0.8
        png = image_to_tensor(encode(Image.fromarray(digit), "PNG"))
        assert corr(png, x) > 0.8


# --------------------------------------------------------------- centring and the 20x20 box


@pytest.mark.parametrize(
    ("size", "at", "digit_px"),
    [((400, 300), (10, 200), 60), ((400, 300), (320, 8), 50), ((120, 500), (30, 20), 70)],
)
def test_small_off_centre_digit_is_centred_and_fitted(
    size: tuple[int, int], at: tuple[int, int], digit_px: int
) -> None:
    data = encode(Image.fromarray(page(size=size, at=at, digit_px=digit_px)), "PNG")
    out = image_to_tensor(data)
    assert_mnist_like(out)
    cy, cx = com(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert max(bbox(out)) <= 20


def test_specks_far_from_the_digit_do_not_change_the_crop() -> None:
    clean = page(size=(300, 300), at=(100, 100), digit_px=100)
    dirty = clean.copy()
    for y, x in [(5, 5), (290, 20), (20, 280), (280, 285), (150, 10)]:
        dirty[y : y + 2, x : x + 2] = 0
    a = normalize_digit(clean.astype(np.float32) / 255)
    b = normalize_digit(dirty.astype(np.float32) / 255)
    assert corr(a, b) > 0.97


# ------------------------------------------------------------------- EXIF, alpha, 16-bit


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(fmt: str, orientation: int) -> None:
    upright = Image.fromarray(page(size=(240, 160), at=(70, 30)))
    undo = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = upright.transpose(undo)
    data = encode(stored, fmt, exif=exif.tobytes())

    gray = decode_image(data)
    assert gray.shape == (160, 240)
    expect = np.asarray(upright, np.float32) / 255
    assert corr(gray, expect) > 0.95
    assert corr(image_to_tensor(data), normalize_digit(expect)) > 0.9


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
@pytest.mark.parametrize("ink", ["dark", "light"])
def test_transparent_background_is_flattened_readably(mode: str, ink: str) -> None:
    cover = page(ink=255, paper=0)  # coverage as alpha
    colour = 20 if ink == "dark" else 230
    # Transparent pixels carry black colour, as many exporters write them.
    lum = np.where(cover > 0, colour, 0).astype(np.uint8)
    img = Image.merge("LA", [Image.fromarray(lum), Image.fromarray(cover)]).convert(mode)
    data = encode(img, "PNG")

    gray = decode_image(data)
    corner = float(np.median(gray[:10, :10]))
    assert corner == pytest.approx(1.0 if ink == "dark" else 0.0, abs=0.02)
    assert_mnist_like(image_to_tensor(data))
    assert corr(image_to_tensor(data), normalize_digit(cover.astype(np.float32) / 255)) > 0.95


def test_fully_transparent_image_is_blank() -> None:
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert reason(encode(img, "PNG")) == "blank"


def test_palette_with_transparency_is_flattened() -> None:
    rgba = Image.fromarray(page()).convert("RGBA")
    arr = np.asarray(rgba).copy()
    arr[..., 3] = np.where(arr[..., 0] > 200, 0, 255)  # paper → transparent
    data = encode(Image.fromarray(arr).convert("P"), "PNG")
    gray = decode_image(data)
    assert float(np.median(gray)) > 0.9
    assert_mnist_like(image_to_tensor(data))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_to_unit_range(fmt: str) -> None:
    wide = (page().astype(np.uint16) * 257).astype(np.uint16)
    img = Image.fromarray(wide)
    assert img.mode == "I;16"
    data = encode(img, fmt)
    gray = decode_image(data)
    np.testing.assert_allclose(gray, page().astype(np.float32) / 255, atol=1e-3)
    assert_mnist_like(image_to_tensor(data))


def test_32_bit_int_and_float_tiff_are_scaled() -> None:
    base = page().astype(np.float32) / 255
    as_int = Image.fromarray((base * 65535).astype(np.int32))
    assert as_int.mode == "I"
    np.testing.assert_allclose(decode_image(encode(as_int, "TIFF")), base, atol=1e-3)
    as_float = Image.fromarray(base)
    assert as_float.mode == "F"
    np.testing.assert_allclose(decode_image(encode(as_float, "TIFF")), base, atol=1e-6)
    assert_mnist_like(image_to_tensor(encode(as_float, "TIFF")))


def test_single_frame_gif_and_bilevel_images_are_fine() -> None:
    img = Image.fromarray(page())
    assert_mnist_like(image_to_tensor(encode(img.convert("P"), "GIF")))
    assert_mnist_like(
        image_to_tensor(encode(img.point(lambda v: 255 if v > 128 else 0).convert("1"), "PNG"))
    )


@pytest.mark.parametrize("variant", ["CMYK", "MPO"])
def test_cmyk_jpeg_and_camera_mpo_are_read_as_jpeg(variant: str) -> None:
    img = Image.fromarray(page(size=(300, 240), at=(90, 50)))
    if variant == "CMYK":
        data = encode(img.convert("CMYK"), "JPEG")
    else:  # a multi-picture JPEG (stereo/preview frames): the first frame is the photo
        rgb = img.convert("RGB")
        data = encode(rgb, "MPO", save_all=True, append_images=[rgb.rotate(90)])
        assert Image.open(io.BytesIO(data)).format == "MPO"
    expect = normalize_digit(np.asarray(img, np.float32) / 255)
    assert corr(image_to_tensor(data), expect) > 0.9


def test_large_jpeg_uses_reduced_decode_but_same_result() -> None:
    big = Image.fromarray(page(size=(1600, 1200), at=(500, 300), digit_px=600))
    data = encode(big, "JPEG", quality=90)
    assert decode_image(data).shape == (1200, 1600)
    fast = image_to_tensor(data)
    slow = normalize_digit(decode_image(data))[:, :, None]
    assert_mnist_like(fast)
    assert corr(fast, slow) > 0.9


# ------------------------------------------------------------------------------- blank pages


def _blank_pages() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    white = np.clip(235 + rng.normal(0, 3, (200, 260)), 0, 255)
    black = np.clip(20 + rng.normal(0, 3, (200, 260)), 0, 255)
    gradient = np.linspace(120, 250, 260)[None, :] * np.ones((200, 1))
    specks = white.copy()
    for y, x in [(30, 40), (150, 200), (90, 120), (170, 30), (20, 230)]:
        specks[y : y + 2, x : x + 2] = 30
    return {
        "white": white,
        "black": black,
        "gradient": gradient,
        "specks": specks,
        "flat-grey": np.full((50, 50), 128.0),
    }


@pytest.mark.parametrize("name", ["white", "black", "gradient", "specks", "flat-grey"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_blank_pages_are_rejected(name: str, fmt: str) -> None:
    img = Image.fromarray(_blank_pages()[name].astype(np.uint8))
    assert reason(encode(img, fmt)) == "blank"
    with pytest.raises(Rejected, match=r"^blank$"):
        normalize_digit(_blank_pages()[name].astype(np.float32) / 255)


def test_normalize_digit_rejects_non_images() -> None:
    with pytest.raises(Rejected):
        normalize_digit(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(Rejected, match="blank"):
        normalize_digit(np.full((40, 40), np.nan, np.float32))


# ---------------------------------------------------------------------------- refused input


def _png_with_size(width: int, height: int) -> bytes:
    """A real tiny PNG whose IHDR (and CRC) is patched to declare width x height."""
    data = bytearray(encode(Image.new("L", (8, 8), 255), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _multi_frame(fmt: str, frames: int) -> bytes:
    imgs = [Image.fromarray(page(digit=i % len(digits()))) for i in range(frames)]
    return encode(imgs[0], fmt, save_all=True, append_images=imgs[1:])


def test_refused_inputs_have_clear_reasons() -> None:
    img = Image.fromarray(page())
    jpeg, png = encode(img, "JPEG"), encode(img, "PNG")
    assert reason(b"") == "empty file"
    assert reason(jpeg[: len(jpeg) // 2]).startswith("truncated or corrupt image")
    assert reason(png[: len(png) // 2]).startswith("truncated or corrupt image")
    assert reason(b"hello, this is a text file renamed to .png\n" * 20) == "not an image"
    assert reason(_png_with_size(100_000, 100_000)) == "image too large: 100000x100000 pixels"
    assert reason(png, max_pixels=10_000) == "image too large: 240x180 pixels"
    assert reason(b"8BPS\x00\x01" + b"\x00" * 64) == "format PSD not accepted"
    assert (
        reason(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n") == "format EPS not accepted"
    )
    assert reason(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n") == "format PDF not accepted"
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"/>'
    assert reason(svg) == "format SVG not accepted"
    assert reason(b'<svg xmlns="http://www.w3.org/2000/svg"></svg>') == "format SVG not accepted"
    assert reason(encode(img, "PPM")) == "format PPM not accepted"
    assert reason(_multi_frame("GIF", 3)) == "multi-frame image (3 frames)"
    assert reason(_multi_frame("TIFF", 2)) == "multi-frame image (2 frames)"
    assert reason(_multi_frame("WEBP", 2)) == "multi-frame image (2 frames)"
    assert reason(encode(Image.new("L", (1, 1), 0), "PNG")) == "image too small: 1x1 pixels"
    assert reason(encode(Image.new("L", (300, 5), 0), "BMP")) == "image too small: 300x5 pixels"


def test_decompression_bomb_warnings_never_escape() -> None:
    # Declares 12000x10000: above Pillow's warning limit, below its error limit.
    data = _png_with_size(12_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reason(data).startswith("image too large")
        with pytest.raises(Rejected, match=r"^truncated or corrupt image"):
            decode_image(data, max_pixels=200_000_000)


def test_rejected_is_a_picklable_value_error() -> None:
    err = pickle.loads(pickle.dumps(Rejected("blank")))
    assert isinstance(err, ValueError) and err.reason == "blank"


def test_no_exception_but_rejected_for_garbage() -> None:
    rng = np.random.default_rng(11)
    img = Image.fromarray(page(size=(64, 48), at=(10, 5), digit_px=36))
    seeds = [encode(img, f) for f in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]
    for i in range(150):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(0, len(data)))
            data[pos] = int(rng.integers(0, 256))
        if i % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        try:
            out = image_to_tensor(bytes(data))
        except Rejected:
            continue
        assert out.shape == (28, 28, 1) and np.isfinite(out).all()
    for n in (1, 7, 16, 300):
        with pytest.raises(Rejected):
            image_to_tensor(rng.integers(0, 256, n, dtype=np.uint8).tobytes())


# ------------------------------------------------------------------------ synthetic scans


def test_render_scan_respects_its_arguments() -> None:
    rng = np.random.default_rng(0)
    data, ext = render_scan(digits()[0].ravel(), rng, size=123, fmt="TIFF", mode="I;16")
    img = Image.open(io.BytesIO(data))
    assert (ext, img.format, img.mode, img.size) == (".tif", "TIFF", "I;16", (123, 123))
    with pytest.raises(ValueError):
        render_scan(digits()[0], rng, fmt="JPEG", mode="RGBA")
    with pytest.raises(ValueError):
        render_scan(digits()[0], rng, polarity="sideways")


def test_render_scan_randomises_size_format_and_is_reproducible() -> None:
    first = [render_scan(digits()[0], np.random.default_rng(s)) for s in range(10)]
    again = [render_scan(digits()[0], np.random.default_rng(s)) for s in range(10)]
    assert first == again
    sizes = {Image.open(io.BytesIO(d)).size for d, _ in first}
    assert all(60 <= w <= 600 and 60 <= h <= 600 for w, h in sizes)
    assert len({ext for _, ext in first}) >= 3 and len(sizes) == 10
