"""The audit hash chain: each entry commits to the one before it.

Entries are derived from changes in sequence order, so every host that applies
the same changes builds the same chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import msgspec

from fpcd.domain.configs import canonical_json
from fpcd.domain.model import (
    AuditEntry,
    AuditNote,
    Change,
    ConfigVersion,
    DataKey,
    FlagRecord,
    ReloadRequest,
    SchemaRecord,
    SecretDestroyed,
    SecretRead,
    SecretRewrap,
    SecretVersion,
    ServiceRegistration,
)

GENESIS_HASH = "0" * 64


def entry_hash(
    prev_hash: str,
    *,
    id: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
    request_id: str,
) -> str:
    """`sha256(prevHash + canonical entry)` as the design brief fixes it."""
    body = canonical_json(
        {
            "id": id,
            "at": at,
            "actor": actor,
            "action": action,
            "target": target,
            "details": details,
            "requestId": request_id,
        }
    )
    return hashlib.sha256(prev_hash.encode() + body).hexdigest()


def describe(change: Change) -> tuple[str, str, dict[str, Any]]:
    """The (action, target, details) a change leaves in the audit log; never secret values."""
    match change.payload:
        case ConfigVersion() as v:
            details: dict[str, Any] = {"version": v.version, "checksum": v.checksum}
            if v.rolled_back_from is not None:
                details["rolledBackFrom"] = v.rolled_back_from
            if v.secret_versions:
                details["secrets"] = sorted(v.secret_versions)
            return f"config.{v.action}", f"config:{v.service}/{v.environment}", details
        case SchemaRecord() as s:
            action = "schema.delete" if s.schema is None else "schema.put"
            return action, f"schema:{s.service}", {"version": s.version}
        case ReloadRequest() as r:
            return (
                "config.reload",
                f"config:{r.service}/{r.environment}",
                {"version": r.version, "checksum": r.checksum, "force": r.force},
            )
        case FlagRecord() as f:
            return f"flag.{change.op}", f"flag:{f.key}", {"version": f.version}
        case SecretVersion() as s:
            details = {"version": s.version, "keyId": s.key_id}
            if s.expires_at is not None:
                details["expiresAt"] = s.expires_at.isoformat()
            return "secret.put", f"secret:{s.service}/{s.environment}/{s.name}", details
        case SecretDestroyed() as d:
            action = "secret.expire" if d.reason == "expired" else "secret.delete"
            return action, f"secret:{d.service}/{d.environment}/{d.name}", {"versions": d.versions}
        case SecretRead() as r:
            return (
                "secret.read",
                f"secret:{r.service}/{r.environment}",
                {"names": sorted(r.names), "peer": r.peer},
            )
        case SecretRewrap() as w:
            return "secret.rewrap", "keyring", {"keyId": w.key_id, "count": len(w.items)}
        case DataKey() as k:
            return f"keyring.{change.op}", f"key:{k.id}", {"state": k.state}
        case ServiceRegistration() as reg:
            action = "service.deregister" if reg.deregistered else "service.register"
            return action, f"service:{reg.name}", {"environment": reg.environment}
        case AuditNote() as note:
            return note.action, note.target, dict(note.details)
    raise AssertionError(f"unhandled payload {type(change.payload).__name__}")


def next_entry(prev_id: int, prev_hash: str, change: Change) -> AuditEntry:
    action, target, details = describe(change)
    if change.peer:
        details = {**details, "peer": change.peer}
    fields: dict[str, Any] = {
        "id": prev_id + 1,
        "at": change.at,
        "actor": change.actor,
        "action": action,
        "target": target,
        "details": details,
        "request_id": change.request_id,
    }
    return AuditEntry(**fields, prev_hash=prev_hash, hash=entry_hash(prev_hash, **fields))


class ChainBreak(msgspec.Struct, frozen=True):
    """Where verification failed and why."""

    id: int
    reason: str


class ChainVerifier:
    """Recomputes the chain incrementally: `feed` entries in id order, batch by batch, then
    `finish` with the recorded head. Holds one entry's state, whatever the log's length;
    only the first `max_breaks` breaks are listed (then one line counts the rest)."""

    def __init__(self, *, max_breaks: int = 1000) -> None:
        self.prev_id, self.prev_hash = 0, GENESIS_HASH
        self.entries = 0
        self.breaks: list[ChainBreak] = []
        self.unlisted = 0
        self._max_breaks = max_breaks

    def _break(self, id: int, reason: str) -> None:
        if len(self.breaks) < self._max_breaks:
            self.breaks.append(ChainBreak(id, reason))
        else:
            self.unlisted += 1

    def feed(self, entries: Iterable[AuditEntry]) -> None:
        for entry in entries:
            self.entries += 1
            if entry.id != self.prev_id + 1:
                self._break(entry.id, f"expected entry {self.prev_id + 1}: rows missing")
            if entry.prev_hash != self.prev_hash:
                self._break(entry.id, "prevHash does not match the previous entry")
            expected = entry_hash(
                entry.prev_hash,
                id=entry.id,
                at=entry.at,
                actor=entry.actor,
                action=entry.action,
                target=entry.target,
                details=entry.details,
                request_id=entry.request_id,
            )
            if expected != entry.hash:
                self._break(entry.id, "content does not match its hash (edited row)")
            self.prev_id, self.prev_hash = entry.id, entry.hash

    def finish(self, head: tuple[int, str] | None) -> list[ChainBreak]:
        """All breaks found; `head` is the (id, hash) the store recorded with its last append."""
        if head is not None and head != (self.prev_id, self.prev_hash):
            self._break(self.prev_id, f"log ends at entry {self.prev_id}, expected {head[0]}")
        if self.unlisted:
            self.breaks.append(ChainBreak(self.prev_id, f"{self.unlisted} more breaks not listed"))
            self.unlisted = 0
        return self.breaks


def verify_chain(entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> list[ChainBreak]:
    """Recompute every hash; report edited, reordered, inserted or deleted rows.

    `head` is the (id, hash) the store recorded with its last append, which
    catches a deleted tail that the chain alone cannot show.
    """
    verifier = ChainVerifier()
    verifier.feed(entries)
    return verifier.finish(head)
