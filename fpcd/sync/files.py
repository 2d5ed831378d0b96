"""File sync: configurations materialized to files, commands run after a change, drift
repaired, like consul-template.

Writes are atomic (temp file in the same directory, fsync, chmod/chown, rename, fsync of
the directory) and skipped when the bytes would not change. Bursts of changes are
coalesced by each file's `wait = {min, max}`; a command shared by several files runs once
per burst; a failing command is retried on the next change, with a growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import shlex
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fpcd.aio import TaskSet, backoff_delay
from fpcd.clock import Clock
from fpcd.domain.configs import BASE_ENVIRONMENT
from fpcd.domain.errors import FpcdError, IntegrityProblem, NotFound
from fpcd.domain.model import (
    AuditNote,
    Caller,
    Change,
    ConfigVersion,
    ReloadRequest,
    SecretDestroyed,
    SecretVersion,
)
from fpcd.domain.render import RenderError, render
from fpcd.fileio import atomic_write, pinned
from fpcd.services.changes import ChangeMaker, Committer
from fpcd.services.configs import ConfigService
from fpcd.services.events import ChangeApplied, Event, EventBus
from fpcd.settings import FileSettings, file_mode
from fpcd.wire import ComponentHealth

log = logging.getLogger("fpcd.files")

OUTPUT_LIMIT = 4096
#: Who file sync reads (and audits drift) as: the daemon itself, a trusted caller.
SYSTEM = Caller.system("fpcd:files")


def remove_stale_temps(path: Path) -> None:
    """Temp files left by a daemon killed mid-write."""
    for stale in path.parent.glob(f".{path.name}.*.fpcd-tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def command_argv(spec: FileSettings) -> tuple[str, ...]:
    if isinstance(spec.command, list):
        return tuple(spec.command)
    if not spec.command:
        return ()
    return (spec.command,) if spec.shell else tuple(shlex.split(spec.command))


@dataclass
class Target:
    spec: FileSettings
    path: Path
    mode: int
    uid: int
    gid: int
    template: str | None
    command: tuple[str, ...]
    #: What fpcd last wrote (or found identical): drift is any other content.
    written: bytes | None = None
    first_change: float | None = None
    timer: asyncio.TimerHandle | None = None
    force: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Why the last attempt to write this file failed; None once one succeeds.
    error: str | None = None
    #: (inode, size, mtime, ctime) of the file right after fpcd wrote or checked it: an
    #: event that leaves these as they were is fpcd's own write, and needs no read.
    seen: tuple[int, int, int, int] | None = None
    #: The one drift check running for this file, and whether events arrived during it.
    drift_task: asyncio.Task[None] | None = None
    drift_again: bool = False
    #: `path` with links above its directory resolved at start: writes go here, and a
    #: directory on the way that turns into a link later is refused (fpcd.fileio).
    write_path: Path = Path()

    def __post_init__(self) -> None:
        self.write_path = pinned(self.path)


#: Requests for one command this close together share one run (files of one burst).
COALESCE = 0.1


@dataclass
class CommandState:
    failures: int = 0
    not_before: float = 0.0
    task: asyncio.Task[None] | None = None
    #: Executing now (a request then means "run once more"), not just waiting to.
    running: bool = False
    again: bool = False


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes whenever the content can have changed (ctime cannot be set back)."""
    try:
        return _identity(path.stat())
    except FileNotFoundError:
        return None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def identity_if_holds(path: Path, expected: bytes) -> tuple[int, int, int, int] | None:
    """`file_identity` of `path` if it holds `expected` (fpcd's own write), else None.
    Read between two stats of the same open file: an edit racing fpcd's write changes the
    content or the stats, and is then never taken for fpcd's own (None: it gets checked)."""
    try:
        with path.open("rb") as handle:
            before = _identity(os.fstat(handle.fileno()))
            current = handle.read(len(expected) + 1)
            after = _identity(os.fstat(handle.fileno()))
    except OSError:
        return None
    return after if current == expected and before == after else None


