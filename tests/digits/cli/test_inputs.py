"""Issue 21 items 1 and 2: what `digits run` and `digits enqueue` accept on the command line.

Image files given by name are one batch of all of them (CSVs and folders stay one batch
each); an input that cannot become a batch (an empty folder, a CSV with a wrong header, a
file that is neither a CSV nor an image) is refused with one line before anything is
created. The `enqueue` tests run no worker (fast lane); the `run` test scores for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from digits.core.db import session
from digits.core.schema import Batch, Item
from tests.conftest import write_csv
from tests.faultkit import write_scans


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=cwd,
        timeout=timeout,
    )


def batches() -> list[tuple[int, str, str, list[str]]]:
    """(id, kind, status, item source refs in position order) of every batch."""
    with session() as sess:
        found = sess.execute(select(Batch.id, Batch.kind, Batch.status).order_by(Batch.id)).all()
        return [
            (
                bid,
                kind,
                status,
                list(
                    sess.scalars(
                        select(Item.source_ref).where(Item.batch_id == bid).order_by(Item.position)
                    )
                ),
            )
            for bid, kind, status in found
        ]


def test_image_files_given_by_name_are_one_batch_of_those_files(
    backend: str, tmp_path: Path, sample_rows: list[str]
) -> None:
    """Before: `digits enqueue photo.png` failed its batch with `not a CSV text file (not
    UTF-8 at byte 0)`, and `digits enqueue drop/*.png` made one failed batch per file. Now
    every image file on the line (from any folder) is one batch of exactly those files, in
    the order given, at the place of the first; a CSV and a folder are each their own batch.
    The file left out of the folder is not part of the batch."""
    drop = tmp_path / "drop"
    scans = write_scans(drop, sample_rows, 4)
    other = write_scans(tmp_path / "other", sample_rows, 1, prefix="more")[0]
    folder = tmp_path / "folder"
    write_scans(folder, sample_rows, 2)
    table = write_csv(tmp_path / "rows.csv", sample_rows[:4])
    done = run_cli("enqueue", str(table), str(scans[2]), str(scans[0]), str(folder), str(other))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "2", "3"]
    assert batches() == [
        (1, "csv", "running", ["rows.csv:1", "rows.csv:2", "rows.csv:3"]),
        (2, "images", "running", ["drop/scan02.png", "drop/scan00.png", "other/more00.png"]),
        (3, "images", "running", ["scan00.png", "scan01.png"]),
    ]


def test_one_image_file_is_a_batch_of_one(
    backend: str, tmp_path: Path, sample_rows: list[str]
) -> None:
    [photo] = write_scans(tmp_path, sample_rows, 1, prefix="photo")
    done = run_cli("enqueue", str(photo))
    assert done.returncode == 0, done.stderr
    assert batches() == [(1, "images", "running", ["photo00.png"])]


def bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name → (path, what the refusal says after the path)."""
    (tmp / "empty").mkdir()
    (tmp / "notes").mkdir()
    (tmp / "notes" / "readme.txt").write_text("hello\n")
    (tmp / "hidden").mkdir()
    (tmp / "hidden" / ".DS_Store").write_bytes(b"\0\0")
    (tmp / "header.csv").write_text("a,b,c\n1,2,3\n")
    (tmp / "only-header.csv").write_text(",".join(f"pixel{i}" for i in range(784)) + "\n\n")
    (tmp / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\xff\xfe\x00binary")
    (tmp / "scan.dat").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    return {
        "empty-folder": (tmp / "empty", "empty folder: no files in it"),
        "no-images": (
            tmp / "notes",
            "no image files in this folder (1 other file, e.g. readme.txt); accepted: ",
        ),
        "only-hidden": (
            tmp / "hidden",
            "no files in this folder but hidden ones (names starting with a dot are skipped)",
        ),
        "wrong-header": (tmp / "header.csv", "not a digits CSV: wrong header: expected "),
        "header-only": (tmp / "only-header.csv", "not a digits CSV: no data rows"),
        "binary": (
            tmp / "photo.heic",
            "neither an image file (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp) nor a "
            "digits CSV (not UTF-8 text at byte ",
        ),
        "image-misnamed": (
            tmp / "scan.dat",
            "a PNG image, but not named like one: image files must end in .bmp, .gif, .jpeg, "
            ".jpg, .png, .tif, .tiff, .webp; rename it",
        ),
        "missing": (tmp / "nope.csv", "no such file or folder"),
    }


@pytest.mark.parametrize("command", ["enqueue", "run"])
@pytest.mark.parametrize(
    "name",
    [
        "empty-folder",
        "no-images",
        "only-hidden",
        "wrong-header",
        "header-only",
        "binary",
        "image-misnamed",
        "missing",
    ],
)
def test_an_input_that_cannot_be_a_batch_is_refused_before_anything_is_created(
    command: str, name: str, home: Path, tmp_path: Path
) -> None:
    """Before: each made a failed batch with a `0/0` progress bar (and `run` started
    workers for it). Now: one line naming the file and what is wrong, exit 2, and nothing
    exists afterwards: no database, no batch, no worker log (DIGITS_HOME is not created)."""
    (tmp_path / "in").mkdir()
    path, said = bad_inputs(tmp_path / "in")[name]
    done = run_cli(command, str(path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {path}: {said}" or (
        said.endswith(" ") and done.stderr.startswith(f"error: {path}: {said}")
    ), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
    assert not home.exists(), sorted(home.rglob("*"))


def test_good_inputs_go_on_when_others_are_refused(
    backend: str, tmp_path: Path, sample_rows: list[str]
) -> None:
    """`digits enqueue good.csv empty/ header.csv` queues good.csv, names each refused input
    on its own line and exits 1 (documented in docs/cli.md)."""
    bad = bad_inputs(tmp_path)
    good = write_csv(tmp_path / "good.csv", sample_rows[:3])
    done = run_cli("enqueue", str(good), str(bad["empty-folder"][0]), str(bad["wrong-header"][0]))
    assert done.returncode == 1, done.stderr
    assert done.stdout.split() == ["1"]
    lines = done.stderr.strip().splitlines()
    assert lines[0] == f"error: {bad['empty-folder'][0]}: empty folder: no files in it"
    assert lines[1].startswith(f"error: {bad['wrong-header'][0]}: not a digits CSV: wrong header")
    assert len(lines) == 2
    assert [b[:3] for b in batches()] == [(1, "csv", "running")]


def test_the_inbox_still_records_an_empty_drop_as_a_failed_batch(
    backend: str, tmp_path: Path
) -> None:
    """Nobody watches the inbox's terminal: there a drop that cannot be scored stays a failed
    batch with its reason (what `digits status` shows), as before."""
    from scheduler.batches import enqueue_files

    (tmp_path / "drop").mkdir()
    done = enqueue_files(tmp_path / "drop", [], source="inbox:drop")
    assert done.failed == f"{tmp_path / 'drop'}: no files"
    assert [b[:3] for b in batches()] == [(done.batch_id, "images", "failed")]


@pytest.mark.slow
def test_run_scores_image_files_given_by_name_and_reports_the_refused(
    home: Path, tmp_path: Path, sample_rows: list[str]
) -> None:
    """End to end, with real workers: `digits run a.png b.png empty/ --json` scores the two
    files as one batch and reports the empty folder; exit 1 because an input was refused."""
    from digits.core.db import upgrade

    upgrade()
    scans = write_scans(tmp_path / "drop", sample_rows, 2)
    (tmp_path / "empty").mkdir()
    done = run_cli(
        "run", "--json", "--workers", "1", *map(str, scans), str(tmp_path / "empty"), timeout=240
    )
    assert done.returncode == 1, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["batch_ids"] == [1] and summary["items"] == 2 and summary["predicted"] == 2
    assert summary["refused"] == [f"{tmp_path / 'empty'}: empty folder: no files in it"]
    assert f"error: {tmp_path / 'empty'}: empty folder: no files in it" in done.stderr
    assert batches() == [(1, "images", "done", ["scan00.png", "scan01.png"])]
