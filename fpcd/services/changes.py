"""Committing changes: plan against current state, store, then announce, one at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from fpcd.domain.model import Change
from fpcd.services.events import ChangeApplied, EventBus
from fpcd.store.sqlite import Store

#: Reads current state and returns the changes to make (empty: nothing to do).
Plan = Callable[[], Awaitable[list[Change]]]


class Committer(Protocol):
    async def commit(self, plan: Plan) -> list[Change]:
        """Run `plan` with writers serialized, make its changes durable, announce them."""
        ...

    async def drain(self) -> None:
        """Wait for commits already under way."""
        ...


class LocalCommitter:
    """The embedded default: the local SQLite store is the source of truth and order.

    Plans run under one lock so version numbers are computed and stored
    atomically: two racing writers never both become version n+1.
    """

    def __init__(self, store: Store, bus: EventBus) -> None:
        self._store = store
        self._bus = bus
        self._lock = asyncio.Lock()
        self._inflight: set[asyncio.Task[list[Change]]] = set()

    async def commit(self, plan: Plan) -> list[Change]:
        # A caller that goes away (client disconnect, shutdown) must not cut a commit
        # between "durable" and "announced": the commit runs to the end on its own.
        task = asyncio.ensure_future(self._commit(plan))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for commits already started; called at shutdown before the store closes."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _commit(self, plan: Plan) -> list[Change]:
        async with self._lock:
            drafts = await plan()
            applied = await self._store.apply(drafts)
            for change in applied:
                self._bus.publish(ChangeApplied(change))
            return applied
