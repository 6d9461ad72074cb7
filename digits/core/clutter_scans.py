"""Synthetic scans with the clutter real pages carry, one kind at a time, for tests and docs.

``synthetic_scans`` renders a digit on a clean sheet; users' scans are rarely clean. Each kind
here reproduces one thing that fooled "take the bounding box of the ink": a box or table cell
around the digit, ruled or squared paper, a margin line, hole punches, specks, a shadow at an
edge, a fragment of the neighbouring digit, a photo of a screen, and the origin's own test
picture (a white-on-black digit shown in a plot, with its frame and axis numbers). Rendering
known held-out rows this way gives every kind its own accuracy. Pure: bytes out, no files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["CLUTTER_KINDS", "render_cluttered"]

Float = NDArray[np.float32]

CLUTTER_KINDS: tuple[str, ...] = (
    "frame",
    "table",
    "ruled",
    "squared",
    "margin",
    "holes",
    "specks",
    "shadow",
    "neighbour",
    "screen",
    "plot",
)
"""Every kind ``render_cluttered`` draws, in the order the docs list them."""


def render_cluttered(
    pixels: NDArray[Any],
    kind: str,
    rng: np.random.Generator,
    *,
    neighbour: NDArray[Any] | None = None,
) -> bytes:
    """Render one MNIST row (white ink on black) as a JPEG or PNG scan with ``kind`` clutter.

    ``neighbour`` is another MNIST row, needed by the ``neighbour`` kind (a fragment of it
    shows at an edge of the page); other kinds ignore it.
    """
    if kind not in CLUTTER_KINDS:
        raise ValueError(f"unknown clutter kind {kind!r}: choose one of {', '.join(CLUTTER_KINDS)}")
    digit = np.asarray(pixels, dtype=np.float32).reshape(28, 28) / 255.0
    if kind == "plot":
        return _photo(_plot(digit, rng), rng)
    if kind == "screen":
        return _photo(_screen(digit, rng), rng)
    if kind == "neighbour" and neighbour is None:
        raise ValueError("the neighbour kind needs a neighbour row")
    width = int(rng.integers(140, 420))
    height = int(np.clip(round(width * math.exp(rng.uniform(-0.25, 0.25))), 140, 420))
    paper = np.float32(rng.uniform(215, 250)) + rng.uniform(-10, 2, 3).astype(np.float32)
    ink = np.float32(rng.uniform(15, 70)) + rng.uniform(-6, 6, 3).astype(np.float32)
    if rng.random() < 0.35:  # blue ballpoint
        ink = np.array(
            [rng.uniform(20, 60), rng.uniform(30, 80), rng.uniform(120, 190)], np.float32
        )
    page = np.broadcast_to(paper, (height, width, 3)).astype(np.float32)
    # digit size: 30-55 % of the short side, placed in the middle half (clutter goes round it)
    size = rng.uniform(0.30, 0.55) * min(width, height)
    coverage, box = _place(digit, size, rng, width, height)
    stroke = max(1.0, size / 12)
    before, after = _KINDS[kind]
    if before is not None:
        page = before(page, box, stroke, rng)
    page = _lay(page, coverage, ink)
    if kind == "neighbour":
        assert neighbour is not None
        other = np.asarray(neighbour, dtype=np.float32).reshape(28, 28) / 255.0
        page = _lay(page, _neighbour(other, size, box, rng, width, height), ink)
    if after is not None:
        page = after(page, box, stroke, rng)
    return _photo(page, rng)


# --------------------------------------------------------------------------------------------
# placing the digit
# --------------------------------------------------------------------------------------------


def _glyph(digit: Float, size: float, rng: np.random.Generator) -> Float:
    """The 28x28 field scaled so its 20 px box is ``size`` px, slightly rotated, cropped."""
    field = max(28, round(28 * size / 20))
    img = Image.fromarray((digit * 255).astype(np.uint8)).resize(
        (field, field), Image.Resampling.BICUBIC
    )
    img = img.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BICUBIC, expand=True)
    bbox = img.getbbox() or (0, 0, img.width, img.height)
    return np.asarray(img.crop(bbox), dtype=np.float32) / 255.0


def _place(
    digit: Float, size: float, rng: np.random.Generator, width: int, height: int
) -> tuple[Float, tuple[int, int, int, int]]:
    """Coverage map of the digit near the middle of the page, and its box (y0, x0, y1, x1)."""
    glyph = _glyph(digit, size, rng)
    gh, gw = glyph.shape
    cy = height / 2 + rng.uniform(-0.12, 0.12) * height
    cx = width / 2 + rng.uniform(-0.12, 0.12) * width
    y0 = int(np.clip(round(cy - gh / 2), 1, max(1, height - gh - 1)))
    x0 = int(np.clip(round(cx - gw / 2), 1, max(1, width - gw - 1)))
    gh, gw = min(gh, height - y0), min(gw, width - x0)
    coverage = np.zeros((height, width), np.float32)
    coverage[y0 : y0 + gh, x0 : x0 + gw] = glyph[:gh, :gw] * np.float32(rng.uniform(0.85, 1.0))
    return coverage, (y0, x0, y0 + gh, x0 + gw)


def _lay(page: Float, coverage: Float, colour: NDArray[np.float32]) -> Float:
    """Put ``colour`` on the page where ``coverage`` says (like ink over paper)."""
    a = coverage[:, :, None]
    return np.asarray(page * (1.0 - a) + colour * a, dtype=np.float32)


def _layer(height: int, width: int, draw: Callable[[ImageDraw.ImageDraw], None]) -> Float:
    """A coverage map drawn with Pillow (anti-aliased by drawing at 2x and reducing)."""
    img = Image.new("L", (2 * width, 2 * height), 0)
    draw(ImageDraw.Draw(img))
    return np.asarray(img.reduce(2), dtype=np.float32) / 255.0


def _line_colour(rng: np.random.Generator, printed: bool) -> NDArray[np.float32]:
    if printed:  # ruled and squared paper: pale blue or grey
        if rng.random() < 0.6:
            return np.array(
                [rng.uniform(120, 170), rng.uniform(150, 190), rng.uniform(200, 235)], np.float32
            )
        return np.float32(rng.uniform(130, 185)) * np.ones(3, np.float32)
    return np.float32(rng.uniform(20, 80)) * np.ones(3, np.float32)  # a pen or a table's rule


# --------------------------------------------------------------------------------------------
# the kinds: each returns the page with its clutter (drawn before or after the digit's ink)
# --------------------------------------------------------------------------------------------

Box = tuple[int, int, int, int]


def _frame(page: Float, box: Box, stroke: float, rng: np.random.Generator) -> Float:
    """A box drawn round the digit with a pen, a gap of 10-35 % of the digit's size."""
    h, w = page.shape[:2]
    y0, x0, y1, x1 = box
    gap = rng.uniform(0.10, 0.35) * max(y1 - y0, x1 - x0)
    top, left = max(2, y0 - gap), max(2, x0 - gap)
    bottom, right = min(h - 3, y1 + gap), min(w - 3, x1 + gap)
    width = max(2, round(2 * stroke * rng.uniform(0.5, 1.0)))
    jitter = rng.uniform(-0.02, 0.02, 8) * max(h, w) * 2

    def draw(d: ImageDraw.ImageDraw) -> None:
        corners = [
            (2 * left + jitter[0], 2 * top + jitter[1]),
            (2 * right + jitter[2], 2 * top + jitter[3]),
            (2 * right + jitter[4], 2 * bottom + jitter[5]),
            (2 * left + jitter[6], 2 * bottom + jitter[7]),
        ]
        d.line([*corners, corners[0]], fill=255, width=width, joint="curve")

    return _lay(page, _layer(h, w, draw), _line_colour(rng, printed=False))


