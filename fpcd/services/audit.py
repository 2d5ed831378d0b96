"""AuditService: reading and verifying the hash-chained audit log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fpcd.domain.audit import verify_chain
from fpcd.domain.model import AuditEntry
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


async def verify_store(store: Store) -> AuditVerifyResult:
    """Recompute the whole chain from the rows on disk (also used offline by the CLI)."""
    entries = await store.audit_all()
    breaks = verify_chain(entries, store.audit_head)
    return AuditVerifyResult(
        ok=not breaks,
        entries=len(entries),
        breaks=[AuditBreak(id=b.id, reason=b.reason) for b in breaks],
    )


class AuditService:
    def __init__(
        self, store: Store, *, settle: Callable[[], Awaitable[object]] | None = None
    ) -> None:
        self._store = store
        #: Brings entries recorded on this host but not yet in the chain (secret reads)
        #: into it first, when that needs no unreachable upstream.
        self._settle = settle

    async def page(self, *, target: str | None, limit: int, offset: int) -> Page[AuditView]:
        if self._settle is not None:
            await self._settle()
        entries, total = await self._store.audit_page(target=target, limit=limit, offset=offset)
        return Page(items=[audit_view(e) for e in entries], total=total, limit=limit, offset=offset)

    async def verify(self) -> AuditVerifyResult:
        return await verify_store(self._store)
