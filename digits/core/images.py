"""Turn an uploaded scan of one handwritten digit into the 28x28 tensor the classifier expects.

The classifier was trained on MNIST, so every input must look like MNIST: bright ink on a
black field, the digit fitted into a 20x20 box (aspect kept, anti-aliased) and its centre of
mass on the centre of the 28x28 field.  Real uploads are nothing like that (dark pen on paper,
any size, off-centre, uneven light, noise), and the naive "resize the whole photo" gives
near-chance accuracy, so this module re-does the MNIST recipe on each scan.

Everything here is pure (bytes or arrays in, arrays out): no file, network or model access, so
the same code serves the batch worker, the tests and the benchmark, and stays fast enough
(~1 ms per scan) for the throughput target on two cores.  Untrusted bytes can only ever raise
:class:`Rejected`, which callers record as a per-image outcome instead of failing a batch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFile
from scipy import ndimage

__all__ = [
    "ACCEPTED_FORMATS",
    "Digit",
    "Rejected",
    "decode_image",
    "find_digit",
    "image_to_digit",
    "image_to_tensor",
    "normalize_digit",
]

ACCEPTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF"})
"""PIL format names we decode; MPO (a JPEG with extra frames, from cameras) counts as JPEG."""

FloatImage = NDArray[np.float32]

MIN_SIDE = 8
"""Smaller than this cannot hold a legible digit and is almost surely an icon or a mistake."""

WORK_SIDE = 96
"""Shorter side (px) we analyse at.  The digit ends up 20 px tall, so ~2-4x that is plenty
for anti-aliasing, and working small is what keeps one scan under a millisecond.  Measured:
128 px gave no accuracy gain on synthetic scans (within 1-3 images of 4,200) for +15% time."""

WORK_MAX_PIXELS = 4 * WORK_SIDE * WORK_SIDE
"""Cap for very elongated images, whose shorter side alone would not bound the work."""

MIN_CONTRAST = 0.08
"""Ink must differ from paper by at least this much (in [0,1]) or the page counts as blank:
below it we would be amplifying paper texture and JPEG noise into a "digit"."""

NOISE_FACTOR = 4.0
"""...and by this many robust noise standard deviations, for the same reason on noisy scans."""

MIN_EXTENT = 0.04
"""The main ink mass must span this fraction of the shorter side (and ≥ 4 px): dust specks
and single noisy pixels don't, even a small handwritten digit does."""

THRESH_LO, THRESH_HI = 0.30, 0.65
"""Soft threshold ramp, as fractions of the ink contrast.  Below LO is paper (texture, noise,
halo), above HI is solid ink; MNIST's strokes are likewise saturated with a thin grey rim.
Applied at working resolution and then area-downsampled, this reproduces MNIST's own recipe
(binary NIST scans, anti-aliased to 20x20); wider or narrower ramps scored no better."""

FIT_FILTER = Image.Resampling.BILINEAR
"""Anti-aliasing filter for fitting the crop into 20x20 (Pillow widens it when shrinking).
It matched MNIST slightly better than LANCZOS, BOX or BICUBIC, and never rings."""

MIN_WORK_SIDE = 56
"""Smaller inputs are upscaled to at least this first; see ``_reduce_array``."""

UPSCALE_FILTER = Image.Resampling.BICUBIC

BOX_LEVEL = 0.0
"""Ink level (after the ramp) that counts for the bounding box: any, like MNIST's nonzero
pixels.  The main mass and blank detection use solid ink (> 0.5) instead, so that faint
noise cannot masquerade as a digit."""

MAX_PANELS = 3
"""How many nested panels (a photographed screen inside its bezel, a plot's axes inside its
figure, a box drawn round the digit) the digit finder steps into."""

PANEL_AREA = 0.2
"""A panel's box covers at least this share of the page..."""

PANEL_RECT = 0.85
"""...and, with its holes filled, at least this share of its own box: a rectangle (a filled
digit, even a bold 0 or 8, is rounder or sparser than that)."""

HOLE_FILL = 0.68
"""A round mark this full of its box (a hole punch, a blot) is not a stroke of a digit."""

RIVAL_SHARE = 0.4
"""A second mark with this share of the digit's ink, and as tall as half of it, standing apart
from it, makes the page ambiguous: the item is scored but flagged for review."""

REACH = 0.35
"""A mark this close to the digit (a share of its size) is part of it: the detached flag of a
5, a stroke broken by a small, blocky capture; further out it is a speck or another mark."""

BLOB_INK = 0.6
"""Ink filling this share of the 20x20 box is a blob (a smudge, a panel read as ink), not
strokes: MNIST's digits fill about a quarter of it, the boldest about half."""

GREY_SHARE = 0.72
"""Strokes are solid with a grey rim; when most of the mark is grey (a glare, a remnant of a
screen's edge, a smear) the finder found no clear stroke. Measured: 0.46 is typical of
scans, above 0.72 came 1 in 600 plain scans and a third of the misread screen photos."""

LINE_SPAN = 0.85
"""A row or column with solid ink along this share of the page, reaching both ends, is a
ruled line or a frame's side, not a stroke: a digit does not fill a row of its page like
that (the foot of a 1 or the bar of a 7 in a tight crop reaches 60-70 %)."""

_REFUSED_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"8BPS", "PSD"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
)


class Rejected(ValueError):
    """An image refused with a short machine-friendly reason, e.g. ``Rejected('blank')``.

    A subclass of ValueError so generic "bad input" handlers still catch it, but distinct so
    callers can record the reason per image rather than treat it as a worker fault.
    """

    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> FloatImage:
    """Decode untrusted image bytes to a 2-D float32 grayscale array in [0, 1] (0 = black).

    The original polarity and full resolution are kept (callers may want to show the scan);
    :func:`image_to_tensor` uses a reduced-resolution decode internally for speed.
    """
    return _decode(data, max_pixels, None)


def image_to_tensor(data: bytes, max_pixels: int = 40_000_000) -> FloatImage:
    """Decode and normalise one scan into the (28, 28, 1) float32 tensor the model takes.

    Equivalent to ``normalize_digit(decode_image(data))`` but decodes big images at reduced
    size (JPEG DCT scaling, then a C box resize) since only ~WORK_SIDE px are analysed.
    """
    return image_to_digit(data, max_pixels).tensor