def _table(page: Float, box: Box, stroke: float, rng: np.random.Generator) -> Float:
    """A cell of a printed table: rules above, below and beside the digit, across the page."""
    h, w = page.shape[:2]
    y0, x0, y1, x1 = box
    gap = rng.uniform(0.08, 0.3) * max(y1 - y0, x1 - x0)
    rows = [max(1, y0 - gap), min(h - 2, y1 + gap)]
    cols = [max(1, x0 - gap), min(w - 2, x1 + gap)]
    width = max(2, round(rng.uniform(1.0, 3.5)))

    def draw(d: ImageDraw.ImageDraw) -> None:
        for y in rows:
            d.line([(0, 2 * y), (2 * w, 2 * y + rng.uniform(-4, 4))], fill=255, width=width)
        for x in cols:
            d.line([(2 * x, 0), (2 * x + rng.uniform(-4, 4), 2 * h)], fill=255, width=width)

    return _lay(page, _layer(h, w, draw), _line_colour(rng, printed=False))


def _rules(
    page: Float, box: Box, rng: np.random.Generator, spacing: float, vertical: bool
) -> Float:
    h, w = page.shape[:2]
    offset = rng.uniform(0, spacing)
    tilt = math.tan(math.radians(rng.uniform(-1.0, 1.0)))
    width = max(1, round(rng.uniform(1.0, 2.5)))

    def draw(d: ImageDraw.ImageDraw) -> None:
        y = offset
        while y < h:
            d.line([(0, 2 * y), (2 * w, 2 * (y + tilt * w))], fill=255, width=width)
            y += spacing
        if vertical:
            x = rng.uniform(0, spacing)
            while x < w:
                d.line([(2 * x, 0), (2 * (x - tilt * h), 2 * h)], fill=255, width=width)
                x += spacing

    return _lay(
        page, _layer(h, w, draw) * np.float32(rng.uniform(0.6, 1.0)), _line_colour(rng, True)
    )


