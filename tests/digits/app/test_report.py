"""`digits report`: valid PNGs and an index.html that references them, for CSV and image
batches scored by a real worker; the pure shaping helpers on their own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digits.app.report import (
    Row,
    accuracy,
    confusion,
    label_counts,
    least_confident,
    render_html,
)
from digits.app.runner import wait_for
from digits.core.synthetic_scans import render_scan
from model_store.registry import default_version
from scheduler.batches import enqueue_csv, enqueue_files, image_files
from tests.conftest import write_csv

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def scans(folder: Path, sample_rows: list[str], n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i, line in enumerate(sample_rows[1 : n + 1]):
        values = np.array(line.split(","), dtype=np.int64)[1:].astype(np.uint8)
        data, ext = render_scan(values, rng)
        (folder / f"scan{i:02d}{ext}").write_bytes(data)
    (folder / "zz-blank.png").write_bytes(b"not a picture at all")
    return folder


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
@pytest.mark.parametrize("kind", ["csv", "images"])
def test_report_renders_valid_pngs_and_html(
    backend: str, kind: str, worker_factory: type, sample_rows: list[str], tmp_path: Path
) -> None:
    worker = worker_factory(concurrency=1)
    worker.wait_ready()
    if kind == "csv":
        lines = sample_rows[:61]
        lines.insert(5, "1,2,3")  # a bad row: listed in the report's errors
        done = enqueue_csv(write_csv(tmp_path / "labelled.csv", lines), chunk_size=25)
    else:
        folder = scans(tmp_path / "drop", sample_rows, 12)
        done = enqueue_files(folder, image_files(folder))
    [state] = wait_for([done.batch_id], timeout=120)
    assert state.status == "done", worker.tail()
    out = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "report",
            "--batch",
            str(done.batch_id),
            "--out",
            str(out),
            "--include-unflagged",  # a grid even when the model flags nothing
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert str(out / "index.html") in result.stdout
    expected = {"labels.png", "confidence.png", "least_confident.png"}
    if kind == "csv":  # true labels: a confusion matrix and the accuracy
        expected.add("confusion.png")
        assert "accuracy" in result.stdout
    assert {p.name for p in out.iterdir()} == expected | {"index.html"}  # no temp file left
    for name in expected:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        with Image.open(out / name) as img:
            img.verify()
        with Image.open(out / name) as img:
            assert img.format == "PNG" and img.width >= 300 and img.height >= 200
    page = Page()
    page.feed((out / "index.html").read_text())
    page.close()
    assert {"html", "head", "body", "table", "img"} <= set(page.tags)
    assert sorted(page.images) == sorted(expected)
    text = " ".join(page.text)
    assert f"Batch {done.batch_id}" in text and f"v{default_version().version}" in text
    if kind == "csv":
        assert "row 5: expected 785 fields, got 3" in text and "% on 60 labelled items" in text
    else:
        assert "zz-blank.png" in text and "no true labels" in text


def rows(*specs: tuple[int, int | None, float | None, int | None]) -> list[Row]:
    return [
        Row(
            item_id=i,
            position=i,
            source_ref=f"f:{i}",
            status="predicted",
            label=label,
            confidence=conf,
            true_label=true,
            error=None,
        )
        for i, (_, label, conf, true) in enumerate(specs, start=1)
    ]


def test_shaping_helpers() -> None:
    data = rows(
        (0, 3, 0.99, 3), (0, 3, 0.51, 8), (0, 7, 0.75, None), (0, None, None, None), (0, 1, 0.51, 1)
    )
    assert label_counts([r.label for r in data if r.label is not None]) == [
        0,
        1,
        0,
        2,
        0,
        0,
        0,
        1,
        0,
        0,
    ]
    pairs = [
        (r.true_label, r.label) for r in data if r.true_label is not None and r.label is not None
    ]
    matrix = confusion(pairs)
    assert matrix[3][3] == 1 and matrix[8][3] == 1 and matrix[1][1] == 1
    assert sum(map(sum, matrix)) == 3
    assert accuracy(pairs) == pytest.approx(2 / 3) and accuracy([]) is None
    assert [r.position for r in least_confident(data, 3)] == [2, 5, 3]  # ties: source order


def test_html_escapes_user_text() -> None:
    info = {
        "batch_id": 7,
        "source": "<script>alert(1)</script>.csv",
        "kind": "csv",
        "status": "done",
        "model_version": 1,
        "model_sha256": "ab" * 32,
        "items": 1,
        "predicted": 0,
        "errors": 1,
        "duplicates": 0,
        "pending": 0,
        "flagged": 0,
        "labelled": 0,
        "accuracy": None,
    }
    bad = Row(1, 1, "<b>x</b>", "error", None, None, None, "row 1: <img src=x>")
    page = render_html(info, {"labels": "labels.png"}, [], [bad])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img src=x>" not in page and '<img src="labels.png"' in page


def flagged_rows(*specs: tuple[float, bool]) -> list[Row]:
    return [
        Row(i, i, f"scan{i}.png", "predicted", 1, conf, None, None, needs_review=flag)
        for i, (conf, flag) in enumerate(specs, start=1)
    ]


@pytest.mark.parametrize(
    ("include_unflagged", "n", "expected"),
    [(False, 16, [4, 2]), (False, 1, [4]), (True, 16, [4, 2, 3, 1]), (True, 3, [4, 2, 3])],
)
def test_the_grid_shows_flagged_items_unless_asked(
    include_unflagged: bool, n: int, expected: list[int]
) -> None:
    """Issue 21 item 12: no padding with confident items unless --include-unflagged."""
    from digits.app.report import grid_rows

    data = flagged_rows((0.99, False), (0.6, True), (0.95, False), (0.5, True))
    assert [r.position for r in grid_rows(data, n, include_unflagged)] == expected


def scored_in_process(batch_id: int) -> None:
    from sqlalchemy import select

    from digits.core.db import session
    from digits.core.schema import Chunk
    from worker.chunks import process_chunk

    with session() as sess:
        ids = sess.scalars(select(Chunk.id).where(Chunk.batch_id == batch_id)).all()
    assert [process_chunk(c) for c in ids] == ["done"] * len(ids)


def flag_only(batch_id: int, positions: set[int]) -> None:
    """Make exactly these items the flagged ones (the test decides, not the model's mood)."""
    from sqlalchemy import select, update

    from digits.core.db import session
    from digits.core.schema import Item, Prediction

    with session(write=True) as sess:
        ids = dict(
            sess.execute(select(Item.position, Item.id).where(Item.batch_id == batch_id)).all()
        )
        sess.execute(
            update(Prediction)
            .where(Prediction.item_id.in_(ids.values()))
            .values(needs_review=False)
        )
        sess.execute(
            update(Prediction)
            .where(Prediction.item_id.in_([ids[p] for p in positions]))
            .values(needs_review=True)
        )


@pytest.mark.parametrize("kind", ["csv", "images"])
def test_report_shows_flagged_items_with_their_original_and_file_name(
    kind: str, home: Path, sample_rows: list[str], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from digits.app.report import load, original_pixels
    from digits.cli import app
    from digits.core.db import upgrade

    upgrade()
    if kind == "csv":
        done = enqueue_csv(write_csv(tmp_path / "labelled.csv", sample_rows[:9]))
    else:
        folder = scans(tmp_path / "drop", sample_rows, 8)
        done = enqueue_files(folder, image_files(folder))
    scored_in_process(done.batch_id)
    flag_only(done.batch_id, {2, 5})
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "--batch", str(done.batch_id), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 flagged for review" in result.stdout, result.stdout
    page = (out / "index.html").read_text()
    assert "flagged for review</th><td>2</td>" in page
    refs = {r.position: r.source_ref for r in load(done.batch_id).rows}
    shown = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td>", page.split("Item errors")[0])
    assert sorted(int(p) for p, _ in shown) == [2, 5], shown
    assert {ref for _, ref in shown} == {refs[2], refs[5]}
    with Image.open(out / "least_confident.png") as img:
        assert img.width > img.height  # each tile: original beside what the model saw
    everything = CliRunner().invoke(
        app,
        ["report", "--batch", str(done.batch_id), "--out", str(out), "--include-unflagged"],
    )
    assert everything.exit_code == 0, everything.output
    page = (out / "index.html").read_text()
    shown = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td>", page.split("Item errors")[0])
    assert len(shown) == 8
    ids = [r.item_id for r in load(done.batch_id).rows if r.label is not None]
    originals = original_pixels(kind, ids)
    assert set(originals) == set(ids)
    for image in originals.values():
        if kind == "csv":
            assert image.shape == (28, 28)  # the row drawn: the row is the original
        else:
            assert max(image.shape[:2]) > 28  # the scan itself, not its 28×28