def image_to_digit(data: bytes, max_pixels: int = 40_000_000) -> Digit:
    """``image_to_tensor`` with the finder's doubt (see :func:`find_digit`): what the inbox,
    folders, uploads and the draw page call, so a page with two digit-sized marks is flagged
    for review with its reason instead of scored with false confidence."""
    return find_digit(_decode(data, max_pixels, WORK_SIDE))


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _sniff_refused(data: bytes) -> str | None:
    """Name well-known non-raster formats ourselves: Pillow would either not recognise them
    (PDF, SVG: a vague "not an image") or start interpreting them (EPS needs Ghostscript)."""
    for magic, name in _REFUSED_SIGNATURES:
        if data.startswith(magic):
            return name
    head = data[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def _open_accepted(fp: IO[bytes], prefix: bytes) -> ImageFile.ImageFile | None:
    """Open with the accepted plugins only, bypassing ``Image.open``'s own bomb check.

    Pillow raises DecompressionBombError before we ever see the declared size; calling the
    plugin factories directly lets us apply *our* limit and report "WxH" instead.  The
    factories only parse headers, so nothing big is allocated here.
    """
    Image.preinit()
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"):
        entry = Image.OPEN.get(fmt)
        if entry is None:
            Image.init()
            entry = Image.OPEN.get(fmt)
            if entry is None:
                continue
        factory, accept = entry
        verdict = accept(prefix) if accept else True
        if verdict and not isinstance(verdict, str):
            fp.seek(0)
            return factory(fp, "")
    return None


def _open(data: bytes) -> ImageFile.ImageFile:
    if not data:
        raise Rejected("empty file")
    refused = _sniff_refused(data)
    if refused is not None:
        raise Rejected(f"format {refused} not accepted")
    fp = io.BytesIO(data)
    try:
        img = _open_accepted(fp, data[:16])
    except Exception as exc:
        raise Rejected(f"truncated or corrupt image: {_short_error(exc)}") from None
    if img is not None:
        return img
    # Not one of ours: ask Pillow what it is, purely to give a clear reason.
    try:
        other = Image.open(io.BytesIO(data))
        name = other.format or "unknown"
        other.close()
    except Image.DecompressionBombError:
        name = "unknown"
    except Exception:
        raise Rejected("not an image") from None
    raise Rejected(f"format {name} not accepted")


def _check_header(img: ImageFile.ImageFile, max_pixels: int) -> None:
    """Refuse on declared properties only, before any pixel data is decoded."""
    fmt = img.format or "unknown"
    if fmt == "MPO":
        fmt = "JPEG"
    if fmt not in ACCEPTED_FORMATS:
        raise Rejected(f"format {fmt} not accepted")
    w, h = img.size
    if w * h > max_pixels:
        raise Rejected(f"image too large: {w}x{h} pixels")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise Rejected(f"image too small: {w}x{h} pixels")
    if img.format != "MPO":  # MPO's extra frames are previews/stereo views of the same shot
        frames = int(getattr(img, "n_frames", 1) or 1)
        if frames > 1:
            raise Rejected(f"multi-frame image ({frames} frames)")
        img.seek(0)


def _work_size(w: int, h: int, work_side: int) -> tuple[int, int] | None:
    """Size to analyse a w x h image at, or None when it is already about that small."""
    scale = min(work_side / min(w, h), (WORK_MAX_PIXELS / (w * h)) ** 0.5)
    if scale >= 0.75:  # resampling would cost about as much as it saves
        return None
    return max(1, round(w * scale)), max(1, round(h * scale))


def _decode(data: bytes, max_pixels: int, work_side: int | None) -> FloatImage:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Rejected("not an image")
    data = bytes(data)
    with warnings.catch_warnings():
        # Our own size check replaces Pillow's bomb warning; corrupt-EXIF and similar
        # warnings are noise for untrusted uploads.
        warnings.simplefilter("ignore")
        img = _open(data)
        try:
            _check_header(img, max_pixels)
            return _load_gray(img, work_side)
        except Rejected:
            raise
        except Image.DecompressionBombError:
            w, h = img.size
            raise Rejected(f"image too large: {w}x{h} pixels") from None
        except MemoryError:
            raise Rejected("image too large to decode") from None
        except Exception as exc:
            raise Rejected(f"truncated or corrupt image: {_short_error(exc)}") from None
        finally:
            img.close()


def _load_gray(img: ImageFile.ImageFile, work_side: int | None) -> FloatImage:
    if work_side is not None and img.format in ("JPEG", "MPO"):
        # DCT-domain downscaling (1/2, 1/4, 1/8) while decoding: by far the cheapest
        # way to shrink a JPEG, and luma-only decoding skips colour conversion too.
        target = _work_size(img.width, img.height, work_side)
        if target is not None:
            img.draft("L", target)
    img.load()
    orientation = _orientation(img)
    im: Image.Image = img
    target = None if work_side is None else _work_size(im.width, im.height, work_side)
    if target is not None:
        if im.mode in ("1", "P", "PA", "CMYK"):
            im = _to_basic_mode(im)
        if im.mode in ("L", "RGB", "RGBA", "LA"):
            im = im.resize(target, Image.Resampling.BOX)
        else:
            im = Image.fromarray(_to_float_gray(im)).resize(target, Image.Resampling.BOX)
    method = _EXIF_TRANSPOSE.get(orientation)
    if method is not None:
        im = im.transpose(method)
    return _to_float_gray(im)


_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""The same mapping as ``ImageOps.exif_transpose``; applied by hand because we reduce the
image first (cheaper to rotate small) and a reduced copy no longer carries TIFF tags."""


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1 = upright); a broken tag must not cost us an otherwise fine scan."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if isinstance(value, int) else 1
    except Exception:
        return 1


def _to_basic_mode(im: Image.Image) -> Image.Image:
    """Palette/bilevel/CMYK → L, LA or RGBA, keeping any transparency as a real alpha."""
    if im.mode in ("P", "PA"):
        has_alpha = im.mode == "PA" or "transparency" in im.info
        return im.convert("RGBA" if has_alpha else "RGB")
    if im.mode == "1":
        return im.convert("L")
    return im.convert("RGB")


def _to_float_gray(im: Image.Image) -> FloatImage:
    """Any Pillow mode → float32 luminance in [0, 1], alpha flattened."""
    mode = im.mode
    if mode in ("P", "PA", "1", "CMYK"):
        im = _to_basic_mode(im)
    elif mode in ("La", "RGBa", "RGBX", "YCbCr", "HSV", "LAB"):
        try:
            im = im.convert({"La": "LA", "RGBa": "RGBA"}.get(mode, "RGB"))
        except ValueError:
            raise Rejected(f"unsupported image mode {mode}") from None
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.float32) * np.float32(1 / 255)
    if mode == "RGB":
        return np.asarray(im.convert("L"), dtype=np.float32) * np.float32(1 / 255)
    if mode in ("LA", "RGBA"):
        lum = np.asarray(im.convert("L"), dtype=np.float32) * np.float32(1 / 255)
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) * np.float32(1 / 255)
        return _flatten_alpha(lum, alpha)
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float32)
        return arr * np.float32(1 / 65535)
    if mode in ("I", "F"):
        return _scale_wide(np.asarray(im, dtype=np.float64))
    raise Rejected(f"unsupported image mode {mode}")


def _scale_wide(arr: NDArray[np.float64]) -> FloatImage:
    """Map 32-bit int/float pixels to [0, 1] by the range they evidently use.

    'I' images usually hold 16-bit data (Pillow opens many 16-bit files as 'I'); 'F' images
    are usually already in [0, 1].  Anything else is min-max scaled, which is harmless here
    because normalize_digit only cares about relative contrast.
    """
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        out = arr
    elif lo >= 0.0 and hi <= 255.0 and np.all(arr == np.round(arr)):
        out = arr / 255.0
    elif lo >= 0.0 and hi <= 65535.0:
        out = arr / 65535.0
    elif hi > lo:
        out = (arr - lo) / (hi - lo)
    else:
        out = np.zeros_like(arr)
    return np.ascontiguousarray(out, dtype=np.float32)


def _flatten_alpha(lum: FloatImage, alpha: FloatImage) -> FloatImage:
    """Composite onto the backdrop that keeps the visible content readable.

    Transparent pixels carry arbitrary colour (often black), so we must composite.  A cut-out
    of dark ink belongs on white paper; a cut-out of light (chalk-like) ink would vanish on
    white, so when the visible content is light we composite onto black instead.
    """
    total = float(alpha.sum())
    if total <= 0.0:
        return np.ones_like(lum)
    visible_mean = float((lum * alpha).sum()) / total
    backdrop = np.float32(0.0 if visible_mean > 0.5 else 1.0)
    return np.asarray(lum * alpha + backdrop * (np.float32(1.0) - alpha), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Normalisation (the MNIST recipe)
# --------------------------------------------------------------------------------------------


def normalize_digit(gray: NDArray[Any]) -> FloatImage:
    """Map a grayscale scan (any size, any polarity) to MNIST's 28x28 float32 format.

    Steps, each there because real scans break the naive approach (which scores near chance):
    resample to ~WORK_SIDE px (speed); model the paper's uneven lighting from the border and
    take polarity from which side of it the ink lies; subtract the paper and scale by the ink
    contrast; soft threshold (removes texture and noise, saturates strokes like MNIST); crop
    to the digit the finder picks out (``find_digit``: panels, rules, fragments); fit into
    20x20 with anti-aliasing; put the centre of mass on the field centre.  No deskewing:
    measured, it cost accuracy (the classifier learnt MNIST's natural slant).  Raises
    ``Rejected('blank')`` when there is no ink.
    """
    return find_digit(gray).tensor[:, :, 0]


@dataclass(frozen=True)
class Digit:
    """One scan's 28x28 tensor and, when the page left doubt, why it should be reviewed."""

    tensor: FloatImage
    doubt: str | None = None


def find_digit(gray: NDArray[Any]) -> Digit:
    """``normalize_digit`` with its doubt: the digit found on the page, and a reason to have a
    person look at it when the page held more than one digit-sized mark."""
    g = np.asarray(gray)
    if g.ndim == 3 and g.shape[2] == 1:
        g = g[:, :, 0]
    if g.ndim != 2 or g.shape[0] < 1 or g.shape[1] < 1:
        raise Rejected(f"expected a 2-D grayscale image, got shape {g.shape}")
    g = np.nan_to_num(np.asarray(g, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    g = _reduce_array(g)
    levels = [_ink_map(g)]
    for _ in range(MAX_PANELS):
        inner = _panel(levels[-1])
        if inner is None:
            break
        r0, r1, c0, c1 = inner
        g = g[r0:r1, c0:c1]
        levels.append(_ink_map(g))
    found = _digit_mask(levels[-1], framed=len(levels) > 1)
    if found is None:
        raise Rejected("no digit inside the frame" if len(levels) > 1 else "blank")
    crop, doubt = found
    tensor = _fit_and_centre(crop)
    if doubt is None and float(tensor.sum()) >= BLOB_INK * 400:
        doubt = "no clear digit: the mark found is a solid blob"
    inked = int((tensor > 0.2).sum())
    if doubt is None and int((tensor > 0.2).sum() - (tensor >= 0.8).sum()) > GREY_SHARE * inked:
        doubt = "no clear digit: the mark found is faint or smeared"
    return Digit(tensor[:, :, None], doubt)


def _reduce_array(g: FloatImage) -> FloatImage:
    """Bring an array to working resolution (see WORK_SIDE), upscaling tiny ones.

    Tiny inputs (an MNIST-sized crop) are thresholded on a finer grid, as big scans are, so
    the ramp does not thicken their 1-2 px anti-aliased edges: measured on MNIST itself,
    this keeps a 28x28 digit's accuracy at the clean level instead of 0.2 points below.
    """
    h, w = g.shape
    if min(h, w) < MIN_WORK_SIDE:
        k = -(-MIN_WORK_SIDE // min(h, w))
        k = min(k, int((WORK_MAX_PIXELS / (h * w)) ** 0.5))
        if k >= 2:
            big = Image.fromarray(np.ascontiguousarray(g)).resize((w * k, h * k), UPSCALE_FILTER)
            return np.asarray(big, dtype=np.float32)
    target = _work_size(w, h, WORK_SIDE)
    if target is None:
        return np.ascontiguousarray(g)
    small = Image.fromarray(np.ascontiguousarray(g)).resize(target, Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32)


def _paper_surface(g: FloatImage) -> tuple[FloatImage, float]:
    """Paper brightness everywhere, fitted to the image border, plus the paper noise level.

    The border of a scan is paper (people leave margins), whatever the polarity and however
    thick the strokes, so a quadratic surface fitted to it (robustly, in case the digit
    touches an edge) models the lighting gradient and vignetting without being pulled by
    ink.  Statistics taken over the whole image were, in measurement, fooled by big bold
    digits that cover most of some regions.
    """
    h, w = g.shape
    ry, rx, design, yn, xn, cross = _ring_geometry(h, w)
    values = g[ry, rx].astype(np.float64)
    if design is None:
        level = _median(values)
        sigma = 1.4826 * _median(np.abs(values - level))
        return np.full((h, w), level, np.float32), sigma
    coef = np.zeros(6)
    coef[0] = _median(values)
    resid = values - coef[0]
    keep = np.ones(values.size, bool)
    for _ in range(3):
        keep = np.abs(resid) <= max(3.0 * 1.4826 * _median(np.abs(resid[keep])), 0.02)
        if keep.sum() < 12:
            break
        # Normal equations on a 6x6 system: LAPACK's lstsq spins up BLAS threads, which
        # made this 10x slower on a busy 2-core worker.
        a = design[keep]
        normal = a.T @ a + np.eye(6) * 1e-9
        try:
            coef = np.linalg.solve(normal, a.T @ values[keep])
        except np.linalg.LinAlgError:
            break
        resid = values - design @ coef
    sigma = 1.4826 * _median(np.abs(resid[keep])) if keep.any() else 0.0
    c0, c1, c2, c3, c4, c5 = (float(c) for c in coef)
    rows = (c0 + c2 * yn + c4 * yn * yn).astype(np.float32)
    cols = (c1 * xn + c3 * xn * xn).astype(np.float32)
    surface = cross * np.float32(c5)
    surface += rows[:, None]
    surface += cols[None, :]
    return surface, sigma


@lru_cache(maxsize=64)
def _ring_geometry(h: int, w: int) -> tuple[Any, ...]:
    """Border sample positions and the quadratic's design matrix for an h x w image.

    Cached because a batch's scans mostly share a few sizes and this is a third of the
    fitting cost.  ~80 samples per side are plenty for six coefficients.
    """
    band = max(1, round(0.03 * min(h, w)))
    sy, sx = max(1, h // 80), max(1, w // 80)
    xs_full = np.arange(0, w, sx)
    ys_mid = np.arange(band, h - band, sy)
    spans = [
        (np.arange(band), xs_full),
        (np.arange(h - band, h), xs_full),
        (ys_mid, np.arange(band)),
        (ys_mid, np.arange(w - band, w)),
    ]
    ry = np.concatenate([np.repeat(py, len(px)) for py, px in spans])
    rx = np.concatenate([np.tile(px, len(py)) for py, px in spans])
    step = max(1, ry.size // 320)
    ry, rx = ry[::step], rx[::step]
    if min(h, w) < 24:
        return ry, rx, None, None, None, None
    yn = (np.arange(h) - (h - 1) / 2) / ((h - 1) / 2)
    xn = (np.arange(w) - (w - 1) / 2) / ((w - 1) / 2)
    y, x = yn[ry], xn[rx]
    design = np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1)
    cross = np.outer(yn, xn).astype(np.float32)
    for arr in (ry, rx, design, yn, xn, cross):
        arr.flags.writeable = False
    return ry, rx, design, yn, xn, cross


def _median(values: NDArray[Any]) -> float:
    """Lower median via partition: np.median's overhead dominates on these small arrays."""
    flat = values.ravel()
    if flat.size == 0:
        return 0.0
    k = (flat.size - 1) // 2
    return float(np.partition(flat, k)[k])


def _local_correction(x: FloatImage, tol: float) -> FloatImage:
    """Residual paper level per ~24 px cell (ink-bright space), for lighting the quadratic
    misses.  Cells sitting above the paper by more than ``tol`` are ink-dominated (a thick
    stroke), not lighting, and get no correction, so strokes are never erased."""
    h, w = x.shape
    ny, nx = max(1, min(8, h // 24)), max(1, min(8, w // 24))
    if ny * nx < 4:
        return np.zeros_like(x)
    ch, cw = h // ny, w // nx
    oy, ox = (h - ny * ch) // 2, (w - nx * cw) // 2
    cells = x[oy : oy + ny * ch, ox : ox + nx * cw].reshape(ny, ch, nx, cw)
    flat = cells.transpose(0, 2, 1, 3).reshape(ny, nx, ch * cw)
    k = (ch * cw - 1) // 4
    grid = np.partition(flat, k, axis=-1)[..., k]
    grid = np.where(grid > tol, 0.0, grid).astype(np.float32)
    up = Image.fromarray(np.ascontiguousarray(grid)).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def _blur3(x: FloatImage) -> FloatImage:
    """3x3 binomial blur: halves pixel noise before thresholding at negligible cost."""
    p = np.pad(x, 1, mode="edge")
    v = p[:-2] * 0.25 + p[1:-1] * 0.5 + p[2:] * 0.25
    return np.asarray(v[:, :-2] * 0.25 + v[:, 1:-1] * 0.5 + v[:, 2:] * 0.25, dtype=np.float32)


def _ink_map(g: FloatImage) -> FloatImage:
    """Ink coverage in [0, 1] (ink bright), or an all-zero map when there is no real ink."""
    surface, sigma = _paper_surface(g)
    resid = g - surface
    # Polarity: paper noise is symmetric around the surface, ink is a one-sided tail.
    tail = 3.0 * sigma + 0.03
    sub = resid[::2, ::2] if resid.size > 4096 else resid  # plenty to tell the sign
    dark_mass = float(np.maximum(-sub - tail, 0.0).sum())
    light_mass = float(np.maximum(sub - tail, 0.0).sum())
    x = -resid if dark_mass > light_mass else resid
    x = x - _local_correction(x, max(0.04, 3.0 * sigma))
    x = _blur3(x)

    # Ink contrast: a high quantile of the image, or of the clearly-above-noise pixels when
    # the digit is too small to reach that quantile (a 10 px digit in a big page).
    flat = x.ravel()
    kth = int(0.995 * (flat.size - 1))
    contrast = float(np.partition(flat, kth)[kth])
    strong = flat[flat > max(0.5 * MIN_CONTRAST, 3.0 * sigma)]
    if strong.size >= 6:
        kth = int(0.9 * (strong.size - 1))
        contrast = max(contrast, float(np.partition(strong, kth)[kth]))
    if contrast < max(MIN_CONTRAST, NOISE_FACTOR * sigma):
        return np.zeros_like(x)
    lo = THRESH_LO * contrast
    hi = THRESH_HI * contrast
    return np.clip((x - lo) * np.float32(1.0 / (hi - lo)), 0.0, 1.0).astype(np.float32)


def _panel(ink: FloatImage) -> tuple[int, int, int, int] | None:
    """The inside of a rectangle that holds the page's content, or None.

    Polarity and paper are read from the page's border, which is right for a sheet but not
    for what sits inside another frame: a plot's black axes on a white figure (the origin's
    own test picture), a screen in its bezel, a sheet on a dark table, a box drawn round the
    digit. Each of those shows up as one big rectangular "ink" mark; the digit finder steps
    inside it and reads the paper again there, from that rectangle's own border.
    """
    h, w = ink.shape
    labels, count = ndimage.label(ink > 0.5, structure=_EIGHT)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    boxes = ndimage.find_objects(labels)
    for biggest in (np.argsort(-sizes)[:2] + 1).tolist():
        inner = _inside(labels, biggest, boxes[biggest - 1], h * w)
        if inner is not None:
            return inner
    return None


def _inside(
    labels: NDArray[np.integer[Any]], mark: int, where: tuple[slice, slice] | None, page: int
) -> tuple[int, int, int, int] | None:
    """The inside of mark ``mark`` if it is a panel: a big rectangle, or a drawn box (an
    outline) round other ink."""
    if where is None:
        return None
    rows, cols = where
    bh, bw = rows.stop - rows.start, cols.stop - cols.start
    if min(bh, bw) < 12:
        return None
    solid = labels[where] == mark
    # a rectangle has ink along each side of its box (give or take a tilt); a digit touches
    # its box at a few points: checked first, it spares most scans the hole filling
    k = max(3, round(0.06 * min(bh, bw)))
    sides = (solid[:k].any(axis=0), solid[-k:].any(axis=0), solid[:, :k].any(axis=1))
    if min(float(side.mean()) for side in (*sides, solid[:, -k:].any(axis=1))) < 0.5:
        return None
    filled = ndimage.binary_fill_holes(solid)
    if float(filled.mean()) < PANEL_RECT:
        return None
    outline = solid.sum() < 0.5 * filled.sum()
    if not outline and not _holds_strokes(filled & (labels[where] == 0), bw):
        return None  # a solid mark with a round counter: a bold 0 (or 6, 8, 9), not a panel
    if bh * bw < PANEL_AREA * page:
        # small: only a drawn box with something written inside it counts
        enclosed = filled & ~solid & (labels[where] > 0)
        if not outline or enclosed.sum() < 0.15 * solid.sum():
            return None
    inset = max(1, round(0.03 * min(bh, bw)))
    if outline:
        # an outline (a drawn box): step over its line, as thick as the first run of ink met
        # from each side on a few rows and columns through the middle
        inset += max(
            _edge_run(line)
            for line in (
                *(solid[bh * k // 4, :] for k in (1, 2, 3)),
                *(solid[:, bw * k // 4] for k in (1, 2, 3)),
            )
        )
    r0, r1 = rows.start + inset, rows.stop - inset
    c0, c1 = cols.start + inset, cols.stop - inset
    if min(r1 - r0, c1 - c0) < 10:
        return None
    return r0, r1, c0, c1


def _holds_strokes(holes: NDArray[np.bool_], width: int) -> bool:
    """Whether a solid panel's biggest hole is a digit's strokes (thin, or spread out) rather
    than the round counter of a bold 0, 6, 8 or 9: a plot or a screen shows its digit as a
    hole in the panel, and a hole covering more than half its box is a blob, not strokes,
    unless it is as narrow as a 1."""
    labels, count = ndimage.label(holes, structure=_EIGHT)
    if count == 0:
        return False
    sizes = np.bincount(labels.ravel())[1:]
    where = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    if where is None:
        return False
    hh, hw = where[0].stop - where[0].start, where[1].stop - where[1].start
    return bool(sizes.max() < 0.55 * hh * hw or hw <= 0.25 * width)


def _edge_run(line: NDArray[np.bool_]) -> int:
    """How far in from either end of a line the first run of ink ends (the larger of the two):
    a frame's side, met after any paper between the box's corner and the tilted line."""
    deepest = 0
    for seq in (line, line[::-1]):
        ink = np.flatnonzero(seq)
        if ink.size == 0:
            continue
        after = np.flatnonzero(~seq[ink[0] :])
        end = int(ink[0] + (after[0] if after.size else seq.size - ink[0]))
        if end < seq.size // 3:  # a side, not a stroke reaching the middle
            deepest = max(deepest, end)
    return deepest


_EIGHT = np.ones((3, 3), bool)


def _digit_mask(ink: FloatImage, framed: bool = False) -> tuple[FloatImage, str | None] | None:
    """Which ink is the digit: its crop of ``ink`` (other marks erased) and a doubt.

    Connected marks of solid ink are judged one by one: ruled lines and a frame's sides (rows
    or columns of ink across the page) are erased first, keeping any stroke that crosses them;
    then marks that touch the page's edge (a neighbour's fragment, a shadow, a cut frame) and
    round solid blots (hole punches) are set aside while anything else remains; the digit is
    the heaviest remaining mark plus the marks near it (the detached flag of a 5, a broken
    stroke); specks and far marks are dropped. A second mark that could itself be a digit
    leaves the item in doubt. None for a page with no ink.

    ``framed``: ``ink`` is the inside of a panel (a drawn box, a plot's axes), whose edge is
    the frame's line, not the page's: a digit written close to the line (a 7's bar just under
    the box's top) touches it once the finder has stepped over the line. Such a mark is not
    the digit on its own, but it joins the digit when near it, unless it is thin along the
    edge (what is left of the frame's line).
    """
    h, w = ink.shape
    solid = ink > 0.5
    if not solid.any():
        return None
    solid = _erase_lines(solid)
    # a stroke broken by a pale pixel or two (a small, blocky capture) is still one mark:
    # marks are found on the ink grown by a pixel, then keep only their own pixels
    labels, count = ndimage.label(_grow(solid), structure=_EIGHT)
    if count == 0:
        return None
    labels[~solid] = 0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.float64)
    # marks under 4 % of the heaviest can never join the digit nor rival it: judged as specks
    # without a look (a noisy page has hundreds, and this loop is per mark)
    sizes[sizes < 0.04 * sizes.max()] = 0.0
    boxes = ndimage.find_objects(labels)
    edge = np.zeros(count, bool)
    inner_edge = np.zeros(count, bool)  # framed: set aside as the digit, may join it
    blot = np.zeros(count, bool)
    for i, where in enumerate(boxes):
        if where is None or sizes[i] == 0.0:
            continue
        rows, cols = where
        bh, bw = rows.stop - rows.start, cols.stop - cols.start
        # within 2 px: blur and JPEG make the outermost pixels of a cut stroke pale
        touches = rows.start <= 2 or cols.start <= 2 or rows.stop >= h - 2 or cols.stop >= w - 2
        # at the edge and off-centre (a neighbour's fragment, a shadow, a punch hole), or
        # round the whole page (what is left of a frame): not the digit, which sits in the
        # middle even when a tight crop makes it touch the edge
        cy, cx = (rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2
        off_centre = not (h / 4 <= cy <= 3 * h / 4 and w / 4 <= cx <= 3 * w / 4)
        round_page = bh >= 0.8 * h and bw >= 0.8 * w and sizes[i] < 0.3 * bh * bw
        edge[i] = touches and (off_centre or round_page)
        inner_edge[i] = framed and edge[i] and not round_page and min(bh, bw) >= max(bh, bw) / 8
        round_ = 0.6 <= bh / bw <= 1.6 if bw else False
        blot[i] = round_ and sizes[i] >= HOLE_FILL * bh * bw and sizes[i] >= 12
    weight = sizes.copy()
    keep = ~edge & ~blot
    if not keep.any() or weight[keep].max() < 0.1 * weight.max():
        keep = ~blot if (~blot).any() else np.ones(count, bool)
    near_only = blot & keep.any()  # a blot joins the digit only if it (nearly) touches it
    joins_only = inner_edge & ~keep & keep.any()
    weight[~keep & ~near_only & ~joins_only] = 0.0
    main = int(np.argmax(np.where(near_only | joins_only, 0.0, weight)))
    r0, r1 = boxes[main][0].start, boxes[main][0].stop
    c0, c1 = boxes[main][1].start, boxes[main][1].stop
    chosen = {main}
    doubt: str | None = None
    # grow the digit by nearby marks, heaviest first
    marks = np.flatnonzero(weight > 0.0)
    for i in marks[np.argsort(-weight[marks])].tolist():
        if i == main or weight[i] <= 0.0 or weight[i] < 0.04 * sizes[main]:
            continue
        rows, cols = boxes[i]
        extent = max(r1 - r0, c1 - c0)
        gap = max(rows.start - r1, r0 - rows.stop, cols.start - c1, c0 - cols.stop, 0)
        if gap <= (1.0 if near_only[i] else max(2.0, REACH * extent)):
            chosen.add(i)
            r0, r1 = min(r0, rows.start), max(r1, rows.stop)
            c0, c1 = min(c0, cols.start), max(c1, cols.stop)
        elif _rival(weight[i], sizes[main], rows, cols, r1 - r0) and not blot[i]:
            doubt = "several digit-sized marks on the page"
    if max(r1 - r0, c1 - c0) < max(4, MIN_EXTENT * min(h, w)):
        return None  # dust: even a small handwritten digit spans more
    # widen to the strokes' soft rim, so its anti-aliasing is scaled in, not cut off; other
    # marks reaching into the box are erased with their rim
    r0, c0, r1, c1 = max(0, r0 - 2), max(0, c0 - 2), min(h, r1 + 2), min(w, c1 + 2)
    crop = ink[r0:r1, c0:c1].copy()
    near = labels[r0:r1, c0:c1]
    other = (near > 0) & ~np.isin(near, np.fromiter(chosen, int) + 1)
    if other.any():
        crop[_grow(other, 2)] = 0.0
    rim = crop > BOX_LEVEL
    ys, xs = np.flatnonzero(rim.any(axis=1)), np.flatnonzero(rim.any(axis=0))
    if ys.size == 0:
        return None
    return crop[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1], doubt


def _rival(weight: float, main: float, rows: slice, cols: slice, height: int) -> bool:
    """A mark standing apart that could be a digit too: heavy (RIVAL_SHARE of the digit's
    ink), at least half as tall, and not a piece of a rule (thinner than an eighth of its
    length)."""
    bh, bw = rows.stop - rows.start, cols.stop - cols.start
    return weight >= RIVAL_SHARE * main and bh >= 0.5 * height and min(bh, bw) >= max(bh, bw) / 8


def _grow(mask: NDArray[np.bool_], steps: int = 1) -> NDArray[np.bool_]:
    """``mask`` grown by ``steps`` pixels in all eight directions (shifted ORs: a fraction of
    scipy's general morphology's cost on these small arrays)."""
    for _ in range(steps):
        tall = mask.copy()
        tall[1:] |= mask[:-1]
        tall[:-1] |= mask[1:]
        mask = tall.copy()
        mask[:, 1:] |= tall[:, :-1]
        mask[:, :-1] |= tall[:, 1:]
    return mask


def _erase_lines(solid: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Remove rows and columns of ink that run across the page (ruled or squared paper, a
    table's rules, a frame's sides), keeping a stroke that crosses them: a line's pixel stays
    only where there is ink just above and below it (or left and right)."""
    h, w = solid.shape
    out = solid
    for axis, span in ((1, w), (0, h)):
        share = solid.sum(axis=axis) / span
        end = max(1, span // 20)
        lines = np.flatnonzero(
            (share >= LINE_SPAN)
            & (solid[:, :end] if axis == 1 else solid[:end, :]).any(axis=axis)
            & (solid[:, -end:] if axis == 1 else solid[-end:, :]).any(axis=axis)
        )
        if lines.size == 0 or lines.size > 0.5 * solid.shape[1 - axis]:
            continue
        if out is solid:
            out = solid.copy()
        view = out if axis == 1 else out.T
        thin = max(2, round(0.035 * view.shape[0]))
        for start, stop in _runs(lines):
            if stop - start > thin:  # a stroke in a tight crop (a 2's base), not a rule
                continue
            before = view[start - 1] if start > 0 else np.zeros(view.shape[1], bool)
            after = view[stop] if stop < view.shape[0] else np.zeros(view.shape[1], bool)
            view[start:stop] = (before & after)[None, :]
    return out


def _runs(index: NDArray[np.intp]) -> list[tuple[int, int]]:
    """Consecutive runs in a sorted index array, as (start, stop) pairs."""
    breaks = np.flatnonzero(np.diff(index) > 1)
    starts = np.concatenate(([index[0]], index[breaks + 1]))
    stops = np.concatenate((index[breaks], [index[-1]])) + 1
    return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def _fit_and_centre(crop: FloatImage) -> FloatImage:
    """Fit into 20x20 keeping aspect (anti-aliased), then integer-shift so the centre of
    mass lands on pixel (14, 14): exactly what MNIST did (its mean CoM is 14.0, 14.0)."""
    ch, cw = crop.shape
    scale = 20.0 / max(ch, cw)
    nh = min(20, max(1, round(ch * scale)))
    nw = min(20, max(1, round(cw * scale)))
    if (nh, nw) == (ch, cw):
        glyph = crop
    else:
        resized = Image.fromarray(np.ascontiguousarray(crop)).resize((nw, nh), FIT_FILTER)
        glyph = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    mass = float(glyph.sum())
    if mass <= 0.0:
        raise Rejected("blank")
    cy = float((glyph.sum(axis=1) * np.arange(nh)).sum()) / mass
    cx = float((glyph.sum(axis=0) * np.arange(nw)).sum()) / mass
    oy = min(max(round(14.0 - cy), 0), 28 - nh)
    ox = min(max(round(14.0 - cx), 0), 28 - nw)
    out = np.zeros((28, 28), np.float32)
    out[oy : oy + nh, ox : ox + nw] = glyph
    return out
