"""One daemon per data dir: an exclusive `flock` on `fpcd.lock`, held for the daemon's life.

Two daemons on one data dir would each keep their own in-memory state over the same
database and diverge (one serving version 7 while the history says 8). The lock is on
an open file description, so it goes away with the process however it ends (even
SIGKILL): there is never a stale lock to clean up. The file itself stays; it only
holds the pid of the holder, for the message a second daemon prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "fpcd.lock"


class DataDirInUse(Exception):
    """Another process holds the data dir's lock; the message names its pid."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; DataDirInUse if another daemon holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"data dir {self.path.parent} is in use by another fpcd (pid {holder});"
                " one daemon per data dir: stop the other one or use another --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock
