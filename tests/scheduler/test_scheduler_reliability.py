"""Scheduler-side faults: `digits scheduler` killed between claiming inbox files and queueing them.

(Named ``test_scheduler_reliability.py``, not ``test_reliability.py``: the test folders are not
packages, so two test modules with one basename would not both be collected.)
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from digits.app.runner import wait_for
from digits.core.db import session
from digits.core.schema import Batch, Item, ItemError
from model_store.aliases import resolve_active
from scheduler.batches import create_batch
from tests.faultkit import discard, outcome, report, setup_backend, wait_until, write_scans

#: real worker processes, signals and servers: the full suite only (CONTRIBUTING.md)
pytestmark = pytest.mark.slow


@pytest.fixture(params=["embedded", "services"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """embedded (SQLite + filesystem broker) or services (PostgreSQL + a private Redis)."""
    return setup_backend(request.param, request, monkeypatch)


class Scheduler:
    """A real `digits scheduler --no-beat` process in its own process group."""

    def __init__(self, log: Path) -> None:
        self.log = log
        out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "digits.cli", "scheduler", "--no-beat"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ),
        )
        out.close()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def schedulers(home: Path) -> Iterator[list[Scheduler]]:
    started: list[Scheduler] = []
    yield started
    for s in started:
        s.stop()


def drop(folder: Path, files: list[Path]) -> None:
    """Deliver files the careful way: written under a hidden name, then renamed."""
    for f in files:
        tmp = folder / f".{f.name}.tmp"
        tmp.write_bytes(f.read_bytes())
        os.rename(tmp, folder / f.name)


def inbox_items() -> dict[str, int]:
    """source_ref → number of items with that name, over every inbox batch."""
    with session() as sess:
        rows = sess.execute(select(Item.source_ref, func.count()).group_by(Item.source_ref)).all()
    return {ref: int(n) for ref, n in rows}


def all_batches_finished(expected_items: int) -> bool:
    with session() as sess:
        statuses = sess.scalars(select(Batch.status)).all()
        items = sess.scalar(select(func.count()).select_from(Item)) or 0
    return (
        items >= expected_items
        and bool(statuses)
        and all(s in ("done", "failed") for s in statuses)
    )


def test_scheduler_killed_right_after_claiming_loses_and_repeats_nothing(
    backend: str,
    worker_factory: type,
    schedulers: list[Scheduler],
    sample_rows: list[str],
    tmp_path: Path,
    home: Path,
) -> None:
    """SIGKILL `digits scheduler` the moment a drop appears in processing/ (claimed: renamed
    out of the inbox, maybe not yet a batch), start a new one: it finishes the drop. Every
    dropped file ends as exactly one item, scored once or refused with a reason."""
    from digits.core.settings import get_settings

    inbox = get_settings().inbox_dir
    processing = inbox / "processing"
    worker = worker_factory()
    first = Scheduler(home / "scheduler-0.log")
    schedulers.append(first)
    wait_until(processing.is_dir, 30, what="the scheduler to create the inbox")
    worker.wait_ready()
    files = write_scans(tmp_path / "src", sample_rows, 8)
    text = tmp_path / "src" / "notes.png"
    text.write_text("a text file renamed .png\n")
    drop(inbox, [*files, text])
    wait_until(lambda: any(processing.iterdir()), 30, interval=0.002, what="a drop to be claimed")
    first.kill()
    killed = time.monotonic()
    with session() as sess:
        committed = sess.scalar(select(func.count()).select_from(Batch)) or 0
    left = sorted(p.name for p in processing.iterdir())
    second = Scheduler(home / "scheduler-1.log")
    schedulers.append(second)
    wait_until(
        lambda: all_batches_finished(9),
        90,
        interval=0.2,
        what="the drop to be finished by the new scheduler",
    )
    recovered = time.monotonic() - killed
    with session() as sess:
        batch_ids = list(sess.scalars(select(Batch.id)).all())
        reasons = dict(
            sess.execute(
                select(Item.source_ref, ItemError.reason).join(
                    ItemError, ItemError.item_id == Item.id
                )
            ).all()
        )
    wait_for(batch_ids, timeout=30)
    discard(worker)
    counts = inbox_items()
    assert counts == {f.name: 1 for f in [*files, text]}, counts  # none lost, none twice
    assert reasons == {"notes.png": "not an image"}
    figures = outcome(batch_ids)
    assert (figures["lost"], figures["duplicates"], figures["predicted"]) == (0, 0, 8)
    assert not any(processing.iterdir())
    kept = [p.name for p in (inbox / "processed").rglob("*") if p.is_file()]
    kept += [
        p.name.split("-", 1)[1]
        for p in (inbox / "failed").rglob("*")
        if p.is_file() and not p.name.endswith(".reason.txt")
    ]  # "<item id>-<name>"
    assert sorted(kept) == sorted(f.name for f in [*files, text])  # every file kept once
    report(
        f"scheduler-killed-after-claim[{backend}]",
        files=9,
        lost=0,
        duplicates=0,
        items_per_file=1,
        batches_committed_at_kill=committed,
        drops_left=len(left),
        recover_s=round(recovered, 1),
    )


def test_scheduler_killed_half_way_through_enqueueing_a_drop_is_redone(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
) -> None:
    """The narrowest window, made deterministic: the batch row of a claimed drop was committed
    but the scheduler died before its items and chunks were (status still ``enqueueing``).
    Start-up reconciliation must redo that drop, not take it as committed."""
    from digits.core.settings import get_settings
    from scheduler.inbox import SOURCE_PREFIX, Inbox

    inbox = Inbox(get_settings().inbox_dir)
    claimed = inbox.root / "processing" / "20260101T000000-cccccc"
    files = write_scans(claimed, sample_rows, 5)
    partial = create_batch(SOURCE_PREFIX + claimed.name, "images", resolve_active(), None)
    worker = worker_factory()
    inbox.reconcile()
    worker.wait_ready()
    with session() as sess:
        batch_ids = list(sess.scalars(select(Batch.id)).all())
    states = wait_for(batch_ids, timeout=60)
    discard(worker)
    assert all(s.status == "done" for s in states), [(s.batch_id, s.status) for s in states]
    assert inbox_items() == {f.name: 1 for f in files}
    figures = outcome(batch_ids)
    assert (figures["lost"], figures["duplicates"], figures["predicted"]) == (0, 0, 5)
    report(
        f"scheduler-killed-mid-enqueue[{backend}]",
        files=5,
        lost=0,
        duplicates=0,
        partial_batch=partial,
        batches_after=batch_ids,
    )


# ------------------------------------------------------------------------------ bad input
def encode(img: Any, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A real tiny PNG whose header (and CRC) claims width x height: a decompression bomb."""
    from PIL import Image

    data = bytearray(encode(Image.new("L", (8, 8), 255), "PNG"))
    at = data.index(b"IHDR")
    data[at + 4 : at + 12] = struct.pack(">II", width, height)
    data[at + 17 : at + 21] = struct.pack(">I", zlib.crc32(bytes(data[at : at + 17])))
    return bytes(data)


