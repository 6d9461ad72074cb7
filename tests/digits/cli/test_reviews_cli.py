"""`digits reviews list` and `digits reviews export`: the reviewed items, and the training file
that our own CSV reader takes back as labelled rows with the reviewed labels and the very
pixels the model saw (a CSV batch's staged rows; an image batch's files preprocessed as the
workers do)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from digits.cli import app
from digits.core import reviews
from digits.core.csv_input import read_labelled
from digits.core.db import upgrade
from digits.core.images import image_to_tensor
from tests.digits.web.flagged import flagged_batch

runner = CliRunner()


def test_export_writes_the_reviewed_labels_and_the_pixels_the_model_saw(
    home: Path, tmp_path: Path, sample_rows: list[str]
) -> None:
    upgrade()
    folder = tmp_path / "scans"
    folder.mkdir()
    rows = flagged_batch(sample_rows, 12)
    scans = flagged_batch(sample_rows, 6, kind="images", folder=folder)
    # CSV batch: a correction, a confirmation, a decision then undone (left out)
    reviews.record(rows.item_ids[0], rows.truth[0], "ana", share=0.0)
    reviews.record(rows.item_ids[2], 8, "ana", share=0.0)
    reviews.record(rows.item_ids[2], rows.truth[2], "ben", share=0.0)  # supersedes
    reviews.record(rows.item_ids[5], rows.predicted[5], "ana", share=0.0)
    reviews.record(rows.item_ids[7], 4, "ana", share=0.0)
    reviews.undo_last("ana", rows.batch_id)
    # image batch: two corrections
    reviews.record(scans.item_ids[1], scans.truth[1], "ana", share=0.0)
    reviews.record(scans.item_ids[2], scans.truth[2], "ana", share=0.0)

    out = tmp_path / "reviewed.csv"
    result = runner.invoke(app, ["reviews", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote 5 reviewed rows to {out}" in result.stdout
    pixels, labels = read_labelled(out)
    assert labels.tolist() == [
        rows.truth[0],
        rows.truth[2],
        rows.predicted[5],
        scans.truth[1],
        scans.truth[2],
    ]
    assert np.array_equal(pixels[:3], rows.pixels[[0, 2, 5]])
    for row, position in zip(pixels[3:], (2, 3), strict=True):
        seen = image_to_tensor((folder / f"scan{position:03d}.png").read_bytes())
        expected = np.rint(seen.reshape(784) * 255).astype(np.uint8)
        assert np.array_equal(row, expected)
    assert out.read_text().splitlines()[0].startswith("label,pixel0,pixel1,")

    only = tmp_path / "only.csv"
    result = runner.invoke(
        app, ["reviews", "export", "--out", str(only), "--batch", str(scans.batch_id), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == {"path": str(only), "rows": 2, "missing": [], "overrides": 1}
    assert read_labelled(only)[1].tolist() == [scans.truth[1], scans.truth[2]]


def test_export_leaves_out_items_whose_pixels_are_gone_and_says_so(
    home: Path, tmp_path: Path, sample_rows: list[str]
) -> None:
    upgrade()
    folder = tmp_path / "scans"
    folder.mkdir()
    scans = flagged_batch(sample_rows, 3, kind="images", folder=folder)
    for item_id in scans.item_ids[:2]:
        reviews.record(item_id, 1, "ana", share=0.0)
    (folder / "scan001.png").unlink()
    out = tmp_path / "reviewed.csv"
    result = runner.invoke(app, ["reviews", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 1 reviewed rows" in result.stdout
    assert "1 left out: their pixels are gone" in result.stdout
    assert len(out.read_text().splitlines()) == 2


def test_export_refuses_in_one_line_when_there_is_nothing_to_write(
    home: Path, tmp_path: Path, sample_rows: list[str]
) -> None:
    upgrade()
    batch = flagged_batch(sample_rows, 3)
    out = tmp_path / "reviewed.csv"
    for args, message in (
        ([], "no reviewed items in any batch"),
        (["--batch", str(batch.batch_id)], f"no reviewed items in batch {batch.batch_id}"),
        (["--batch", "99"], "batch 99 does not exist"),
    ):
        result = runner.invoke(app, ["reviews", "export", "--out", str(out), *args])
        assert result.exit_code == 1
        assert message in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_list_shows_the_current_reviewed_labels(home: Path, sample_rows: list[str]) -> None:
    upgrade()
    first = flagged_batch(sample_rows, 4)
    second = flagged_batch(sample_rows, 4)
    reviews.record(first.item_ids[0], 9, "ana", share=0.0)
    reviews.record(second.item_ids[1], second.predicted[1], "<b>ben</b>", share=0.0)
    os.environ.pop("COLUMNS", None)
    table = runner.invoke(app, ["reviews", "list"])
    assert table.exit_code == 0, table.output
    assert "flagged.csv:1" in table.stdout and "<b>ben</b>" in table.stdout
    assert table.stdout.strip().splitlines()[-1] == "2 reviewed, 1 changed the model's label (*)"
    listed = json.loads(runner.invoke(app, ["reviews", "list", "--json"]).stdout)
    assert [(r["item_id"], r["label"], r["reviewer"]) for r in listed] == [
        (first.item_ids[0], 9, "ana"),
        (second.item_ids[1], second.predicted[1], "<b>ben</b>"),
    ]
    one = json.loads(
        runner.invoke(app, ["reviews", "list", "--batch", str(second.batch_id), "--json"]).stdout
    )
    assert [r["batch_id"] for r in one] == [second.batch_id]
    none = runner.invoke(app, ["reviews", "list", "--batch", "99"])
    assert none.exit_code == 0 and "no reviewed items in batch 99" in none.stdout
