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
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar

from fpcd.clock import Clock
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

    def __init__(self, origin: str, clock: Clock) -> None:
        self._origin = origin
        self._clock = clock

    def __call__(self, key: str, op: str, payload: Payload, caller: Caller) -> Change:
        return Change.by(
            caller, key=key, op=op, payload=payload, at=self._clock.now(), origin=self._origin
        )


#: Changes whose effect later plans read from SQLite only. Any other change (flags,
#: schemas, keys, registrations, destroyed or re-wrapped secrets) also changes state that
#: services keep in memory and update from the change event, so its group is committed
#: and announced before the next plan runs.
GROUPABLE = (ConfigVersion, SecretVersion, SecretRead, ReloadRequest, AuditNote)

T = TypeVar("T")

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


class Group:
    """Writers committed together: the open local transaction and the future every writer
    of the group waits on until the group is durable (or failed)."""

    def __init__(self, txn: Transaction, durable: asyncio.Future[None]) -> None:
        self.txn = txn
        self.durable = durable
        #: Set when the group cannot commit (e.g. its upstream failed while staging).
        self.failed: BaseException | None = None


G = TypeVar("G", bound=Group)


class GroupCommitter(Generic[G]):
    """The group commit both committers share: writers queue for one lock; each plan runs
    alone against everything committed or staged before it, its changes are staged into
    the open group, and the group is made durable when no writer is waiting for the lock
    (or it is full, failed, or holds a change services keep in memory). A commit runs to
    its end even if its caller goes away, and a refused plan is answered only once its
    group is settled.

    A subclass says how a group opens (`_open`), how a plan's changes are staged
    (`_stage`), how the group becomes durable (`_make_durable`) or is undone (`_abandon`),
    and what follows its announcement (`_announced`).
    """

    def __init__(self, bus: EventBus, *, max_group: int = MAX_GROUP) -> None:
        self._bus = bus
        self._max_group = max_group
        self._lock = asyncio.Lock()
        self._inflight: set[asyncio.Future[Any]] = set()
        #: Writers waiting for the lock: while there are any, the open group waits for them.
        self._waiting = 0
        self._group: G | None = None
        #: Groups committed and the writers' changes in them (for /metrics and benchmarks).
        self.groups = 0
        self.grouped_changes = 0

    # -- hooks ------------------------------------------------------------------------

    async def _open(self) -> G:
        """A new group, its transaction open."""
        raise NotImplementedError

    async def _stage(self, group: G, drafts: list[Change]) -> list[Change]:
        """Stage a plan's changes in the group; returns them as stored."""
        return await group.txn.stage(drafts)

    async def _make_durable(self, group: G) -> None:
        """Commit the group (raise, having undone what can be, if it cannot be)."""
        raise NotImplementedError

    async def _abandon(self, group: G, error: BaseException) -> BaseException:
        """Undo a group that cannot be made durable; returns what its writers are told."""
        await group.txn.rollback()
        return error

    def _announced(self, group: G) -> None:
        """After the group's events are published and its writers answered."""

    # -- the Committer protocol -------------------------------------------------------

    async def commit(self, plan: Plan) -> list[Change]:
        """Run `plan` with writers serialized, make its changes durable, announce them."""
        # A caller that goes away (client disconnect, shutdown) must not cut a commit
        # between "durable" and "announced": the commit runs to the end on its own.
        return await asyncio.shield(self._track(self._commit(plan)))

    async def drain(self) -> None:
        """Wait for commits already started; called at shutdown before the store closes."""
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    def _track(self, work: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        return task

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
            if self._group is None:
                self._group = await self._open()
            group = self._group
            try:
                with group.txn.reading():
                    drafts = await plan()
                staged = await self._stage(group, drafts)
            except BaseException as error:
                refused = error
            # Leave the group open only for a writer already waiting for the lock.
            if (
                not self._waiting
                or group.failed is not None
                or group.txn.broken
                or len(group.txn.staged) >= self._max_group
                or not groupable(staged)
            ):
                await self._flush()
        finally:
            self._lock.release()
        if refused is not None:
            # A plan refused on staged state (or failed) answers once that state is
            # settled, so its answer never rests on a group that was then rolled back.
            await asyncio.gather(asyncio.shield(group.durable), return_exceptions=True)
            raise refused
        await asyncio.shield(group.durable)
        return staged

    def _flush_if_abandoned(self) -> None:
        """A waiter went away (shutdown): close a group nobody else is coming to close."""
        if not self._waiting and self._group is not None and not self._lock.locked():
            self._track(self._flush_locked())

    async def _flush_locked(self) -> None:
        async with self._lock:
            await self._flush()

    async def _flush(self) -> None:
        """Make the open group durable (under the lock), announce its changes in order,
        then answer its writers."""
        group, self._group = self._group, None
        if group is None:
            return
        txn, durable = group.txn, group.durable
        try:
            if group.failed is not None:
                raise group.failed
            if txn.broken:
                raise txn.error or RuntimeError("the group's transaction failed")
            await self._make_durable(group)
        except BaseException as error:
            durable.set_exception(await self._abandon(group, error))
            durable.exception()  # retrieved: a group of one writer may have no one else
            return
        for change in group.txn.staged:
            self._bus.publish(ChangeApplied(change))
        durable.set_result(None)
        self._announced(group)


class LocalCommitter(GroupCommitter[Group]):
    """The embedded default: the local SQLite store is the source of truth and order.

    Plans run under one lock so version numbers are computed and stored
    atomically: two racing writers never both become version n+1.
    """

    def __init__(self, store: Store, bus: EventBus, *, max_group: int = MAX_GROUP) -> None:
        super().__init__(bus, max_group=max_group)
        self._store = store

    async def _open(self) -> Group:
        txn = await self._store.begin()
        return Group(txn, asyncio.get_running_loop().create_future())

    async def _make_durable(self, group: Group) -> None:
        txn = group.txn
        if not txn.staged:
            await txn.rollback()
            return
        await txn.commit()
        self.groups += 1
        self.grouped_changes += len(txn.staged)
