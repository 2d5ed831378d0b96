"""watchdog's part of file sync: imported when there are files to watch, so a daemon
without `[[files]]` never loads watchdog (issue 18: idle memory)."""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

if TYPE_CHECKING:
    from fpcd.sync.files import FileSync

__all__ = ["CONTENT_EVENTS", "Observer", "_Drift"]

#: The only events that can change a file's content: a write closed, a file created,
#: deleted or renamed over. Opening and reading (what every consumer of the file does)
#: are not even delivered by the kernel to the observer.
CONTENT_EVENTS: list[type[FileSystemEvent]] = [
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
]


class _Drift(FileSystemEventHandler):
    """Runs in watchdog's thread: hands paths to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sync: FileSync) -> None:
        self._loop = loop
        self._sync = sync

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or not isinstance(event, tuple(CONTENT_EVENTS)):
            return  # observers without a kernel-side filter still deliver opens and reads
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(raw) if raw else ""
            if path and path in self._sync.by_path:
                self._loop.call_soon_threadsafe(self._sync.drift_suspected, path)
