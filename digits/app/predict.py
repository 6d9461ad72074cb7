"""One image in, one answer out: what the draw page, ``POST /api/predict`` and
``digits bench --draw`` run.

The very same path as a scan dropped into the inbox: the bytes are decoded and normalised by
``digits.core.images.image_to_digit`` (what worker/chunks.py ``read_images`` calls, with the
same ``DIGITS_MAX_IMAGE_PIXELS``), scored by the production model through
``model_store.inference`` (hash-verified safe loading, traced as the worker's warm-up does)
and shaped by ``worker.results.shape`` (temperature-calibrated confidence, ``needs_review``
below ``DIGITS_CONFIDENCE_THRESHOLD``).

The model is loaded once per process, on the first prediction (a page that only reads never
imports TensorFlow), and the version is looked up on every prediction with one cheap read of
the production alias: when the alias moves, the next prediction loads the new version.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from digits.core.images import Rejected, image_to_digit
from digits.core.settings import get_settings
from model_store.aliases import PRODUCTION, alias_target, resolve_active
from model_store.inference import model_for, predict
from worker.results import shape

__all__ = ["Answer", "Rejected", "png_data_url", "predict_image", "production_version"]

_lock = threading.Lock()
_seen: tuple[int | None, int | None] | None = None  # (forced setting, alias) last resolved
_version: int | None = None


@dataclass(frozen=True)
class Answer:
    label: int
    confidence: float  # calibrated top-1 probability
    margin: float
    needs_review: bool
    probabilities: list[float]  # calibrated, index = digit
    model_version: int
    seen: NDArray[np.float32]  # the (28, 28) tensor the model saw, in [0, 1], ink bright
    review_reason: str | None = None  # the digit finder's doubt, if any

    @property
    def top3(self) -> list[dict[str, float | int]]:
        order = np.argsort(self.probabilities)[::-1][:3]
        return [{"label": int(k), "p": round(self.probabilities[k], 6)} for k in order]

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "margin": round(self.margin, 6),
            "needs_review": self.needs_review,
            "review_reason": self.review_reason,
            "top3": self.top3,
            "probabilities": [round(p, 6) for p in self.probabilities],
            "model_version": self.model_version,
            "seen": png_data_url(self.seen),
        }


def png_data_url(tensor: NDArray[np.floating]) -> str:
    """The 28×28 the model saw as a ``data:image/png`` URL (ink white, as the model sees it)."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(tensor).reshape(28, 28) * 255), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def production_version() -> int:
    """The version new batches are pinned to (``resolve_active``), found with one read of the
    production alias while neither it nor ``DIGITS_MODEL_VERSION`` changed (the registry is
    listed again only when one did)."""
    global _seen, _version
    key = (get_settings().model_version, alias_target(PRODUCTION))
    if key != _seen or _version is None:
        _version = resolve_active().version
        _seen = key
    return _version


def predict_image(data: bytes) -> Answer:
    """Score one image file's bytes. Raises ``Rejected`` (blank, not an image, too big…) with
    the reason the inbox would record for it."""
    settings = get_settings()
    if len(data) > settings.max_file_bytes:
        raise Rejected(f"file too large: {len(data):,} bytes (limit {settings.max_file_bytes:,})")
    found = image_to_digit(data, settings.max_image_pixels)
    tensor = found.tensor
    version = production_version()
    with _lock:  # one load per process, and one forward pass at a time (2 cores)
        meta, model = model_for(version)
        probs = predict(model, tensor[None, ...])
    shaped = shape(probs, meta.temperature, settings.confidence_threshold, [found.doubt])
    return Answer(
        label=int(shaped.labels[0]),
        confidence=float(shaped.confidence[0]),
        margin=float(shaped.margin[0]),
        needs_review=bool(shaped.needs_review[0]),
        probabilities=[float(p) for p in shaped.probabilities[0]],
        model_version=version,
        seen=tensor[:, :, 0],
        review_reason=found.doubt,
    )
