"""Files uploaded through the web console become batches by the inbox's own route.

An upload is written into a fresh folder ``DIGITS_HOME/uploads/upload-<time>-<random>/``
(each file under a safe name: ``0001-<letters, digits, . _ ->``, so no name can climb out
of the folder, hide itself or clash) and then enqueued exactly as a command-line input is:
every file is checked by ``scheduler.inputs.input_problem`` (the same names whitelist and
CSV checks as `digits run`), the image files become one folder batch (``enqueue_files``,
decoded by the workers with the inbox's decoders), each CSV a CSV batch of its own
(``enqueue_csv``). The name a file came with is kept as its item's source (shown escaped).

Refused before any batch exists, and nothing kept on disk: no file, more than
``DIGITS_MAX_UPLOAD_FILES`` files, a file over ``DIGITS_MAX_FILE_BYTES``, a file that is
neither an accepted image nor a digits CSV. Files are never deduplicated against earlier
batches (as with `digits run`): whoever uploads wants to see every file's answer.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from digits.core.settings import get_settings
from scheduler.batches import enqueue_csv, enqueue_files
from scheduler.inputs import IMAGE_SUFFIXES, input_problem, storable

UPLOADS = "uploads"
COPY_BLOCK = 1 << 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadRefused(ValueError):
    """The whole upload is refused (nothing is created); ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadedBatch:
    batch_id: int
    kind: str  # "images" | "csv"
    name: str  # what the user uploaded (first file's name and how many more)
    items: int
    errors: int
    failed: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "batch_id": self.batch_id,
            "kind": self.kind,
            "name": self.name,
            "items": self.items,
            "errors": self.errors,
            "failed": self.failed,
        }


def source_name(raw: str) -> str:
    """The name a file came with, as stored: the last path component only (a browser sends no
    folders; a hostile client may send ``../../x``), control characters as ``\\xNN``."""
    last = raw.replace("\\", "/").rsplit("/", 1)[-1] or "unnamed"
    shown = storable("".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in last))
    return shown if len(shown) <= 255 else f"{shown[:100]}…{shown[-150:]}"  # keeps the extension


def disk_name(index: int, name: str) -> str:
    """A safe name on disk that keeps the extension: ``0007-_img_src_x_onerror_.png``."""
    safe = _UNSAFE.sub("_", name)[-100:].lstrip(".") or "file"
    return f"{index:04d}-{safe}"


def upload_folder() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = get_settings().home.resolve() / UPLOADS / f"upload-{stamp}-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    return folder


def _copy(stream: BinaryIO, target: Path, limit: int, shown: str) -> None:
    size = 0
    with target.open("xb") as out:
        while block := stream.read(COPY_BLOCK):
            size += len(block)
            if size > limit:
                raise UploadRefused(
                    f"{shown}: larger than DIGITS_MAX_FILE_BYTES ({limit:,} bytes)", 413
                )
            out.write(block)


def save_upload(files: list[tuple[str, BinaryIO]]) -> tuple[Path, dict[Path, str]]:
    """Write the files into a fresh upload folder; returns it and disk path → source name.
    Refuses (and removes the folder) on the first file that breaks a limit or the whitelist."""
    settings = get_settings()
    if not files:
        raise UploadRefused("no files in this upload")
    if len(files) > settings.max_upload_files:
        raise UploadRefused(
            f"{len(files):,} files in one upload; DIGITS_MAX_UPLOAD_FILES allows "
            f"{settings.max_upload_files:,}",
            413,
        )
    folder = upload_folder()
    names: dict[Path, str] = {}
    try:
        for index, (raw, stream) in enumerate(files, start=1):
            shown = source_name(raw)
            path = folder / disk_name(index, shown)
            _copy(stream, path, settings.max_file_bytes, shown)
            problem = input_problem(path)
            if problem:
                raise UploadRefused(f"{shown}: {problem}", 415)
            names[path] = shown
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, names


def enqueue_upload(files: list[tuple[str, BinaryIO]]) -> list[UploadedBatch]:
    """Save an upload and make its batches: the images one batch, each CSV one."""
    folder, names = save_upload(files)
    images = [p for p in names if p.suffix.lower() in IMAGE_SUFFIXES]
    csvs = [p for p in names if p not in images]
    made: list[UploadedBatch] = []
    if images:
        first = names[images[0]]
        shown = first if len(images) == 1 else f"{first} and {len(images) - 1} more"
        done = enqueue_files(folder, images, listed=True, names=names)
        made.append(
            UploadedBatch(done.batch_id, "images", shown, done.items, done.errors, done.failed)
        )
    for path in csvs:
        done = enqueue_csv(path)
        made.append(
            UploadedBatch(done.batch_id, "csv", names[path], done.items, done.errors, done.failed)
        )
    return made
