"""Issue 21 items 4–7: what a new user meets reading results. `digits results` shows a screenful
with the reason of each failed item and streams everything else; an unknown batch gets the same
answer from every reading command; an export never overwrites another batch's submission
silently; an image batch's export can name its files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.digits.cli.filled import error_reason, fill_batch


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digits.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def db(home: Path) -> Path:
    """The embedded database, migrated, nothing in it."""
    from digits.core.db import upgrade

    upgrade()
    return home


# ---------------------------------------------------------------- item 4: results
def table_rows(stdout: str) -> list[str]:
    """The table's data lines (rich draws them between │ borders)."""
    return [line for line in stdout.splitlines() if line.startswith("│")]


@pytest.mark.parametrize(
    ("args", "shown", "more"),
    [
        ([], 20, "25 more rows; use --limit N or --all to see them"),
        (["--limit", "30"], 30, "15 more rows; use --limit N or --all to see them"),
        (["--all"], 45, None),
        (["--limit", "45"], 45, None),
    ],
)
def test_results_table_shows_a_screenful_and_says_how_many_more(
    args: list[str], shown: int, more: str | None, backend: str
) -> None:
    """84,647 rows used to be drawn as one table (79 s, 715 MB): the table now stops at 20 rows
    by default and says how to see the rest."""
    fill_batch(45)
    result = cli("results", *args)
    assert result.returncode == 0, result.stderr
    assert len(table_rows(result.stdout)) == shown
    if more:
        assert result.stdout.rstrip().splitlines()[-1] == more
    else:
        assert "more rows" not in result.stdout


def test_results_table_shows_why_an_item_failed(db: Path) -> None:
    """The table hid the `error` column, so a failed item showed no reason."""
    filled = fill_batch(12, error_every=5)
    result = cli("results", "--batch", str(filled.batch_id))
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    for position in filled.errors:
        [row] = [r for r in rows if f"bulk.csv:{position} " in r]
        assert " error " in row and error_reason(position) in row, row


