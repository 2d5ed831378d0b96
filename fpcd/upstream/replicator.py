"""The replicated committer and the replication loop.

A write: take the upstream write lock, pull and apply everything newer than this host's
cursor (so the plan sees current state everywhere), plan, append to Postgres, commit,
then apply locally and ring the doorbell. Acknowledged means durable upstream.

Everyone else: on a doorbell ring, on a timer and at start, pull `seq > cursor` in
order and apply each batch in one SQLite transaction that also moves the cursor.
One lock serializes local applies, so a change is applied exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import msgspec

from fpcd.aio import Backoff
from fpcd.clock import Clock
from fpcd.domain.errors import FpcdError, Unavailable
from fpcd.domain.model import Change
from fpcd.domain.shred import destroyed_versions, retired_keys, superseded_keys
from fpcd.services.changes import MAX_GROUP, Group, GroupCommitter, groupable
from fpcd.services.events import ChangeApplied, EventBus
from fpcd.store.sqlite import Store, Transaction
from fpcd.upstream.doorbell import Doorbell
from fpcd.upstream.log import UPSTREAM_ERRORS, Unreadable, UpstreamLog
from fpcd.wire import ComponentHealth

log = logging.getLogger("fpcd.replication")
#: The record name of an upstream change this release cannot read (RecordProblems).
_UNREADABLE = "upstream change "


class _Group(Group):
    """A group of writers: one upstream transaction holding the write lock, one local
    transaction, one future that settles when both are done."""

    def __init__(
        self,
        stack: contextlib.AsyncExitStack,
        conn: asyncpg.Connection,
        txn: Transaction,
        durable: asyncio.Future[None],
    ) -> None:
        super().__init__(txn, durable)
        self.stack, self.conn = stack, conn
        #: The staged changes, numbered, as they go upstream.
        self.upstream: list[Change] = []
        #: How many of them are inserted upstream already (the rest go at the flush).
        self.inserted = 0


class Replicator(GroupCommitter[_Group]):
    """The replicated Committer (the group commit of `GroupCommitter`, with each group
    appended to the upstream log under its advisory lock) and the pull loop."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        upstream: UpstreamLog,
        *,
        poll_interval: float,
        batch_size: int = 500,
        max_group: int = MAX_GROUP,
        clock: Clock,
        redis_url: str = "",
        channel: str = "",
    ) -> None:
        super().__init__(bus, max_group=max_group)
        self._store = store
        self.upstream = upstream
        #: Redis pub/sub (with upstream.redis_url): rung after each commit, it rings this
        #: replicator's pull loop on every host; without it hosts poll.
        self.doorbell = Doorbell(redis_url, channel, self.ring) if redis_url else None
        self._poll_interval = poll_interval
        self._batch = batch_size
        self._clock = clock
        self._ring = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        #: Set after the first complete catch-up (the daemon is ready then).
        self.caught_up = asyncio.Event()
        self.available = False
        self.last_error: str | None = None
        self.last_sync: float | None = None
        self.head = 0
        #: Failed exchanges with the upstream (pulls and commits), for /metrics.
        self.errors = 0

    # -- the group commit's steps ----------------------------------------------------------

    def _unavailable(self, error: BaseException) -> BaseException:
        if isinstance(error, UPSTREAM_ERRORS):
            self._down(error)
            return Unavailable(
                "the upstream (Postgres) is unreachable: writes are refused until it is"
                " back; reads keep working from this host's copy",
                headers={"Retry-After": "5"},
            )
        return error

    async def _open(self) -> _Group:
        """Take the upstream write lock, catch up, and open the local transaction."""
        stack = contextlib.AsyncExitStack()
        txn: Transaction | None = None
        try:
            conn = await stack.enter_async_context(self.upstream.locked())
            txn = await self._store.begin()
            txn = await self._pull_into(conn, txn)
        except BaseException as error:
            if txn is not None:
                await txn.rollback()
            # Roll back (never commit) the upstream side; its connection may be gone.
            with contextlib.suppress(Exception):
                await stack.__aexit__(type(error), error, error.__traceback__)
            raise self._unavailable(error) from None
        return _Group(stack, conn, txn, asyncio.get_running_loop().create_future())

    async def _pull_into(self, conn: asyncpg.Connection, txn: Transaction) -> Transaction:
        """Catch up inside the group's local transaction (one commit for the pulled changes
        and the group's own); a pulled change that services keep in memory (a flag, a key)
        is committed and announced at once, so the group's plans see it."""
        while True:
            fetched = await self.upstream.fetch_after(conn, txn.cursor, self._batch)
            batch = fetched.changes
            if batch:
                self.head = max(self.head, batch[-1].seq)
                staged = await txn.stage(batch, upstream=True)
                if not groupable(staged):
                    await txn.commit()
                    for change in txn.staged:
                        self._bus.publish(ChangeApplied(change))
                    txn = await self._store.begin()
            if fetched.unreadable is not None:
                # Planning on a state without that change could contradict it: no writes.
                raise self._stuck(fetched.unreadable)
            if fetched.rows < self._batch:
                break
        self.last_sync = self._clock.time()
        return txn

    async def _stage(self, group: _Group, drafts: list[Change]) -> list[Change]:
        """Number the plan's changes after everything before them and stage them locally;
        they go upstream with the rest of the group. A failure here fails the group."""
        if not drafts:
            return []
        try:
            first = group.txn.cursor + 1
            numbered = [msgspec.structs.replace(c, seq=first + i) for i, c in enumerate(drafts)]
            with group.txn.reading():
                if destroyed_versions(drafts) or superseded_keys(drafts):
                    # Redaction rewrites earlier rows upstream: the group's own go in first.
                    await self._insert_pending(group)
                    await self._shred_upstream(group.conn, drafts)
                staged = await group.txn.stage(numbered, upstream=True)
        except BaseException as error:
            group.failed = self._unavailable(error)
            raise group.failed from None
        group.upstream.extend(numbered)
        return staged

    async def _insert_pending(self, group: _Group) -> None:
        pending = group.upstream[group.inserted :]
        if pending:
            await self.upstream.insert(group.conn, pending)
            group.inserted = len(group.upstream)

    async def _make_durable(self, group: _Group) -> None:
        """Append the group upstream and commit there (the acknowledgement point), then
        commit locally."""
        await self._insert_pending(group)
        await group.stack.aclose()  # COMMIT upstream, release the lock
        self._up()
        txn = group.txn
        # Durable upstream already: if the local commit fails, the next pull applies it.
        if txn.staged:
            await txn.commit()
        else:
            await txn.rollback()
        if group.upstream:
            self.groups += 1
            self.grouped_changes += len(group.upstream)
            self.head = max(self.head, group.upstream[-1].seq)

    async def _abandon(self, group: _Group, error: BaseException) -> BaseException:
        # Roll back the upstream side unless it committed (then this is a no-op).
        with contextlib.suppress(Exception):
            await group.stack.__aexit__(type(error), error, error.__traceback__)
        await group.txn.rollback()
        return self._unavailable(error)

    def _announced(self, group: _Group) -> None:
        if self.doorbell is not None and group.upstream:
            self.doorbell.ring(group.upstream[-1].seq)

    async def _shred_upstream(self, conn: asyncpg.Connection, drafts: list[Change]) -> None:
        """Destroyed values and superseded key material leave the upstream log in the same
        transaction as the change that destroys them (this host holds every earlier row,
        having just caught up under the lock)."""
        versions = destroyed_versions(drafts)
        keys = superseded_keys(drafts)
        if versions or keys:
            retired = retired_keys(drafts)
            seqs = await self._store.upstream_copies(versions, keys, retired)
            await self.upstream.redact(conn, seqs, versions=versions, keys=keys, retired=retired)

    # -- pulling ---------------------------------------------------------------------------

    async def _apply(self, changes: list[Change]) -> list[Change]:
        applied = await self._store.apply(changes, upstream=True)
        for change in applied:
            self._bus.publish(ChangeApplied(change))
        return applied

    async def _pull(self, conn: asyncpg.Connection) -> int:
        """Apply everything after the cursor, batch by batch; returns how many."""
        total = 0
        while True:
            fetched = await self.upstream.fetch_after(
                conn, self._store.upstream_cursor, self._batch
            )
            if fetched.changes:
                self.head = max(self.head, fetched.changes[-1].seq)
                total += len(await self._apply(fetched.changes))
            if fetched.unreadable is not None:
                self._stuck(fetched.unreadable)  # serve what was read; try again next pull
                break
            if fetched.rows < self._batch:
                self._store.problems.clear_prefix(_UNREADABLE)
                break
        self.last_sync = self._clock.time()
        return total

    def _stuck(self, row: Unreadable) -> Unavailable:
        """Replication waits at a change this release cannot read (written by a newer
        release, or damaged): reported in /health's `records`, never skipped."""
        self._store.problems.report(
            f"{_UNREADABLE}{row.seq}",
            f"this fpcd cannot read it ({row.why}); replication waits here (upgrade fpcd)",
            kind="load",
        )
        return Unavailable(
            f"the upstream change {row.seq} cannot be read by this fpcd: writes are refused"
            " until it is upgraded; reads keep working from this host's copy"
        )

    async def sync_once(self) -> int:
        async with self._lock:
            if self._group is not None and self.caught_up.is_set():
                return 0  # writers are queued: each group catches up as it opens
            try:
                async with self.upstream.reader() as conn:
                    pulled = await self._pull(conn)
                    self.head = max(self.head, await self.upstream.head(conn))
            except UPSTREAM_ERRORS as error:
                self._down(error)
                raise
            self._up()
            self.caught_up.set()
            return pulled

    def ring(self, seq: int) -> None:
        """Doorbell callback: something at `seq` (0: unknown) may be new."""
        if seq == 0 or seq > self._store.upstream_cursor:
            self._ring.set()

    def _up(self) -> None:
        if not self.available:
            log.info("upstream reachable", extra={"cursor": self._store.upstream_cursor})
        self.available, self.last_error = True, None

    def _down(self, error: BaseException) -> None:
        self.errors += 1
        if self.available or self.last_error is None:
            log.warning(
                "upstream unreachable; serving reads from the local copy",
                extra={"error": error.__class__.__name__},
            )
        self.available, self.last_error = False, error.__class__.__name__

    # -- lifecycle ---------------------------------------------------------------------------

    async def bootstrap(self) -> None:
        """An empty upstream and a standalone history here: seed the upstream with it.

        A history made without the upstream cannot join one that already has its own.
        """
        local = await self._store.local_changes_count()
        if not local:
            return
        async with self._lock, self.upstream.locked() as conn:
            if await self.upstream.head(conn) or self._store.upstream_cursor:
                raise FpcdError(
                    f"this data dir holds {local} changes made without the upstream, and the"
                    " upstream already has its own history: start with an empty data dir"
                    " to join it"
                )
            changes = await self._store.local_changes()
            appended = await self.upstream.append(conn, changes)
            await self._store.mark_upstream(
                [
                    (c.seq, local_seq)
                    for c, local_seq in zip(appended, [c.seq for c in changes], strict=True)
                ]
            )
        log.info("seeded the upstream with this host's history", extra={"changes": local})

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="replicator")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None

    async def _run(self) -> None:
        delay = self._poll_interval
        backoff = Backoff(max(2 * self._poll_interval, 0.5), 30.0)  # while Postgres is down
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ring.wait(), delay)
            self._ring.clear()
            try:
                await self.sync_once()
                delay = self._poll_interval
                backoff.reset()
            except UPSTREAM_ERRORS:
                delay = backoff.next()
            except Exception:
                log.exception("replication pull failed")
                delay = self._poll_interval
                backoff.reset()

    # -- health --------------------------------------------------------------------------------

    def waiting_for(self) -> str | None:
        """/health/ready's gate: what readiness waits for; None after the first catch-up."""
        return None if self.caught_up.is_set() else "catch-up with the upstream"

    def health(self) -> ComponentHealth:
        """/health's `upstream`: down while Postgres does not answer; cursor, head, lag."""
        cursor = self._store.upstream_cursor
        counts = {
            "cursor": cursor,
            "head": max(self.head, cursor),
            "lag": max(self.head - cursor, 0),
        }
        if self.last_sync is not None:
            counts["secondsSinceSync"] = int(self._clock.time() - self.last_sync)
        if not self.available:
            return ComponentHealth(
                status="down", detail=self.last_error or "not connected yet", counts=counts
            )
        return ComponentHealth(status="ok", counts=counts)
