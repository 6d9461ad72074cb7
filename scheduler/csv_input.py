"""Kaggle "Digit Recognizer" CSV input: streamed, validated row by row, bounded in memory.

A file is read in blocks of lines. Each block takes a fast path (pandas' C parser) and falls
back to a per-row check only when something is wrong, so a clean 28,000-row file parses in
well under a second while a bad row still gets its own row number and reason.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from numpy.typing import NDArray

PIXELS = 784
PIXEL_HEADER = [f"pixel{i}" for i in range(PIXELS)]
LABELLED_HEADER = ["label", *PIXEL_HEADER]
#: A valid row is at most 785 fields of 3 digits: anything far longer is refused unread.
MAX_LINE_BYTES = 16 * 1024
NO_LABEL = -1


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


def check_row(line: str, labelled: bool) -> tuple[NDArray[np.uint8], int] | str:
    """Validate one data row; return (pixels, label) or the reason it is refused."""
    text = line.strip()
    if not text:
        return "empty row"
    fields = text.split(",")
    expected = PIXELS + 1 if labelled else PIXELS
    if len(fields) != expected:
        return f"expected {expected} fields, got {len(fields)}"
    values: list[int] = []
    names = LABELLED_HEADER if labelled else PIXEL_HEADER
    for name, raw in zip(names, fields, strict=True):
        token = raw.strip()
        try:
            value = int(token)
        except ValueError:
            shown = token[:20] if token else "empty"
            return f"{name} is not an integer: {shown!r}" if token else f"{name} is empty"
        values.append(value)
    label = NO_LABEL
    if labelled:
        label = values.pop(0)
        if not 0 <= label <= 9:
            return f"label out of range 0–9: {label}"
    arr = np.asarray(values, dtype=np.int64)
    bad = np.flatnonzero((arr < 0) | (arr > 255))
    if bad.size:
        return f"pixel{bad[0]} out of range 0–255: {arr[bad[0]]}"
    return arr.astype(np.uint8), label


def parse_block(lines: list[str | None], first_row: int, labelled: bool) -> Block:
    """Parse consecutive data lines (None marks a line refused as too long). Pure function."""
    expected = PIXELS + 1 if labelled else PIXELS
    fast: NDArray[np.int64] | None = None
    if all(line is not None and line.strip() for line in lines):
        try:
            frame = pd.read_csv(
                io.StringIO("".join(line for line in lines if line is not None)),
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
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict",
                                newline="")
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


def read_blocks(path: Path, block_rows: int = 1000) -> Iterator[tuple[bool, Block]]:
    """Stream a CSV as validated blocks of ``block_rows`` rows: yields (labelled, block).

    Raises CsvFileError when the file is not a digits CSV at all (binary, wrong header, empty).
    Trailing blank lines are ignored; a blank line between rows is an error row.
    """
    try:
        with open_text(path) as fh:
            lines = bounded_lines(fh)
            header = next(lines, None)
            if header is None:
                raise CsvFileError("empty file: no header line")
            labelled = parse_header(header)
            pending: list[str | None] = []
            blanks: list[str | None] = []
            row = 1
            for line in lines:
                if line is not None and not line.strip():
                    blanks.append(line)
                    continue
                if blanks:
                    pending.extend(blanks)
                    blanks = []
                pending.append(line)
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
                f"{path} has no label column: training needs label,pixel0..783" if labelled
                else f"{path} has a label column: pseudo-labelling takes an unlabelled CSV "
                "(pixel0..783, like test.csv)")
        if block.errors:
            row, reason = block.errors[0]
            raise CsvFileError(f"{path}: row {row}: {reason} ({len(block.errors)} bad rows)")
        pixels.append(block.pixels)
        labels.append(block.labels)
    if not pixels:
        raise CsvFileError(f"{path} has no data rows")
    return np.concatenate(pixels), np.concatenate(labels)
