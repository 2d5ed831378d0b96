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


def verify_chain(entries: Iterable[AuditEntry], head: tuple[int, str] | None) -> list[ChainBreak]:
    """Recompute every hash; report edited, reordered, inserted or deleted rows.

    `head` is the (id, hash) the store recorded with its last append, which
    catches a deleted tail that the chain alone cannot show.
    """
    breaks: list[ChainBreak] = []
    prev_id, prev_hash = 0, GENESIS_HASH
    for entry in entries:
        if entry.id != prev_id + 1:
            breaks.append(ChainBreak(entry.id, f"expected entry {prev_id + 1}: rows missing"))
        if entry.prev_hash != prev_hash:
            breaks.append(ChainBreak(entry.id, "prevHash does not match the previous entry"))
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
            breaks.append(ChainBreak(entry.id, "content does not match its hash (edited row)"))
        prev_id, prev_hash = entry.id, entry.hash
    if head is not None and head != (prev_id, prev_hash):
        breaks.append(ChainBreak(prev_id, f"log ends at entry {prev_id}, expected {head[0]}"))
    return breaks
