"""Realistic synthetic scans of MNIST digits, for tests and the preprocessing benchmark.

We have labelled MNIST rows but no labelled photos, so we fake the photos: a known digit
rendered the way users' uploads actually look (pen on off-white paper or chalk on a board,
any size, off-centre, slightly rotated, uneven light, noise, blur, every accepted file
format and pixel mode).  Scoring the same rows clean and as scans then measures exactly what
preprocessing loses.  Pure: returns encoded bytes, touches no files.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["EXTENSIONS", "FORMAT_MODES", "render_scan"]

EXTENSIONS: dict[str, str] = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "TIFF": ".tif",
    "BMP": ".bmp",
    "WEBP": ".webp",
    "GIF": ".gif",
}

FORMAT_MODES: dict[str, tuple[str, ...]] = {
    "JPEG": ("L", "RGB"),
    "PNG": ("L", "RGB", "P", "RGBA", "LA", "I;16"),
    "TIFF": ("L", "RGB", "P", "RGBA", "LA", "I;16"),
    "BMP": ("L", "RGB", "P"),
    "WEBP": ("RGB", "RGBA"),
    "GIF": ("L", "P", "RGB", "RGBA"),
}
"""Pixel modes each format can store (as Pillow writes them).  GIF stores RGB as a palette
and RGBA as a palette with one transparent index (so alpha becomes all-or-nothing)."""

MAX_ROTATION = 10.0
"""Degrees either way: people write slightly slanted and place the sheet slightly askew."""

_FORMAT_WEIGHTS: dict[str, float] = {
    "JPEG": 0.35,
    "PNG": 0.25,
    "TIFF": 0.1,
    "BMP": 0.1,
    "WEBP": 0.1,
    "GIF": 0.1,
}
"""Roughly what phones and scanners produce: mostly JPEG, then PNG."""


def render_scan(
    pixels: NDArray[Any],
    rng: np.random.Generator,
    *,
    size: int | None = None,
    fmt: str | None = None,
    mode: str | None = None,
    polarity: str | None = None,
) -> tuple[bytes, str]:
    """Render one MNIST row (white ink on black) as an encoded "scan"; returns (bytes, ext).

    ``size`` forces a square page of that many pixels, ``fmt`` a Pillow format name,
    ``mode`` a pixel mode (must suit the format, see FORMAT_MODES), ``polarity`` 'dark'
    (pen on paper) or 'light' (chalk on a board).  Anything left None is drawn from ``rng``.
    """
    digit = np.asarray(pixels).reshape(28, 28).astype(np.uint8)
    fmt = _pick_format(rng, fmt)
    mode = _pick_mode(rng, fmt, mode)
    if polarity is None:
        polarity = "light" if rng.random() < 0.15 else "dark"
    if polarity not in ("dark", "light"):
        raise ValueError(f"polarity must be 'dark' or 'light', not {polarity!r}")

    if size is None:
        width = int(rng.integers(60, 601))
        height = int(np.clip(round(width * math.exp(rng.uniform(-0.3, 0.3))), 60, 600))
    else:
        width = height = int(size)

    coverage = _place_digit(digit, rng, width, height)
    coverage = _add_specks(coverage, rng)
    paper, ink = _colours(rng, polarity)
    if polarity == "light":
        # Chalk leaves a grainy, partly transparent stroke.
        grain = rng.uniform(0.65, 1.0, size=coverage.shape).astype(np.float32)
        coverage = coverage * grain

    cut_out = mode in ("RGBA", "LA") and rng.random() < 0.5
    if cut_out:
        # A "transparent background" export: ink colour everywhere, coverage in alpha.
        rgb = np.broadcast_to(ink, (height, width, 3)).astype(np.float32)
        alpha = coverage
    else:
        a = coverage[:, :, None]
        rgb = paper * (1.0 - a) + ink * a
        rgb = rgb * _lighting(rng, height, width)[:, :, None]
        alpha = None

    blurred = _blur(rgb, rng, min(width, height))
    noisy = blurred + rng.normal(0.0, rng.uniform(0.0, 10.0), size=blurred.shape)
    rgb8 = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    img = _to_mode(rgb8, alpha, mode)
    return _encode(img, fmt, rng), EXTENSIONS[fmt]


def _pick_format(rng: np.random.Generator, fmt: str | None) -> str:
    if fmt is None:
        names = list(_FORMAT_WEIGHTS)
        weights = np.array([_FORMAT_WEIGHTS[n] for n in names])
        return names[int(rng.choice(len(names), p=weights / weights.sum()))]
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in FORMAT_MODES:
        raise ValueError(f"unsupported format {fmt!r}")
    return fmt


def _pick_mode(rng: np.random.Generator, fmt: str, mode: str | None) -> str:
    allowed = FORMAT_MODES[fmt]
    if mode is None:
        return allowed[int(rng.integers(len(allowed)))]
    if mode not in allowed:
        raise ValueError(f"{fmt} cannot store mode {mode!r} (allowed: {', '.join(allowed)})")
    return mode


def _place_digit(
    digit: NDArray[np.uint8], rng: np.random.Generator, width: int, height: int
) -> NDArray[np.float32]:
    """Ink coverage map (0..1) with the digit upscaled smoothly, rotated and off-centre."""
    short = min(width, height)
    margin = max(2, round(0.04 * short))
    # MNIST fits digits in 20 of its 28 px: scale so that box is 40-80% of the short side.
    box = rng.uniform(0.4, 0.8) * short
    field = max(28, round(28 * box / 20))
    glyph = Image.fromarray(digit).resize((field, field), Image.Resampling.BICUBIC)
    glyph = glyph.rotate(
        float(rng.uniform(-MAX_ROTATION, MAX_ROTATION)),
        resample=Image.Resampling.BICUBIC,
        expand=True,
    )
    bbox = glyph.getbbox()
    if bbox is None:
        return np.zeros((height, width), np.float32)
    glyph = glyph.crop(bbox)
    room_w, room_h = width - 2 * margin, height - 2 * margin
    if glyph.width > room_w or glyph.height > room_h:
        fit = min(room_w / glyph.width, room_h / glyph.height)
        glyph = glyph.resize(
            (max(1, int(glyph.width * fit)), max(1, int(glyph.height * fit))),
            Image.Resampling.LANCZOS,
        )
    x0 = int(rng.integers(margin, width - margin - glyph.width + 1))
    y0 = int(rng.integers(margin, height - margin - glyph.height + 1))
    coverage = np.zeros((height, width), np.float32)
    g = np.asarray(glyph, dtype=np.float32) / 255.0
    coverage[y0 : y0 + glyph.height, x0 : x0 + glyph.width] = g * rng.uniform(0.85, 1.0)
    return coverage


def _add_specks(coverage: NDArray[np.float32], rng: np.random.Generator) -> NDArray[np.float32]:
    """Dust and toner specks, which a naive bounding box would happily include."""
    if rng.random() >= 0.3:
        return coverage
    h, w = coverage.shape
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(1, 6))):
        x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        r = float(rng.uniform(0.4, 1.2)) * max(1.0, min(w, h) / 200)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(120, 256)))
    return np.maximum(coverage, np.asarray(layer, dtype=np.float32) / 255.0)


def _colours(
    rng: np.random.Generator, polarity: str
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    if polarity == "dark":
        base = rng.uniform(205, 255)
        paper = base + rng.uniform(-12, 3, size=3)  # white to warm off-white
        if rng.random() < 0.5:
            ink = rng.uniform(10, 70) + rng.uniform(-6, 6, size=3)  # black pen
        else:
            ink = np.array([rng.uniform(10, 60), rng.uniform(30, 90), rng.uniform(110, 190)])
    else:
        paper = np.array([rng.uniform(20, 60), rng.uniform(30, 80), rng.uniform(25, 65)])
        ink = rng.uniform(190, 245) + rng.uniform(-8, 8, size=3)  # chalk
    return paper.astype(np.float32), ink.astype(np.float32)


def _lighting(rng: np.random.Generator, height: int, width: int) -> NDArray[np.float32]:
    """Multiplicative illumination: a linear falloff in a random direction plus vignetting."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys = ys / max(1, height - 1) - 0.5
    xs = xs / max(1, width - 1) - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(theta) + ys * math.sin(theta)) * rng.uniform(0.0, 0.35)
    vignette = (xs * xs + ys * ys) * rng.uniform(0.0, 0.4)
    return np.asarray(1.0 - ramp - vignette, dtype=np.float32)


