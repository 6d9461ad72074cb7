"""The nightly export: fired by Celery beat, run by a real worker, idempotent, atomic, safe
when several runs race; and the same by hand with `digits export --since-last`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from digits.app.runner import wait_for
from digits.core.db import session
from digits.core.schema import Export
from digits.core.synthetic_scans import render_scan
from model_store.registry import default_version
from scheduler.batches import enqueue_csv, enqueue_files, image_files
from tests.conftest import write_csv


def scan_folder(folder: Path, sample_rows: list[str], n: int, junk: bool = False) -> Path:
    """``n`` realistic scans of sample digits (+ one file that is not an image)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i, line in enumerate(sample_rows[1 : n + 1]):
        values = np.array(line.split(","), dtype=np.int64)[1:].astype(np.uint8)
        data, ext = render_scan(values, rng, fmt="PNG")
        (folder / f"scan{i:02d}{ext}").write_bytes(data)
    if junk:
        (folder / "zz-notes.png").write_bytes(b"a shopping list, not a digit")
    return folder


def exports() -> list[Export]:
    with session() as sess:
        return list(sess.scalars(select(Export).order_by(Export.id)).all())


def check_export_folder(row: Export, items: int, labelled: int, errors: int) -> dict:
    """The folder holds exactly a complete submission and its manifest, nothing temporary."""
    submission = Path(row.path)
    folder = submission.parent
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", folder.parent.name)
    assert folder.name == f"batch-{row.batch_id}"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "submission.csv"]
    data = submission.read_bytes()
    assert hashlib.sha256(data).hexdigest() == row.sha256
    lines = data.decode().splitlines()
    assert lines[0] == "ImageId,Label" and data.endswith(b"\n")
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    assert len(ids) == len(set(ids)) == labelled == row.rows  # every ImageId at most once
    assert set(ids) <= set(range(1, items + 1))
    assert all(line.split(",")[1] in set("0123456789") for line in lines[1:])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["batch_id"] == row.batch_id
    assert manifest["counts"] == {"items": items, "labelled": labelled, "errors": errors}
    assert manifest["submission_sha256"] == row.sha256
    assert manifest["model_version"] == default_version().version
    assert len(manifest["model_sha256"]) == 64 and manifest["partial"] is bool(errors)
    assert len(manifest["errors"]) == errors
    assert set(ids).isdisjoint(e["image_id"] for e in manifest["errors"])
    return manifest


