"""A page the digit finder doubts is scored but flagged, with its reason stored (issue 23).

End to end with a real worker: `digits run` on a folder holding a page with two digits, a
digit in a drawn box and a plain scan; the two-digit page's prediction is flagged with
``review_reason``, which `digits results --json` and the item API carry.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import SAMPLE, digits_cli

pytestmark = pytest.mark.slow


def _digits() -> tuple[list[np.ndarray], list[int]]:
    with gzip.open(SAMPLE, "rt") as f:
        lines = f.read().splitlines()[1:4]
    rows = [np.array(line.split(","), np.uint8) for line in lines]
    return [r[1:].reshape(28, 28) for r in rows], [int(r[0]) for r in rows]


def _sheet(digits: list[np.ndarray], width: int, box: bool = False) -> Image.Image:
    page = np.full((200, width), 235.0, np.float32)
    for k, digit in enumerate(digits):
        big = np.asarray(Image.fromarray(digit).resize((140, 140)), np.float32) / 255
        page[30:170, 30 + 200 * k : 170 + 200 * k] -= big * 205
    img = Image.fromarray(page.astype(np.uint8))
    if box:
        ImageDraw.Draw(img).rectangle((15, 15, width - 15, 185), outline=20, width=4)
    return img


def test_a_doubtful_page_is_flagged_with_its_reason(home: Path, tmp_path: Path) -> None:
    (digit_a, digit_b, digit_c), labels = _digits()
    drop = tmp_path / "drop"
    drop.mkdir()
    _sheet([digit_a, digit_b], 400).save(drop / "two.png")
    _sheet([digit_c], 200, box=True).save(drop / "boxed.png")
    _sheet([digit_a], 200).save(drop / "plain.png")
    done = digits_cli("run", "--json", "--workers", "1", str(drop))
    assert done.returncode == 0, done.stderr[-2000:]
    listed = digits_cli("results", "--format", "json", "--all")
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = {Path(r["source"]).name: r for r in json.loads(listed.stdout)}
    assert rows["two.png"]["needs_review"] is True
    assert rows["two.png"]["review_reason"] == "several digit-sized marks on the page"
    assert rows["boxed.png"]["label"] == labels[2]
    assert rows["boxed.png"]["review_reason"] is None
    assert rows["plain.png"]["label"] == labels[0]
    assert rows["plain.png"]["review_reason"] is None
