"""Build a large fpcd database offline, through the store's own apply path.

Run: python -m benchmarks.scale_data PATH [--services N] [--versions N] [--flags N]
     [--audit N]

Every row is written by `Store.begin()` / `Transaction.stage()` / `commit()`, the path
every write takes in the daemon, so journal rows, materialized rows, audit entries
(hash chain included) and the head in `meta` are exactly what the daemon would have made;
`fpcd audit verify` accepts the result. Speed comes from large transactions (5,000
changes each) and `synchronous=off` while building (a crash mid-build leaves a file
to throw away, nothing else).

What it writes: `services` services with layers `default`, `staging` and `prod`
(`versions` config versions spread over them: every layer has at least one, and the
first service's `prod` layer takes what is left over, so deep history pages can be
read), `flags` feature flags, and secret reads (audited, as every decrypting read is)
until the audit log holds `audit` entries.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from fpcd.domain.configs import content_checksum
from fpcd.domain.flags import FlagDefinition
from fpcd.domain.model import Change, ConfigVersion, FlagRecord, SecretRead
from fpcd.store.sqlite import Store

ENVIRONMENTS = ("default", "staging", "prod")
BATCH = 5_000
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def service_name(i: int) -> str:
    return f"svc-{i:05d}"


def config_for(i: int, env: str, version: int) -> dict[str, Any]:
    """About 300 bytes: a service's usual settings, different per version."""
    return {
        "database": {"host": f"db-{i % 50}.internal", "port": 5432, "pool": 10 + version % 20},
        "cache": {"ttl": 300, "url": f"redis://cache-{i % 20}:6379/0"},
        "features": {f"f{k}": (i + k + version) % 2 == 0 for k in range(5)},
        "environment": env,
        "revision": version,
    }


def _change(key: str, op: str, payload: Any, n: int) -> Change:
    return Change(
        key=key,
        op=op,
        payload=payload,
        actor="scale-builder",
        at=EPOCH + timedelta(seconds=n),
        origin="scale-builder",
    )


def changes(services: int, versions: int, flags: int, audit: int) -> Iterator[Change]:
    n = 0
    layers = services * len(ENVIRONMENTS)
    extra = max(versions - layers, 0)
    per_layer = 1 + extra // (2 * layers)  # half of the extra versions spread evenly
    deep = versions - layers * per_layer  # the rest: one deep history
    for i in range(services):
        for env in ENVIRONMENTS:
            count = per_layer + (deep if (i, env) == (0, "prod") else 0)
            for v in range(1, count + 1):
                config = config_for(i, env, v)
                n += 1
                yield _change(
                    f"{service_name(i)}/{env}",
                    "put",
                    ConfigVersion(
                        service=service_name(i),
                        environment=env,
                        version=v,
                        config=config,
                        checksum=content_checksum(config, {}),
                        created_at=EPOCH + timedelta(seconds=n),
                        created_by="scale-builder",
                    ),
                    n,
                )
    for k in range(flags):
        n += 1
        definition = msgspec.convert(
            {
                "key": f"flag_{k:05d}",
                "name": f"Flag {k}",
                "enabled": True,
                "rollout": {"percentage": (k * 7) % 101},
                "tags": ["scale"],
            },
            FlagDefinition,
        )
        at = EPOCH + timedelta(seconds=n)
        yield _change(
            f"flag_{k:05d}",
            "create",
            FlagRecord(
                key=f"flag_{k:05d}",
                version=1,
                definition=definition,
                created_at=at,
                updated_at=at,
                updated_by="scale-builder",
            ),
            n,
        )
    while n < audit:
        n += 1
        i = n % services
        yield _change(
            f"{service_name(i)}/prod",
            "read",
            SecretRead(service=service_name(i), environment="prod", names=["api_key"]),
            n,
        )


async def build(
    path: Path, *, services: int, versions: int, flags: int, audit: int
) -> dict[str, Any]:
    """Write the data set into a new database at `path` (which must not exist yet);
    returns counts and seconds."""
    started = time.perf_counter()
    store = Store(path, synchronous="off")
    await store.open()
    written = 0
    try:
        batch: list[Change] = []
        for change in changes(services, versions, flags, audit):
            batch.append(change)
            if len(batch) == BATCH:
                written += await _apply(store, batch)
                batch = []
        written += await _apply(store, batch)
    finally:
        await store.close()
    return {
        "changes": written,
        "audit_entries": store.audit_head[0],
        "seconds": round(time.perf_counter() - started, 1),
    }


async def _apply(store: Store, batch: list[Change]) -> int:
    if not batch:
        return 0
    txn = await store.begin()
    try:
        await txn.stage(batch)
        await txn.commit()
    finally:
        await txn.rollback()
    return len(batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", type=Path)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--flags", type=int, default=10_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.path.exists():
        raise SystemExit(f"{args.path} exists: build into a new path")
    print(
        asyncio.run(
            build(
                args.path,
                services=args.services,
                versions=args.versions,
                flags=args.flags,
                audit=args.audit,
            )
        )
    )


if __name__ == "__main__":
    main()
