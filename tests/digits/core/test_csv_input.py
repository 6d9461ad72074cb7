"""CSV validation: a bad row gets its row number and reason, the rest of the file goes on."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from digits.core.csv_input import (
    PIXEL_HEADER,
    CsvFileError,
    parse_block,
    parse_header,
    read_blocks,
    read_labelled,
    read_unlabelled,
)

HEADER = ",".join(PIXEL_HEADER)
LABELLED = "label," + HEADER
ROW = ",".join(["0"] * 783 + ["255"])


def blocks(path: Path, size: int = 1000) -> tuple[list[int], list[tuple[int, str]]]:
    rows: list[int] = []
    errors: list[tuple[int, str]] = []
    for _, block in read_blocks(path, size):
        rows += block.rows
        errors += block.errors
    return rows, errors


@pytest.mark.parametrize(
    ("header", "labelled"), [(HEADER, False), (LABELLED, True), ("\ufeff" + LABELLED, True)]
)
def test_header_accepts_both_kaggle_layouts(header: str, labelled: bool) -> None:
    assert parse_header(header) is labelled


@pytest.mark.parametrize(
    "header",
    ["a,b,c", "label," + ",".join(PIXEL_HEADER[:-1]), ",".join(reversed(PIXEL_HEADER)), ""],
)
def test_wrong_header_fails_the_file(header: str) -> None:
    with pytest.raises(CsvFileError, match="wrong header"):
        parse_header(header)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (",".join(["0"] * 783), "expected 784 fields, got 783"),
        (",".join(["0"] * 785), "expected 784 fields, got 785"),
        (",".join(["0"] * 783 + ["x"]), "pixel783 is not an integer: 'x'"),
        (",".join(["-1"] + ["0"] * 783), "pixel0 out of range 0–255: -1"),
        (",".join(["0"] * 10 + ["256"] + ["0"] * 773), "pixel10 out of range 0–255: 256"),
        (",".join(["NaN"] + ["0"] * 783), "pixel0 is not an integer: 'NaN'"),
        (",".join([""] + ["0"] * 783), "pixel0 is empty"),
        (",".join(["1.5"] + ["0"] * 783), "pixel0 is not an integer: '1.5'"),
    ],
)
def test_bad_row_gets_row_number_and_reason(tmp_path: Path, row: str, reason: str) -> None:
    path = tmp_path / "in.csv"
    path.write_text("\n".join([HEADER, ROW, row, ROW]) + "\n")
    rows, errors = blocks(path)
    assert rows == [1, 3]
    assert errors == [(2, reason)]


def test_blank_line_between_rows_is_an_error_but_trailing_blanks_are_not(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("\n".join([HEADER, ROW, "", ROW, "", ""]) + "\n")
    rows, errors = blocks(path)
    assert rows == [1, 3]
    assert errors == [(2, "empty row")]


@pytest.mark.parametrize("size", [100_000, 50_000_000], ids=["100kB", "50MB"])
def test_huge_field_is_refused_without_reading_it_whole(tmp_path: Path, size: int) -> None:
    path = tmp_path / "in.csv"
    path.write_text("\n".join([HEADER, ROW, "1" * size + "," + ROW, ROW]) + "\n")
    rows, errors = blocks(path)
    assert rows == [1, 3]
    assert errors == [(2, "row longer than 16384 bytes")]


def test_label_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("\n".join([LABELLED, "3," + ROW, "12," + ROW]) + "\n")
    labels = [b.labels.tolist() for _, b in read_blocks(path)]
    assert labels == [[3]]
    assert blocks(path)[1] == [(2, "label out of range 0–9: 12")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00binary\xff\xfe", "not a CSV text file"),
        (b"", "empty file"),
        (b"\x1f\x8b\x08\x00garbage", "unreadable compressed file"),
        (b"hello,world\n1,2\n", "wrong header"),
    ],
)
def test_not_a_csv_fails_the_file_clearly(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(content)
    with pytest.raises(CsvFileError, match=message):
        blocks(path)


def test_gzip_detected_by_content_and_blocks_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "data.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join([HEADER] + [ROW] * 25) + "\n")
    sizes = [len(b.rows) for _, b in read_blocks(path, 10)]
    assert sizes == [10, 10, 5]


def test_fast_and_slow_paths_agree(sample_rows: list[str]) -> None:
    lines = [line + "\n" for line in sample_rows[1:21]]
    fast = parse_block(lines, 1, True)
    broken = [*lines[:5], "oops\n", *lines[5:]]
    slow = parse_block(broken, 1, True)
    assert slow.errors == [(6, "expected 785 fields, got 1")]
    assert np.array_equal(fast.pixels, slow.pixels)
    assert fast.labels.tolist() == slow.labels.tolist()


def test_read_labelled_refuses_unlabelled(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("\n".join([HEADER, ROW]) + "\n")
    with pytest.raises(CsvFileError, match="no label column"):
        read_labelled(path)


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (LABELLED, "3," + ROW, "has a label column: pseudo-labelling takes an unlabelled CSV"),
        (HEADER, ROW.replace("255", "256"), "row 2: "),
    ],
)
def test_read_unlabelled_refuses_labels_and_bad_rows(
    tmp_path: Path, header: str, row: str, message: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_text("\n".join([header, ROW if header == HEADER else "1," + ROW, row]) + "\n")
    with pytest.raises(CsvFileError, match=message):
        read_unlabelled(path)


def test_read_unlabelled_reads_every_row(tmp_path: Path) -> None:
    path = tmp_path / "in.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join([HEADER, ROW, ROW.replace("255", "7")]) + "\n")
    pixels = read_unlabelled(path)
    assert pixels.shape == (2, 784) and pixels.dtype == np.uint8
    assert pixels[:, -1].tolist() == [255, 7]


def _row_with(value: str, at: int = 5) -> str:
    fields = ["0"] * 784
    fields[at] = value
    return ",".join(fields)


NOT_PLAIN = "pixel5 is not a plain integer (ASCII digits only): "


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (str(2**63), f"pixel5 out of range 0–255: {2**63}"),
        (str(2**64), f"pixel5 out of range 0–255: {2**64}"),
        ("9" * 23, "pixel5 out of range 0–255: " + "9" * 23),
        ("9" * 5000, "pixel5 out of range 0–255: " + "9" * 30 + "… (5000 digits)"),
        # past Python's 4300-digit int() limit: classified as text, never int() (ValueError)
        ("-" + "9" * 5000, "pixel5 out of range 0–255: -" + "9" * 30 + "… (5000 digits)"),
        ("-" + "0" * 5000, f"{NOT_PLAIN}'-{'0' * 19}'"),
        ("٣" * 5000, f"{NOT_PLAIN}'{'٣' * 20}'"),
        (" " + "9" * 5000, f"{NOT_PLAIN}' {'9' * 19}'"),
        (" 7", "pixel5 is not a plain integer (ASCII digits only): ' 7'"),
        ("7 ", "pixel5 is not a plain integer (ASCII digits only): '7 '"),
        ("+5", "pixel5 is not a plain integer (ASCII digits only): '+5'"),
        ("-0", "pixel5 is not a plain integer (ASCII digits only): '-0'"),
        ("٣", "pixel5 is not a plain integer (ASCII digits only): '٣'"),
        ("７", "pixel5 is not a plain integer (ASCII digits only): '７'"),
        ("1e3", "pixel5 is not an integer: '1e3'"),
        ("0x1", "pixel5 is not an integer: '0x1'"),
        ("1_0", "pixel5 is not a plain integer (ASCII digits only): '1_0'"),
    ],
)
def test_a_value_is_plain_ascii_digits_whatever_its_size(
    tmp_path: Path, value: str, reason: str
) -> None:
    """One hostile value is a row error, never an exception; the other rows go on. The fast
    (pandas) path and the per-row check must refuse the same things."""
    path = tmp_path / "x.csv"
    path.write_text("\n".join([HEADER, ROW, _row_with(value), ROW]) + "\n", encoding="utf-8")
    rows, errors = blocks(path)
    assert rows == [1, 3]
    assert errors == [(2, reason)]


@pytest.mark.parametrize("value", ["0", "00", "007", "255"])
def test_leading_zeros_and_crlf_are_plain_integers(tmp_path: Path, value: str) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(("\r\n".join([HEADER, _row_with(value), ROW]) + "\r\n").encode())
    rows, errors = blocks(path)
    assert (rows, errors) == ([1, 2], [])


def test_a_label_of_any_size_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("\n".join([LABELLED, "3," + ROW, f"{2**70}," + ROW]) + "\n")
    rows, errors = blocks(path)
    assert rows == [1]
    assert errors == [(2, f"label out of range 0–9: {2**70}")]


WIDE_HEADER = ",".join(f"pixel{i}" for i in range(10_000))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            WIDE_HEADER,
            f"wrong header: the first line is {len(WIDE_HEADER) + 1:,} characters long with 10,000 "
            "columns; a digits "
            "CSV header has 784 (pixel0,…,pixel783) or 785 (label first)",
        ),
        (
            "x" * 50_000_000,
            "wrong header: the first line is 50,000,001 characters long with 1 column; a digits "
            "CSV header has 784 (pixel0,…,pixel783) or 785 (label first)",
        ),
    ],
    ids=["10000-columns", "one-50MB-line"],
)
def test_an_oversized_header_gets_its_real_reason(
    tmp_path: Path, header: str, message: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_text(header + "\n" + ROW + "\n")
    with pytest.raises(CsvFileError) as caught:
        blocks(path)
    assert str(caught.value) == message


@pytest.mark.parametrize("skip", [0, 1, 3, 4, 7, 9])
@pytest.mark.parametrize("size", [1, 2, 4])
def test_skipping_rows_continues_with_the_same_row_numbers(
    tmp_path: Path, skip: int, size: int
) -> None:
    """What a resumed ingestion reads: the rows after ``skip``, numbered as in a full read
    (a blank line between rows and a bad row included)."""
    lines = [HEADER, ROW, ROW, "", ROW, _row_with("x"), ROW, ROW, ROW, "", ""]
    path = tmp_path / "x.csv"
    path.write_text("\n".join(lines) + "\n")
    rows: list[int] = []
    errors: list[int] = []
    for _, block in read_blocks(path, size, skip_rows=skip):
        rows += block.rows
        errors += [row for row, _ in block.errors]
    full_rows, full_errors = blocks(path)
    assert rows == [r for r in full_rows if r > skip]
    assert errors == [r for r, _ in full_errors if r > skip]
