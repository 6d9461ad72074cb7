"""Reading files that users drop, without ever following a link or blocking on a FIFO.

The inbox is writable by users; the scheduler and the workers may run as root. A link in a
drop must never make them read, hash or move something outside it, and a FIFO must not hang
a reader. Used by ingestion (hashing) and the workers (decoding) alike.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("digits.files")
OUTSIDE = "file path outside the batch's folders"


def is_hidden(name: str) -> bool:
    """``.name`` is hidden (skipped, documented); ``..name`` is not: that is how a hostile
    name (``..%2f..%2fetc%2fpasswd.png``) looks, and it must get an item and a reason."""
    return name.startswith(".") and not name.startswith("..")


def real(path: Path) -> Path | None:
    """``os.path.realpath``, or None when the path changes while it is resolved: a link
    swapped out mid-resolution makes Python 3.11's realpath raise FileNotFoundError even when
    not strict, and a racing link must cost its one item a reason, not crash a whole read."""
    try:
        return Path(os.path.realpath(path))
    except OSError:
        return None


def inside(path: Path | None, roots: Sequence[Path]) -> bool:
    """Whether ``path`` (already real; None: it could not be resolved) lies in one of
    ``roots`` (resolved here: a root may be reached through a link of the deployment's own,
    such as a mount point)."""
    return path is not None and any(
        (root_real := real(root)) is not None and path.is_relative_to(root_real) for root in roots
    )


def refusal(path: Path, within: Path | None = None) -> str | None:
    """Why an entry is not read at all: a link (never followed, wherever it points), anything
    that is not a regular file, or, with ``within``, a file whose folder really is elsewhere
    (a sub-folder swapped for a link after it was listed). None for a regular file."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    if within is not None and not inside(real(path.parent), [within]):
        return OUTSIDE
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        return f"symbolic link: refused, links are never followed (points to {target[:200]})"
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "socket"
            if stat.S_ISSOCK(st.st_mode)
            else "device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "special file"
        )
        return f"not a regular file ({kind})"
    return None


def opened_path(fd: int, path: Path) -> Path | None:
    """Where an open file really is: /proc/self/fd on Linux names what was opened, whatever
    was swapped since; elsewhere the path's realpath (checked, not race-free)."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return real(path)


def read_regular(path: Path, limit: int | None = None, within: Sequence[Path] = ()) -> bytes:
    """A file's bytes, opened with O_NOFOLLOW (a link swapped in after a check fails here)
    and O_NONBLOCK (a FIFO swapped in does not hang); anything but a regular file, once open,
    is refused. ``limit``: refuse a larger file unread. ``within``: the file actually opened
    must lie in one of these folders, checked on the open descriptor, so a folder of its
    path swapped for a link between any earlier check and this open is caught too."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if within and not inside(opened_path(fh.fileno(), path), within):
            raise OSError(OUTSIDE)
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file: {path.name}")
        if limit is not None and st.st_size > limit:
            raise OSError(f"file too large: {st.st_size} bytes")
        return fh.read()


def regular_sha256(path: Path, within: Sequence[Path] = ()) -> str | None:
    """sha256 of a regular file read as above; None when it cannot be read so (logged)."""
    try:
        return hashlib.sha256(read_regular(path, within=within)).hexdigest()
    except OSError as exc:
        log.warning("event=file_not_hashed path=%r: %s", str(path), exc)
        return None


def rename_within(source: Path, target: Path, root: Path) -> bool:
    """Rename ``source`` to ``target`` only if its folder really lies in ``root``; False,
    nothing moved, when it does not. The folder is opened first, checked on its descriptor,
    and the rename is made relative to that descriptor, so a folder swapped for a link after
    the check still cannot make it move a file from outside (the entry itself, even a link,
    is moved as itself: a rename never follows its last component). FileNotFoundError when
    the folder or the entry is gone (moved already: the caller may go on as if moved)."""
    try:
        dirfd = os.open(source.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError:
        return False  # swapped for a link to a folder (ELOOP), or a file: never entered
    try:
        if not inside(opened_path(dirfd, source.parent), [root]):
            return False
        os.rename(source.name, target, src_dir_fd=dirfd)
        return True
    finally:
        os.close(dirfd)
