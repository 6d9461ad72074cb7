"""The inbox: users drop scans into a folder; each drop burst or sub-folder becomes a batch.

Layout inside ``DIGITS_INBOX`` (all on one filesystem, so every move is an atomic rename)::

    <inbox>/                  drop files or folders here
    <inbox>/processing/<id>/  claimed, not yet committed as a batch
    <inbox>/processed/<date>/<id>/  committed: workers read the files here
    <inbox>/failed/<date>/    files that could not be scored, each with <name>.reason.txt

A polling scan is the source of truth (network shares and Docker volumes lose inotify
events); filesystem events only wake the scan early. An entry is claimed once it is proven
complete: its size and mtime (for a folder, every file's) unchanged for ``settle`` seconds
(DIGITS_INBOX_SETTLE_SECONDS, 2 s by default: phone uploads, scp, SMB and NFS write in parts
with pauses), or, as a fast path where inotify works, closed after writing (close-write) and
unchanged since. A file written under a temporary name and renamed is taken at once.

Nothing in the inbox is ever followed or read through a link: entries are listed with lstat,
folders walked without following links, and each entry is moved by rename, which moves a link
itself, never its target. A link, a FIFO, a socket or a device becomes an item with a recorded
reason, like a file that is not an image. Ignored (never claimed, left where they are): names
starting with one dot (``.x``; a name starting with ``..`` such as ``..%2fetc%2fpasswd.png`` is
an ordinary name) and names ending in a temporary suffix (TEMP_SUFFIXES, any case).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, select, update

from digits.core.db import session
from digits.core.safe_files import is_hidden, rename_within
from digits.core.schema import Batch, Chunk, Item, ItemError
from scheduler.batches import enqueue_files, image_files
from worker.publish import send_chunks

log = logging.getLogger("digits.inbox")
RESERVED = {"processing", "processed", "failed"}
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", ".download")
SOURCE_PREFIX = "inbox:"


@dataclass(frozen=True)
class Ingested:
    drop: str
    batch_id: int
    items: int


def is_candidate(path: Path) -> bool:
    name = path.name
    return not is_hidden(name) and not name.lower().endswith(TEMP_SUFFIXES)


Signature = tuple[int, int, int]  # entries, total size, newest mtime (ns), all by lstat


def signature(path: Path) -> Signature:
    """What must stay unchanged for an entry to count as complete, read without following
    any link: a link's own lstat, a folder's every entry (os.walk(followlinks=False))."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return 1, st.st_size, st.st_mtime_ns
    count, size, newest = 1, 0, st.st_mtime_ns
    for top, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            try:
                entry = os.lstat(os.path.join(top, name))
            except FileNotFoundError:
                continue
            count += 1
            size += entry.st_size
            newest = max(newest, entry.st_mtime_ns)
    return count, size, newest


