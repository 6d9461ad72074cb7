"""Labelled digits by writers other than MNIST's, captured at low resolution: the cross-writer
check.

Every figure we had measured digits written by MNIST's writers (the held-out rows, clean or
rendered as scans), yet uploads come from other people, often photographed small: a digit
only 8-16 px tall, then enlarged by whatever shows or exports it, so it reaches us small,
blocky and thick-stroked. We have no labelled uploads, so we draw them: each digit in
handwriting fonts (Debian packages, see FONT_PACKAGES) and in pen styles of our own (the
crossed 7, the 1 with a flag and a foot, the open-top 4, the 9 with a straight stem: forms
MNIST's writers rarely used), with a random slant, rotation, stroke width, pen pressure and a
smooth warp; then "captured" by shrinking it to 8-16 px, adding paper, ink and sensor noise at
that size, and enlarging it (nearest-neighbour or bilinear) to a 60-200 px image saved as
JPEG or PNG.

Pure like ``synthetic_scans``: Pillow and NumPy, encoded bytes out, no files written. Fonts
are read from a fixed list of paths (FONT_STYLES); missing ones are left out and named
(``WriterSet.missing``), and when no handwriting font is installed building the set raises
:class:`MissingFonts` naming the packages to install.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CROSS_WRITER_SEED",
    "FONT_PACKAGES",
    "FONT_STYLES",
    "GLYPH_PX",
    "PEN_STYLES",
    "PER_DIGIT",
    "SIDE_PX",
    "MissingFonts",
    "Style",
    "WriterSample",
    "WriterSet",
    "available_styles",
    "cross_writer_set",
    "render_writer_sample",
]

CROSS_WRITER_SEED = 20260523
"""The set's seed, fixed so every version is measured on the same images."""

PER_DIGIT = 200
"""Images per digit: 2,000 in all, ~140 per style; drawn and preprocessed in 15-25 s on two busy
cores, scored in ~10 s. Fewer would make a style's figure too coarse to compare versions."""

GLYPH_PX = (8, 16)
"""Height of the captured digit in pixels (inclusive): the low resolution this check is about."""

SIDE_PX = (60, 200)
"""Shorter side of the enlarged image the capture is saved as."""

MAX_SLANT = 15.0
MAX_ROTATION = 10.0
"""Degrees either way: writers slant their digits, and the page is photographed askew."""

_WORK = 128
_HEIGHT = 80
_FONT_SIZE = 96
"""Canvas (px) a glyph is drawn on before capture, and its height there (~5-10x the captured
size: enough for the capture's area averaging to be exact to a few per cent)."""

PEN_SHARE = (0.1, 0.18)
"""The pen's width as a share of the digit's height: MNIST's strokes are ~10-15 %; the
hands this check is about write as bold or bolder."""


@dataclass(frozen=True)
class Style:
    """One writer's hand: a font file (the first of ``paths`` present) or a pen style of ours
    (``paths`` empty). ``handwriting`` is False for the italic book faces, which are there for
    breadth but do not count as the handwriting the check needs. ``slant`` is the face's own
    lean in degrees (right positive), which the random slant makes up to MAX_SLANT: added on
    top, dkg's italic leant 40 degrees, further than anyone writes."""

    name: str
    paths: tuple[str, ...] = ()
    package: str = ""
    handwriting: bool = True
    slant: float = 0.0

    @property
    def pen(self) -> bool:
        return not self.paths

    def font_path(self) -> str | None:
        """The first installed file of this style's font, or None (always None for a pen)."""
        return next((p for p in self.paths if Path(p).is_file()), None)


_TT = "/usr/share/fonts/truetype"
_OT = "/usr/share/fonts/opentype"

