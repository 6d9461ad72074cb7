"""Turning inputs into batches: items in the database, chunks staged and queued.

A CSV is streamed block by block; each block becomes one chunk whose rows are staged as
``.npy`` bytes (gzip cannot seek, and re-parsing text in every worker would cost more than the
model), in a folder or in the database (digits/core/staging.py). Each chunk is committed
before its message is sent, so a worker never sees a chunk id the database does not know.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import DBAPIError

from digits.core import staging
from digits.core.csv_input import NO_LABEL, CsvFileError, read_blocks
from digits.core.db import session
from digits.core.processes import this_process
from digits.core.safe_files import refusal, regular_sha256
from digits.core.schema import Batch, Chunk, Item, utcnow
from digits.core.settings import get_settings
from digits.core.state_machine import (
    complete_batch_if_finished,
    record_item_errors,
    settle_batch,
    stop_batch,
)
from model_store.aliases import resolve_active
from model_store.registry import ModelVersion, file_sha256_or_none
from scheduler.inputs import IMAGE_SUFFIXES, Planned, image_files, storable
from worker.publish import send_chunks

__all__ = ["IMAGE_SUFFIXES", "image_files", "storable"]  # their home is scheduler/inputs.py
log = logging.getLogger("digits.scheduler")
LISTING = "files.json"
ProgressFn = Callable[[int], None]  # items enqueued so far


class SourceError(ValueError):
    """An input that cannot become a batch at all (missing, unsupported kind)."""


@dataclass(frozen=True)
class Enqueued:
    batch_id: int
    items: int
    errors: int
    chunks: int
    failed: str | None = None
    chunk_ids: list[int] = field(default_factory=list)


def ingester_name() -> str:
    """Who is ingesting (host:pid, like a chunk's lease owner): status tells a live ingestion
    from an interrupted one, and resume refuses to race a live one."""
    return this_process()


class Sender:
    """Publishes chunk ids during ingestion without ever stopping it. A broker that is down
    (Redis killed, restarting) is not a reason to abandon a half-ingested file: the chunk is
    committed with ``sent_at`` NULL, the sweeper sends what was never sent, and this sender
    stops trying for ``pause`` seconds so a dead broker does not cost a timeout per block."""

    def __init__(self, pause: float = 5.0) -> None:
        self.pause = pause
        self.quiet_until = 0.0
        self.unsent = 0

    def __call__(self, chunk_ids: list[int]) -> None:
        if time.monotonic() < self.quiet_until:
            self.unsent += len(chunk_ids)
            return
        try:
            send_chunks(chunk_ids)
        except Exception as exc:  # kombu OperationalError, redis ConnectionError, OSError …
            self.unsent += len(chunk_ids)
            self.quiet_until = time.monotonic() + self.pause
            log.warning(
                "broker unreachable, ingestion goes on; the sweeper sends unsent chunks: %s: %s",
                type(exc).__name__,
                exc,
            )


def create_batch(source: str, kind: str, model: ModelVersion, source_sha256: str | None) -> int:
    with session(write=True) as sess:
        batch = Batch(
            source=source,
            kind=kind,
            status="enqueueing",
            source_sha256=source_sha256,
            model_version=model.version,
            model_sha256=model.sha256,
            ingest_owner=ingester_name(),
            ingest_seen_at=utcnow(),
        )
        sess.add(batch)
        sess.flush()
        return batch.id


def stage(batch_id: int, seq: int, pixels: NDArray[np.uint8]) -> str:
    """Stage a chunk's rows (in the folder or the database: ``DIGITS_STAGING``, see
    digits/core/staging.py); returns the reference stored on the chunk."""
    return staging.put(batch_id, seq, pixels)


def add_chunk(
    batch_id: int,
    seq: int,
    ref: str,
    items: list[dict[str, object]],
    errors: list[tuple[dict[str, object], str]],
) -> int | None:
    """One transaction: the chunk (if it has items), its items, refused items' reasons, and
    the ingester's heartbeat. Everything up to a block's last row is ingested, or none of it:
    what resume relies on."""
    with session(write=True) as sess:
        sess.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(ingest_seen_at=utcnow(), ingest_owner=ingester_name())
        )
        chunk_id: int | None = None
        if items:
            chunk = Chunk(batch_id=batch_id, seq=seq, ref=ref, item_count=len(items))
            sess.add(chunk)
            sess.flush()
            chunk_id = chunk.id
            sess.execute(
                insert(Item),
                [
                    {**row, "batch_id": batch_id, "chunk_id": chunk_id, "status": "pending"}
                    for row in items
                ],
            )
        if errors:
            sess.execute(
                insert(Item),
                [{**row, "batch_id": batch_id, "status": "pending"} for row, _ in errors],
            )
            positions = [int(str(row["position"])) for row, _ in errors]
            ids = dict(
                sess.execute(
                    select(Item.position, Item.id).where(
                        Item.batch_id == batch_id, Item.position.in_(positions)
                    )
                ).all()
            )
            record_item_errors(sess, [(ids[int(str(row["position"]))], why) for row, why in errors])
        return chunk_id


def finish_enqueue(batch_id: int, items: int, errors: int, chunks: int) -> None:
    with session(write=True) as sess:
        batch = sess.get_one(Batch, batch_id)
        batch.status = "running"
        batch.ingest_owner = None
        batch.item_count = items
        batch.error_count = errors
        batch.chunk_count = chunks
        sess.flush()
        completed = complete_batch_if_finished(sess, batch_id)
    if not completed:
        settle_batch(batch_id)  # a worker may have finished its last chunk meanwhile


def fail_batch(batch_id: int, message: str) -> None:
    """The input cannot be read on (wrong header, truncated gzip half-way): the batch fails
    and its chunks are cancelled, so nothing stays queued inside a failed batch; rows already
    scored keep their predictions, the others get the reason."""
    with session(write=True) as sess:
        stop_batch(
            sess,
            batch_id,
            "failed",
            message,
            f"batch failed before this item was scored: {message}",
        )


def ingestion_failed(batch_id: int, name: str, after: int, exc: BaseException) -> str:
    """Fail a batch whose ingestion raised something unexpected; returns the recorded reason.

    One input's bug must not cost the others: the batch fails with the exception's type and
    message (on the batch and on each unscored item), and the caller goes on with the next
    input. The traceback is logged at DEBUG only: `digits run`/`enqueue` configure no logging,
    so at ERROR Python's last-resort handler would print it on the user's terminal."""
    message = f"{name}: ingestion failed after row {after}: {type(exc).__name__}: {exc}"
    log.error("batch %s: %s", batch_id, message)
    log.debug("batch %s: traceback of the failed ingestion", batch_id, exc_info=exc)
    fail_batch(batch_id, message)
    return message


def enqueue_csv(
    path: Path,
    model_version: int | None = None,
    chunk_size: int | None = None,
    progress: ProgressFn | None = None,
) -> Enqueued:
    """Stream a Kaggle CSV into a batch. A file that is not a digits CSV fails its batch with a
    clear message; a bad row becomes an item error with its row number; the rest goes on."""
    path = path.resolve()
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    model = resolve_active(model_version)
    batch_id = create_batch(str(path), "csv", model, file_sha256_or_none(path))
    return ingest_csv(batch_id, path, chunk_size, progress)


def ingest_csv(
    batch_id: int,
    path: Path,
    chunk_size: int | None = None,
    progress: ProgressFn | None = None,
    skip_rows: int = 0,
    first_seq: int = 1,
) -> Enqueued:
    """Stream ``path`` into batch ``batch_id`` from data row ``skip_rows + 1`` on (0 for a new
    batch; resume passes the last row already ingested). Errors that end the file fail the
    batch; a database error leaves it ``enqueueing`` and resumable (raised: nothing can be
    recorded while the database is away); anything else fails it with its reason."""
    chunk_size = chunk_size or get_settings().chunk_size
    name = path.name
    send = Sender()
    items = errors = chunks = 0
    try:
        blocks = read_blocks(path, chunk_size, skip_rows=skip_rows)
        for seq, (_labelled, block) in enumerate(blocks, start=first_seq):
            good: list[dict[str, object]] = [
                {
                    "position": row,
                    "source_ref": f"{name}:{row}",
                    "sha256": hashlib.sha256(block.pixels[i].tobytes()).hexdigest(),
                    "true_label": None if block.labels[i] == NO_LABEL else int(block.labels[i]),
                }
                for i, row in enumerate(block.rows)
            ]
            bad = [
                ({"position": row, "source_ref": f"{name}:{row}"}, f"row {row}: {why}")
                for row, why in block.errors
            ]
            ref = stage(batch_id, seq, block.pixels) if good else ""
            chunk_id = add_chunk(batch_id, seq, ref, good, bad)
            if chunk_id is not None:
                send([chunk_id])
                chunks += 1
            items += len(good) + len(bad)
            errors += len(bad)
            if progress:
                progress(skip_rows + items)
    except CsvFileError as exc:
        fail_batch(batch_id, f"{name}: {exc}")
        return Enqueued(batch_id, items, errors, chunks, failed=f"{name}: {exc}")
    except (DBAPIError, KeyboardInterrupt):
        raise  # resumable: the batch stays ``enqueueing`` with every committed block
    except Exception as exc:
        message = ingestion_failed(batch_id, name, skip_rows + items, exc)
        return Enqueued(batch_id, items, errors, chunks, failed=message)
    total_items, total_errors, total_chunks = batch_counts(batch_id)
    if total_items == 0:
        fail_batch(batch_id, f"{name}: no data rows")
        return Enqueued(batch_id, 0, 0, 0, failed=f"{name}: no data rows")
    finish_enqueue(batch_id, total_items, total_errors, total_chunks)
    log.info(
        "batch %s: %s items (%s refused) in %s chunks from %s",
        batch_id,
        total_items,
        total_errors,
        total_chunks,
        path,
    )
    return Enqueued(batch_id, total_items, total_errors, total_chunks)


def batch_counts(batch_id: int) -> tuple[int, int, int]:
    """Items, items refused at ingestion, chunks: from the database, so a resumed batch
    counts what every ingestion run committed."""
    with session() as sess:
        items = (
            sess.scalar(select(func.count()).select_from(Item).where(Item.batch_id == batch_id))
            or 0
        )
        errors = (
            sess.scalar(
                select(func.count())
                .select_from(Item)
                .where(Item.batch_id == batch_id, Item.status == "error")
            )
            or 0
        )
        chunks = (
            sess.scalar(select(func.count()).select_from(Chunk).where(Chunk.batch_id == batch_id))
            or 0
        )
    return int(items), int(errors), int(chunks)


def earlier_items(digests: list[str]) -> dict[str, int]:
    """sha256 → id of the first image item already holding that content (for dedupe)."""
    if not digests:
        return {}
    with session() as sess:
        rows = sess.execute(
            select(Item.sha256, func.min(Item.id))
            .join(Batch, Batch.id == Item.batch_id)
            .where(Item.sha256.in_(digests), Item.duplicate_of.is_(None), Batch.kind == "images")
            .group_by(Item.sha256)
        ).all()
    return {str(sha): int(item_id) for sha, item_id in rows}


def add_duplicates(batch_id: int, rows: list[dict[str, object]]) -> None:
    """Items whose content was seen before: recorded, pointing at the earlier item, no chunk."""
    if not rows:
        return
    with session(write=True) as sess:
        in_batch = {
            str(sha): int(item_id)
            for sha, item_id in sess.execute(
                select(Item.sha256, func.min(Item.id))
                .where(Item.batch_id == batch_id, Item.duplicate_of.is_(None))
                .group_by(Item.sha256)
            ).all()
        }
        sess.execute(
            insert(Item),
            [
                {
                    **{k: v for k, v in row.items() if k != "earlier"},
                    "batch_id": batch_id,
                    "status": "duplicate",
                    "duplicate_of": row["earlier"] or in_batch[str(row["sha256"])],
                }
                for row in rows
            ],
        )


def enqueue_files(
    folder: Path,
    files: list[Path],
    source: str | None = None,
    model_version: int | None = None,
    chunk_size: int | None = None,
    final_root: Path | None = None,
    dedupe: bool = False,
    send: bool = True,
    resume: tuple[int, int, int] | None = None,
    listed: bool = False,
    names: dict[Path, str] | None = None,
) -> Enqueued:
    """Make one batch of image files, read in place by the workers.

    ``final_root``: where the files will live once the batch is committed (the inbox moves
    them to ``processed/<date>/`` afterwards); items record that path. With ``dedupe`` a file
    whose sha256 was seen before becomes a ``duplicate`` item pointing at the earlier one.
    With ``send=False`` the caller sends the chunks (after moving the files).
    ``resume`` = (batch id, last position ingested, last chunk seq) continues an interrupted
    ingestion of the same folder: the sorted file list is the same, so positions match.
    ``listed``: ``files`` were named one by one, not listed from ``folder``; the list is kept
    (``listed_files``) so a resume ingests the same files in the same order.
    ``names``: the name each file came with, kept as its item's source when it differs from
    the name on disk (a web upload stores files under safe names).
    Names that are not images are refused here; content is checked when the worker decodes.
    """
    # Smaller than CSV chunks: decoding dominates, and more chunks balance the workers
    chunk_size = chunk_size or get_settings().image_chunk_size
    if resume is None:
        model = resolve_active(model_version)
        batch_id = create_batch(source or str(folder.resolve()), "images", model, None)
        done_positions, seq0 = 0, 0
        if listed:
            keep_listing(batch_id, files)
    else:
        batch_id, done_positions, seq0 = resume
    try:
        chunk_ids = _ingest_files(
            batch_id,
            folder,
            files,
            chunk_size,
            final_root,
            dedupe,
            send,
            done_positions,
            seq0,
            names or {},
        )
    except (DBAPIError, KeyboardInterrupt):
        raise  # resumable: the batch stays ``enqueueing`` with every committed chunk
    except Exception as exc:  # one folder's bug must not stop the next input
        after = last_position(batch_id)
        message = ingestion_failed(batch_id, str(folder), after, exc)
        return Enqueued(batch_id, after, 0, 0, failed=message)
    items, errors, chunks = batch_counts(batch_id)
    if items == 0:
        fail_batch(batch_id, f"{folder}: no files")
        return Enqueued(batch_id, 0, 0, 0, failed=f"{folder}: no files")
    finish_enqueue(batch_id, items, errors, chunks)
    return Enqueued(batch_id, items, errors, chunks, chunk_ids=chunk_ids)


def _ingest_files(
    batch_id: int,
    folder: Path,
    files: list[Path],
    chunk_size: int,
    final_root: Path | None,
    dedupe: bool,
    send: bool,
    done_positions: int,
    seq0: int,
    names: dict[Path, str] | None = None,
) -> list[int]:
    """Commit ``files`` after position ``done_positions`` as chunks of ``batch_id``; returns
    the chunk ids. Only the files still to ingest are checked and hashed: a resumed folder
    does not read again what it already committed (the sorted list gives the same positions).

    Files are checked and hashed a chunk's worth at a time, each chunk sent as soon as it is
    full: checking and hashing all 5,000 files of a folder first kept both workers idle for
    the first 0.57 s of a 6.2 s run. A duplicate's earlier item is looked up per group: a
    content first seen in this batch is found either in its committed chunks (the first such
    item) or in ``seen`` (mapped by ``add_duplicates`` to the same first item), so every
    duplicate points where the whole-folder lookup pointed it."""
    todo = files[done_positions:]
    seen: set[str] = set()
    duplicates: list[dict[str, object]] = []
    chunk_ids: list[int] = []
    good: list[dict[str, object]] = []
    bad: list[tuple[dict[str, object], str]] = []
    sender = Sender()

    def flush() -> None:
        chunk_id = add_chunk(batch_id, seq0 + len(chunk_ids) + 1, "files", good, bad)
        if chunk_id is not None:
            chunk_ids.append(chunk_id)
            if send:
                sender([chunk_id])
        good.clear()
        bad.clear()

    for position, file, refused, digest, earlier in _checked(
        folder, todo, done_positions, chunk_size, dedupe
    ):
        relative = file.relative_to(folder)
        where = (final_root or folder) / relative
        row: dict[str, object] = {
            "position": position,
            "source_ref": storable((names or {}).get(file) or str(relative)),
            # never resolve the entry itself: that follows a link
            "path": storable(str(where.parent.resolve() / where.name)),
        }
        if refused:
            bad.append((row, refused))
        elif file.suffix.lower() not in IMAGE_SUFFIXES:
            bad.append((row, f"not an accepted image type: {file.suffix or 'no extension'}"))
        elif digest is None:
            bad.append((row, "cannot read file"))
        elif dedupe and (earlier is not None or digest in seen):
            duplicates.append({**row, "sha256": digest, "earlier": earlier})
        else:
            seen.add(digest)
            good.append({**row, "sha256": digest})
        if len(good) + len(bad) >= chunk_size:
            flush()
    if good or bad:
        flush()
    add_duplicates(batch_id, duplicates)
    return chunk_ids


def _checked(
    folder: Path, todo: list[Path], done_positions: int, group: int, dedupe: bool
) -> Iterator[tuple[int, Path, str | None, str | None, int | None]]:
    """(position, file, refusal, sha256, earlier item) for each file of ``todo``, checked and
    hashed ``group`` files at a time, so the caller can commit and send a chunk before the
    rest of a big folder is read. Links are never read through: not the file's own, nor a
    sub-folder's swapped in after listing."""
    for start in range(0, len(todo), group):
        part = todo[start : start + group]
        refused = [name_refusal(file, folder) or refusal(file, within=folder) for file in part]
        digests = [
            None if why else regular_sha256(file, within=[folder])
            for file, why in zip(part, refused, strict=True)
        ]
        earlier = earlier_items([d for d in digests if d]) if dedupe else {}
        for offset, (file, why, digest) in enumerate(zip(part, refused, digests, strict=True)):
            found = earlier.get(digest) if digest else None
            yield done_positions + start + offset + 1, file, why, digest, found