class Inbox:
    def __init__(self, root: Path, settle: float = 2.0, max_wait: float = 10.0) -> None:
        self.root = root.resolve()
        self.settle = settle
        self.max_wait = max_wait
        for name in RESERVED:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        # Drops this scheduler claimed but could not commit yet (the database down, the
        # production model missing): retried by the next scan instead of waiting in
        # ``processing/`` until a restart's reconcile.
        self.unfinished: list[Path] = []
        # entry name -> (signature, monotonic time it was first seen with it)
        self.seen: dict[str, tuple[Signature, float]] = {}
        # entry name -> signature when a writer closed it (inotify close-write, a thread)
        self.closed: dict[str, Signature] = {}
        self._lock = threading.Lock()

    def note_closed(self, path: Path) -> None:
        """A writer closed a top-level file: if nothing changes it before the next scan, it
        is complete (the fast path; the settle time covers writers that pause)."""
        if path.parent != self.root or not is_candidate(path):
            return
        with contextlib.suppress(OSError), self._lock:
            self.closed[path.name] = signature(path)

    # ------------------------------------------------------------ scanning and claiming
    def ready(self, now: float | None = None) -> tuple[list[Path], list[Path]]:
        """Loose entries and sub-folders proven complete: unchanged (size and mtime, by
        lstat) for ``settle`` seconds, both by their mtime and across this scheduler's own
        scans, or closed after writing and unchanged since."""
        wall = now or time.time()
        mono = time.monotonic()
        files: list[tuple[Path, float]] = []
        folders: list[Path] = []
        busy = False  # a loose file still arriving: the burst is not over yet
        seen: dict[str, tuple[Signature, float]] = {}
        with os.scandir(self.root) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            if entry.name in RESERVED or not is_candidate(Path(entry.name)):
                continue
            path = self.root / entry.name
            try:
                sig = signature(path)
            except FileNotFoundError:
                continue  # vanished mid-scan (renamed by its writer or another scheduler)
            earlier = self.seen.get(entry.name)
            since = earlier[1] if earlier and earlier[0] == sig else mono
            seen[entry.name] = (sig, since)
            with self._lock:
                closed = self.closed.get(entry.name) == sig
            age = wall - sig[2] / 1e9
            settled = closed or (age >= self.settle and mono - since >= self.settle)
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir:
                if settled:
                    folders.append(path)
            elif settled:
                files.append((path, age))
            else:
                busy = True
        self.seen = seen
        with self._lock:
            self.closed = {k: v for k, v in self.closed.items() if k in seen}
        # A burst of loose files is one batch: wait for a quiet moment, but never starve a
        # file behind an endless trickle.
        if busy and not any(age > self.max_wait for _, age in files):
            return [], folders
        return [f for f, _ in files], folders

    def claim(self, files: list[Path], folders: list[Path]) -> list[Path]:
        """Move ready entries into ``processing/`` by atomic rename; a lost race is skipped."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        drops: list[Path] = []
        if files:
            drop = self.root / "processing" / f"{stamp}-{uuid.uuid4().hex[:6]}"
            drop.mkdir()
            for file in files:  # a rename moves a link or a FIFO itself, never its target
                try:
                    os.rename(file, drop / file.name)
                except FileNotFoundError:
                    continue
                self.seen.pop(file.name, None)
            if any(drop.iterdir()):
                drops.append(drop)
            else:
                drop.rmdir()
        for folder in folders:
            target = self.root / "processing" / f"{stamp}-{uuid.uuid4().hex[:6]}-{folder.name}"
            try:
                os.rename(folder, target)
            except FileNotFoundError:
                continue
            drops.append(self.contained(target, folder.name))
        return drops

    def contained(self, drop: Path, name: str) -> Path:
        """A drop is always a real folder. A sub-folder swapped for a link (or a file) between
        the scan and the claim is moved by the rename as itself, but listing it as a drop
        would follow the link: it is wrapped in a folder of its own instead, where it is one
        entry that gets an item and its reason. Checked by lstat after the rename, on our own
        path in ``processing/``, so no swap can slip in between the check and the listing."""
        try:
            if stat.S_ISDIR(os.lstat(drop).st_mode):
                return drop
        except FileNotFoundError:
            return drop
        box = drop.with_name(drop.name + "-entry")
        box.mkdir(exist_ok=True)
        os.rename(drop, box / name)
        log.warning(
            "event=drop_not_a_folder drop=%s: %r was swapped for a link or a file after the "
            "scan; taken as one entry, never listed",
            drop.name,
            name,
        )
        return box

    # ------------------------------------------------------------ batches
    def final_dir(self, drop: Path) -> Path:
        return self.root / "processed" / drop.name[:8] / drop.name

    def ingest(self, drop: Path) -> Ingested | None:
        """Commit a claimed drop as a batch, then move it to processed/, then wake workers."""
        files = image_files(drop)
        if not files:
            shutil.rmtree(drop, ignore_errors=True)
            return None
        final = self.final_dir(drop)
        done = enqueue_files(
            drop, files, source=SOURCE_PREFIX + drop.name, final_root=final, dedupe=True, send=False
        )
        self.finish(drop, done.batch_id)
        log.info(
            "event=drop_enqueued drop=%s batch_id=%s items=%s", drop.name, done.batch_id, done.items
        )
        return Ingested(drop.name, done.batch_id, done.items)

    def finish(self, drop: Path, batch_id: int) -> None:
        final = self.final_dir(drop)
        if drop.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(drop, final)
        with session() as sess:
            queued = sess.scalars(
                select(Chunk.id).where(Chunk.batch_id == batch_id, Chunk.state == "queued")
            ).all()
        send_chunks(list(queued))

    def recover(self, drop: Path) -> Ingested | None:
        """Finish a drop left in ``processing/`` by a crash or a failed ingest, whatever
        point it reached: committed (just move + send), half-enqueued (start over) or not
        started (ingest)."""
        with session(write=True) as sess:
            batch_id = sess.scalar(
                select(Batch.id).where(Batch.source == SOURCE_PREFIX + drop.name)
            )
            if batch_id is not None and sess.get_one(Batch, batch_id).status == "enqueueing":
                # stopped half-way through enqueueing (nothing sent yet): start it over
                sess.execute(delete(Batch).where(Batch.id == batch_id))
                batch_id = None
        if batch_id is None:
            return self.ingest(drop)
        self.finish(drop, batch_id)
        log.info("reconciled drop %s (batch %s)", drop.name, batch_id)
        return None

    def reconcile(self) -> list[Ingested]:
        """On start-up: finish drops a killed scheduler left in ``processing/``."""
        drops = [  # by lstat: a link left here is one entry, never a folder to list
            self.contained(d, d.name.split("-", 2)[-1])
            for d in sorted((self.root / "processing").iterdir())
        ]
        return [i for drop in drops if (i := self.recover(drop))]

    def scan(self) -> list[Ingested]:
        """Claim what is ready and commit it; an error leaves the rest for the next scan.
        Every drop goes through ``recover``, which costs a new drop one batch lookup and
        finishes one that an earlier scan committed only in part, whatever point it reached."""
        files, folders = self.ready()
        self.unfinished += self.claim(files, folders)
        out: list[Ingested] = []
        while self.unfinished:
            ingested = self.recover(self.unfinished[0])
            self.unfinished.pop(0)
            if ingested:
                out.append(ingested)
        return out

    # ------------------------------------------------------------ failures
    def file_failures(self) -> int:
        """Move files of finished inbox items that could not be scored to ``failed/``; never
        a file whose folder is not really inside ``processed/`` (a folder swapped for a link
        is refused even if it is swapped between the check and the move)."""
        moved = 0
        processed = str(self.root / "processed") + os.sep
        with session() as sess:
            rows = sess.execute(
                select(Item.id, Item.path, ItemError.reason)
                .join(ItemError, ItemError.item_id == Item.id)
                .join(Batch, Batch.id == Item.batch_id)
                .where(
                    Batch.status == "done",
                    Batch.source.like(SOURCE_PREFIX + "%"),
                    Item.path.like(processed + "%"),
                )
            ).all()
        for item_id, path, reason in rows:
            source = Path(path or "")
            folder = self.root / "failed" / datetime.now(UTC).strftime("%Y%m%d")
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{item_id}-{source.name}"
            try:  # checked and renamed through the folder's descriptor: no swap between
                inside = rename_within(source, target, self.root / "processed")
            except FileNotFoundError:
                inside = True  # moved already (a crash before the path was recorded)
            if not inside:
                log.warning(
                    "event=failed_file_refused item_id=%s path=%r: not inside the "
                    "inbox; left where it is",
                    item_id,
                    path,
                )
                continue
            (folder / f"{target.name}.reason.txt").write_text(reason + "\n")
            with session(write=True) as sess:
                sess.execute(update(Item).where(Item.id == item_id).values(path=str(target)))
            moved += 1
        return moved
