"""Does the stored state match the audit chain? (the second half of `audit verify`)

The chain check proves the audit log is what was written. This step proves the
configuration rows that reads serve are what the log says was written: for every
stored config version, its content must hash to its own checksum, to the checksum of
the change in the journal that wrote it, and to the checksum its audit entry recorded.
A row edited by hand (even with its checksum recomputed) shows here.

It reads in bounded batches in key order, so memory stays constant however long the
history is, and yields to the event loop between batches.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from fpcd.domain.configs import content_checksum
from fpcd.domain.model import Change, ConfigVersion
from fpcd.store.sqlite import Store

_version_decoder = msgspec.json.Decoder(ConfigVersion)
_change_decoder = msgspec.json.Decoder(Change)
_details_decoder = msgspec.json.Decoder(dict[str, Any])

#: Config version rows checked per query.
STATE_BATCH = 500


class StateBreak(msgspec.Struct, frozen=True):
    """A stored row that does not match the chain: the audit entry's id (0 if none)."""

    id: int
    reason: str


def _audited(
    target: str, version: int, audit: tuple[int | None, str | None, str | None]
) -> tuple[int, str] | None:
    """(audit id, checksum) if this audit row records `version` of `target`."""
    entry_id, entry_target, details = audit
    if entry_id is None or entry_target != target or details is None:
        return None
    try:
        recorded = _details_decoder.decode(details)
    except msgspec.DecodeError:
        return None
    if recorded.get("version") != version or not isinstance(recorded.get("checksum"), str):
        return None
    return entry_id, recorded["checksum"]


async def _find_audited(store: Store, target: str, version: int) -> tuple[int, str] | None:
    """The slow path, when the entry is not where the change's sequence puts it."""
    for entry_id, action, details in await store.audit_entries_for(target):
        if action != "config.reload":
            found = _audited(target, version, (entry_id, target, details))
            if found is not None:
                return found
    return None


async def verify_state(store: Store, *, batch: int = STATE_BATCH) -> tuple[int, list[StateBreak]]:
    """(rows checked, problems) for every stored config version; see the module doc."""
    breaks: list[StateBreak] = []
    checked = 0
    after: tuple[str, str, int] = ("", "", 0)
    while True:
        rows = await store.config_state_batch(after, batch)
        for service, environment, version, _seq, record, payload, a_id, a_target, a_details in rows:
            checked += 1
            where = f"config {service}/{environment} version {version}"
            target = f"config:{service}/{environment}"
            found = _audited(target, version, (a_id, a_target, a_details))
            if found is None:
                found = await _find_audited(store, target, version)
            entry_id = found[0] if found else 0
            try:
                stored = _version_decoder.decode(record)
            except msgspec.DecodeError:
                breaks.append(StateBreak(entry_id, f"{where}: the stored row does not decode"))
                continue
            content = content_checksum(stored.config, stored.secret_versions)
            if content != stored.checksum:
                breaks.append(
                    StateBreak(entry_id, f"{where}: stored content does not match its checksum")
                )
            elif found is None:
                breaks.append(StateBreak(0, f"{where}: no audit entry records this version"))
            elif content != found[1]:
                breaks.append(
                    StateBreak(
                        entry_id,
                        f"{where}: stored content does not match the checksum in the audit log",
                    )
                )
            elif payload is not None:
                try:
                    journal = _change_decoder.decode(payload).payload
                except msgspec.DecodeError:
                    journal = None
                if journal != stored:
                    breaks.append(
                        StateBreak(entry_id, f"{where}: stored row differs from the journal")
                    )
        if len(rows) < batch:
            return checked, breaks
        after = (rows[-1][0], rows[-1][1], rows[-1][2])
        await asyncio.sleep(0)
