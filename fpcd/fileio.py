"""Atomic file replacement, shared by file sync and the client's cache file.

Writes never go through a symbolic link: every directory on the way is opened with
O_NOFOLLOW (relative to the one before), and the temp file, the comparison and the
rename all happen relative to the final directory's descriptor. A target directory
swapped for a link to somewhere else (`/etc/myapp -> /root/.ssh`) is refused rather
than written into. Callers that accept links the operator set up (say `/var/run`)
resolve them once, with `pinned`, when they learn the path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def pinned(path: Path) -> Path:
    """`path` with links above its own directory resolved, and that directory kept as
    named: a link there now, or later, is refused by `atomic_write`."""
    path = Path(os.path.abspath(path))
    return Path(os.path.realpath(path.parent.parent)) / path.parent.name / path.name


class LinkRefused(OSError):
    """A directory on the way to a file is a symbolic link."""


def _open_dir(directory: Path) -> int:
    """A descriptor for `directory`, opened component by component without following a
    link; missing directories are created (as `mkdir -p` would)."""
    directory = Path(os.path.abspath(directory))
    fd = os.open("/", _DIR)
    walked = Path("/")
    try:
        for part in directory.parts[1:]:
            walked = walked / part
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                nxt = os.open(part, _DIR, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    info = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(info.st_mode):
                        raise LinkRefused(
                            errno.ELOOP,
                            f"{walked} is a symbolic link; fpcd does not write through links",
                        ) from None
                raise
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holds(dir_fd: int, name: str, data: bytes, mode: int, uid: int, gid: int) -> bool:
    """The file is a regular file (not a link) with exactly these bytes, mode and owner."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return False
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or (st.st_mode & 0o777) != mode:
            return False
        if uid not in (-1, st.st_uid) or gid not in (-1, st.st_gid) or st.st_size != len(data):
            return False
        return handle.read() == data


def atomic_write(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> bool:
    """Write `data` so a reader sees the old file or the new one, never a part; False when
    the file already holds exactly these bytes (and mode). LinkRefused (an OSError) when a
    directory on the way is a symbolic link; a link at `path` itself is replaced, never
    written through."""
    dir_fd = _open_dir(path.parent)
    try:
        name = path.name
        if _holds(dir_fd, name, data, mode, uid, gid):
            return False
        tmp = f".{name}.{secrets.token_hex(6)}.fpcd-tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fchmod(handle.fileno(), mode)
                if uid != -1 or gid != -1:
                    os.fchown(handle.fileno(), uid, gid)
                os.fsync(handle.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        os.fsync(dir_fd)  # the rename itself survives a crash
        return True
    finally:
        os.close(dir_fd)
