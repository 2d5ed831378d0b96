"""Committing changes: plan against current state, store, then announce.

Writers are serialized (each plan runs alone, against everything committed or staged
before it), but their changes are made durable in groups: the plans that queue up while
one is running or while a group is being committed are staged into one SQLite
transaction, each under its own savepoint, and committed together (group commit). Each
change keeps its own journal row, version and audit entry; each writer is answered only
once its group is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from fpcd.domain.model import (
    AuditNote,
    Caller,
    Change,
    ConfigVersion,
    Payload,
    ReloadRequest,
    SecretRead,
    SecretVersion,
)
from fpcd.services.events import ChangeApplied, EventBus
from fpcd.store.sqlite import Store, Transaction

#: Reads current state and returns the changes to make (empty: nothing to do).
Plan = Callable[[], Awaitable[list[Change]]]


class ChangeMaker:
    """Changes made on this host, as every service makes them: by a caller (actor,
    request id and peer come from it), stamped with the clock's time and this node."""

    __slots__ = ("_clock", "_origin")

    def __init__(self, origin: str, clock: Callable[[], datetime]) -> None:
        self._origin = origin
        self._clock = clock

    def __call__(self, key: str, op: str, payload: Payload, caller: Caller) -> Change:
        return Change.by(
            caller, key=key, op=op, payload=payload, at=self._clock(), origin=self._origin
        )


#: Changes whose effect later plans read from SQLite only. Any other change (flags,
#: schemas, keys, registrations, destroyed or re-wrapped secrets) also changes state that
#: services keep in memory and update from the change event, so its group is committed
#: and announced before the next plan runs.
GROUPABLE = (ConfigVersion, SecretVersion, SecretRead, ReloadRequest, AuditNote)

#: Changes in one group commit at most (a bound on the latency a group adds).
MAX_GROUP = 256


def groupable(changes: Sequence[Change]) -> bool:
    return all(isinstance(change.payload, GROUPABLE) for change in changes)


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

    def __init__(self, store: Store, bus: EventBus, *, max_group: int = MAX_GROUP) -> None:
        self._store = store
        self._bus = bus
        self._max_group = max_group
        self._lock = asyncio.Lock()
        self._inflight: set[asyncio.Future[Any]] = set()
        #: Writers waiting for the lock: while there are any, the open group waits for them.
        self._waiting = 0
        self._txn: Transaction | None = None
        self._durable: asyncio.Future[None] | None = None
        #: Groups committed and changes in them (for /metrics and the benchmark).
        self.groups = 0
        self.grouped_changes = 0

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
        self._waiting += 1
        try:
            await self._lock.acquire()
        except BaseException:
            self._waiting -= 1
            self._flush_if_abandoned()
            raise
        self._waiting -= 1
        staged: list[Change] = []
        refused: BaseException | None = None
        try:
            if self._txn is None:
                self._txn = await self._store.begin()
                self._durable = asyncio.get_running_loop().create_future()
            txn, durable = self._txn, self._durable
            assert durable is not None
            try:
                with txn.reading():
                    drafts = await plan()
                staged = await txn.stage(drafts)
            except BaseException as error:
                refused = error
            # Leave the group open only for a writer already waiting for the lock.
            if (
                not self._waiting
                or txn.broken
                or len(txn.staged) >= self._max_group
                or not groupable(staged)
            ):
                await self._flush()
        finally:
            self._lock.release()
        if refused is not None:
            # A plan refused on staged state (or failed) answers once that state is
            # settled, so its answer never rests on a group that was then rolled back.
            await asyncio.gather(asyncio.shield(durable), return_exceptions=True)
            raise refused
        await asyncio.shield(durable)
        return staged

    def _flush_if_abandoned(self) -> None:
        """A waiter went away (shutdown): commit a group nobody else is coming to close."""
        if not self._waiting and self._txn is not None and not self._lock.locked():
            task = asyncio.ensure_future(self._flush_locked())
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _flush_locked(self) -> None:
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        """Commit the open group (under the lock) and announce its changes in order."""
        txn, durable = self._txn, self._durable
        self._txn = self._durable = None
        if txn is None or durable is None:
            return
        try:
            if txn.broken:
                raise txn.error or RuntimeError("the group's transaction failed")
            if txn.staged:
                await txn.commit()
            else:
                await txn.rollback()
        except BaseException as error:
            await txn.rollback()
            durable.set_exception(error)
            durable.exception()  # retrieved: a group of one writer may have no one else
            return
        if txn.staged:
            self.groups += 1
            self.grouped_changes += len(txn.staged)
        for change in txn.staged:
            self._bus.publish(ChangeApplied(change))
        durable.set_result(None)
