"""Files other processes read while they are replaced or appended to."""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["append_whole", "file_stamp", "write_atomically"]


def write_atomically(path: Path, data: bytes) -> None:
    """Write then rename: a reader (a Kamailio worker) never sees half a file.

    On a failure (a full disk) the file is left as it was and the temporary is removed.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # 0600: the document holds trunk passwords.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # what a full disk let through would otherwise stay, taking space
        raise


def append_whole(fd: int, data: bytes) -> None:
    """Append ``data`` to ``fd`` (opened O_APPEND, one writer) whole, or raise OSError with the file as it was.

    A write cut short (the disk filled up during it) counts as failed: what
    it wrote is cut off again, so that no half line is ever followed by
    the next one. The file's length before the write is where the data
    went: ``fd``'s writer is the file's only one.
    """
    before = os.fstat(fd).st_size
    try:
        written = os.write(fd, data)
        if written < len(data):
            raise OSError(errno.ENOSPC, f"short write: {written} of {len(data)} bytes written")  # a full disk, as a rule
    except OSError:
        os.ftruncate(fd, before)
        raise


def file_stamp(path: Path) -> tuple | None:
    """What changes when a file is rewritten or replaced (None: no such file); one stat."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