def test_results_all_and_limit_together_are_refused(db: Path) -> None:
    result = cli("results", "--all", "--limit", "5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --all and --limit N exclude each other"


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_results_csv_and_json_give_every_row_and_the_same_values(fmt: str, db: Path) -> None:
    """Machine formats are not cut at 20 rows (a silently truncated CSV would be a trap); the
    streamed JSON is the same document ``json.dumps(rows, indent=1)`` gave."""
    from digits.core.queries import RESULT_COLUMNS, results

    filled = fill_batch(1234, error_every=100)
    out = cli("results", "--format", fmt)
    assert out.returncode == 0, out.stderr
    expected = results(filled.batch_id)
    assert len(expected) == 1234
    if fmt == "json":
        assert out.stdout == json.dumps(expected, indent=1) + "\n"
    else:
        rows = list(csv.DictReader(out.stdout.splitlines()))
        assert len(rows) == 1234 and list(rows[0]) == RESULT_COLUMNS
        assert rows[99]["error"] == error_reason(100) and rows[99]["label"] == ""


def peak_rss_kb(*args: str) -> int:
    """The peak resident memory of one `digits` command: VmHWM, measured inside its own
    process (``ru_maxrss`` would keep the forking pytest worker's peak across exec)."""
    code = (
        "import re, sys\nfrom digits.cli import app\ncode = 0\n"
        f"try:\n    app({list(args)!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
        "sys.stdout.flush()\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]\n"
        "sys.stderr.write(f'EXIT {code} HWM {hwm}\\n')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )
    assert "EXIT 0 HWM " in result.stderr, result.stderr
    return int(result.stderr.rsplit("HWM ", 1)[1])


@pytest.mark.parametrize(
    ("args", "small", "large"),
    [
        (["--format", "csv"], 1_000, 40_000),
        (["--format", "json"], 1_000, 40_000),
        (["--all", "--format", "csv"], 1_000, 40_000),
        (["--all"], 500, 3_000),
    ],
    ids=["csv", "json", "all-csv", "all-table"],
)
def test_results_streams_in_flat_memory(
    args: list[str], small: int, large: int, backend: str
) -> None:
    """Many rows cost no more memory than a few: rows come from the database in pages and go
    straight out."""
    few, many = fill_batch(small), fill_batch(large, error_every=1000)
    base = peak_rss_kb("results", "--batch", str(few.batch_id), *args)
    peak = peak_rss_kb("results", "--batch", str(many.batch_id), *args)
    print(f"{backend} {args}: {small:,} rows {base / 1024:.0f} MB, {large:,} {peak / 1024:.0f} MB")
    assert peak - base < 12 * 1024, (base, peak)


# ---------------------------------------------------------------- item 5: unknown batch
@pytest.mark.parametrize(
    "args",
    [
        ["results", "--batch", "999"],
        ["results", "--batch", "999", "--format", "csv"],
        ["status", "--batch", "999"],
        ["export", "--batch", "999"],
        ["report", "--batch", "999"],
    ],
)
def test_every_reading_command_says_an_unknown_batch_does_not_exist(
    args: list[str], db: Path, tmp_path: Path
) -> None:
    """`digits results --batch 999` printed an empty table and exited 0; status, export and
    report said the batch does not exist. Now all four say the same line, with exit code 1."""
    fill_batch(3)
    here = tmp_path / "here"
    here.mkdir()
    result = cli(*args, cwd=here)
    assert (result.returncode, result.stderr, result.stdout) == (
        1,
        "error: batch 999 does not exist\n",
        "",
    )
    assert list(here.iterdir()) == []  # nothing written


# ---------------------------------------------------------------- item 6: overwriting
def test_export_refuses_to_overwrite_another_batchs_submission(db: Path, tmp_path: Path) -> None:
    """`digits export --batch 4` silently overwrote a submission written for batch 3."""
    first, second = fill_batch(5), fill_batch(7)
    out = tmp_path / "submission.csv"
    assert cli("export", "--batch", str(first.batch_id), "--out", str(out)).returncode == 0
    written = out.read_bytes()
    refused = cli("export", "--batch", str(second.batch_id), "--out", str(out))
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == (
        f"error: {out} holds the export of batch {first.batch_id}: pass --force to overwrite "
        f"it with batch {second.batch_id}\n"
    )
    assert out.read_bytes() == written
    # the same batch again is fine (byte-identical), and --force overwrites
    again = cli("export", "--batch", str(first.batch_id), "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == written
    forced = cli("export", "--batch", str(second.batch_id), "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert len(out.read_text().splitlines()) == 8
    # and now the file holds the second batch: the first is the one refused
    back = cli("export", "--batch", str(first.batch_id), "--out", str(out))
    assert f"holds the export of batch {second.batch_id}" in back.stderr
    # a copy elsewhere is known by its sha256
    copy = tmp_path / "copy.csv"
    copy.write_bytes(written)
    moved = cli("export", "--batch", str(second.batch_id), "--out", str(copy))
    assert f"{copy} holds the export of batch {first.batch_id}:" in moved.stderr


def test_export_reads_the_manifest_beside_a_file_this_database_did_not_write(
    db: Path, tmp_path: Path
) -> None:
    """A submission written from another database (or before its records were cleared) is
    known by its manifest; a file nothing describes is not overwritten either."""
    from digits.core.db import session
    from digits.core.schema import Export
    from scheduler.export import ExportError, export_batch

    first, second = fill_batch(5), fill_batch(6)
    out = tmp_path / "kaggle" / "submission.csv"
    export_batch(first.batch_id, out, manifest=True)
    with session(write=True) as sess:
        sess.query(Export).delete()
    with pytest.raises(ExportError, match=f"holds the export of batch {first.batch_id}:"):
        export_batch(second.batch_id, out)
    mine = tmp_path / "mine.csv"
    mine.write_text("ImageId,Label\n1,7\n")
    refused = cli("export", "--batch", str(second.batch_id), "--out", str(mine))
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert refused.stderr == (
        f"error: {mine} exists and is not an export digits knows of: pass --force to "
        f"overwrite it with batch {second.batch_id}\n"
    )
    assert mine.read_text() == "ImageId,Label\n1,7\n"


# ---------------------------------------------------------------- item 7: file names
def test_export_with_files_names_each_image(db: Path, tmp_path: Path) -> None:
    """The submission keeps Kaggle's two columns (byte-identical with or without the option);
    ``<out>.files.csv`` beside it gives each ImageId its file, label, confidence and flag."""
    filled = fill_batch(12, kind="images", error_every=5)
    plain, out = tmp_path / "plain.csv", tmp_path / "submission.csv"
    first = cli("export", "--batch", str(filled.batch_id), "--out", str(plain), "--partial")
    assert first.returncode == 0, first.stderr
    result = cli(
        "export", "--batch", str(filled.batch_id), "--out", str(out), "--partial", "--with-files"
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == plain.read_bytes()
    files = out.with_name("submission.files.csv")
    assert f"+ {files.name}" in result.stdout
    lines = files.read_text().splitlines()
    assert lines[0] == "ImageId,file,label,confidence,needs_review"
    rows = list(csv.reader(lines[1:]))
    assert [int(r[0]) for r in rows] == list(range(1, 13))
    assert [r[1] for r in rows] == [f"scan{i}.png" for i in range(1, 13)]
    for image_id, _, label, confidence, review in rows:
        if int(image_id) in filled.errors:
            assert (label, confidence, review) == ("", "", "")
        else:
            assert int(label) == int(image_id) % 10
            assert 0 < float(confidence) < 1 and review == str(int(image_id) % 10 == 0)


def test_the_manifest_lists_files_in_image_id_order(db: Path, tmp_path: Path) -> None:
    """Manifest keys sorted as text put "10" before "2"; they follow the ImageIds now."""
    filled = fill_batch(12, kind="images")
    out = tmp_path / "submission.csv"
    result = cli("export", "--batch", str(filled.batch_id), "--out", str(out), "--manifest")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(out.with_name("submission.manifest.json").read_text())
    assert list(manifest["files"]) == [str(i) for i in range(1, 13)]
    assert manifest["files"]["10"] == "scan10.png"
    assert list(manifest) == sorted(manifest)  # the rest stays sorted


def test_with_files_is_for_one_batch(db: Path) -> None:
    result = cli("export", "--since-last", "--with-files")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--with-files" in result.stderr and len(result.stderr.splitlines()) == 1
