"""The declarative source directory: configs and flags kept as files (in git, say).

`services/<service>/<environment>.toml|json|yaml` becomes a config version and
`flags/<key>.toml|json` a flag version, authored `file:<path>`, whenever the file
changes. An invalid file is reported with its path and line; the last good version
stays. Deleting a file deletes nothing.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from fpcd.aio import TaskSet
from fpcd.domain.errors import FpcdError
from fpcd.domain.flags import FlagDefinition
from fpcd.domain.model import Caller
from fpcd.domain.names import valid_name
from fpcd.services.configs import ConfigService
from fpcd.services.flags import FlagService
from fpcd.wire import ComponentHealth

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


class NotRegular(Exception):
    """A source path that is a symlink, or is not a regular file: never imported."""


def read_regular(root: Path, path: Path) -> bytes:
    """The bytes of `path` under `root`, opened without following a symlink at any step
    below `root`: a link planted in the source dir (say, to the daemon's keyring.json)
    must not turn the importer, which runs as fpcd's user, into a reader of other files.
    FileNotFoundError when the file is gone; NotRegular for anything but a regular file."""
    parts = path.relative_to(root).parts
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                # O_NONBLOCK: a FIFO planted here must not hang the import on open.
                step = flags | (os.O_NONBLOCK if last else os.O_DIRECTORY)
                nxt = os.open(part, step, dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                    raise NotRegular(_what(fd, part)) from None
                raise
            os.close(fd)
            fd = nxt
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegular("not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _what(dir_fd: int, name: str) -> str:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return "not a regular file"
    if stat.S_ISLNK(info.st_mode):
        return f"{name} is a symbolic link"
    return f"{name} is not a regular file" if not stat.S_ISDIR(info.st_mode) else "not a file"


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
        self._tasks = TaskSet()
        self._observer: BaseObserver | None = None
        #: path -> the last problem with it (cleared once it imports); shown in /health.
        self.rejected: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def health(self) -> ComponentHealth:
        """/health's `source_dir`: degraded while a file is rejected."""
        if self.rejected:
            problems = "; ".join(sorted(self.rejected.values()))
            return ComponentHealth(status="degraded", detail=problems)
        return ComponentHealth(status="ok")

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        for path in await asyncio.to_thread(self._entries):
            await self.import_file(path)
        observer = Observer()
        observer.schedule(_Events(asyncio.get_running_loop(), self), str(self.root), recursive=True)
        observer.start()
        self._observer = observer

    def _entries(self) -> list[Path]:
        """Everything below the root but directories, never descending through a link."""
        found: list[Path] = []
        for top, dirs, files in os.walk(self.root, followlinks=False):
            base = Path(top)
            links = [d for d in dirs if (base / d).is_symlink()]
            dirs[:] = [d for d in dirs if d not in links and not d.startswith(".")]
            found += [base / name for name in files + links]
        return sorted(found)

    async def stop(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            await asyncio.to_thread(observer.join)
        for timer in self._timers.values():
            timer.cancel()
        await self._tasks.cancel_all()

    def touched(self, raw: str) -> None:
        """Editors write in several steps: import once the path has been quiet a moment."""
        loop = asyncio.get_running_loop()
        if (old := self._timers.pop(raw, None)) is not None:
            old.cancel()
        self._timers[raw] = loop.call_later(self._settle, self._fire, raw)

    def _fire(self, raw: str) -> None:
        self._timers.pop(raw, None)
        self._tasks.spawn(self.import_file(Path(raw)))

    async def import_file(self, path: Path) -> bool:
        source = classify(self.root, path)
        if source is None:
            await self._refuse_if_special(path)
            return False
        async with self._lock:
            rel = str(path.relative_to(self.root))
            try:
                data = await asyncio.to_thread(read_regular, self.root, path)
            except FileNotFoundError:
                self.rejected.pop(rel, None)
                return False  # deleted: nothing is deleted upstream
            except NotRegular as error:
                self._reject(rel, f"{error}; only regular files are imported", None)
                return False
            except OSError as error:
                self._reject(rel, f"cannot read: {error.strerror}", None)
                return False
            # The source directory is the operator's: a trusted caller, named by its file.
            caller = Caller.system(f"file:{rel}")
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

    async def _refuse_if_special(self, path: Path) -> None:
        """A link or a device is reported wherever it is (a link to a directory can
        stand for a whole service); plain files that are not sources are ignored."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return
        if any(p.startswith(".") for p in rel.parts):
            return
        try:
            info = await asyncio.to_thread(os.lstat, path)
        except OSError:
            self.rejected.pop(str(rel), None)
            return
        if stat.S_ISLNK(info.st_mode):
            self._reject(str(rel), "a symbolic link; only regular files are imported", None)
        elif not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            self._reject(str(rel), "not a regular file; only regular files are imported", None)

    def _reject(self, rel: str, problem: str, line: int | None) -> None:
        where = f"{rel}:{line}" if line else rel
        self.rejected[rel] = f"{where}: {problem}"
        log.error(
            "source file rejected; the last good version stays",
            extra={"path": rel, "line": line, "error": problem},
        )