def _ruled(page: Float, box: Box, stroke: float, rng: np.random.Generator) -> Float:
    """Ruled paper: lines 45-90 % of the digit's height apart, through and round it."""
    return _rules(page, box, rng, rng.uniform(0.45, 0.9) * (box[2] - box[0]), vertical=False)


def _squared(page: Float, box: Box, stroke: float, rng: np.random.Generator) -> Float:
    """Squared paper: a grid of 30-55 % of the digit's height."""
    return _rules(page, box, rng, rng.uniform(0.3, 0.55) * (box[2] - box[0]), vertical=True)


def _margin(page: Float, box: Box, stroke: float, rng: np.random.Generator) -> Float:
    """A red margin line (sometimes two) between the page's edge and the digit."""
    h, w = page.shape[:2]
    left = rng.random() < 0.7
    room = box[1] if left else w - box[3]
    x = rng.uniform(0.3, 0.8) * room
    x = x if left else w - x
    width = max(2, round(rng.uniform(1.5, 4)))
    colour = np.array(
        [rng.uniform(190, 235), rng.uniform(60, 120), rng.uniform(70, 130)], np.float32
    )

    def draw(d: ImageDraw.ImageDraw) -> None:
        d.line([(2 * x, 0), (2 * x + rng.uniform(-6, 6), 2 * h)], fill=255, width=width)
        if rng.random() < 0.3:
            d.line([(2 * x + 8, 0), (2 * x + 8, 2 * h)], fill=255, width=width)

    if rng.random() < 0.5:
        page = _ruled(page, box, stroke, rng)
    return _lay(page, _layer(h, w, draw), colour)


def _holes(page: Float, box: Box, stroke: float, rng: np.random.Generator) -> Float:
    """Hole punches in the margin: dark discs (the scanner's lid shows through)."""
    h, w = page.shape[:2]
    y0, x0, y1, x1 = box
    side = int(rng.integers(4))  # left, right, top, bottom
    radius = rng.uniform(0.15, 0.25) * max(y1 - y0, x1 - x0)
    count = int(rng.integers(1, 3))
    centres = []
    for i in range(count):
        along = (i + 1) / (count + 1) + rng.uniform(-0.08, 0.08)
        room = (x0, w - x1, y0, h - y1)[side]
        depth = min(max(radius + 2, rng.uniform(0.25, 0.5) * room), room - radius - 1)
        depth = max(depth, radius * 0.6)
        centres.append(
            [
                (depth, along * h),
                (w - depth, along * h),
                (along * w, depth),
                (along * w, h - depth),
            ][side]
        )

    def draw(d: ImageDraw.ImageDraw) -> None:
        for cx, cy in centres:
            d.ellipse(
                (2 * (cx - radius), 2 * (cy - radius), 2 * (cx + radius), 2 * (cy + radius)),
                fill=255,
            )

    colour = np.float32(rng.uniform(10, 110)) * np.ones(3, np.float32)
    return _lay(page, _layer(h, w, draw), colour)


