"""The audit hash chain detects edited, deleted and reordered rows, on disk and in memory."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from fpcd.domain.audit import GENESIS_HASH, next_entry, verify_chain
from fpcd.domain.model import AuditEntry, AuditNote, Change
from fpcd.services.audit import verify_store
from fpcd.store.sqlite import Store


def chain(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev_id, prev_hash = 0, GENESIS_HASH
    for i in range(n):
        change = Change(
            key="k",
            op="note",
            actor="tester",
            origin="node",
            at=datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC),
            payload=AuditNote(action="test.note", target=f"t:{i}", details={"i": i}),
        )
        entry = next_entry(prev_id, prev_hash, change)
        entries.append(entry)
        prev_id, prev_hash = entry.id, entry.hash
    return entries


def test_intact_chain_verifies() -> None:
    entries = chain(5)
    assert verify_chain(entries, (5, entries[-1].hash)) == []


def test_edited_entry_is_found() -> None:
    entries = chain(5)
    entries[2] = msgspec.structs.replace(entries[2], actor="mallory")
    breaks = verify_chain(entries, (5, entries[-1].hash))
    assert [b.id for b in breaks] == [3]


def test_deleted_middle_entry_is_found() -> None:
    entries = chain(5)
    del entries[2]
    assert verify_chain(entries, (5, entries[-1].hash))


def test_deleted_tail_is_found_by_the_recorded_head() -> None:
    entries = chain(5)
    head = (5, entries[-1].hash)
    assert verify_chain(entries[:-1], head)
    assert verify_chain(entries[:-1], None) == []  # without the head, nothing shows


async def test_tampering_with_the_database_file_is_detected(tmp_path: Path) -> None:
    store = Store(tmp_path / "fpcd.db")
    await store.open()
    changes = [
        Change(
            key="k",
            op="note",
            actor="alice",
            origin="n",
            at=datetime.now(UTC),
            payload=AuditNote(action="test.note", target=f"t:{i}"),
        )
        for i in range(3)
    ]
    await store.apply(changes)
    assert (await verify_store(store)).ok
    with sqlite3.connect(tmp_path / "fpcd.db") as db:
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = 2")
    result = await verify_store(store)
    assert not result.ok and result.breaks[0].id == 2
    await store.close()
