"""`digits report`: valid PNGs and an index.html that references them, for CSV and image
batches scored by a real worker; the pure shaping helpers on their own."""

from __future__ import annotations

import os
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
        "labelled": 0,
        "accuracy": None,
    }
    bad = Row(1, 1, "<b>x</b>", "error", None, None, None, "row 1: <img src=x>")
    page = render_html(info, {"labels": "labels.png"}, [], [bad])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<img src=x>" not in page and '<img src="labels.png"' in page