def _specks(page: Float, box: Box, stroke: float, rng: np.random.Generator) -> Float:
    """Dust, toner specks and a blot or two, anywhere (some near the digit)."""
    h, w = page.shape[:2]
    scale = max(1.0, min(h, w) / 150)
    spots = [
        (rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.4, 1.6) * scale)
        for _ in range(int(rng.integers(15, 60)))
    ]
    for _ in range(int(rng.integers(1, 4))):
        spots.append((rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.02, 0.05) * min(h, w)))

    def draw(d: ImageDraw.ImageDraw) -> None:
        for x, y, r in spots:
            d.ellipse(
                (2 * (x - r), 2 * (y - r), 2 * (x + r), 2 * (y + r)),
                fill=int(rng.integers(120, 256)),
            )

    return _lay(page, _layer(h, w, draw), np.float32(rng.uniform(20, 90)) * np.ones(3, np.float32))


def _shadow(page: Float, box: Box, stroke: float, rng: np.random.Generator) -> Float:
    """The phone's shadow: a soft dark band over one edge, 15-35 % of the page deep."""
    h, w = page.shape[:2]
    side = int(rng.integers(4))
    n = (w, w, h, h)[side]
    depth = rng.uniform(0.15, 0.35) * n
    t = np.arange(n, dtype=np.float32)
    if side in (1, 3):
        t = t[::-1]
    soft = max(2.0, rng.uniform(0.05, 0.2) * n)
    band = 1.0 / (1.0 + np.exp((t - depth) / soft))
    dark = np.float32(rng.uniform(0.35, 0.7))
    mult = 1.0 - dark * band
    mult2 = mult[None, :] if side < 2 else mult[:, None]
    return np.asarray(page * np.broadcast_to(mult2, (h, w))[:, :, None], dtype=np.float32)


def _neighbour(
    other: Float, size: float, box: Box, rng: np.random.Generator, width: int, height: int
) -> Float:
    """The neighbouring digit on the line, cut by the left or right edge of the crop."""
    glyph = _glyph(other, size * rng.uniform(0.85, 1.15), rng)
    gh, gw = glyph.shape
    shown = max(2, round(gw * rng.uniform(0.25, 0.6)))
    y0 = int(
        np.clip(round((box[0] + box[2]) / 2 - gh / 2 + rng.uniform(-0.1, 0.1) * gh), 0, height - 1)
    )
    rows = min(gh, height - y0)
    coverage = np.zeros((height, width), np.float32)
    room = box[1] if rng.random() < 0.5 else -(width - box[3])
    if room > 0:  # left edge: the neighbour's right part shows
        shown = min(shown, room - 2)
        if shown > 1:
            coverage[y0 : y0 + rows, :shown] = glyph[:rows, gw - shown :]
    else:
        shown = min(shown, -room - 2)
        if shown > 1:
            coverage[y0 : y0 + rows, width - shown :] = glyph[:rows, :shown]
    return coverage


def _screen(digit: Float, rng: np.random.Generator) -> Float:
    """A phone photo of a screen showing the digit: bezel, room, moiré, glare, colour cast."""
    width = int(rng.integers(160, 420))
    height = int(np.clip(round(width * rng.uniform(0.75, 1.25)), 140, 420))
    room = np.float32(rng.uniform(90, 200)) + rng.uniform(-15, 15, 3).astype(np.float32)
    page = np.broadcast_to(room, (height, width, 3)).astype(np.float32)
    by0, bx0 = round(rng.uniform(0.0, 0.1) * height), round(rng.uniform(0.0, 0.1) * width)
    by1, bx1 = (
        height - round(rng.uniform(0.0, 0.1) * height),
        width - round(rng.uniform(0.0, 0.1) * width),
    )
    page[by0:by1, bx0:bx1] = np.float32(rng.uniform(10, 35))  # bezel
    bezel = round(rng.uniform(0.02, 0.06) * min(height, width))
    sy0, sx0, sy1, sx1 = by0 + bezel, bx0 + bezel, by1 - bezel, bx1 - bezel
    dark_mode = rng.random() < 0.5
    tint = rng.uniform(-12, 12, 3).astype(np.float32)
    background = (
        np.float32(rng.uniform(25, 55)) if dark_mode else np.float32(rng.uniform(200, 245))
    ) + tint
    ink = (
        np.float32(rng.uniform(200, 250)) if dark_mode else np.float32(rng.uniform(10, 50))
    ) + tint
    sh, sw = sy1 - sy0, sx1 - sx0
    screen = np.broadcast_to(background, (sh, sw, 3)).astype(np.float32)
    size = rng.uniform(0.4, 0.7) * min(sh, sw)
    coverage, _ = _place(digit, size, rng, sw, sh)
    screen = _lay(screen, coverage, ink)
    ys, xs = np.mgrid[0:sh, 0:sw].astype(np.float32)
    period, angle = rng.uniform(3.0, 9.0), rng.uniform(0, math.pi)
    wave = np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period)
    moire = 1.0 + np.float32(rng.uniform(0.04, 0.12)) * wave
    glare = 1.0 + 0.25 * np.exp(
        -((xs / sw - rng.uniform(0.2, 0.8)) ** 2 + (ys / sh - rng.uniform(0.2, 0.8)) ** 2) / 0.05
    ) * np.float32(rng.uniform(0.0, 1.0))
    page[sy0:sy1, sx0:sx1] = screen * (moire * glare)[:, :, None]
    return page


