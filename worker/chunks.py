"""Scoring one chunk: claim (lease) → read inputs → one forward pass → one write transaction.

A chunk can be delivered more than once (broker redelivery, sweeper re-send, a duplicated
message). The claim skips chunks that are finished or leased to a live process; the write is
an upsert committed together with the chunk's ``done`` state, so a second run changes nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select, update

from digits.core import staging
from digits.core.db import aware, insert_ignore, session
from digits.core.images import Digit, Rejected, image_to_digit
from digits.core.preprocess import rows_to_tensor, stack
from digits.core.processes import pid_alive
from digits.core.safe_files import read_regular, real, refusal
from digits.core.schema import Batch, Chunk, Item, Prediction, utcnow
from digits.core.settings import Settings, get_settings
from digits.core.state_machine import (
    TERMINAL_CHUNK,
    complete_batch_if_finished,
    quarantine,
    record_item_errors,
    settle_batch,
)
from model_store.inference import model_for, predict
from worker.metrics import record_chunk
from worker.results import prediction_rows, shape

log = logging.getLogger("digits.worker")
HOST = socket.gethostname()


@dataclass(frozen=True)
class Claim:
    chunk_id: int
    batch_id: int
    kind: str
    ref: str
    source: str
    model_version: int
    attempt: int


@dataclass
class Inputs:
    item_ids: list[int]  # items with a tensor, in position order
    tensor: NDArray[np.float32]
    errors: list[tuple[int, str]]  # items refused while reading (unreadable, blank, …)
    doubts: list[str | None] | None = None  # per scored item: why the page leaves doubt


def owner_name() -> str:
    return f"{HOST}:{os.getpid()}"


def owner_alive(owner: str | None) -> bool:
    """Whether a lease holder still runs. Only checkable on this host; elsewhere trust the lease."""
    if not owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host != HOST or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # our own earlier attempt, which has ended
    return pid_alive(pid)


def claim(chunk_id: int) -> Claim | None:
    """Lease a chunk for this process (attempt += 1), or None when there is nothing to do."""
    settings = get_settings()
    now = utcnow()
    with session(write=True) as sess:
        chunk = sess.get(Chunk, chunk_id, with_for_update=True)
        if chunk is None or chunk.state in TERMINAL_CHUNK:
            return None
        lease_valid = chunk.lease_expires_at is not None and aware(chunk.lease_expires_at) > now
        if chunk.state == "running" and lease_valid and owner_alive(chunk.lease_owner):
            return None
        if chunk.attempts >= settings.max_attempts:
            last = chunk.error or "its worker died every time (poison input?)"
            quarantine(sess, chunk, f"failed {chunk.attempts} attempts; last: {last}")
            log.warning(
                "event=chunk_quarantined batch_id=%s chunk_id=%s attempts=%s",
                chunk.batch_id,
                chunk_id,
                chunk.attempts,
            )
        else:
            batch = sess.get_one(Batch, chunk.batch_id)
            chunk.state = "running"
            chunk.attempts += 1
            chunk.claimed_at = chunk.claimed_at or now  # the first claim: where scoring began
            chunk.lease_owner = owner_name()
            chunk.lease_expires_at = now + timedelta(seconds=settings.lease_seconds)
            return Claim(
                chunk.id,
                batch.id,
                batch.kind,
                chunk.ref,
                batch.source,
                batch.model_version,
                chunk.attempts,
            )
    settle_batch(chunk.batch_id)  # the quarantined chunk may have been the batch's last
    return None


def renew_lease(chunk_id: int) -> bool:
    """Push this process's lease on a running chunk one lease further; False once the chunk
    is no longer ours (finished, released, or taken back by the sweeper)."""
    settings = get_settings()
    with session(write=True) as sess:
        result = sess.execute(
            update(Chunk)
            .where(
                Chunk.id == chunk_id, Chunk.state == "running", Chunk.lease_owner == owner_name()
            )
            .values(lease_expires_at=utcnow() + timedelta(seconds=settings.lease_seconds))
        )
    return bool(getattr(result, "rowcount", 0))


@contextmanager
def lease_kept(chunk_id: int) -> Iterator[None]:
    """Renew the chunk's lease every third of a lease while the block runs, so a slow chunk
    (a big forward pass on a loaded machine, a slow shared disk) is never taken from a live
    worker. A dead process stops renewing, so the sweeper still recovers its chunk within one
    lease. The update is conditional: a renewal racing the final write changes nothing."""
    stop = threading.Event()
    interval = get_settings().lease_seconds / 3

    def renew() -> None:
        while not stop.wait(interval):
            try:
                if not renew_lease(chunk_id):
                    return
            except Exception as exc:  # the database may be briefly down: try again
                log.warning("chunk %s: lease renewal failed: %s", chunk_id, exc)

    threading.Thread(target=renew, name=f"lease-{chunk_id}", daemon=True).start()
    try:
        yield
    finally:
        stop.set()


def release(chunk_id: int, error: str) -> None:
    """Give a claimed chunk back after an error in this process (it will be retried)."""
    with session(write=True) as sess:
        sess.execute(
            update(Chunk)
            .where(
                Chunk.id == chunk_id, Chunk.state == "running", Chunk.lease_owner == owner_name()
            )
            .values(state="queued", lease_owner=None, lease_expires_at=None, error=error[:2000])
        )


def read_inputs(found: Claim) -> Inputs:
    """Load a chunk's inputs from where references in the database say: the staging store
    (a CSV chunk) or the image files."""
    with session() as sess:
        rows = sess.execute(
            select(Item.id, Item.path)
            .where(Item.chunk_id == found.chunk_id, Item.status == "pending")
            .order_by(Item.position)
        ).all()
        all_ids = sess.scalars(
            select(Item.id).where(Item.chunk_id == found.chunk_id).order_by(Item.position)
        ).all()
    if found.kind == "csv":
        pixels = staging.get(found.ref)  # refuses a reference out of the staging folder
        if len(pixels) != len(all_ids):
            raise ValueError(f"staged chunk has {len(pixels)} rows, database {len(all_ids)} items")
        pending = {item_id for item_id, _ in rows}
        keep = [i for i, item_id in enumerate(all_ids) if item_id in pending]
        return Inputs([all_ids[i] for i in keep], rows_to_tensor(pixels[keep]), [])
    return read_images(found, [(item_id, path) for item_id, path in rows])


def read_images(found: Claim, rows: list[tuple[int, str | None]]) -> Inputs:

    settings = get_settings()
    roots = [Path(found.source).resolve(), settings.inbox_dir.resolve()]  # once per chunk
    ids: list[int] = []
    tensors: list[NDArray[np.float32]] = []
    doubts: list[str | None] = []
    errors: list[tuple[int, str]] = []
    for item_id, raw in rows:
        path = Path(raw or ".")
        # the folder must be inside the batch's folders; the entry itself is never resolved
        # (that would follow a link): it is opened with O_NOFOLLOW instead. A folder swapped
        # while it is resolved (real() is None) is refused like one outside, not a crash.
        folder = real(path.parent)
        if not raw or folder is None or not any(folder.is_relative_to(root) for root in roots):
            errors.append((item_id, "file path outside the batch's folders"))
            continue
        why = refusal(path)
        if why:
            errors.append((item_id, why))
            continue
        outcome = decode_settled(path, image_to_digit, Rejected, settings, roots)
        if isinstance(outcome, str):
            errors.append((item_id, outcome))
        else:
            found_digit = cast("Digit", outcome)
            tensors.append(found_digit.tensor)
            doubts.append(found_digit.doubt)
            ids.append(item_id)
    return Inputs(ids, stack(tensors), errors, doubts)


def decode_settled(
    path: Path,
    decode: Any,
    rejected: type[Exception],
    settings: Settings,
    roots: list[Path],
) -> Any:
    """Read and decode one file (what ``decode`` returns, or the reason as a str); a file
    that decodes as truncated (or empty) while it was written only moments ago (a writer the
    inbox's settle time did not catch) is read again
    after a pause before it is called broken. Bounded: at most 3 reads, half a settle time
    apart; a file that is broken and old is refused at once. Each read re-checks, on the
    open descriptor, that the file really lies in ``roots`` (a folder swapped for a link
    after read_images' check is caught here)."""
    pause = max(settings.inbox_settle_seconds / 2, 0.2)
    for attempt in range(3):
        try:
            before = os.lstat(path)
            data = read_regular(path, settings.max_file_bytes, within=roots)
        except OSError as exc:
            return f"cannot read file: {exc.strerror or exc}" if exc.strerror else str(exc)
        try:
            return decode(data, settings.max_image_pixels)
        except rejected as exc:
            reason = str(exc)
            fresh = time.time() - before.st_mtime < 3 * settings.inbox_settle_seconds
            if attempt == 2 or not fresh or not reason.startswith(("truncated", "empty")):
                return reason
            log.warning(
                "event=file_still_arriving path=%r attempt=%s: %s", str(path), attempt + 1, reason
            )
            time.sleep(pause)
    return "unreachable"


def write_results(
    found: Claim, rows: list[dict[str, object]], errors: list[tuple[int, str]]
) -> bool:
    """Predictions, item errors and the chunk's done state in one transaction (idempotent)."""
    with session(write=True) as sess:
        chunk = sess.get(Chunk, found.chunk_id, with_for_update=True)
        if chunk is None or chunk.state in TERMINAL_CHUNK:
            return False
        insert_ignore(sess, Prediction, rows, ["item_id", "model_version"])
        record_item_errors(sess, errors)
        sess.execute(
            update(Item)
            .where(Item.chunk_id == found.chunk_id, Item.status == "pending")
            .values(status="predicted")
            .execution_options(synchronize_session=False)
        )
        chunk.state = "done"
        chunk.finished_at = utcnow()
        chunk.lease_owner = None
        chunk.lease_expires_at = None
        chunk.error = None
        completed = complete_batch_if_finished(sess, found.batch_id)
    if not completed:
        settle_batch(found.batch_id)  # another transaction may have finished it meanwhile
    return True


def process_chunk(chunk_id: int) -> str:
    """Score one chunk end to end; returns what happened (for logs and tests)."""

    started = time.perf_counter()
    found = claim(chunk_id)
    if found is None:
        return "skipped"
    try:
        with lease_kept(chunk_id):
            meta, model = model_for(found.model_version)
            inputs = read_inputs(found)
            probs = predict(model, inputs.tensor)
            shaped = shape(
                probs, meta.temperature, get_settings().confidence_threshold, inputs.doubts
            )
            rows = prediction_rows(inputs.item_ids, shaped, found.model_version)
            written = write_results(found, rows, inputs.errors)
    except BaseException as exc:
        try:
            release(chunk_id, f"{type(exc).__name__}: {exc}")
        except Exception:  # the database may be the problem: the lease will expire instead
            log.exception("could not release chunk %s", chunk_id)
        raise
    # key=value lines: grep-able and parseable by any log shipper, with the ids to join on
    log.info(
        "event=chunk_done batch_id=%s chunk_id=%s items=%s errors=%s attempt=%s "
        "model_version=%s written=%s",
        found.batch_id,
        chunk_id,
        len(inputs.item_ids),
        len(inputs.errors),
        found.attempt,
        found.model_version,
        written,
    )
    for item_id, reason in inputs.errors[:50]:
        log.info(
            "event=item_error batch_id=%s chunk_id=%s item_id=%s reason=%r",
            found.batch_id,
            chunk_id,
            item_id,
            reason,
        )
    if written:  # after the commit; metrics never fail a chunk (see worker/metrics.py)
        record_chunk(
            found.kind,
            found.model_version,
            shaped.confidence,
            inputs.errors,
            time.perf_counter() - started,
        )
    return "done" if written else "skipped"
