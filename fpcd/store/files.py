"""File modes of the data dir and the database: only fpcd's user may read them.

SQLite creates `fpcd.db` with 0644 less the umask, and its `-wal` and `-shm` files with
the database file's mode. So the database file is created 0600 before SQLite opens it,
and an existing one (or its WAL/SHM) that others can read is narrowed to 0600.

The data dir: fpcd creates it 0750 (the group may reach sockets kept there). One that
other users can read, write or enter is narrowed (to at most 0750) with a warning, never
left open; one that is not fpcd's own (another owner, or a sticky shared directory such
as /tmp) stops start-up instead.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("fpcd.store")

DB_MODE = 0o600
#: Bits the data dir may not have: anything for others, and write for the group.
DIR_FORBIDDEN = stat.S_IRWXO | stat.S_IWGRP


class DataDirError(Exception):
    """The data dir or database file is open to others and cannot be narrowed."""


def secure_data_dir(database: Path) -> None:
    """Narrow the data dir and the database files, creating the database file 0600."""
    directory = database.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    info = directory.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & DIR_FORBIDDEN:
        narrowed = mode & ~(DIR_FORBIDDEN | stat.S_ISVTX)
        try:
            if info.st_uid != os.geteuid() or mode & stat.S_ISVTX:
                # Not ours, or a shared directory such as /tmp: never chmod those.
                raise PermissionError(1, "not a directory of fpcd's own")
            os.chmod(directory, narrowed)
        except OSError as error:
            raise DataDirError(
                f"data dir {directory} is open to other users (mode {mode:04o}) and cannot be"
                f" narrowed: {error.strerror}; chmod 0750 it"
            ) from None
        log.warning(
            "the data dir was open to other users: narrowed it",
            extra={"path": str(directory), "was": f"{mode:04o}", "now": f"{narrowed:04o}"},
        )
    try:
        fd = os.open(database, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, DB_MODE)
    except FileExistsError:
        pass
    else:
        os.close(fd)
    for path in (database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            try:
                os.chmod(path, DB_MODE)
            except OSError as error:
                raise DataDirError(
                    f"{path} is readable by other users (mode {mode:04o}) and cannot be"
                    f" narrowed: {error.strerror}; chmod 0600 it"
                ) from None
            log.warning(
                "a database file was readable by other users: narrowed it to 0600",
                extra={"path": str(path), "was": f"{mode:04o}"},
            )