def _plot(digit: Float, rng: np.random.Generator) -> Float:
    """The origin's test picture: the 28x28 digit shown white on black in a plot (imshow with
    nearest-neighbour pixels), with the plot's frame, ticks and axis numbers on a white figure,
    then photographed."""
    width = int(rng.integers(220, 480))
    height = int(np.clip(round(width * rng.uniform(0.8, 1.1)), 200, 480))
    fig = np.full((height, width), 255.0, np.float32)
    side = round(rng.uniform(0.62, 0.78) * min(width, height))
    top = round(rng.uniform(0.06, 0.12) * height)
    left = round(rng.uniform(0.12, 0.2) * width)
    side = min(side, height - top - 30, width - left - 10)
    shown = rng.uniform(0.05, 0.3)  # how grey the "black" of the colour map looks
    panel = Image.fromarray((255 * (shown + (1 - shown) * digit)).astype(np.uint8)).resize(
        (side, side), Image.Resampling.NEAREST
    )
    fig[top : top + side, left : left + side] = np.asarray(panel, np.float32)
    img = Image.fromarray(fig.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.rectangle((left - 1, top - 1, left + side, top + side), outline=0, width=1)
    font = ImageFont.load_default(size=max(8, round(0.045 * min(width, height))))
    tick = max(3, round(0.012 * min(width, height)))
    for value in (0, 5, 10, 15, 20, 25):
        at = (value + 0.5) * side / 28
        d.line([(left + at, top + side), (left + at, top + side + tick)], fill=0, width=1)
        d.text((left + at, top + side + tick + 1), str(value), fill=0, font=font, anchor="mt")
        d.line([(left - tick, top + at), (left, top + at)], fill=0, width=1)
        d.text((left - tick - 2, top + at), str(value), fill=0, font=font, anchor="rm")
    img = img.rotate(float(rng.uniform(-3, 3)), resample=Image.Resampling.BICUBIC, fillcolor=255)
    gray = np.asarray(img, dtype=np.float32)
    return np.repeat(gray[:, :, None], 3, axis=2)


_KINDS: dict[str, tuple[Any, Any]] = {
    "frame": (None, _frame),
    "table": (_table, None),
    "ruled": (_ruled, None),
    "squared": (_squared, None),
    "margin": (_margin, None),
    "holes": (None, _holes),
    "specks": (None, _specks),
    "shadow": (None, _shadow),
    "neighbour": (None, None),
}
"""Page clutter drawn before the digit's ink (printed on the paper) or after it."""


# --------------------------------------------------------------------------------------------
# the camera or scanner
# --------------------------------------------------------------------------------------------


def _photo(page: Float, rng: np.random.Generator) -> bytes:
    """Uneven light, a little blur and noise, then JPEG (mostly) or PNG."""
    h, w = page.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = (xs / max(1, w - 1) - 0.5) * math.cos(theta) + (ys / max(1, h - 1) - 0.5) * math.sin(
        theta
    )
    light = 1.0 - ramp * np.float32(rng.uniform(0.0, 0.25))
    page = page * light[:, :, None]
    img = Image.fromarray(np.clip(np.rint(page), 0, 255).astype(np.uint8))
    radius = rng.uniform(0.0, 1.0) * max(1.0, min(h, w) / 250)
    if radius >= 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    noisy = np.asarray(img, np.float32) + rng.normal(0.0, rng.uniform(0.0, 6.0), (h, w, 3))
    img = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    out = io.BytesIO()
    if rng.random() < 0.75:
        img.save(out, format="JPEG", quality=int(rng.integers(70, 95)))
    else:
        img.save(out, format="PNG")
    return out.getvalue()
