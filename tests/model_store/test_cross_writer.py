"""The cross-writer check (digits by other writers, captured at low resolution) beside the
held-out figure: measured for the bundled version by `digits models evaluate`, written on the
card by `digits train`, printed by `models show` and `models list`.

``pytest -s`` prints the bundled version's figure and its figure per style.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from digits.core.writer_samples import PER_DIGIT, available_styles
from model_store.registry import default_version, list_versions
from tests.conftest import KAGGLE_TRAIN, SAMPLE

#: loads TensorFlow, trains, and scores 2,000 drawn images
pytestmark = pytest.mark.slow

STYLES = [s.name for s in available_styles()[0]]


def digits_cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def check_block(writers: dict[str, Any]) -> None:
    """The whole set was scored: every image either scored or refused (few), every style."""
    assert writers["count"] + writers["refused"] == 10 * PER_DIGIT
    assert writers["refused"] <= 10
    assert sorted(writers["per_style"]) == sorted(STYLES)  # a card stores keys sorted
    assert sum(m["count"] for m in writers["per_style"].values()) == writers["count"]
    assert all(
        m["count"] >= 10 * PER_DIGIT // len(STYLES) - 10 for m in writers["per_style"].values()
    )
    assert writers["errors"] == round((1 - writers["accuracy"]) * writers["count"])
    assert len(writers["per_class_accuracy"]) == 10
    assert 0 <= writers["review_threshold"]["coverage"] <= 1


@pytest.mark.skipif(not KAGGLE_TRAIN.is_file(), reason=f"{KAGGLE_TRAIN} not present")
def test_models_evaluate_reports_the_bundled_version_on_the_cross_writer_set(home: Path) -> None:
    """One `models evaluate --json` run (without the slow scan rendering, which the cross-writer
    block does not depend on) gives the figure beside the held-out one."""
    version = default_version()
    measured = json.loads(
        digits_cli(
            "models",
            "evaluate",
            str(version.version),
            "--data",
            str(KAGGLE_TRAIN),
            "--no-scans",
            "--json",
        )
    )
    clean, writers = measured["clean"], measured["cross_writer"]
    print(
        f"\nv{version.version}: held-out {clean['accuracy']:.2%} ({clean['errors']} errors / "
        f"{clean['count']}); cross-writer {writers['accuracy']:.2%} ({writers['errors']} errors "
        f"/ {writers['count']}, {writers['refused']} refused)"
    )
    for name, m in writers["per_style"].items():
        print(f"  {name:<24} {m['accuracy']:.2%} ({m['errors']} errors / {m['count']})")
    print(
        "  per digit: "
        + ", ".join(f"{d}: {a:.1%}" for d, a in enumerate(writers["per_class_accuracy"]))
    )
    check_block(writers)
    assert writers["missing_fonts"] == []
    # A sanity floor, far below what the bundled model scores and far above chance (10 %):
    # the set is drawn in the digits' own shapes, so a working model reads most of it.
    assert writers["accuracy"] >= 0.8
    assert all(m["accuracy"] >= 0.5 for m in writers["per_style"].values())


def test_training_writes_the_check_on_the_card_and_models_show_and_list_print_it(
    home: Path,
) -> None:
    new = list_versions()[-1].version + 1
    digits_cli("train", "--data", str(SAMPLE), "--arch", "mlp", "--epochs", "1", "--quiet")
    card = json.loads((home / "models" / f"v{new}" / "card.json").read_text())
    writers = card["cross_writer"]
    check_block(writers)
    assert writers["seed"] and writers["per_digit"] == PER_DIGIT
    assert "image_to_tensor" in writers["method"]

    shown = digits_cli("models", "show", str(new))
    assert re.search(
        rf"cross-writer +accuracy {writers['accuracy']:.2%} on {writers['count']} digits by "
        rf"other writers, captured small \({len(STYLES)} styles, {writers['refused']} refused\)"
        r"; weakest ",
        shown,
    ), shown
    listing = digits_cli("models", "list").splitlines()
    assert "x-writer" in listing[0].split()
    row = next(line for line in listing if re.match(rf"^. v{new} ", line))
    assert f" {writers['accuracy']:.2%} " in row
    bundled = default_version()
    if "cross_writer" not in bundled.card:  # immutable cards from before the check
        assert f"not on this card: `digits models evaluate {bundled.version}` measures it" in (
            digits_cli("models", "show", str(bundled.version))
        )
        assert any("`digits models evaluate V` measures it" in line for line in listing)
    assert listing[-1].startswith("* in production")
