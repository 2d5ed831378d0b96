"""`fpcd import-fineprint`: the original service's Postgres schema, with rows written the
original's way (secrets encrypted as it did), imported into a running daemon."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from fpcd.client.transport import Transport
from fpcd.domain.flags import bucket
from tests.conftest import DaemonProcess, run_cli, secret_value

#: The original's Prisma models as its migrations create them (camelCase columns).
SCHEMA = """
CREATE TABLE configurations (
    id TEXT PRIMARY KEY,
    "serviceName" TEXT NOT NULL,
    environment TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    config JSONB NOT NULL,
    schema JSONB,
    description TEXT,
    tags TEXT[] NOT NULL DEFAULT '{}',
    "isActive" BOOLEAN NOT NULL DEFAULT true,
    "isValid" BOOLEAN NOT NULL DEFAULT true,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "createdBy" TEXT,
    "updatedBy" TEXT,
    UNIQUE ("serviceName", environment, version)
);
CREATE TABLE configuration_secrets (
    id TEXT PRIMARY KEY,
    "configurationId" TEXT NOT NULL REFERENCES configurations (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    "encryptedValue" TEXT NOT NULL,
    iv TEXT NOT NULL,
    "keyVersion" INTEGER NOT NULL DEFAULT 1,
    description TEXT,
    "expiresAt" TIMESTAMP(3),
    "accessCount" INTEGER NOT NULL DEFAULT 0,
    "lastAccessedAt" TIMESTAMP(3),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE ("configurationId", key)
);
CREATE TABLE feature_flags (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT,
    enabled BOOLEAN NOT NULL DEFAULT false,
    "rolloutPercentage" DOUBLE PRECISION NOT NULL DEFAULT 0,
    "rolloutUserGroups" TEXT[] NOT NULL DEFAULT '{}',
    "rolloutRegions" TEXT[] NOT NULL DEFAULT '{}',
    "rolloutStartDate" TIMESTAMP(3),
    "rolloutEndDate" TIMESTAMP(3),
    variants JSONB NOT NULL DEFAULT '[]',
    dependencies TEXT[] NOT NULL DEFAULT '{}',
    conditions JSONB,
    tags TEXT[] NOT NULL DEFAULT '{}',
    environment TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE feature_flag_evaluations (
    id TEXT PRIMARY KEY,
    "flagKey" TEXT NOT NULL,
    "userId" TEXT,
    enabled BOOLEAN NOT NULL,
    variant TEXT,
    context JSONB,
    "evaluatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE service_registry (
    id TEXT PRIMARY KEY,
    "serviceName" TEXT NOT NULL UNIQUE,
    "displayName" TEXT,
    description TEXT,
    version TEXT,
    endpoints TEXT[] NOT NULL DEFAULT '{}',
    "healthCheck" TEXT,
    "requiredConfigs" TEXT[] NOT NULL DEFAULT '{}',
    "optionalConfigs" TEXT[] NOT NULL DEFAULT '{}',
    tags TEXT[] NOT NULL DEFAULT '{}',
    environment TEXT,
    "isActive" BOOLEAN NOT NULL DEFAULT true,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE TABLE configuration_audit_logs (
    id TEXT PRIMARY KEY,
    "configurationId" TEXT,
    action TEXT NOT NULL,
    "oldValues" JSONB,
    "newValues" JSONB,
    "userId" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);
"""

PASSPHRASE = "the-original-config-encryption-key"


def encrypt_like_the_original(value: str, passphrase: str = PASSPHRASE) -> tuple[str, str]:
    """AES-256-GCM under PBKDF2-HMAC-SHA256(passphrase, 'fineprintai-salt', 100k), a
    16-byte IV in hex, `encryptedValue` = hex ciphertext ':' hex tag, no AAD."""
    key = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=b"fineprintai-salt", iterations=100_000
    ).derive(passphrase.encode())
    iv = os.urandom(16)
    sealed = AESGCM(key).encrypt(iv, value.encode(), None)
    return sealed[:-16].hex() + ":" + sealed[-16:].hex(), iv.hex()


T0 = datetime(2026, 3, 1, 12, 0, 0)


async def build_original(url: str, values: dict[str, str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for kind in ("json", "jsonb"):
            await conn.set_type_codec(
                kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
        await conn.execute(SCHEMA)
        configs = [
            # (id, service, environment, version, config, schema, description, active, at)
            ("c1", "api", "production", 1, {"db": {"host": "db1"}}, None, "first", False, 0),
            ("c2", "api", "production", 2, {"db": {"host": "db2"}}, None, "second", False, 1),
            (
                "c3",
                "api",
                "production",
                3,
                {"db": {"host": "db3"}, "pool": 5},
                {"type": "object", "properties": {"pool": {"type": "integer"}}},
                "third",
                True,
                2,
            ),
            ("c4", "api", "development", 1, {"db": {"host": "localhost"}}, None, None, True, 3),
            # The original let an older version be the active one.
            ("c5", "web", "staging", 1, {"theme": "light"}, None, "light", True, 4),
            ("c6", "web", "staging", 2, {"theme": "dark"}, None, "dark", False, 5),
        ]
        for cid, service, env, version, config, schema, description, active, hours in configs:
            await conn.execute(
                'INSERT INTO configurations (id, "serviceName", environment, version, config,'
                ' schema, description, tags, "isActive", "createdAt", "updatedAt", "createdBy")'
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)",
                cid, service, env, version, config, schema, description, ["imported"], active,
                T0 + timedelta(hours=hours), "alice",
            )  # fmt: skip
        secret_rows = [
            ("s1", "c2", "JWT_SECRET", "old value no longer current", None),
            ("s2", "c3", "JWT_SECRET", values["JWT_SECRET"], None),
            ("s3", "c3", "STRIPE_KEY", values["STRIPE_KEY"], datetime(2100, 1, 1)),
            ("s4", "c3", "OLD_TOKEN", secret_value("fineprint-expired"), datetime(2020, 1, 1)),
        ]
        for sid, cid, key, value, expires in secret_rows:
            encrypted, iv = encrypt_like_the_original(value)
            await conn.execute(
                'INSERT INTO configuration_secrets (id, "configurationId", key, "encryptedValue",'
                ' iv, description, "expiresAt", "accessCount")'
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 9)",
                sid, cid, key, encrypted, iv, f"{key} of the api", expires,
            )  # fmt: skip
        flags: list[tuple[Any, ...]] = [
            ("f1", "base_layout", "Base layout", True, 100.0, [], [], [], None, None, None),
            (
                "f2",
                "new_checkout",
                "New checkout",
                True,
                50.0,
                ["beta"],
                [{"id": "a", "name": "A", "weight": 50, "configuration": {"steps": 3}},
                 {"id": "b", "name": "B", "weight": 50, "configuration": {"steps": 1}}],
                ["base_layout"],
                [{"field": "plan", "operator": "equals", "value": "pro"}],
                "production",
                datetime(2026, 1, 1),
            ),
        ]  # fmt: skip
        for fid, key, name, on, pct, groups, variants, deps, conditions, env, start in flags:
            await conn.execute(
                'INSERT INTO feature_flags (id, key, name, description, enabled,'
                ' "rolloutPercentage", "rolloutUserGroups", variants, dependencies, conditions,'
                ' tags, environment, "rolloutStartDate") VALUES ($1, $2, $3, $4, $5, $6, $7, $8,'
                " $9, $10, $11, $12, $13)",
                fid, key, name, f"{name} flag", on, pct, groups, variants, deps, conditions,
                ["web"], env, start,
            )  # fmt: skip
        evaluations = [("new_checkout", True, "a", 0)] * 3 + [("new_checkout", False, None, 0)]
        evaluations += [("new_checkout", True, "b", 30)] * 2 + [("base_layout", True, None, 30)]
        for i, (flag, on, variant, hours) in enumerate(evaluations):
            await conn.execute(
                'INSERT INTO feature_flag_evaluations (id, "flagKey", "userId", enabled, variant,'
                ' "evaluatedAt") VALUES ($1, $2, $3, $4, $5, $6)',
                f"e{i}", flag, f"u-{i}", on, variant, T0 + timedelta(hours=hours),
            )  # fmt: skip
        await conn.execute(
            'INSERT INTO service_registry (id, "serviceName", "displayName", description, version,'
            ' endpoints, "healthCheck", "requiredConfigs", "optionalConfigs", tags, environment)'
            " VALUES ('r1', 'api', 'API', 'the api', '1.4.0', '{http://10.0.0.7:8081}',"
            " NULL, '{db.host}', '{pool}', '{auth}', 'production'),"
            " ('r2', 'gone', NULL, NULL, '0.1.0', '{}', NULL, '{}', '{}', '{}', NULL)"
        )
        await conn.execute("UPDATE service_registry SET \"isActive\" = false WHERE id = 'r2'")
        await conn.execute(
            'INSERT INTO configuration_audit_logs (id, "configurationId", action, "newValues",'
            ' "userId", "createdAt") VALUES ($1, $2, $3, $4, $5, $6), ($7, $8, $9, $10, $11, $12)',
            "a1", "c1", "CREATE", {"db": {"host": "db1"}}, "alice", T0,
            "a2", "c2", "UPDATE", {"db": {"host": "db2"}}, "bob", T0 + timedelta(hours=1),
        )  # fmt: skip
    finally:
        await conn.close()


def call(proc: DaemonProcess, method: str, path: str, body: Any = None, **query: Any) -> Any:
    response = Transport(socket_path=str(proc.socket)).request(
        method, path, query=query or None, body=body
    )
    assert response.status < 400, (method, path, response.status, response.body)
    return response.json()


def run_import(proc: DaemonProcess, url: str, *extra: str) -> dict[str, Any]:
    out = run_cli(
        "import-fineprint", "--database-url", url, "--encryption-key", PASSPHRASE,
        "--socket", str(proc.socket), "--json", *extra,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert all(v not in out.stdout + out.stderr for v in VALUES.values())  # never printed
    report: dict[str, Any] = json.loads(out.stdout)
    return report


VALUES: dict[str, str] = {}


def test_import_fineprint(spawn: Any, pg_url: str) -> None:
    VALUES.update(JWT_SECRET=secret_value("fp-jwt"), STRIPE_KEY=secret_value("fp-stripe"))
    asyncio.run(build_original(pg_url, VALUES))
    proc = spawn().start()
    audit_before = call(proc, "GET", "/api/audit", limit=1)["total"]

    dry = run_import(proc, pg_url, "--dry-run")
    assert dry["dryRun"] is True and dry["imported"]["configs"] == 6
    assert call(proc, "GET", "/api/audit", limit=1)["total"] == audit_before
    assert call(proc, "GET", "/api/config")["total"] == 0

    report = run_import(proc, pg_url)
    assert report["imported"] == {
        "configs": 6,
        "rollbacks to the active version": 1,
        "schemas": 1,
        "secrets": 2,
        "flags": 2,
        "services": 1,
        "evaluations": 7,
        "audit notes": 2,
    }, report
    reasons = {(s["kind"], s["key"]): s["reason"] for s in report["skipped"]}
    assert reasons == {
        ("secrets", "api/production/OLD_TOKEN"): "expired in the original",
        ("services", "gone"): "inactive in the original",
    }

    # Versions in order, with the original's contents, descriptions, authors and times.
    history = call(proc, "GET", "/api/config/api/history", environment="production")["items"]
    assert [(v["version"], v["config"]["db"]["host"], v["description"]) for v in history] == [
        (3, "db3", "third"),
        (2, "db2", "second"),
        (1, "db1", "first"),
    ]
    assert history[-1]["createdBy"] == "alice"
    assert history[-1]["createdAt"].startswith("2026-03-01T12:00:00")
    assert history[0]["tags"] == ["imported"] and history[0]["action"] == "import"
    # The active version of web/staging was the older one: it is the head now.
    web = call(proc, "GET", "/api/config/web", environment="staging")
    assert web["config"] == {"theme": "light"} and web["version"] == 3
    schema = call(proc, "GET", "/api/config/api/schema")["schema"]
    assert schema["properties"]["pool"] == {"type": "integer"}

    # Secrets decrypted with the original's key, stored under fpcd's own encryption.
    production = call(proc, "GET", "/api/config/api", environment="production", includeSecrets=True)
    assert production["secrets"]["JWT_SECRET"]["value"] == VALUES["JWT_SECRET"]
    assert production["secrets"]["STRIPE_KEY"]["value"] == VALUES["STRIPE_KEY"]
    assert production["secrets"]["STRIPE_KEY"]["expiresAt"].startswith("2100-01-01")
    assert "OLD_TOKEN" not in production["secrets"]

    # Flags in fpcd's model: rollout, groups, variants, dependency, the condition as a rule,
    # and the original's environment as the only one the flag is on in.
    flag = call(proc, "GET", "/api/features/new_checkout")
    assert flag["enabled"] is False
    assert flag["environments"] == {"production": {"enabled": True}}
    assert flag["rollout"]["percentage"] == 50 and flag["rollout"]["userGroups"] == ["beta"]
    assert flag["rules"] == [{"attribute": "plan", "operator": "eq", "values": ["pro"]}]
    assert flag["dependencies"] == ["base_layout"]
    user = next(f"u-{i}" for i in range(1000) if bucket("new_checkout", f"u-{i}") < 50_000)
    context = {
        "userId": user,
        "userGroup": "beta",
        "environment": "production",
        "customAttributes": {"plan": "pro"},
    }
    result = call(
        proc, "POST", "/api/features/evaluate", {"flags": ["new_checkout"], "context": context}
    )["results"]["new_checkout"]
    assert result["enabled"] is True and result["variant"] in ("a", "b")
    staging = {**context, "environment": "staging"}
    result = call(
        proc, "POST", "/api/features/evaluate", {"flags": ["new_checkout"], "context": staging}
    )["results"]["new_checkout"]
    assert result["enabled"] is False

    # Evaluations as counts per day.
    analytics = call(
        proc,
        "GET",
        "/api/features/new_checkout/analytics",
        startDate="2026-03-01",
        endDate="2026-03-05",
    )
    assert analytics["total"] == 6 and analytics["enabled"] == 5
    assert analytics["variants"] == {"a": 3, "b": 2}
    assert [(d["date"], d["total"]) for d in analytics["daily"]] == [
        ("2026-03-01", 4),
        ("2026-03-02", 2),
    ]

    # The registration, through fpcd's registration API.
    service = call(proc, "GET", "/api/services/api")
    assert service["version"] == "1.4.0" and service["environment"] == "production"
    assert service["tags"] == ["auth"]
    # The original's fields come through under the original's names.
    assert service["displayName"] == "API" and service["endpoints"] == ["http://10.0.0.7:8081"]
    assert service["requiredConfigs"] == ["db.host"] and service["optionalConfigs"] == ["pool"]
    assert call(proc, "GET", "/api/services", tag="auth")["total"] == 1

    # The original's audit rows as history notes.
    notes = call(proc, "GET", "/api/audit", target="fineprint:configuration_audit_logs")["items"]
    assert {n["details"]["row"]["action"] for n in notes} == {"CREATE", "UPDATE"}
    assert call(proc, "GET", "/api/audit/verify")["ok"] is True

    # A second run imports nothing new.
    audit_after = call(proc, "GET", "/api/audit", limit=1)["total"]
    again = run_import(proc, pg_url)
    assert set(again["imported"].values()) == {0}, again
    assert call(proc, "GET", "/api/audit", limit=1)["total"] == audit_after


def test_import_fineprint_wrong_key_and_bad_database(spawn: Any, pg_url: str) -> None:
    asyncio.run(build_original(pg_url, {"JWT_SECRET": "x" * 12, "STRIPE_KEY": "y" * 12}))
    proc = spawn().start()
    out = run_cli(
        "import-fineprint", "--database-url", pg_url, "--encryption-key", "not-the-key",
        "--socket", str(proc.socket), "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    skipped = [s for s in json.loads(out.stdout)["skipped"] if s["kind"] == "secrets"]
    assert {s["reason"] for s in skipped} >= {
        "cannot decrypt: wrong --encryption-key, or a damaged row"
    }
    bad = run_cli(
        "import-fineprint", "--database-url", "postgresql://nobody@127.0.0.1:1/none",
        "--encryption-key", "k", "--socket", str(proc.socket),
    )  # fmt: skip
    assert bad.returncode == 1 and "cannot connect" in bad.stderr
