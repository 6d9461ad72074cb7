"""What `digits run` and `digits enqueue` are given: checked and grouped before any batch.

An input that cannot become a batch (a missing path, an empty folder, a folder with no image
in it, a CSV with a wrong header or no rows, a file that is neither a CSV nor an image) is
refused here with one line, before the database, the broker or a worker is touched: a user
at a terminal hears about it at once instead of finding a failed batch with a `0/0` bar.
The inbox does not come through here: nobody reads its terminal, so there a bad drop stays
a failed batch with its reason (scheduler/batches.py).

Grouping: every image file named on the command line goes into one batch (a shell glob such
as ``drop/*.jpg`` is one batch, not one per file), placed where the first of them was; each
CSV and each folder is a batch of its own, in the order given.

Only the standard library and digits.core: importing this creates nothing (the broker's
module creates its folders on import).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from digits.core.csv_input import csv_problem
from digits.core.safe_files import is_hidden

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
ACCEPTED_IMAGES = ", ".join(sorted(IMAGE_SUFFIXES))
CSV_NAMES = (".csv", ".gz")
#: Leading bytes of the image formats digits reads: a scan saved under another name.
IMAGE_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


@dataclass(frozen=True)
class Planned:
    """One batch to make: a CSV, a folder of images, or image files named one by one."""

    kind: str  # "csv" | "folder" | "files"
    paths: tuple[Path, ...]

    @property
    def name(self) -> str:
        first = self.paths[0].name
        return first if len(self.paths) == 1 else f"{first} and {len(self.paths) - 1} more"


def storable(text: str) -> str:
    """A file name as the database can store it: a name that is not UTF-8 (Python keeps its
    bytes as surrogates) gets them as ``\\xNN`` escapes, any other name is unchanged."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def image_files(folder: Path) -> list[Path]:
    """Every entry of a folder that is not a folder itself, in a stable order (sorted by
    relative path), walked without following links: a link (to a file or a folder), a FIFO
    or a socket is listed, so it gets an item and its reason; hidden names (one leading dot)
    are skipped, as the inbox documents."""
    found: list[Path] = []
    for top, dirs, files in os.walk(folder, followlinks=False):
        base = Path(top)
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        for name in files:
            if not is_hidden(name):
                found.append(base / name)
        for name in dirs:  # a link to a folder is listed in dirs but never entered
            if (base / name).is_symlink():
                found.append(base / name)
    return sorted(found, key=lambda p: str(p.relative_to(folder)))


def input_problem(path: Path) -> str | None:
    """What is wrong with one command-line input, if anything (None: it can be a batch).

    Reads at most a folder's listing or a file's first lines; the content of each image is
    checked later, by the worker that decodes it (a bad one is an item with its reason)."""
    shown = storable(str(path.absolute()))
    if shown != str(path.absolute()):
        return "the path is not valid UTF-8; rename it"
    if not path.exists():
        return "no such file or folder"
    if path.is_dir():
        return _folder_problem(path)
    if not path.is_file():
        return "not a regular file or folder (a FIFO, socket or device is never read)"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    why = csv_problem(path)
    if why is None:
        return None
    image = _image_format(path)
    if image:
        return (
            f"a {image} image, but not named like one: image files must end in "
            f"{ACCEPTED_IMAGES}; rename it"
        )
    if path.name.lower().endswith(CSV_NAMES):
        return f"not a digits CSV: {why}"
    return f"neither an image file ({ACCEPTED_IMAGES}) nor a digits CSV ({why})"


def _folder_problem(folder: Path) -> str | None:
    try:
        with os.scandir(folder) as entries:
            anything = next(entries, None) is not None
    except OSError as exc:
        return f"cannot read the folder: {exc.strerror or exc}"
    files = image_files(folder)
    if not files:
        if anything:
            return "no files in this folder but hidden ones (names starting with a dot are skipped)"
        return "empty folder: no files in it"
    if any(f.suffix.lower() in IMAGE_SUFFIXES for f in files):
        return None
    plural = "s" if len(files) != 1 else ""
    return (
        f"no image files in this folder ({len(files)} other file{plural}, e.g. "
        f"{storable(str(files[0].relative_to(folder)))}); accepted: {ACCEPTED_IMAGES}"
    )


def _image_format(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
    except OSError:
        return None
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in IMAGE_SIGNATURES if head.startswith(magic)), None)


def plan_inputs(paths: list[Path]) -> tuple[list[Planned], list[str]]:
    """The batches to make from the command line, and one line per refused input
    (``<path>: <what is wrong>``). Image files given by name are one batch, at the place of
    the first; the same file named twice is taken once."""
    planned: list[Planned | None] = []
    refused: list[str] = []
    files: dict[Path, None] = {}
    slot: int | None = None
    for path in paths:
        problem = input_problem(path)
        if problem:
            refused.append(f"{path}: {problem}")
        elif path.is_dir():
            planned.append(Planned("folder", (path,)))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if slot is None:
                slot = len(planned)
                planned.append(None)
            files[path.parent.resolve() / path.name] = None  # the entry itself: never resolved
        else:
            planned.append(Planned("csv", (path,)))
    if slot is not None:
        planned[slot] = Planned("files", tuple(files))
    return [p for p in planned if p is not None], refused