def last_position(batch_id: int) -> int:
    """The last row or file ingested: chunks commit whole, so every position up to it is in."""
    with session() as sess:
        last = sess.scalar(select(func.max(Item.position)).where(Item.batch_id == batch_id))
    return int(last or 0)


def name_refusal(file: Path, folder: Path) -> str | None:
    """A name that is not UTF-8 cannot be stored (nor shown, nor exported): that file is
    refused as one item with the reason, instead of crashing its whole folder."""
    name = str(file.relative_to(folder))
    if storable(name) == name:
        return None
    return f"file name is not valid UTF-8: refused (its bytes: {storable(name)})"


def keep_listing(batch_id: int, files: list[Path]) -> None:
    """Keep the files of a batch named one by one beside its staged chunks (JSON keeps a name
    that is not UTF-8 as its surrogates), written atomically before the first item."""
    folder = get_settings().staging_dir / f"b{batch_id}"
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump([str(f) for f in files], fh)
    os.replace(tmp, folder / LISTING)


def listed_files(batch_id: int) -> list[Path] | None:
    """The files of a batch made of files named one by one (None: a folder's batch)."""
    path = get_settings().staging_dir / f"b{batch_id}" / LISTING
    if not path.is_file():
        return None
    return [Path(name) for name in json.loads(path.read_text())]


