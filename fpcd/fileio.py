"""Atomic file replacement, shared by file sync and the client's cache file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> bool:
    """Write `data` so a reader sees the old file or the new one, never a part; False when
    the file already holds exactly these bytes (and mode)."""
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        if (
            (st.st_mode & 0o777) == mode
            and path.read_bytes() == data
            and (uid in (-1, st.st_uid) and gid in (-1, st.st_gid))
        ):
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".fpcd-tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if uid != -1 or gid != -1:
                os.fchown(handle.fileno(), uid, gid)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    return True