def bad_images(good: bytes) -> dict[str, tuple[bytes, str]]:
    """file name → (content, the reason recorded for it); a reason ending in … is a prefix."""
    from PIL import Image

    page = Image.open(io.BytesIO(good)).convert("L")
    jpeg, png = encode(page, "JPEG"), encode(page, "PNG")
    frames = [page, page.rotate(90), page.rotate(180)]
    return {
        "empty.png": (b"", "empty file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated or corrupt image…"),
        "truncated.png": (png[: len(png) // 2], "truncated or corrupt image…"),
        "text.png": (b"just some text renamed to .png\n" * 10, "not an image"),
        "bomb.png": (png_declaring(100_000, 100_000), "image too large: 100000x100000 pixels"),
        "layers.psd": (b"8BPS\x00\x01" + b"\x00" * 64, "not an accepted image type: .psd"),
        "doc.pdf": (b"%PDF-1.4\n", "not an accepted image type: .pdf"),
        "vector.svg": (
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            "not an accepted image type: .svg",
        ),
        "figure.eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n", "not an accepted image type: .eps"),
        "psd-inside.png": (b"8BPS\x00\x01" + b"\x00" * 64, "format PSD not accepted"),
        "pdf-inside.png": (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "format PDF not accepted"),
        "svg-inside.png": (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
            "format SVG not accepted",
        ),
        "eps-inside.jpg": (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n",
            "format EPS not accepted",
        ),
        "anim.gif": (
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
            "multi-frame image (3 frames)",
        ),
        "pages.tif": (
            encode(frames[0], "TIFF", save_all=True, append_images=frames[1:2]),
            "multi-frame image (2 frames)",
        ),
        "dot.png": (encode(Image.new("L", (1, 1), 0), "PNG"), "image too small: 1x1 pixels"),
        "huge.png": (
            png + b"\x00" * (50 * 2**20),
            f"file too large: {len(png) + 50 * 2**20} bytes",
        ),
    }


HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
BAD_ROWS = {  # row text (given a label of 3) → reason
    ",".join(["0"] * 783): "expected 785 fields, got 784",
    ",".join(["0"] * 785): "expected 785 fields, got 786",
    ",".join(["0"] * 783 + ["x"]): "pixel783 is not an integer: 'x'",
    ",".join(["-1"] + ["0"] * 783): "pixel0 out of range 0–255: -1",
    ",".join(["0"] * 10 + ["256"] + ["0"] * 773): "pixel10 out of range 0–255: 256",
    ",".join(["NaN"] + ["0"] * 783): "pixel0 is not an integer: 'NaN'",
    ",".join([""] + ["0"] * 783): "pixel0 is empty",
    ",".join(["1.5"] + ["0"] * 783): "pixel0 is not an integer: '1.5'",
    ",".join(["7" * 100_000] + ["0"] * 783): "row longer than 16384 bytes",
}


def test_bad_inputs_get_a_recorded_reason_and_the_rest_is_scored(
    backend: str,
    tmp_path: Path,
    sample_rows: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real CLI, `digits run --json -- -weird dir ü/ -rows.csv …` (names with leading
    dashes, spaces, unicode), on one folder of good and hostile images and on CSVs bad by
    row and bad as a whole: every bad file or row gets its reason in the database, every
    good one its prediction; a CSV that is not a digits CSV is refused before any batch
    exists, with one line naming it and why (issue 21 item 2; it used to fail its batch)."""
    import json

    monkeypatch.setenv("DIGITS_MAX_FILE_BYTES", str(16 * 2**20))
    monkeypatch.setenv("DIGITS_TF_THREADS", "1")
    folder = tmp_path / "-weird dir ü"
    goods = write_scans(tmp_path / "src", sample_rows, 4)
    names = ["scan 01.png", "ünïcødé 02.png", "-dash 03.png", "--help.png"]
    folder.mkdir()
    for name, src in zip(names, goods, strict=True):
        (folder / name).write_bytes(src.read_bytes())
    (folder / "again.png").write_bytes(goods[0].read_bytes())  # the same file twice
    expected = bad_images(goods[0].read_bytes())
    for name, (content, _) in expected.items():
        (folder / name).write_bytes(content)
    good_rows = sample_rows[1:6]
    lines = [HEADER, *good_rows[:2]]
    for row in BAD_ROWS:
        lines.append("3," + row)
    lines.insert(5, "")  # a blank line between rows
    lines += [*good_rows[2:], "12," + ",".join(["0"] * 784)]
    (tmp_path / "-rows.csv").write_text("\n".join(lines) + "\n")
    whole_file = {
        "wrong-header.csv": (b"a,b,c\n1,2,3\n", "not a digits CSV: wrong header"),
        "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00binary\xff\xfe", "a PNG image, but not"),
        "empty.csv": (b"", "not a digits CSV: empty file: no header line"),
        "corrupt.csv.gz": (
            b"\x1f\x8b\x08\x00garbage",
            "not a digits CSV: unreadable compressed file",
        ),
    }
    for name, (content, _) in whole_file.items():
        (tmp_path / name).write_bytes(content)
    started = time.monotonic()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "digits.cli",
            "run",
            "--json",
            "--workers",
            "2",
            "--timeout",
            "150",
            "--",
            "-weird dir ü/",
            "-rows.csv",
            *whole_file,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=200,
    )
    seconds = time.monotonic() - started
    assert run.returncode == 1, run.stderr[-3000:]  # exit 1: some items have errors
    summary = json.loads(run.stdout)
    with session() as sess:
        batches = {
            Path(source).name: (bid, status, error)
            for bid, source, status, error in sess.execute(
                select(Batch.id, Batch.source, Batch.status, Batch.error)
            )
        }
        reasons = {
            (bid, ref): reason
            for bid, ref, reason in sess.execute(
                select(Item.batch_id, Item.source_ref, ItemError.reason).join(
                    ItemError, ItemError.item_id == Item.id
                )
            )
        }
    images_id = batches["-weird dir ü"][0]
    rows_id = batches["-rows.csv"][0]
    for name, (_, reason) in expected.items():
        got = reasons.pop((images_id, name))
        assert got.startswith(reason[:-1]) if reason.endswith("…") else got == reason, (name, got)
    csv_reasons = {ref: why for (bid, ref), why in list(reasons.items()) if bid == rows_id}
    assert sorted(csv_reasons.values()) == sorted(
        [
            f"row {n}: {why}"
            for n, why in zip([3, 4, 6, 7, 8, 9, 10, 11, 12], BAD_ROWS.values(), strict=True)
        ]
        + ["row 5: empty row", "row 16: label out of range 0–9: 12"]
    ), csv_reasons
    for name, (_, message) in whole_file.items():
        assert name not in batches, batches[name]
        assert f"error: {name}: {message}" in run.stderr, (name, run.stderr[-3000:])
    figures = outcome([images_id, rows_id])
    assert (figures["lost"], figures["duplicates"]) == (0, 0), figures
    assert figures["predicted"] == 5 + 5  # 5 good scans (one twice), 5 good rows
    assert summary["items"] == len(expected) + 5 + 16 and summary["errors"] == figures["errors"]
    assert summary["failed_batches"] == [] and len(summary["refused"]) == len(whole_file)
    report(
        f"bad-input-cli[{backend}]",
        bad_files=len(expected),
        bad_rows=len(csv_reasons),
        bad_csv_files=len(whole_file),
        reasons_recorded=len(expected) + len(csv_reasons) + len(whole_file),
        good_scored=figures["predicted"],
        lost=0,
        duplicates=0,
        seconds=round(seconds, 1),
    )
