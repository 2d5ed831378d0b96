"""The client's cache file: written atomically (temp file, fsync, rename, 0600), read at start.

Blocking functions: the async client runs them with `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import msgspec

from fpcd.client.model import CacheFile

log = logging.getLogger("fpcd.client")

_decode = msgspec.json.Decoder(CacheFile).decode
_encode = msgspec.json.Encoder().encode


def read_cache(path: Path, service_name: str, environment: str) -> CacheFile | None:
    """The cached state for this (service, environment); None if absent, unreadable,
    or written for another one."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.warning("cache file unreadable", extra={"path": str(path), "error": str(error)})
        return None
    try:
        cache = _decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        log.warning("cache file ignored", extra={"path": str(path), "error": str(error)})
        return None
    if (cache.service_name, cache.environment) != (service_name, environment):
        log.warning(
            "cache file is for another service or environment, ignored",
            extra={"path": str(path), "service": cache.service_name, "env": cache.environment},
        )
        return None
    return cache


def write_cache(path: Path, cache: CacheFile) -> None:
    """Replace the file atomically: readers see the old or the new content, never a part."""
    data = _encode(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when a stale temp file had other bits
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
