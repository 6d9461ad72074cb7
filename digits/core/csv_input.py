"""Kaggle "Digit Recognizer" CSV input: streamed, validated row by row, bounded in memory.

A file is read in blocks of lines. Each block takes a fast path (pandas' C parser) and falls
back to a per-row check only when something is wrong, so a clean 28,000-row file parses in
well under a second while a bad row still gets its own row number and reason.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray

PIXELS = 784
PIXEL_HEADER = [f"pixel{i}" for i in range(PIXELS)]
LABELLED_HEADER = ["label", *PIXEL_HEADER]
#: A valid row is at most 785 fields of 3 digits: anything far longer is refused unread.
MAX_LINE_BYTES = 16 * 1024
NO_LABEL = -1
#: What a value may be: plain ASCII digits. Kaggle's files hold nothing else; Python's int()
#: would also take " 7", "+5", "1_0" and other scripts' digits ("٣"), which are refused.
PLAIN_INTEGER = re.compile(r"[0-9]+")
#: What Python's int() would take (Unicode whitespace, a sign, any script's digits, "_"
#: between digits): matched as text, since int() itself refuses over 4300 digits (ValueError).
LENIENT_INTEGER = re.compile(r"\s*[+-]?\d+(?:_\d+)*\s*")
#: Everything a clean block is made of; any other character sends it to the per-row check.
CLEAN_BYTES = b"0123456789,\r\n"
#: How much of an absurd value a reason quotes.
SHOWN_DIGITS = 30


class CsvFileError(ValueError):
    """The file as a whole is not a Kaggle digits CSV (the batch fails with this message)."""


@dataclass
class Block:
    """Parsed rows of one block. ``rows`` are 1-based data-row numbers (Kaggle ImageIds)."""

    rows: list[int] = field(default_factory=list)
    pixels: NDArray[np.uint8] = field(default_factory=lambda: np.zeros((0, PIXELS), np.uint8))
    labels: NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, np.int16))
    errors: list[tuple[int, str]] = field(default_factory=list)


def parse_header(line: str) -> bool:
    """Return True when the header has a label column; raise CsvFileError when it is wrong."""
    names = [name.strip().strip('"') for name in line.lstrip("\ufeff").strip().split(",")]
    if names == LABELLED_HEADER:
        return True
    if names == PIXEL_HEADER:
        return False
    shown = line.strip()[:80]
    raise CsvFileError(
        f"wrong header: expected 'pixel0,…,pixel783' with an optional leading 'label' "
        f"({PIXELS} or {PIXELS + 1} columns), got {len(names)} columns starting {shown!r}"
    )


def _shown_number(token: str) -> str:
    """A value as a reason quotes it: whole up to SHOWN_DIGITS digits, else cut with its
    length, so one absurd field cannot make a megabyte reason."""
    if len(token) <= SHOWN_DIGITS:
        return token
    return f"{token[:SHOWN_DIGITS]}… ({len(token)} digits)"


def _not_plain(name: str, token: str) -> str:
    """Why a value that is not plain ASCII digits is refused: a negative number is out of
    range; one Python's int() would take (" 7", "+5", "٣", "1_0") is not plain; the rest is
    not an integer at all."""
    magnitude = token[1:]
    if token.startswith("-") and PLAIN_INTEGER.fullmatch(magnitude) and magnitude.strip("0"):
        what = "label out of range 0–9" if name == "label" else f"{name} out of range 0–255"
        return f"{what}: -{_shown_number(magnitude)}"
    if LENIENT_INTEGER.fullmatch(token):
        return f"{name} is not a plain integer (ASCII digits only): {token[:20]!r}"
    return f"{name} is not an integer: {token[:20]!r}"


def check_row(line: str, labelled: bool) -> tuple[NDArray[np.uint8], int] | str:
    """Validate one data row; return (pixels, label) or the reason it is refused.

    Values are checked as text and compared as Python integers, so a value of any size is a
    row error, never an OverflowError (NumPy's int64 ends at 2**63 - 1)."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return "empty row"
    fields = text.split(",")
    expected = PIXELS + 1 if labelled else PIXELS
    if len(fields) != expected:
        return f"expected {expected} fields, got {len(fields)}"
    values: list[int] = []
    names = LABELLED_HEADER if labelled else PIXEL_HEADER
    for name, token in zip(names, fields, strict=True):
        if not token:
            return f"{name} is empty"
        if not PLAIN_INTEGER.fullmatch(token):
            return _not_plain(name, token)
        top = 9 if name == "label" else 255
        digits = token.lstrip("0") or "0"  # "007" is 7, as pandas' fast path reads it
        if len(digits) > 3 or int(digits) > top:
            what = "label out of range 0–9" if name == "label" else f"{name} out of range 0–255"
            return f"{what}: {_shown_number(token)}"
        values.append(int(digits))
    label = values.pop(0) if labelled else NO_LABEL
    return np.asarray(values, dtype=np.uint8), label


def _clean(text: str) -> bool:
    """Whether a block holds only digits, commas and line ends (about 1 ms per 1,000 rows:
    bytes.translate deletes the allowed bytes in C, anything left is a reason to look)."""
    try:
        return not text.encode("ascii").translate(None, CLEAN_BYTES)
    except UnicodeEncodeError:
        return False


def parse_block(lines: Sequence[str | None], first_row: int, labelled: bool) -> Block:
    """Parse consecutive data lines (None marks a line refused as too long). Pure function."""
    expected = PIXELS + 1 if labelled else PIXELS
    fast: NDArray[np.int64] | None = None
    text = "" if any(line is None for line in lines) else "".join(lines)  # type: ignore[arg-type]
    # pandas' parser is lenient (" 7", "+5"): only a block of plain digits takes the fast path
    if text and all(line and line.strip() for line in lines) and _clean(text):
        import pandas as pd  # here: a run of images never pays its import (0.15 s)

        try:
            frame = pd.read_csv(
                io.StringIO(text),
                header=None,
                dtype=np.int64,
                engine="c",
                na_filter=False,
            )
            if frame.shape == (len(lines), expected):
                fast = frame.to_numpy()
        except (ValueError, pd.errors.ParserError, OverflowError):
            fast = None
    block = Block()
    rows = np.arange(first_row, first_row + len(lines))
    if fast is not None:
        labels = fast[:, 0] if labelled else np.full(len(lines), NO_LABEL)
        pixels = fast[:, 1:] if labelled else fast
        ok = ((pixels >= 0) & (pixels <= 255)).all(axis=1) & (
            (labels >= 0) & (labels <= 9) if labelled else True
        )
        if ok.all():
            return Block(rows.tolist(), pixels.astype(np.uint8), labels.astype(np.int16), [])
    good_pixels: list[NDArray[np.uint8]] = []
    good_labels: list[int] = []
    for row, line in zip(rows.tolist(), lines, strict=True):
        result = (
            f"row longer than {MAX_LINE_BYTES} bytes" if line is None else check_row(line, labelled)
        )
        if isinstance(result, str):
            block.errors.append((row, result))
        else:
            block.rows.append(row)
            good_pixels.append(result[0])
            good_labels.append(result[1])
    if good_pixels:
        block.pixels = np.stack(good_pixels)
        block.labels = np.asarray(good_labels, dtype=np.int16)
    return block


def open_text(path: Path) -> IO[str]:
    """Open .csv or .csv.gz (detected by magic bytes, not by name) as strict UTF-8 text."""
    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(
            gzip.open(path, "rb"), encoding="utf-8", errors="strict", newline=""
        )
    return path.open(encoding="utf-8", errors="strict", newline="")


def bounded_lines(fh: IO[str]) -> Iterator[str | None]:
    """Yield lines; a line over MAX_LINE_BYTES is drained in pieces and yielded as None."""
    while True:
        line = fh.readline(MAX_LINE_BYTES)
        if not line:
            return
        if len(line) >= MAX_LINE_BYTES and not line.endswith("\n"):
            while True:
                rest = fh.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith("\n"):
                    break
            yield None
            continue
        yield line


def read_header(fh: IO[str]) -> str:
    """The first line, bounded: one far longer than a digits header (10,000 columns, or a
    50 MB line with no newline) is drained in pieces, counting its columns, and refused with
    its real size instead of being read whole or mistaken for an empty file."""
    line = fh.readline(MAX_LINE_BYTES)
    if not line:
        raise CsvFileError("empty file: no header line")
    if len(line) < MAX_LINE_BYTES or line.endswith("\n"):
        return line
    size, commas = len(line), line.count(",")
    while piece := fh.readline(MAX_LINE_BYTES):
        size += len(piece)
        commas += piece.count(",")
        if piece.endswith("\n"):
            break
    raise CsvFileError(
        f"wrong header: the first line is {size:,} characters long with {commas + 1:,} "
        f"column{'s' if commas else ''}; a digits CSV header has {PIXELS} "
        f"(pixel0,…,pixel783) or {PIXELS + 1} (label first)"
    )


def read_blocks(
    path: Path, block_rows: int = 1000, skip_rows: int = 0
) -> Iterator[tuple[bool, Block]]:
    """Stream a CSV as validated blocks of ``block_rows`` rows: yields (labelled, block).

    Raises CsvFileError when the file is not a digits CSV at all (binary, wrong header, empty).
    Trailing blank lines are ignored; a blank line between rows is an error row.
    ``skip_rows``: data rows 1..skip_rows are counted but not parsed (a resumed ingestion
    continues after the last row it committed, with the same row numbers).
    """
    try:
        with open_text(path) as fh:
            labelled = parse_header(read_header(fh))
            lines = bounded_lines(fh)
            pending: list[str | None] = []
            blanks: list[str | None] = []
            row = 1
            for line in lines:
                if line is not None and not line.strip():
                    blanks.append(line)
                    continue
                for taken in (*blanks, line):
                    if not pending and row <= skip_rows:
                        row += 1  # ingested before: count it, do not parse it
                        continue
                    pending.append(taken)
                blanks = []
                if len(pending) >= block_rows:
                    yield labelled, parse_block(pending, row, labelled)
                    row += len(pending)
                    pending = []
            if pending:
                yield labelled, parse_block(pending, row, labelled)
    except UnicodeDecodeError as exc:
        raise CsvFileError(f"not a CSV text file (not UTF-8 at byte {exc.start})") from exc
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CsvFileError(f"unreadable compressed file: {exc}") from exc


def csv_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a digits CSV at all, from its header and first data line (None:
    it can). What `digits run`/`enqueue` check before a batch exists; a problem further in
    (a truncated gzip half-way, bad rows) is still found while the file is ingested."""
    try:
        with open_text(path) as fh:
            parse_header(read_header(fh))
            for line in bounded_lines(fh):
                if line is None or line.strip():
                    return None
        return "no data rows"
    except CsvFileError as exc:
        return str(exc)
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text at byte {exc.start}"
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        return f"unreadable compressed file: {exc}"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"


def read_labelled(path: Path) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Load a whole labelled CSV (for training): every row must be valid."""
    pixels, labels = _read_whole(path, labelled=True)
    return pixels, labels.astype(np.int64)


def read_unlabelled(path: Path) -> NDArray[np.uint8]:
    """Load a whole unlabelled CSV (``pixel0..783``, like Kaggle's test.csv) for
    pseudo-labelling: every row must be valid. A labelled file is refused rather than its
    labels dropped: one passed here by mistake is most likely the training file itself."""
    return _read_whole(path, labelled=False)[0]


def _read_whole(path: Path, labelled: bool) -> tuple[NDArray[np.uint8], NDArray[np.int16]]:
    pixels: list[NDArray[np.uint8]] = []
    labels: list[NDArray[np.int16]] = []
    for has_labels, block in read_blocks(path, 5000):
        if has_labels != labelled:
            raise CsvFileError(
                f"{path} has no label column: training needs label,pixel0..783"
                if labelled
                else f"{path} has a label column: pseudo-labelling takes an unlabelled CSV "
                "(pixel0..783, like test.csv)"
            )
        if block.errors:
            row, reason = block.errors[0]
            raise CsvFileError(f"{path}: row {row}: {reason} ({len(block.errors)} bad rows)")
        pixels.append(block.pixels)
        labels.append(block.labels)
    if not pixels:
        raise CsvFileError(f"{path} has no data rows")
    return np.concatenate(pixels), np.concatenate(labels)