@pytest.fixture
def beat_scheduler(backend: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The real scheduler loop (inbox, sweeper, embedded Celery beat) exporting every 2 s."""
    from digits.core.settings import get_settings
    from scheduler.service import run_scheduler

    monkeypatch.setenv("DIGITS_EXPORT_SCHEDULE_SECONDS", "2")
    get_settings.cache_clear()
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler, args=(stop,), kwargs={"beat": True})
    thread.start()
    yield
    stop.set()
    thread.join(30)


@pytest.mark.parametrize("backend", ["services"], indirect=True)
def test_beat_fires_the_nightly_export_once_per_batch(
    beat_scheduler: None,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
) -> None:
    from digits.core.settings import get_settings
    from scheduler.export import export_since_last

    worker = worker_factory(concurrency=1)
    worker.wait_ready()
    lines = sample_rows[:101]
    lines.insert(10, "3," + ",".join(["0"] * 783))  # a bad row: the export is partial
    csv_batch = enqueue_csv(write_csv(tmp_path / "mixed.csv", lines), chunk_size=50)
    folder = scan_folder(tmp_path / "scans", sample_rows, 5, junk=True)
    image_batch = enqueue_files(folder, image_files(folder))
    wait_for([csv_batch.batch_id, image_batch.batch_id], timeout=120)
    deadline = time.monotonic() + 60
    while len(exports()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    rows = {row.batch_id: row for row in exports()}
    assert set(rows) == {csv_batch.batch_id, image_batch.batch_id}, worker.tail()
    assert {row.trigger for row in rows.values()} == {"nightly"}
    manifest = check_export_folder(rows[csv_batch.batch_id], items=101, labelled=100, errors=1)
    assert manifest["errors"] == [
        {"image_id": 10, "reason": "row 10: expected 785 fields, got 784"}
    ]
    assert manifest["kind"] == "csv" and manifest["source_sha256"] and "files" not in manifest
    manifest = check_export_folder(rows[image_batch.batch_id], items=6, labelled=5, errors=1)
    assert manifest["files"] == {str(i + 1): f"scan{i:02d}.png" for i in range(5)} | {
        "6": "zz-notes.png"
    }
    assert manifest["errors"][0]["image_id"] == 6
    # idempotent: more beats and a run by hand write nothing new
    root = get_settings().exports_dir
    written = files_in(root)
    assert len(written) == 4
    time.sleep(5)  # two more beats
    assert export_since_last() == []
    assert len(exports()) == 2
    assert files_in(root) == written


def files_in(root: Path) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


def test_export_since_last_by_hand_concurrent_runs_write_each_batch_once(
    backend: str,
    worker_factory: type,
    sample_rows: list[str],
    tmp_path: Path,
) -> None:
    """A batch exported with `digits export --batch` is recorded (manual) and skipped; a run
    waits while another holds a batch's claim and then skips it; three `digits export
    --since-last` processes at once export every other batch exactly once; a fourth run finds
    nothing to do."""
    from digits.core.schema import Batch
    from scheduler.export import export_day, export_one

    worker = worker_factory(concurrency=1)
    worker.wait_ready()
    batches = [
        enqueue_csv(
            write_csv(
                tmp_path / f"part{i}.csv", sample_rows[:1] + sample_rows[1 + 40 * i : 41 + 40 * i]
            )
        )
        for i in range(5)
    ]
    wait_for([b.batch_id for b in batches], timeout=120)
    by_hand = cli(
        "export", "--batch", str(batches[-1].batch_id), "--out", str(tmp_path / "by-hand.csv")
    )
    assert by_hand.returncode == 0 and "wrote 40 rows" in by_hand.stdout, by_hand.stderr
    [manual] = exports()
    assert (manual.batch_id, manual.trigger, manual.rows, manual.path) == (
        batches[-1].batch_id,
        "manual",
        40,
        str(tmp_path / "by-hand.csv"),
    )
    # another run holds batch 1's claim (lock on its row): ours must wait, then skip it
    first = batches[0].batch_id
    result: dict[str, object] = {}
    racer = threading.Thread(
        target=lambda: result.update(done=export_one(first, export_day(), "nightly"))
    )
    with session(write=True) as sess:
        sess.get(Batch, first, with_for_update=True)
        racer.start()
        racer.join(1.5)
        assert racer.is_alive()  # blocked on the claim
        sess.add(
            Export(
                batch_id=first,
                path="written-by-the-other-run",
                trigger="nightly",
                rows=40,
                sha256="0" * 64,
            )
        )
    racer.join(60)
    assert not racer.is_alive() and result == {"done": None}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "digits.cli", "export", "--since-last"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    reported = re.findall(r"^batch (\d+): 40/40 rows → (\S+)", "".join(o for o, _ in outputs), re.M)
    expected = [b.batch_id for b in batches[1:-1]]
    assert sorted(int(b) for b, _ in reported) == expected
    rows = exports()[2:]
    assert sorted(r.batch_id for r in rows) == expected
    assert {r.trigger for r in rows} == {"manual"}
    assert sorted(r.path for r in rows) == sorted(path for _, path in reported)
    for row in rows:
        check_export_folder(row, items=40, labelled=40, errors=0)
    again = cli("export", "--since-last")
    assert again.returncode == 0 and "nothing to export" in again.stdout
    assert len(exports()) == 5
    status = cli("status")
    assert f"export: batch {expected[-1]} → " in status.stdout.replace("\n", "")
    neither = cli("export")
    assert neither.returncode != 0 and "--since-last" in neither.stderr
    assert "Traceback" not in neither.stderr


@pytest.mark.parametrize(
    ("zone", "now", "day"),
    [
        ("UTC", datetime(2026, 1, 1, 23, 30, tzinfo=UTC), "2026-01-01"),
        ("Asia/Tokyo", datetime(2026, 1, 1, 23, 30, tzinfo=UTC), "2026-01-02"),
        ("America/New_York", datetime(2026, 1, 2, 3, 0, tzinfo=UTC), "2026-01-01"),
        ("Not/AZone", datetime(2026, 1, 1, 23, 30, tzinfo=UTC), "2026-01-01"),
    ],
)
def test_the_date_folder_is_the_day_in_the_export_time_zone(
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    zone: str,
    now: datetime,
    day: str,
) -> None:
    from digits.core.settings import get_settings
    from scheduler.export import export_day

    monkeypatch.setenv("DIGITS_EXPORT_TIMEZONE", zone)
    get_settings.cache_clear()
    assert export_day(now).isoformat() == day
