"""The client's cache file: written atomically (temp file, fsync, rename, 0600), read at start.

Blocking functions: the async client runs them with `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from fpcd.client.model import CacheFile
from fpcd.fileio import atomic_write, pinned

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
    """Replace the file atomically: readers see the old or the new content, never a part.
    The cache file's own directory must not be a symbolic link (fpcd.fileio)."""
    atomic_write(pinned(path), _encode(cache), 0o600)