def enqueue_image_files(files: list[Path], model_version: int | None = None) -> Enqueued:
    """One batch of image files named one by one (from any folders). Its source is their
    common folder (the workers read only files inside a batch's folder); each item is named
    by its path below it. The entries themselves are never resolved: a link stays a link,
    refused as an item like one in a folder."""
    entries = [f.parent.resolve() / f.name for f in files]
    folder = Path(os.path.commonpath([e.parent for e in entries]))
    return enqueue_files(folder, entries, model_version=model_version, listed=True)


def enqueue_planned(
    planned: Planned, model_version: int | None = None, progress: ProgressFn | None = None
) -> Enqueued:
    """Make the batch ``plan_inputs`` (scheduler/inputs.py) planned: a CSV, a folder of
    images, or image files named one by one."""
    if planned.kind == "files":
        return enqueue_image_files(list(planned.paths), model_version)
    [path] = planned.paths
    if planned.kind == "folder":
        folder = path.resolve()
        return enqueue_files(folder, image_files(folder), model_version=model_version)
    return enqueue_csv(path, model_version, progress=progress)


def enqueue_path(
    path: Path, model_version: int | None = None, progress: ProgressFn | None = None
) -> Enqueued:
    """A CSV (``.csv``/``.csv.gz``), a folder of images or one image file. A path that is not
    UTF-8 is refused before a batch exists: the batch's source could not be stored. (The
    command line checks its inputs first: scheduler/inputs.py ``plan_inputs``.)"""
    shown = storable(str(path.absolute()))
    if shown != str(path.absolute()):
        raise SourceError(f"{shown}: the path is not valid UTF-8; rename it")
    if path.is_dir():
        folder = path.resolve()
        return enqueue_files(folder, image_files(folder), model_version=model_version)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return enqueue_image_files([path], model_version)
    return enqueue_csv(path, model_version, progress=progress)
