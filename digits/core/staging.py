"""Where a CSV chunk's rows wait for the workers: the one place that writes and reads them.

A CSV is parsed once, by the ingester; each chunk's rows are kept as ``.npy`` bytes (gzip
cannot seek, and re-parsing text in every worker would cost more than the model). Two stores,
chosen by ``DIGITS_STAGING`` for what is staged from now on:

* ``folder`` (default): a file ``DIGITS_HOME/staging/b{batch}/c{seq}.npy``, reference
  ``b{batch}/c{seq}.npy``. The fastest, but every worker must see the same folder (one
  machine, or NFS / a shared volume).
* ``database``: a row of ``chunk_payloads`` (batch, seq, the same bytes), reference
  ``db:{batch}/{seq}``. Workers need only the database they already use: no shared disk.

A reference is read by its own form, not by today's setting, so batches staged before a
switch stay readable. A reference comes from the database and is trusted no further than
that: a ``db:`` reference is parsed as two integers and never touches the filesystem, and a
folder reference must resolve inside the staging folder (``..`` or a link out is refused).

Payloads are kept as long as their batch (see docs/architecture.md, "Staging"): rescore,
reports, the reviewed export and item pictures read them after the batch finished.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import delete, select

from digits.core.db import session
from digits.core.schema import ChunkPayload
from digits.core.settings import get_settings

DB_PREFIX = "db:"
DB_REF = re.compile(r"db:([0-9]{1,18})/([0-9]{1,18})")


class StagingError(ValueError):
    """A staged chunk that cannot be read: a refused reference, or a payload that is not
    where its reference says (the message says which, and what to do)."""


def put(batch_id: int, seq: int, pixels: NDArray[np.uint8]) -> str:
    """Stage chunk ``seq`` of ``batch_id`` in the configured store; returns its reference.
    Staging the same chunk again (a resumed ingestion) replaces it."""
    if get_settings().staging == "database":
        return _put_row(batch_id, seq, pixels)
    return _put_file(batch_id, seq, pixels)


def get(ref: str) -> NDArray[np.uint8]:
    """The rows staged under ``ref`` (never unpickled: ``allow_pickle=False``)."""
    if ref.startswith(DB_PREFIX):
        data = _row_bytes(ref)
        return _array(np.load(io.BytesIO(data), allow_pickle=False), ref)
    return _array(np.load(folder_path(ref), allow_pickle=False), ref)


def drop(batch_id: int) -> None:
    """Remove everything staged for a batch, in both stores (for whoever removes a batch;
    deleting the batch's row removes its database payloads by itself)."""
    with session(write=True) as sess:
        sess.execute(delete(ChunkPayload).where(ChunkPayload.batch_id == int(batch_id)))
    shutil.rmtree(get_settings().staging_dir / f"b{int(batch_id)}", ignore_errors=True)


def folder_path(ref: str) -> Path:
    """The file of a folder reference, refused unless it lies in the staging folder; a file
    that is not there gets a reason that says why that happens (a worker on another machine
    without the shared folder) and what avoids it."""
    root = get_settings().staging_dir
    path = root / ref
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop
        inside = False
    if not inside:
        raise StagingError(f"chunk reference {ref!r} points outside the staging folder")
    if not path.exists():
        raise StagingError(
            f"staged chunk {ref!r} is not in {root} on {socket.gethostname()}: a batch staged "
            "in a folder needs DIGITS_HOME/staging shared by every worker (or removed?); "
            "DIGITS_STAGING=database stages in the database and needs no shared disk"
        )
    return path


def _put_file(batch_id: int, seq: int, pixels: NDArray[np.uint8]) -> str:
    """Written atomically (temporary file, then rename): a reader never sees half a chunk."""
    root = get_settings().staging_dir
    folder = root / f"b{batch_id}"
    folder.mkdir(parents=True, exist_ok=True)
    ref = f"b{batch_id}/c{seq}.npy"
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, pixels, allow_pickle=False)
    os.replace(tmp, root / ref)
    return ref


def _put_row(batch_id: int, seq: int, pixels: NDArray[np.uint8]) -> str:
    buffer = io.BytesIO()
    np.save(buffer, pixels, allow_pickle=False)
    with session(write=True) as sess:
        sess.execute(
            delete(ChunkPayload).where(ChunkPayload.batch_id == batch_id, ChunkPayload.seq == seq)
        )
        sess.add(ChunkPayload(batch_id=batch_id, seq=seq, data=buffer.getvalue()))
    return f"{DB_PREFIX}{batch_id}/{seq}"


def _row_bytes(ref: str) -> bytes:
    found = DB_REF.fullmatch(ref)
    if found is None:
        raise StagingError(f"chunk reference {ref!r} is not a database staging reference")
    batch_id, seq = int(found[1]), int(found[2])
    with session() as sess:
        data = sess.scalar(
            select(ChunkPayload.data).where(
                ChunkPayload.batch_id == batch_id, ChunkPayload.seq == seq
            )
        )
    if data is None:
        raise StagingError(f"staged chunk {ref!r} is not in the database (removed?)")
    return bytes(data)


def _array(loaded: object, ref: str) -> NDArray[np.uint8]:
    """Only a plain array is a chunk (``np.load`` also opens ``.npz`` archives)."""
    if not isinstance(loaded, np.ndarray):
        raise StagingError(f"staged chunk {ref!r} is not an array")
    return loaded
