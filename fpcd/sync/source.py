"""The declarative source directory: configs and flags kept as files (in git, say).

`services/<service>/<environment>.toml|json|yaml` becomes a config version and
`flags/<key>.toml|json` a flag version, authored `file:<path>`, whenever the file
changes. An invalid file is reported with its path and line; the last good version
stays. Deleting a file deletes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from fpcd.domain.configs import valid_name
from fpcd.domain.errors import FpcdError
from fpcd.domain.flags import FlagDefinition
from fpcd.domain.model import Caller
from fpcd.services.configs import ConfigService
from fpcd.services.flags import FlagService

log = logging.getLogger("fpcd.source")

CONFIG_SUFFIXES = {".toml", ".json", ".yaml", ".yml"}
FLAG_SUFFIXES = {".toml", ".json"}


class SourceError(Exception):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class SourceFile:
    kind: str  # "config" or "flag"
    name: str  # service, or flag key
    environment: str


def classify(root: Path, path: Path) -> SourceFile | None:
    """What a path under the source dir stands for, or None if it is not a source."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        return None
    if any(p.startswith(".") for p in parts):
        return None  # editors' swap files, hidden dirs
    suffix = path.suffix.lower()
    if len(parts) == 3 and parts[0] == "services" and suffix in CONFIG_SUFFIXES:
        service, environment = parts[1], Path(parts[2]).stem
        if valid_name(service) and valid_name(environment):
            return SourceFile("config", service, environment)
    if len(parts) == 2 and parts[0] == "flags" and suffix in FLAG_SUFFIXES:
        key = Path(parts[1]).stem
        return SourceFile("flag", key, "")
    return None


def parse(path: Path, data: bytes) -> Any:
    """Decode by extension; errors carry the line number."""
    suffix = path.suffix.lower()
    text = data.decode()
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            found = re.search(r"line (\d+)", str(error))
            raise SourceError(
                f"not valid TOML: {error}", int(found.group(1)) if found else None
            ) from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise SourceError(f"not valid JSON: {error.msg}", error.lineno) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise SourceError(
            f"not valid YAML: {getattr(error, 'problem', error)}",
            mark.line + 1 if mark is not None else None,
        ) from None


class _Events(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, importer: SourceImporter) -> None:
        self._loop = loop
        self._importer = importer

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        raw = getattr(event, "dest_path", "") or event.src_path
        self._loop.call_soon_threadsafe(self._importer.touched, os.fsdecode(raw))


class SourceImporter:
    def __init__(
        self, root: Path, configs: ConfigService, flags: FlagService, *, settle: float = 0.1
    ) -> None:
        self.root = root.absolute()
        self._configs = configs
        self._flags = flags
        self._settle = settle
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._observer: BaseObserver | None = None
        #: path -> the last problem with it (cleared once it imports); shown in /health.
        self.rejected: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        for path in sorted(await asyncio.to_thread(lambda: list(self.root.rglob("*")))):
            if path.is_file():
                await self.import_file(path)
        observer = Observer()
        observer.schedule(_Events(asyncio.get_running_loop(), self), str(self.root), recursive=True)
        observer.start()
        self._observer = observer

    async def stop(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            await asyncio.to_thread(observer.join)
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def touched(self, raw: str) -> None:
        """Editors write in several steps: import once the path has been quiet a moment."""
        loop = asyncio.get_running_loop()
        if (old := self._timers.pop(raw, None)) is not None:
            old.cancel()
        self._timers[raw] = loop.call_later(self._settle, self._fire, raw)

    def _fire(self, raw: str) -> None:
        self._timers.pop(raw, None)
        task = asyncio.create_task(self.import_file(Path(raw)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def import_file(self, path: Path) -> bool:
        source = classify(self.root, path)
        if source is None:
            return False
        async with self._lock:
            try:
                data = await asyncio.to_thread(path.read_bytes)
            except FileNotFoundError:
                return False  # deleted: nothing is deleted upstream
            rel = str(path.relative_to(self.root))
            caller = Caller(subject=f"file:{rel}")
            try:
                document = parse(path, data)
                if not isinstance(document, dict):
                    raise SourceError("the file must hold an object (a table / mapping)", 1)
                if source.kind == "config":
                    result = await self._configs.put(
                        source.name,
                        source.environment,
                        document,
                        caller=caller,
                        description=f"from {rel}",
                    )
                    changed = result.changed
                else:
                    definition = msgspec.convert({"name": source.name, **document}, FlagDefinition)
                    _, changed = await self._flags.put(source.name, definition, caller)
            except SourceError as error:
                self._reject(rel, str(error), error.line)
                return False
            except msgspec.ValidationError as error:
                self._reject(rel, f"not a valid flag: {error}", None)
                return False
            except FpcdError as error:
                paths = "; ".join(f"{e.path}: {e.message}" for e in error.errors)
                self._reject(rel, f"{error.detail}" + (f" ({paths})" if paths else ""), None)
                return False
            except UnicodeDecodeError:
                self._reject(rel, "not UTF-8 text", None)
                return False
            self.rejected.pop(rel, None)
            if changed:
                log.info(
                    "source file imported",
                    extra={"path": rel, "kind": source.kind, "entity": source.name},
                )
            return True

    def _reject(self, rel: str, problem: str, line: int | None) -> None:
        where = f"{rel}:{line}" if line else rel
        self.rejected[rel] = f"{where}: {problem}"
        log.error(
            "source file rejected; the last good version stays",
            extra={"path": rel, "line": line, "error": problem},
        )
