"""AuditService: reading and verifying the hash-chained audit log."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fpcd.domain.access import AUDIT_READ, authorize_everywhere
from fpcd.domain.audit import ChainVerifier
from fpcd.domain.model import AuditEntry, Caller
from fpcd.services.integrity import verify_state
from fpcd.store.sqlite import Store
from fpcd.wire import AuditBreak, AuditVerifyResult, AuditView, Page


def audit_view(entry: AuditEntry) -> AuditView:
    return AuditView(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        details=entry.details,
        request_id=entry.request_id,
        prev_hash=entry.prev_hash,
        hash=entry.hash,
    )


#: Entries read, decoded and hashed per step of a verification.
VERIFY_BATCH = 1000


async def verify_store(store: Store, *, batch: int = VERIFY_BATCH) -> AuditVerifyResult:
    """Recompute the whole chain from the rows on disk (also used offline by the CLI).

    Runs in a worker thread, `batch` entries at a time from one read snapshot: memory does
    not grow with the log and the event loop keeps serving meanwhile.
    """
    verifier = ChainVerifier()
    head = await asyncio.to_thread(store.scan_audit, verifier.feed, batch=batch)
    breaks = verifier.finish(head)
    found = [AuditBreak(id=b.id, reason=b.reason) for b in breaks]
    found += await verify_stored_state(store)
    return AuditVerifyResult(ok=not found, entries=verifier.entries, breaks=found)


async def verify_stored_state(store: Store) -> list[AuditBreak]:
    """The stored config versions against the chain (fpcd.services.integrity), batch-wise."""
    _, breaks = await verify_state(store)
    return [AuditBreak(id=b.id, reason=b.reason) for b in breaks]


class AuditService:
    def __init__(
        self, store: Store, *, settle: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        self._store = store
        #: Brings entries recorded on this host but not yet in the chain (secret reads)
        #: into it first, when that needs no unreachable upstream.
        self._settle = settle
        self._verifying: asyncio.Future[AuditVerifyResult] | None = None
        #: Verifications actually run (calls that joined a running one are not counted).
        self.verify_runs = 0

    async def page(
        self, caller: Caller, *, target: str | None, limit: int, offset: int
    ) -> Page[AuditView]:
        authorize_everywhere(caller, AUDIT_READ)
        if self._settle is not None:
            await self._settle()
        entries, total = await self._store.audit_page(target=target, limit=limit, offset=offset)
        return Page(items=[audit_view(e) for e in entries], total=total, limit=limit, offset=offset)

    async def verify(self, caller: Caller) -> AuditVerifyResult:
        """One verification at a time: a call while one runs waits for it and shares its
        result, so concurrent callers cost one pass over the log, not one each."""
        authorize_everywhere(caller, AUDIT_READ)
        if self._verifying is None or self._verifying.done():
            self.verify_runs += 1
            self._verifying = asyncio.ensure_future(verify_store(self._store))
            # Its error is raised to every waiter; mark it seen even if all of them left.
            self._verifying.add_done_callback(lambda f: f.cancelled() or f.exception())
        # A caller that goes away does not cancel the run the others wait for.
        return await asyncio.shield(self._verifying)