class FileSync:
    def __init__(
        self,
        specs: list[FileSettings],
        configs: ConfigService,
        committer: Committer,
        bus: EventBus,
        *,
        node_id: str,
        clock: Clock,
    ) -> None:
        self._configs = configs
        self._committer = committer
        self._change = ChangeMaker(node_id, clock)
        self.targets: list[Target] = []
        for spec in specs:
            self.targets.append(
                Target(
                    spec=spec,
                    path=Path(spec.path),
                    mode=file_mode(spec.mode, "files.mode"),
                    uid=pwd.getpwnam(spec.owner).pw_uid if spec.owner else -1,
                    gid=grp.getgrnam(spec.group).gr_gid if spec.group else -1,
                    template=Path(spec.template).read_text() if spec.template else None,
                    command=command_argv(spec),
                )
            )
        self.by_path = {str(t.path): t for t in self.targets}
        self._commands: dict[tuple[tuple[str, ...], bool], CommandState] = {}
        self._tasks = TaskSet()
        self._observer: Any = None  # a watchdog observer (fpcd.sync.watch), once started
        #: For /metrics and health.
        self.command_runs = 0
        self.command_failures = 0
        self.writes = 0
        self.write_failures = 0
        self.drift_detected = 0
        self.drift_repairs = 0
        bus.subscribe(self._on_event)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if not self.targets:
            return
        for target in self.targets:
            await asyncio.to_thread(remove_stale_temps, target.path)
            await asyncio.to_thread(target.path.parent.mkdir, parents=True, exist_ok=True)
            await self._materialize(target)
        from fpcd.sync.watch import CONTENT_EVENTS, Observer, _Drift

        observer = Observer()
        handler = _Drift(asyncio.get_running_loop(), self)
        for directory in sorted({str(t.path.parent) for t in self.targets}):
            observer.schedule(handler, directory, recursive=False, event_filter=CONTENT_EVENTS)
        observer.start()
        self._observer = observer

    def health(self) -> ComponentHealth:
        """/health's `files`: ok, or degraded with why (a file that cannot be written, a
        command that fails)."""
        problems = [f"{t.path}: {t.error}" for t in self.targets if t.error]
        failing = [" ".join(argv) for (argv, _), st in self._commands.items() if st.failures]
        problems += [f"command failing: {c}" for c in failing]
        counts = {"files": len(self.targets), "commandFailures": self.command_failures}
        if problems:
            return ComponentHealth(status="degraded", detail="; ".join(problems), counts=counts)
        detail = None if self.targets else "no files configured"
        return ComponentHealth(status="ok", detail=detail, counts=counts)

    def idle(self) -> bool:
        """Nothing waiting or in flight: no debounce timer, write, drift check or command."""
        return (
            all(t.timer is None for t in self.targets)
            and not self._tasks
            and all(s.task is None or s.task.done() for s in self._commands.values())
        )

    async def stop(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            await asyncio.to_thread(observer.join)
        for target in self.targets:
            if target.timer is not None:
                target.timer.cancel()
        await self._tasks.cancel_all(*(s.task for s in self._commands.values()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    # -- changes -> writes -------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, ChangeApplied):
            return
        payload = event.change.payload
        match payload:
            case ConfigVersion():
                self._changed(payload.service, payload.environment, secrets=False)
            case SecretVersion() | SecretDestroyed():
                self._changed(payload.service, payload.environment, secrets=True)
            case ReloadRequest():
                for target in self.targets:
                    if (target.spec.service, target.spec.environment) == (
                        payload.service,
                        payload.environment,
                    ):
                        target.force = target.force or payload.force
                        self._schedule(target)

    def _changed(self, service: str, environment: str, *, secrets: bool) -> None:
        for target in self.targets:
            spec = target.spec
            if spec.service != service or environment not in (spec.environment, BASE_ENVIRONMENT):
                continue
            if secrets and not spec.include_secrets:
                continue
            self._schedule(target)

    def _schedule(self, target: Target) -> None:
        """Debounce: wait `min` after the latest change, but no more than `max` in all."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if target.first_change is None:
            target.first_change = now
        wait = target.spec.wait
        when = now + wait.min
        if wait.max:
            when = min(when, target.first_change + wait.max)
        if target.timer is not None:
            target.timer.cancel()
        target.timer = loop.call_at(when, self._fire, target)

    def _fire(self, target: Target) -> None:
        target.timer = None
        target.first_change = None
        self._spawn(self._materialize(target))

    async def _materialize(self, target: Target) -> None:
        spec = target.spec
        async with target.lock:
            force, target.force = target.force, False
            try:
                doc = await self._configs.document(
                    spec.service,
                    spec.environment,
                    caller=SYSTEM,
                    include_secrets=spec.include_secrets,
                )
            except NotFound:
                target.error = "no configuration to write yet"
                log.warning(
                    "no configuration to write yet",
                    extra={
                        "file": spec.path,
                        "service": spec.service,
                        "environment": spec.environment,
                    },
                )
                return
            except IntegrityProblem as error:  # a damaged stored version: keep the old file
                self.write_failures += 1
                target.error = f"not written: {error.detail}"
                log.error(
                    "stored config failed its integrity check; the old file stays",
                    extra={"file": spec.path, "error": error.detail},
                )
                return
            secrets = {n: m.value for n, m in doc.secrets.items() if m.value is not None}
            try:
                data = render(
                    spec.format,
                    doc.config,
                    secrets=secrets or None,
                    template=target.template,
                    allow_empty=spec.allow_empty,
                )
            except RenderError as error:
                self.write_failures += 1
                target.error = f"cannot render: {error}"
                log.error(
                    "cannot render file; the old one stays",
                    extra={"file": spec.path, "error": str(error)},
                )
                return
            try:
                changed = await asyncio.to_thread(
                    atomic_write, target.write_path, data, target.mode, target.uid, target.gid
                )
            except OSError as error:
                self.write_failures += 1
                target.error = f"cannot write: {error.strerror}"
                log.error("cannot write file", extra={"file": spec.path, "error": error.strerror})
                return
            target.written = data
            target.seen = await asyncio.to_thread(identity_if_holds, target.path, data)
            target.error = None
            if changed:
                self.writes += 1
                log.info(
                    "file written",
                    extra={"file": spec.path, "version": doc.version, "bytes": len(data)},
                )
            if (changed or force) and target.command:
                self.request_command(target)

    # -- commands -------------------------------------------------------------------------

    def request_command(self, target: Target) -> None:
        """Run the file's command soon; once for every file that shares it in this burst."""
        key = (target.command, target.spec.shell)
        state = self._commands.setdefault(key, CommandState())
        if state.task is not None and not state.task.done():
            if state.running:
                state.again = True  # changed after it started: once more when it ends
            return
        state.task = asyncio.ensure_future(self._run_command(key, state, target.spec))

    async def _run_command(
        self, key: tuple[tuple[str, ...], bool], state: CommandState, spec: FileSettings
    ) -> None:
        argv, shell = key
        while True:
            await asyncio.sleep(max(COALESCE, state.not_before - time.monotonic()))
            state.again, state.running = False, True
            try:
                ok = await self._execute(argv, shell, spec.command_timeout)
            finally:
                state.running = False
            self.command_runs += 1
            if ok:
                state.failures, state.not_before = 0, 0.0
            else:
                self.command_failures += 1
                state.failures += 1
                state.not_before = time.monotonic() + backoff_delay(state.failures - 1, 2.0, 300.0)
            if not state.again:
                return

    async def _execute(self, argv: tuple[str, ...], shell: bool, limit_s: float) -> bool:
        started = time.monotonic()
        try:
            if shell:
                proc = await asyncio.create_subprocess_shell(
                    argv[0],
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                )
            else:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                )
        except OSError as error:
            log.error(
                "command could not start", extra={"command": list(argv), "error": error.strerror}
            )
            return False
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), limit_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("command timed out", extra={"command": list(argv), "timeout_s": limit_s})
            return False
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        text = output.decode(errors="replace")
        fields = {
            "command": list(argv),
            "exit_status": proc.returncode,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "output": text[:OUTPUT_LIMIT] + ("…(truncated)" if len(text) > OUTPUT_LIMIT else ""),
        }
        if proc.returncode == 0:
            log.info("command ran", extra=fields)
            return True
        log.error("command failed; it runs again on the next change", extra=fields)
        return False

    # -- drift ------------------------------------------------------------------------------

    def drift_suspected(self, path: str) -> None:
        """Coalesced: one check per file at a time, and one more if events came during it."""
        target = self.by_path.get(path)
        if target is None or target.written is None:
            return
        if target.drift_task is not None and not target.drift_task.done():
            target.drift_again = True
            return
        target.drift_task = self._tasks.spawn(self._drift_checks(target))

    async def _drift_checks(self, target: Target) -> None:
        while True:
            target.drift_again = False
            await self._check_drift(target)
            if not target.drift_again:
                return

    async def _check_drift(self, target: Target) -> None:
        async with target.lock:
            expected = target.written
            if expected is None:
                return
            identity = await asyncio.to_thread(file_identity, target.path)
            if identity is not None and identity == target.seen:
                return  # fpcd's own write (the rename), or nothing that touched the content
            try:
                current: bytes | None = await asyncio.to_thread(target.path.read_bytes)
            except FileNotFoundError:
                current = None
            except OSError:
                return
            if current == expected:
                target.seen = identity
                return  # same bytes again (a touch, a copy of the same content)
            restore = target.spec.on_drift == "restore"
            what = "deleted" if current is None else "edited"
            self.drift_detected += 1
            log.warning(
                f"file {what} outside fpcd; " + ("restoring it" if restore else "reporting only"),
                extra={"file": str(target.path)},
            )
            if restore:
                await asyncio.to_thread(
                    atomic_write, target.write_path, expected, target.mode, target.uid, target.gid
                )
                target.seen = await asyncio.to_thread(identity_if_holds, target.path, expected)
                self.drift_repairs += 1
            else:
                target.seen = identity
        await self._audit_drift(target, what, "restored" if restore else "reported")

    async def _audit_drift(self, target: Target, what: str, action: str) -> None:
        note = AuditNote(
            action="file.drift",
            target=f"file:{target.path}",
            details={
                "change": what,
                "action": action,
                "service": target.spec.service,
                "environment": target.spec.environment,
            },
        )

        async def plan() -> list[Change]:
            return [self._change(str(target.path), "drift", note, SYSTEM)]

        with contextlib.suppress(FpcdError):
            await self._committer.commit(plan)
