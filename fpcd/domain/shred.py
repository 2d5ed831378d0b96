"""Destroying every stored copy of secret material (pure: no I/O).

A ciphertext is written into the change journal (SQLite `changes`, Postgres
`fpcd_changes`) as well as into `secret_versions`, and a data key's wrapped material
into the journal as well as into `data_keys`. Destroying a value or retiring a key must
reach those journal copies too. They are redacted in place: the change keeps its place
in the order, its entity, key and every field the audit entry is derived from
(`fpcd.domain.audit.describe`), so audit chains stay identical on every host, and only
the bytes go (nonce and ciphertext, or nonce and wrapped key, become empty).

Rules:
- a destroyed secret version (deleted or expired): every copy of its ciphertext, in the
  `SecretVersion` that wrote it and in every `SecretRewrap` item that re-encrypted it;
- a retired data key: every ciphertext ever made under it (they could only be opened
  with it; the values live on under the key they were rewrapped to);
- a data key: only its newest `DataKey` change keeps material. Every later change of a
  key (demote, retire, re-wrap under a new master key) redacts the earlier copies, so a
  retired key leaves no material anywhere and a key re-wrapped under a new master key
  leaves nothing the previous master key can open.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

import msgspec

from fpcd.domain.model import Change, DataKey, SecretDestroyed, SecretRewrap, SecretVersion

#: (service, environment, name, version) of one secret version.
VersionRef = tuple[str, str, str, int]


def destroyed_versions(changes: Iterable[Change]) -> set[VersionRef]:
    """The secret versions that `changes` destroy."""
    found: set[VersionRef] = set()
    for change in changes:
        if isinstance(change.payload, SecretDestroyed):
            d = change.payload
            found.update((d.service, d.environment, d.name, v) for v in d.versions)
    return found


def superseded_keys(changes: Iterable[Change]) -> set[str]:
    """Data key ids whose earlier journal copies `changes` supersede."""
    return {c.payload.id for c in changes if isinstance(c.payload, DataKey)}


def retired_keys(changes: Iterable[Change]) -> set[str]:
    """Data key ids that `changes` retire: every ciphertext made under them goes too."""
    return {
        c.payload.id
        for c in changes
        if isinstance(c.payload, DataKey) and c.payload.state == "retired"
    }


def redact(
    change: Change,
    *,
    versions: AbstractSet[VersionRef] = frozenset(),
    keys: AbstractSet[str] = frozenset(),
    retired: AbstractSet[str] = frozenset(),
) -> Change | None:
    """`change` without the material of `versions`, of data keys `keys`, and of the
    ciphertexts made under `retired` keys; None when it holds none of them."""
    payload = change.payload
    new: object
    match payload:
        case SecretVersion() as v if (
            (v.service, v.environment, v.name, v.version) in versions or v.key_id in retired
        ) and (v.ciphertext or v.nonce):
            new = msgspec.structs.replace(v, nonce=b"", ciphertext=b"")
        case SecretRewrap() as r:
            items = [
                msgspec.structs.replace(i, nonce=b"", ciphertext=b"")
                if (
                    r.key_id in retired or (i.service, i.environment, i.name, i.version) in versions
                )
                and (i.ciphertext or i.nonce)
                else i
                for i in r.items
            ]
            if all(a is b for a, b in zip(items, r.items, strict=True)):
                return None
            new = msgspec.structs.replace(r, items=items)
        case DataKey() as k if k.id in keys and (k.wrapped or k.nonce):
            new = msgspec.structs.replace(k, nonce=b"", wrapped=b"")
        case _:
            return None
    return msgspec.structs.replace(change, payload=new)


def scrub_history(changes: Sequence[Change]) -> list[tuple[int, Change]]:
    """For a whole journal in order (migration of stores written before redaction existed):
    (index, redacted change) for each change that still holds material it should not."""
    versions = destroyed_versions(changes)
    newest: dict[str, int] = {}
    for index, change in enumerate(changes):
        if isinstance(change.payload, DataKey):
            newest[change.payload.id] = index
    retired = retired_keys(changes[i] for i in newest.values())
    out: list[tuple[int, Change]] = []
    for index, change in enumerate(changes):
        keys: set[str] = set()
        if isinstance(change.payload, DataKey) and newest[change.payload.id] != index:
            keys = {change.payload.id}
        redacted = redact(change, versions=versions, keys=keys, retired=retired)
        if redacted is not None:
            out.append((index, redacted))
    return out
