"""Two asyncio habits written once: the tasks a component starts and must not lose
(`TaskSet`), and how long to wait before retrying what failed (`Backoff`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class TaskSet:
    """Tasks kept until they finish (the loop holds only weak references), cancelled and
    awaited together at stop. `on_done` sees each task as it finishes (e.g. to log an
    error nobody awaits)."""

    def __init__(self, on_done: Callable[[asyncio.Task[Any]], None] | None = None) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_done = on_done

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._on_done is not None:
            self._on_done(task)

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self, *others: asyncio.Task[Any] | None) -> None:
        """Cancel every task (and `others`, tasks kept elsewhere) and wait until all ended."""
        tasks = [*self._tasks, *(t for t in others if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def backoff_delay(attempt: int, first: float, cap: float) -> float:
    """The wait before retry number `attempt` (0 for the first): `first`, doubling each
    time, at most `cap`."""
    return min(first * 2.0 ** min(attempt, 64), cap)


class Backoff:
    """Exponential backoff for a retry loop: `next()` after each failure, `reset()` after
    a success."""

    __slots__ = ("attempts", "cap", "first")

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self.attempts = 0

    def next(self) -> float:
        delay = backoff_delay(self.attempts, self.first, self.cap)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0