FONT_STYLES: tuple[Style, ...] = (
    Style("dkg", (f"{_TT}/fifthhorseman/dkg.ttf",), "fonts-dkg-handwriting"),
    Style("dkg-bold", (f"{_TT}/fifthhorseman/dkgBd.ttf",), "fonts-dkg-handwriting"),
    Style("dkg-italic", (f"{_TT}/fifthhorseman/dkgIt.ttf",), "fonts-dkg-handwriting", slant=25),
    Style("breip", (f"{_TT}/breip/breipfont.ttf", f"{_TT}/breip/Breip.ttf"), "fonts-breip"),
    Style("rufscript", (f"{_TT}/rufscript/Rufscript010.ttf",), "fonts-rufscript"),
    Style("humor-sans", (f"{_TT}/humor-sans/Humor-Sans.ttf",), "fonts-humor-sans"),
    Style("comic-neue", (f"{_OT}/comic-neue/ComicNeue-Regular.otf",), "fonts-comic-neue"),
    Style("comic-neue-bold", (f"{_OT}/comic-neue/ComicNeue-Bold.otf",), "fonts-comic-neue"),
    Style(
        "comic-neue-italic",
        (f"{_OT}/comic-neue/ComicNeue-Italic.otf",),
        "fonts-comic-neue",
        slant=11,
    ),
    Style(
        "dejavu-sans-oblique",
        (f"{_TT}/dejavu/DejaVuSans-Oblique.ttf",),
        "fonts-dejavu-extra",
        handwriting=False,
        slant=11,
    ),
    Style(
        "liberation-sans-italic",
        (f"{_TT}/liberation/LiberationSans-Italic.ttf",),
        "fonts-liberation",
        handwriting=False,
        slant=11,
    ),
    Style(
        "liberation-serif-italic",
        (f"{_TT}/liberation/LiberationSerif-Italic.ttf",),
        "fonts-liberation",
        handwriting=False,
        slant=9,
    ),
)
"""Font faces used, in the set's order. The handwriting ones are the point; the italic book
faces add the serifed 1, the closed 4 and the typeset 7 that careful writers copy. Left out:
fonts-femkeklaver, whose digits are the outlines of fat marker strokes; captured small they
come out hollow or, widened, as blobs, neither of which anyone writes."""

FONT_PACKAGES: tuple[str, ...] = tuple(dict.fromkeys(s.package for s in FONT_STYLES))
"""The Debian packages holding FONT_STYLES' files (.ci/run installs them)."""

