"""SyncConfigurationClient: ConfigurationClient for code without an event loop.

A background thread owns an event loop running the async client (subscription,
reconnects, cache file, evaluation counts). Reads and flag evaluations run on the
caller's thread against the client's current immutable snapshot: no hop to the loop
thread, no lock beyond the counter's.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from fpcd.client.live import Callback, ConfigurationClient
from fpcd.client.model import Configuration, ContextLike
from fpcd.domain.flags import EvaluationResult

T = TypeVar("T")


class SyncConfigurationClient:
    """The same options as ConfigurationClient, plus `start_timeout` (seconds).

    `with SyncConfigurationClient(...) as client:` starts it (raising FpcdUnavailable
    like the async client) and closes it. Callbacks registered with `on` run on the
    client's own thread.
    """

    def __init__(self, *, start_timeout: float = 30.0, **options: Any) -> None:
        self._start_timeout = start_timeout
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client = ConfigurationClient(**options)
        self._closed = False

    def __enter__(self) -> SyncConfigurationClient:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        if self._closed:
            raise RuntimeError("this client is closed")
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fpcd-client", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            self._call(self._client.start(), self._start_timeout)
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        """Send the last counts, stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            try:
                self._call(self._client.close(), 30.0)
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the client is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- the same reads as the async client, from the caller's thread ----------------------

    @property
    def configuration(self) -> Configuration | None:
        return self._client.configuration

    @property
    def started(self) -> bool:
        return self._loop is not None

    @property
    def connected(self) -> bool:
        return self._client.connected

    @property
    def source(self) -> str:
        return self._client.source

    @property
    def flag_keys(self) -> list[str]:
        return self._client.flag_keys

    def get_configuration(self) -> dict[str, Any]:
        """A copy of the current configuration (starts the client if needed)."""
        if self._loop is None:
            self.start()
        config = self._client.configuration
        return copy.deepcopy(config.config) if config is not None else {}

    def evaluate(
        self, key: str, context: ContextLike = None, *, now: float | None = None
    ) -> EvaluationResult:
        return self._client.evaluate(key, context, now=now)

    def is_enabled(self, key: str, context: ContextLike = None) -> bool:
        return self._client.is_enabled(key, context)

    def evaluate_flags(
        self,
        context: ContextLike = None,
        flags: Iterable[str] | None = None,
        *,
        now: float | None = None,
    ) -> dict[str, EvaluationResult]:
        if self._loop is None:
            self.start()
        return self._client.evaluate_many(context, flags, now=now)

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        return self._client.on(event, callback)

    def flush(self) -> int:
        """Send the evaluation counts now (they are also sent periodically and at close)."""
        return self._call(self._client.flush(), 30.0)
