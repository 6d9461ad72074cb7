"""The clutter generator draws every kind, deterministically, as files our decoder reads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digits.core.clutter_scans import CLUTTER_KINDS, render_cluttered
from digits.core.images import decode_image


def _digit() -> np.ndarray:
    """A plain 28x28 "1": a thick vertical bar in the MNIST field, ink bright."""
    row = np.zeros((28, 28), np.uint8)
    row[4:24, 12:16] = 255
    return row.ravel()


@pytest.mark.parametrize("kind", CLUTTER_KINDS)
def test_every_kind_renders_a_decodable_scan_the_same_way_for_a_seed(kind: str) -> None:
    first = render_cluttered(_digit(), kind, np.random.default_rng(5), neighbour=_digit())
    again = render_cluttered(_digit(), kind, np.random.default_rng(5), neighbour=_digit())
    assert first == again
    gray = decode_image(first)
    assert min(gray.shape) >= 100
    assert Image.open(io.BytesIO(first)).format in ("JPEG", "PNG")


@pytest.mark.parametrize("kind", [k for k in CLUTTER_KINDS if k not in ("neighbour",)])
def test_the_clutter_is_really_on_the_page(kind: str) -> None:
    """A page with no digit at all still shows each kind's marks: the clutter is drawn."""
    blank = np.zeros(784, np.uint8)
    data = render_cluttered(blank, kind, np.random.default_rng(9), neighbour=_digit())
    gray = decode_image(data)
    spread = float(np.percentile(gray, 99) - np.percentile(gray, 1))
    assert spread > 0.15, f"{kind}: an empty page with this clutter shows no clutter"


def test_unknown_kind_and_missing_neighbour_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown clutter kind"):
        render_cluttered(_digit(), "coffee", np.random.default_rng(0))
    with pytest.raises(ValueError, match="neighbour row"):
        render_cluttered(_digit(), "neighbour", np.random.default_rng(0))
