"""Files other processes read while they are replaced."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["file_stamp", "write_atomically"]


def write_atomically(path: Path, data: bytes) -> None:
    """Write then rename: a reader (a Kamailio worker) never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # 0600: the document holds trunk passwords.
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def file_stamp(path: Path) -> tuple | None:
    """What changes when a file is rewritten or replaced (None: no such file); one stat."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
