"""Cluttered scans are scored right or sent to review, never confidently wrong (issue 23).

Each kind of clutter (``digits.core.clutter_scans``) is rendered from held-out rows and scored
through the production image path with the bundled model; ``-s`` prints the per-kind table that
docs/models.md quotes. The origin's own test picture is rebuilt with matplotlib itself: a
white-on-black digit shown with ``imshow``, its frame and axis numbers around it.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageFilter

from digits.core.images import image_to_digit
from model_store.clutter import measure_clutter
from model_store.data import load_split
from model_store.inference import predict
from model_store.loading import load
from model_store.registry import default_version
from tests.conftest import KAGGLE_TRAIN as TRAIN
from worker.results import shape

matplotlib.use("Agg")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TRAIN.is_file(), reason=f"{TRAIN} not present"),
]

THRESHOLD = 0.9


def test_every_kind_of_clutter_is_scored_right_or_sent_to_review() -> None:
    split = load_split(TRAIN)
    meta = default_version()
    result = measure_clutter(load(meta), meta.temperature, THRESHOLD, split.x_val, split.y_val)
    print(f"\nclutter check, v{meta.version}: {result['method']}")
    print(f"{'kind':<10} {'right':>6} {'flagged':>8} {'refused':>8} {'confident wrong':>16}")
    for kind, k in result["kinds"].items():
        print(
            f"{kind:<10} {k['accuracy']:>6.1%} {k['flagged']:>8} {k['refused']:>8} "
            f"{k['confident_wrong']:>16}"
        )
    print(f"all        {result['accuracy']:>6.1%}   confident wrong {result['confident_wrong']}")
    for kind, k in result["kinds"].items():
        # the digit was found: most of each kind is right (v4 scored 8-20 % on frames, screens
        # and plots before the digit finder) ...
        assert k["accuracy"] >= 0.85, (kind, k)
    # ... and what is wrong is flagged or refused with a reason: on these 1,100 pictures, no
    # confident wrong answer at all (other seeds of the generator leave 0-5 of 1,100, the
    # screen kind most: docs/scans.md)
    assert result["confident_wrong"] == 0, result["kinds"]


def _origin_picture(digit: np.ndarray) -> bytes:
    """The origin notebook's "test with own handwriting" picture: the digit shown with
    ``plt.imshow(..., cmap="gray")`` (white on black, a frame, axis numbers 0-25), then
    photographed: a little blur and a JPEG."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=90)
    ax.imshow(digit.reshape(28, 28), cmap="gray")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    photo = Image.open(buffer).convert("RGB").filter(ImageFilter.GaussianBlur(0.8))
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=80)
    return out.getvalue()


def test_the_origins_own_picture_of_a_digit_in_a_plot_is_read_or_flagged() -> None:
    """The first picture users ever tried (a 3 shown in a plot) was scored 0 at 0.91: the
    frame was taken for the digit. Every held-out 3, 7 and 1 drawn that way must now be
    right or flagged; none may be confidently wrong."""
    split = load_split(TRAIN)
    meta = default_version()
    model = load(meta)
    rows = [i for i, y in enumerate(split.y_val) if y in (3, 7, 1)][:30]
    found = [image_to_digit(_origin_picture(split.x_val[i])) for i in rows]
    probs = predict(model, np.stack([f.tensor for f in found]))
    shaped = shape(probs, meta.temperature, THRESHOLD, [f.doubt for f in found])
    truth = split.y_val[rows]
    right = shaped.labels == truth
    print(
        f"\norigin-style plots: {int(right.sum())}/{len(rows)} right, "
        f"{int(shaped.needs_review.sum())} flagged"
    )
    assert not np.any(~right & ~shaped.needs_review)
    assert right.mean() >= 0.9
