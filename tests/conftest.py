"""Shared fixtures: real daemons on real SQLite files in temp dirs, on free loopback ports."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets as secrets_module
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

from fpcd.app import Daemon
from fpcd.observe.logging import JsonFormatter
from fpcd.settings import Settings, load_settings

FPCD = [sys.executable, "-m", "fpcd"]

#: Daemon URL -> its admin token, for helpers that only have a URL.
TOKENS: dict[str, str] = {}


def auth_for(url: str) -> dict[str, str]:
    """The Authorization header for a URL of a daemon process these tests started."""
    for base, token in TOKENS.items():
        if url.startswith(base):
            return {"Authorization": f"Bearer {token}"}
    return {}


#: Every secret value a test writes, and every log the suite produces: after each test
#: (and once more at the end of the session) no value may show up in any log.
SECRET_VALUES: set[str] = set()
LOG_FILES: list[Path] = []
#: Recent in-process log lines (JSON), for tests that look for a line they provoked.
LOG_LINES: deque[str] = deque(maxlen=100_000)
#: Every secret value starts with this, so a log line without it cannot hold one: the scan
#: costs one substring search per line, however many values the suite wrote.
SECRET_MARK = "plain-"
#: Every log line (in-process or from a daemon's log file) that carries the mark.
MARKED_LINES: list[str] = []
_log_offsets: dict[Path, int] = {}


class _Capture(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken record must not hide others
            line = repr(record.__dict__)
        LOG_LINES.append(line)
        if SECRET_MARK in line:
            MARKED_LINES.append(line)


def pytest_configure(config: Any) -> None:
    handler = _Capture(level=logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)


# -- waiting for a condition -------------------------------------------------------------

#: How often a wait looks again.
POLL = 0.02


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], seconds: float = 15, *, what: str = "condition"
) -> float:
    """Wait until `check()` (plain or async) holds, looking every POLL seconds; fail the
    test if it does not within `seconds`. Returns how long it took. Tests wait for the
    exact condition this way, never for a fixed time."""
    started = time.monotonic()
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what} not reached within {seconds:g} s")
        await asyncio.sleep(POLL)


def eventually_blocking(
    check: Callable[[], bool], seconds: float = 15, *, what: str = "condition"
) -> float:
    """`eventually` for code outside an event loop (a client's own thread, a process)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what} not reached within {seconds:g} s")
        time.sleep(POLL)
    return time.monotonic() - started


def secret_value(label: str) -> str:
    """A unique plaintext that the leak check will look for in every log."""
    value = f"{SECRET_MARK}{label}-{secrets_module.token_hex(8)}"
    SECRET_VALUES.add(value)
    return value


def leaked(lines: list[str], values: set[str]) -> list[str]:
    """The values that appear in any of the lines."""
    return sorted({v for line in lines if SECRET_MARK in line for v in values if v in line})


def read_new_log_lines() -> list[str]:
    """Complete lines the daemon processes' log files gained since the last call."""
    found: list[str] = []
    for path in LOG_FILES:
        start = _log_offsets.get(path, 0)
        try:
            with open(path, "rb") as handle:
                handle.seek(start)
                data = handle.read()
        except FileNotFoundError:
            continue
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        _log_offsets[path] = start + end
        text = data[:end].decode(errors="replace")
        if SECRET_MARK in text:
            found += [line for line in text.splitlines() if SECRET_MARK in line]
    MARKED_LINES.extend(found)
    return found


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """After each test: none of the suite's secret values reached a log line it made."""
    first = len(MARKED_LINES)
    yield
    read_new_log_lines()
    leaks = leaked(MARKED_LINES[first:], SECRET_VALUES)
    assert leaks == [], f"secret values found in logs: {_labels(leaks)}"


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """Once more at the end, over everything: module fixtures' daemons stop after their
    last test, and a value may be registered after a line that holds it."""
    yield
    read_new_log_lines()
    leaks = leaked(MARKED_LINES, SECRET_VALUES)
    assert leaks == [], f"secret values found in logs: {_labels(leaks)}"


def _labels(values: list[str]) -> list[str]:
    """Which test's values leaked, without printing the values themselves."""
    return [value.rsplit("-", 1)[0] + "-…" for value in values]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Tests run on uvloop, as the daemon does."""
    return {"uvloop": uvloop.new_event_loop}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The environments the tests write to (server.environments refuses writes to others);
#: tests of that rule use the default declaration instead.
TEST_ENVIRONMENTS = "development,staging,production,prod,dev,e,a"


def make_settings(data_dir: Path, **sections: Any) -> Settings:
    overrides: dict[str, Any] = {
        "server": {
            "data_dir": str(data_dir),
            "api_port": 0,
            "ws_port": 0,
            "environments": TEST_ENVIRONMENTS,
        },
        "log": {"access": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            overrides.setdefault(name, {}).update(values)
        else:  # [[files]]
            overrides[name] = values
    return load_settings(None, environ={}, overrides=overrides)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(make_settings(tmp_path / "data"))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


def admin_token(data_dir: Path) -> str:
    """The token the daemon wrote for its administrator on first start."""
    return (data_dir / "admin.token").read_text().strip()


def auth(daemon: Daemon) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_token(daemon.settings.data_dir)}"}


def issue_token(daemon: Daemon, role: str, **claims: Any) -> str:
    """A token from the daemon's own signing secret (as `fpcd token create` makes)."""
    verifier = daemon.components.verifier
    assert verifier is not None
    return verifier.issue(subject=claims.pop("subject", f"test-{role}"), roles=[role], **claims)


def api_session(daemon: Daemon, token: str | None = None, **kwargs: Any) -> aiohttp.ClientSession:
    """An HTTP client for a daemon's TCP API, carrying its admin token (or `token`)."""
    bearer = token or admin_token(daemon.settings.data_dir)
    return aiohttp.ClientSession(
        base_url=daemon.addresses["api"], headers={"Authorization": f"Bearer {bearer}"}, **kwargs
    )


@pytest.fixture
async def http(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with api_session(daemon) as session:
        yield session


class DaemonProcess:
    """`fpcd serve` in a child process, as systemd or a user would run it."""

    def __init__(
        self, data_dir: Path, *, args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.ws_port = free_port()
        self.args = args or []
        self.env = {"FPCD_SERVER__ENVIRONMENTS": TEST_ENVIRONMENTS, **os.environ, **(env or {})}
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        LOG_FILES.append(self.log_path)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket(self) -> Path:
        return self.data_dir / "fpcd.sock"

    @property
    def token(self) -> str:
        return admin_token(self.data_dir)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, *, wait: bool = True) -> DaemonProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                *FPCD,
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--api-port",
                str(self.port),
                "--ws-port",
                str(self.ws_port),
                *self.args,
            ],
            stdout=log,
            stderr=log,
            env=self.env,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"fpcd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/health/ready", timeout=1) as r:
                    if r.status == 200:
                        TOKENS[self.url] = self.token
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"fpcd did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = 15, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def _spawn(name: str = "data", **kwargs: Any) -> DaemonProcess:
        proc = DaemonProcess(tmp_path / name, **kwargs)
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        proc.kill()


def run_cli(
    *args: str,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FPCD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=input.decode() if input is not None else None,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


# -- private Postgres and Redis ---------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    from tests.servers import PostgresServer

    server = PostgresServer()
    yield server
    server.destroy()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    from tests.servers import RedisServer

    server = RedisServer()
    yield server
    server.destroy()


_databases = iter(range(1, 10**6))


@pytest.fixture
def pg_url(postgres: Any) -> str:
    """A fresh database on the private server for each test."""
    return str(postgres.create_database(f"fpcd_test_{next(_databases)}"))