def _blur(rgb: NDArray[Any], rng: np.random.Generator, short: int) -> NDArray[np.float32]:
    radius = float(rng.uniform(0.0, 1.0)) * max(1.0, short / 250)
    if radius < 0.3:
        return np.asarray(rgb, dtype=np.float32)
    img = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)


def _to_mode(rgb8: NDArray[np.uint8], alpha: NDArray[np.float32] | None, mode: str) -> Image.Image:
    img = Image.fromarray(rgb8)
    if mode in ("RGBA", "LA"):
        a = alpha if alpha is not None else np.ones(rgb8.shape[:2], np.float32)
        img.putalpha(Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)))
        return img if mode == "RGBA" else img.convert("LA")
    if mode == "RGB":
        return img
    if mode == "P":
        return img.quantize(colors=256)
    gray = img.convert("L")
    if mode == "L":
        return gray
    if mode == "I;16":
        # Spread to the full 16-bit range (plus sub-8-bit detail) like a 16-bit scanner.
        wide = np.asarray(gray, dtype=np.uint16) * 257
        return Image.fromarray(wide.astype(np.uint16))
    raise ValueError(f"unsupported mode {mode!r}")


def _encode(img: Image.Image, fmt: str, rng: np.random.Generator) -> bytes:
    out = io.BytesIO()
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        options["quality"] = int(rng.integers(60, 96))
    elif fmt == "WEBP":
        if rng.random() < 0.2:
            options["lossless"] = True
        else:
            options["quality"] = int(rng.integers(60, 96))
    elif fmt == "TIFF":
        options["compression"] = [None, "tiff_lzw", "tiff_adobe_deflate"][int(rng.integers(3))]
    elif fmt == "GIF" and img.mode == "RGBA":
        img, options["transparency"] = _gif_with_transparency(img), 255
    img.save(out, format=fmt, **options)
    return out.getvalue()


def _gif_with_transparency(img: Image.Image) -> Image.Image:
    """RGBA → palette image whose index 255 is transparent, as GIF exporters write it.

    Pillow's own RGBA → GIF conversion may drop the transparency and keep the (arbitrary)
    colour of transparent pixels, which would make a digit-less file.
    """
    alpha = np.asarray(img.getchannel("A")) >= 128
    pal = img.convert("RGB").quantize(colors=255)
    indices = np.asarray(pal).copy()
    indices[~alpha] = 255
    out = Image.fromarray(indices.astype(np.uint8), mode="P")
    out.putpalette(pal.getpalette() or [])
    return out
