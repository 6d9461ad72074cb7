"""Reading files that users drop, without ever following a link or blocking on a FIFO.

The inbox is writable by users; the scheduler and the workers may run as root. A link in a
drop must never make them read, hash or move something outside it, and a FIFO must not hang
a reader. Used by ingestion (hashing) and the workers (decoding) alike.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def is_hidden(name: str) -> bool:
    """``.name`` is hidden (skipped, documented); ``..name`` is not: that is how a hostile
    name (``..%2f..%2fetc%2fpasswd.png``) looks, and it must get an item and a reason."""
    return name.startswith(".") and not name.startswith("..")


def refusal(path: Path) -> str | None:
    """Why an entry is not read at all: a link (never followed, wherever it points) or
    anything that is not a regular file. None for a regular file."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
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


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """A file's bytes, opened with O_NOFOLLOW (a link swapped in after a check fails here)
    and O_NONBLOCK (a FIFO swapped in does not hang); anything but a regular file, once open,
    is refused. ``limit``: refuse a larger file unread."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"not a regular file: {path.name}")
        if limit is not None and st.st_size > limit:
            raise OSError(f"file too large: {st.st_size} bytes")
        return fh.read()


def regular_sha256(path: Path) -> str | None:
    """sha256 of a regular file read as above; None when it cannot be read so."""
    try:
        return hashlib.sha256(read_regular(path)).hexdigest()
    except OSError:
        return None