Point = tuple[float, float]
Stroke = list[Point]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float) -> Stroke:
    """Points along an ellipse from angle a0 to a1 (degrees; 0 = east, 90 = south: y is down)."""
    n = max(4, int(abs(a1 - a0) / 12))
    angles = np.radians(np.linspace(a0, a1, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


def _bezier(p0: Point, p1: Point, p2: Point, n: int = 12) -> Stroke:
    """A quadratic Bézier curve from p0 to p2 pulled towards p1."""
    return [
        (
            (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t * t * p2[0],
            (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t * t * p2[1],
        )
        for t in np.linspace(0.0, 1.0, n)
    ]


# Pen styles: each digit as strokes in a unit box (x right, y down), drawn with a round pen.
_EUROPEAN: dict[int, list[Stroke]] = {
    0: [_arc(0.5, 0.5, 0.42, 0.48, -100, 268)],
    1: [[(0.12, 0.34), (0.6, 0.02), (0.6, 0.98)], [(0.28, 0.98), (0.92, 0.98)]],
    2: [[*_arc(0.5, 0.3, 0.4, 0.28, 200, 390), (0.08, 0.97), (0.95, 0.97)]],
    3: [_arc(0.48, 0.27, 0.38, 0.25, 210, 470), _arc(0.48, 0.73, 0.44, 0.25, 250, 500)],
    4: [[(0.45, 0.0), (0.05, 0.68), (0.95, 0.68)], [(0.72, 0.3), (0.72, 1.0)]],
    5: [[(0.88, 0.02), (0.25, 0.02), (0.22, 0.45)], _arc(0.5, 0.68, 0.42, 0.3, 230, 490)],
    6: [_bezier((0.8, 0.02), (0.12, 0.12), (0.12, 0.72)), _arc(0.5, 0.72, 0.38, 0.26, 180, 540)],
    7: [[(0.05, 0.16), (0.1, 0.03), (0.95, 0.03), (0.4, 1.0)], [(0.38, 0.52), (0.9, 0.5)]],
    8: [_arc(0.5, 0.26, 0.33, 0.24, 0, 360), _arc(0.5, 0.73, 0.42, 0.26, 0, 360)],
    9: [_arc(0.45, 0.3, 0.38, 0.28, 0, 360), [(0.83, 0.25), (0.8, 1.0)]],
}
"""Continental European forms: a crossed 7 with a hook, a 1 with a long flag and a foot, an
open-top 4, a 9 with a straight stem."""

_ROUNDED: dict[int, list[Stroke]] = {
    0: [_arc(0.5, 0.5, 0.45, 0.5, -90, 280)],
    1: [[(0.56, 0.0), (0.44, 1.0)]],
    2: [
        [
            *_arc(0.5, 0.28, 0.42, 0.27, 190, 400),
            (0.12, 0.94),
            (0.24, 0.83),
            (0.3, 0.93),
            (0.2, 0.99),
            (0.95, 0.97),
        ]
    ],
    3: [[(0.1, 0.03), (0.85, 0.03), (0.4, 0.42)], _arc(0.45, 0.7, 0.45, 0.28, 260, 500)],
    4: [[(0.72, 1.0), (0.72, 0.0), (0.02, 0.68), (0.98, 0.68)]],
    5: [
        [(0.27, 0.0), (0.22, 0.45)],
        _arc(0.5, 0.7, 0.42, 0.28, 230, 490),
        [(0.27, 0.02), (0.9, 0.0)],
    ],
    6: [_bezier((0.8, 0.0), (0.1, 0.2), (0.12, 0.7)), _arc(0.48, 0.7, 0.36, 0.29, 180, 540)],
    7: [[(0.05, 0.05), (0.95, 0.05), *_bezier((0.95, 0.05), (0.55, 0.45), (0.45, 1.0))[1:]]],
    8: [_arc(0.55, 0.25, 0.3, 0.23, 0, 360), _arc(0.45, 0.73, 0.4, 0.26, 0, 360)],
    9: [_arc(0.5, 0.3, 0.4, 0.28, 0, 360), _bezier((0.9, 0.3), (0.92, 0.85), (0.45, 1.0))],
}
"""Another hand: a closed 4, a flat-topped 3, a looped 2, a curved 9, a plain 1 and 7."""

PEN_STYLES: tuple[Style, ...] = (Style("pen-european"), Style("pen-rounded"))
_SKELETONS = {"pen-european": _EUROPEAN, "pen-rounded": _ROUNDED}


class MissingFonts(RuntimeError):
    """No handwriting font is installed, so the cross-writer set cannot be drawn."""


@dataclass(frozen=True)
class WriterSample:
    data: bytes  # an encoded image file (JPEG or PNG)
    label: int
    style: str


@dataclass(frozen=True)
class WriterSet:
    """The labelled images, the styles drawn, and the font styles left out (not installed)."""

    samples: list[WriterSample]
    styles: tuple[str, ...]
    missing: tuple[str, ...]


def available_styles(
    fonts: Sequence[Style] = FONT_STYLES,
) -> tuple[list[Style], list[Style]]:
    """(styles that can be drawn here: the installed ``fonts`` then the pen styles, the
    ``fonts`` whose files are missing)."""
    present = [s for s in fonts if s.font_path() is not None]
    missing = [s for s in fonts if s.font_path() is None]
    return [*present, *PEN_STYLES], missing


def cross_writer_set(
    per_digit: int = PER_DIGIT, seed: int = CROSS_WRITER_SEED, fonts: Sequence[Style] = FONT_STYLES
) -> WriterSet:
    """``per_digit`` images of each digit, the styles taken in turn, each image drawn from its
    own random stream (seed, digit, index): the same seed gives the same bytes. Fonts missing
    here are left out and named in ``missing``; with no handwriting font at all the set would
    be our two pen styles and book faces, not other people's hands, so it raises."""
    styles, missing = available_styles(fonts)
    if not any(s.handwriting and not s.pen for s in styles):
        packages = " ".join(dict.fromkeys(s.package for s in fonts if s.handwriting))
        raise MissingFonts(
            "no handwriting font is installed for the cross-writer check; install the Debian "
            f"packages: apt-get install {packages}"
        )
    samples = []
    for digit in range(10):
        for i in range(per_digit):
            style = styles[(i + digit) % len(styles)]
            rng = np.random.default_rng([seed, digit, i])
            samples.append(WriterSample(render_writer_sample(digit, style, rng), digit, style.name))
    return WriterSet(
        samples,
        tuple(s.name for s in styles),
        tuple(f"{s.name} ({s.package}: {s.paths[0]})" for s in missing),
    )


def render_writer_sample(
    digit: int,
    style: Style,
    rng: np.random.Generator,
    *,
    glyph_px: int | None = None,
    side: int | None = None,
    resample: str | None = None,
    fmt: str | None = None,
) -> bytes:
    """One digit in ``style``, captured at low resolution, as an encoded image file.

    ``glyph_px`` forces the captured digit's height, ``side`` the enlarged image's shorter
    side, ``resample`` the enlargement ('nearest' or 'bilinear'), ``fmt`` 'JPEG' or 'PNG';
    anything left None is drawn from ``rng``.
    """
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0-9, not {digit}")
    px = glyph_px or int(rng.integers(GLYPH_PX[0], GLYPH_PX[1] + 1))
    # The pen's width as a share of the digit's height, and at least one captured pixel: a
    # thinner line is lost (or greyed to nothing) at 8-16 px, where people still read it.
    pen = max(rng.uniform(*PEN_SHARE), 1.0 / px)
    draw = _pen_glyph if style.pen else _font_glyph
    ink = _distort(draw(digit, style, rng, pen), rng, style.slant) * _pressure(rng)
    small = _capture(ink, rng, px)
    enlarged = _enlarge(small, rng, side, resample)
    return _encode(enlarged, rng, fmt)


# --------------------------------------------------------------------------------------------
# Drawing the glyph (ink coverage on a _WORK x _WORK canvas, about _HEIGHT px tall)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, _FONT_SIZE)


@lru_cache(maxsize=32)
def _font_stroke(path: str) -> float:
    """The font's own stroke width in px at _FONT_SIZE, over its ten digits: twice the ink
    area over the outline length, which is the width of a long thin stroke."""
    canvas = Image.new("L", (_WORK * 10, _WORK), 0)
    draw = ImageDraw.Draw(canvas)
    for d in range(10):
        draw.text((_WORK * (d + 0.5), _WORK / 2), str(d), font=_font(path), fill=255, anchor="mm")
    ink = np.asarray(canvas) > 127
    inner = ink[1:-1, 1:-1] & ink[:-2, 1:-1] & ink[2:, 1:-1] & ink[1:-1, :-2] & ink[1:-1, 2:]
    edge = int(ink.sum()) - int(inner.sum())
    return 2.0 * float(ink.sum()) / max(1, edge)


def _font_glyph(digit: int, style: Style, rng: np.random.Generator, pen: float) -> Image.Image:
    """The font's digit, its strokes widened to ``pen`` x its height (FreeType's stroker:
    round, like a pen) when the font's own are thinner; most hands write bolder than a
    font's regular weight, and every hand writes bolder than 1 px at 8 px tall."""
    path = style.font_path()
    if path is None:
        raise MissingFonts(f"{style.name}: install {style.package} ({style.paths[0]})")
    font = _font(path)
    _left, top, _right, bottom = font.getbbox(str(digit), anchor="mm")
    grow = max(0, round((pen * (bottom - top) - _font_stroke(path)) / 2))
    canvas = Image.new("L", (_WORK, _WORK), 0)
    ImageDraw.Draw(canvas).text(
        (_WORK / 2, _WORK / 2), str(digit), font=font, fill=255, anchor="mm", stroke_width=grow
    )
    return canvas


def _pen_glyph(digit: int, style: Style, rng: np.random.Generator, pen: float) -> Image.Image:
    """Strokes of a pen style, each slightly displaced (strokes rarely meet exactly), drawn
    with a round pen ``pen`` x the height wide, its width following the pressure."""
    height = _HEIGHT - pen * _HEIGHT
    width = height * rng.uniform(0.5, 0.75)
    x0, y0 = (_WORK - width) / 2, (_WORK - height) / 2
    canvas = Image.new("L", (_WORK, _WORK), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in _SKELETONS[style.name][digit]:
        dx, dy = rng.normal(0.0, 0.025, size=2)
        pts = [(x0 + (x + dx) * width, y0 + (y + dy) * height) for x, y in stroke]
        phase, wobble = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.3)
        for k, (a, b) in enumerate(itertools.pairwise(pts)):
            w = pen * _HEIGHT * (1.0 + wobble * math.sin(phase + 2.5 * k / len(pts)))
            _dot(draw, a, w)
            draw.line([a, b], fill=255, width=max(1, round(w)))
            _dot(draw, b, w)
    return canvas


def _dot(draw: ImageDraw.ImageDraw, at: Point, width: float) -> None:
    r = width / 2
    draw.ellipse((at[0] - r, at[1] - r, at[0] + r, at[1] + r), fill=255)


def _pressure(rng: np.random.Generator) -> NDArray[np.float32]:
    """Ink density varying smoothly over the glyph (pen pressure, a drying pen): 0.55-1."""
    coarse = rng.uniform(0.55, 1.0, size=(3, 3)).astype(np.float32)
    field = Image.fromarray(coarse).resize((_WORK, _WORK), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(field, dtype=np.float32), 0.5, 1.0)


def _distort(glyph: Image.Image, rng: np.random.Generator, lean: float) -> NDArray[np.float32]:
    """Slant (to a total lean within MAX_SLANT of upright, the face's ``lean`` included),
    rotation, width change, then a smooth random warp (a 4x4 mesh of jittered quads), so no
    two images of a style are the same glyph; returns coverage in [0, 1]."""
    slant = math.tan(math.radians(rng.uniform(-MAX_SLANT, MAX_SLANT) - lean))
    angle = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    squeeze = rng.uniform(0.8, 1.2)
    cos, sin = math.cos(angle), math.sin(angle)
    # Forward map (about the centre): rotate(shear(scale_x(p))); PIL wants the inverse.
    forward = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, -slant], [0.0, 1.0]])
    inverse = np.linalg.inv(forward @ np.diag([squeeze, 1.0]))
    c = _WORK / 2
    offset = np.array([c, c]) - inverse @ np.array([c, c])
    coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    img = glyph.transform((_WORK, _WORK), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    n, cell = 4, _WORK / 4
    shift = rng.normal(0.0, 0.035 * _WORK, size=(n + 1, n + 1, 2))
    shift[[0, -1], :, :] = 0.0  # the canvas edge stays put: nothing is pulled in from outside
    shift[:, [0, -1], :] = 0.0

    def corner(r: int, s: int) -> tuple[float, float]:
        return (s * cell + shift[r, s, 0], r * cell + shift[r, s, 1])

    mesh = [
        (
            (round(j * cell), round(i * cell), round((j + 1) * cell), round((i + 1) * cell)),
            (*corner(i, j), *corner(i + 1, j), *corner(i + 1, j + 1), *corner(i, j + 1)),
        )
        for i in range(n)
        for j in range(n)
    ]
    img = img.transform((_WORK, _WORK), Image.Transform.MESH, mesh, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Capture: small, on paper, noisy; then enlarged and saved
# --------------------------------------------------------------------------------------------


def _capture(ink: NDArray[np.float32], rng: np.random.Generator, glyph_px: int) -> Image.Image:
    """The glyph as a camera would record it ``glyph_px`` px tall: area-averaged (each pixel
    the ink share it covers), sometimes thresholded (a 1-bit or high-contrast capture), on
    paper with uneven light, in ink colour, with sensor noise, as an RGB image ~1.4-2.2x the
    glyph's size."""
    ys, xs = np.nonzero(ink > 0.05)
    if ys.size == 0:
        raise ValueError("the glyph came out empty")
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    gh = glyph_px
    gw = max(1, round(w * gh / h))
    small = Image.fromarray(crop).resize((gw, gh), Image.Resampling.BOX)
    cover = np.asarray(small, dtype=np.float32)
    cover = np.clip(cover / max(float(cover.max()), 1e-3), 0.0, 1.0)  # the darkest pixel is ink
    if rng.random() < 0.3:
        cover = (cover >= rng.uniform(0.3, 0.55)).astype(np.float32)
    pad = [round(gh * rng.uniform(0.2, 0.6)) for _ in range(4)]  # top, bottom, left, right
    field = np.zeros((gh + pad[0] + pad[1], gw + pad[2] + pad[3]), np.float32)
    field[pad[0] : pad[0] + gh, pad[2] : pad[2] + gw] = cover
    fh, fw = field.shape

    light = rng.random() < 0.1  # chalk or a light pen on a dark board
    if light:
        paper = rng.uniform(20, 70, size=3)
        ink_rgb = rng.uniform(180, 245) + rng.uniform(-10, 10, size=3)
    else:
        paper = rng.uniform(185, 250) + rng.uniform(-15, 5, size=3)
        if rng.random() < 0.6:
            ink_rgb = rng.uniform(5, 80) + rng.uniform(-8, 8, size=3)  # pencil, black pen
        else:
            ink_rgb = np.array([rng.uniform(10, 70), rng.uniform(20, 90), rng.uniform(100, 190)])
    gy, gx = np.mgrid[0:fh, 0:fw].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = ((gx / fw - 0.5) * math.cos(theta) + (gy / fh - 0.5) * math.sin(theta)) * rng.uniform(
        0.0, 0.3
    )
    a = field[:, :, None]
    rgb = (paper * (1.0 - a) + ink_rgb * a) * (1.0 - ramp)[:, :, None]
    rgb = rgb + rng.normal(0.0, rng.uniform(0.0, 12.0), size=rgb.shape)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def _enlarge(
    small: Image.Image, rng: np.random.Generator, side: int | None, resample: str | None
) -> Image.Image:
    """Enlarged so its shorter side is ``side`` px, the way viewers and exporters do it:
    nearest-neighbour (square blocks) or bilinear (blocks with soft edges)."""
    if resample is None:
        resample = "nearest" if rng.random() < 0.6 else "bilinear"
    methods = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}
    if resample not in methods:
        raise ValueError(f"resample must be 'nearest' or 'bilinear', not {resample!r}")
    target = side or int(rng.integers(SIDE_PX[0], SIDE_PX[1] + 1))
    scale = target / min(small.size)
    size = (max(1, round(small.width * scale)), max(1, round(small.height * scale)))
    return small.resize(size, methods[resample])


def _encode(img: Image.Image, rng: np.random.Generator, fmt: str | None) -> bytes:
    if fmt is None:
        fmt = "JPEG" if rng.random() < 0.65 else "PNG"
    fmt = fmt.upper()
    if fmt not in ("JPEG", "PNG"):
        raise ValueError(f"fmt must be 'JPEG' or 'PNG', not {fmt!r}")
    if rng.random() < 0.4:
        img = img.convert("L")
    out = io.BytesIO()
    if fmt == "JPEG":
        img.save(out, format="JPEG", quality=int(rng.integers(45, 96)))
    else:
        img.save(out, format="PNG")
    return out.getvalue()
