"""scheduler/inputs.py: command-line inputs checked and grouped before any batch exists
(issue 21 items 1 and 2), and a batch of image files named one by one resumed with the same
files (scheduler/batches.py keeps their list)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import select

import scheduler.batches as batches
from digits.core.db import session
from digits.core.queries import batch_progress
from digits.core.schema import Item
from scheduler.ingestion import resume_batch
from scheduler.inputs import Planned, input_problem, plan_inputs
from tests.conftest import write_csv
from tests.faultkit import reload_settings, write_scans


def test_image_files_are_one_batch_at_the_place_of_the_first(
    tmp_path: Path, sample_rows: list[str]
) -> None:
    a, b = write_scans(tmp_path / "drop", sample_rows, 2)
    folder = tmp_path / "folder"
    write_scans(folder, sample_rows, 1)
    table = write_csv(tmp_path / "t.csv", sample_rows[:2])
    planned, refused = plan_inputs([table, b, folder, a, b, tmp_path / "nope"])
    assert planned == [
        Planned("csv", (table,)),
        Planned("files", (b, a)),  # in the order given, the repeated file once
        Planned("folder", (folder,)),
    ]
    assert refused == [f"{tmp_path / 'nope'}: no such file or folder"]
    assert planned[1].name == "scan01.png and 1 more"


@pytest.mark.parametrize(
    ("content", "name", "problem"),
    [
        (b"", "empty.csv", "not a digits CSV: empty file: no header line"),
        (b"\x1f\x8b\x08\x00garbage", "x.csv.gz", "not a digits CSV: unreadable compressed file"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "scan.jpg.part", "a JPEG image, but not named like"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "scan", "a WebP image, but not named like one"),
        (b"hello\n", "notes.txt", "neither an image file (.bmp, .gif, .jpeg, .jpg, .png, "),
    ],
)
def test_a_file_that_is_neither_is_refused_with_what_it_is(
    content: bytes, name: str, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert (input_problem(path) or "").startswith(problem), input_problem(path)


def test_an_image_file_is_accepted_by_its_name_its_content_is_the_workers_business(
    tmp_path: Path,
) -> None:
    """A broken .png given by name is accepted here: the worker that decodes it records
    its reason on its item, as for a broken file in a folder."""
    (tmp_path / "broken.PNG").write_bytes(b"not a png")
    assert input_problem(tmp_path / "broken.PNG") is None


def test_a_fifo_is_refused_without_being_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.csv")
    assert input_problem(tmp_path / "pipe.csv") == (
        "not a regular file or folder (a FIFO, socket or device is never read)"
    )


def test_an_interrupted_batch_of_named_files_resumes_with_the_same_files(
    backend: str, tmp_path: Path, sample_rows: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's source is the files' common folder; a resume that listed that folder
    would take in every other file there. It takes the files that were named instead."""
    monkeypatch.setenv("DIGITS_IMAGE_CHUNK_SIZE", "1")
    reload_settings()
    scans = write_scans(tmp_path / "drop", sample_rows, 5)
    named = [scans[3], scans[0], scans[4]]
    real, calls = batches.add_chunk, []

    def add_chunk(batch_id: int, *args: object) -> int | None:
        calls.append(batch_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C leaves: the batch stays `enqueueing`
        return real(batch_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(batches, "add_chunk", add_chunk)
    with pytest.raises(KeyboardInterrupt):
        batches.enqueue_planned(Planned("files", tuple(named)))
    monkeypatch.setattr(batches, "add_chunk", real)
    done, after = resume_batch(1)
    assert (after, done.items, done.errors) == (1, 3, 0)
    with session() as sess:
        refs = sess.scalars(select(Item.source_ref).order_by(Item.position)).all()
    assert refs == ["scan03.png", "scan00.png", "scan04.png"]
    [state] = batch_progress([1])
    assert state.items == 3
