"""`fpcd import-fineprint`: the original service's Postgres database into a running fpcd.

The original (@fineprintai/shared-config) kept its data in Prisma tables with camelCase
columns. This command reads them with asyncpg (read-only queries) and writes everything
through the daemon's API, so each change takes fpcd's one apply path: audited,
announced to subscribers and replicated. A second run imports nothing new; `--dry-run`
only reports. docs/migrating.md says what maps to what.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import UUID

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from fpcd.cli.common import CliError, add_client_options, check
from fpcd.cli.common import transport as connect
from fpcd.cli.portable_cmds import ImportReport, post_batches, put_secret
from fpcd.client.transport import Transport
from fpcd.domain.configs import content_checksum
from fpcd.domain.flags import FlagDefinition, derive_key
from fpcd.domain.names import valid_flag_key, valid_name

#: How the original derived its AES-256-GCM key from CONFIG_ENCRYPTION_KEY.
KDF_SALT = b"fineprintai-salt"
KDF_ITERATIONS = 100_000
SOURCE = "fineprint"
#: Columns of audit rows never copied into notes (they could hold secret material).
_SENSITIVE = re.compile(r"(?i)secret|password|token|encrypted|^iv$|credential")
#: The original's condition operators, as fpcd rule operators.
_OPERATORS = {
    "equals": "eq", "eq": "eq", "==": "eq", "not_equals": "neq", "neq": "neq", "!=": "neq",
    "in": "in", "not_in": "not_in", "contains": "contains", "starts_with": "starts_with",
    "ends_with": "ends_with", "greater_than": "gt", "gt": "gt", ">": "gt", "gte": "gte",
    ">=": "gte", "less_than": "lt", "lt": "lt", "<": "lt", "lte": "lte", "<=": "lte",
}  # fmt: skip


def derive_original_key(passphrase: str) -> bytes:
    return PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=KDF_SALT, iterations=KDF_ITERATIONS
    ).derive(passphrase.encode())


def decrypt_original(key: bytes, iv_hex: str, encrypted_value: str) -> str:
    """`encryptedValue` is hex ciphertext ':' hex tag; the IV is 16 bytes; no AAD."""
    ciphertext_hex, _, tag_hex = encrypted_value.partition(":")
    iv, ciphertext, tag = (
        bytes.fromhex(iv_hex),
        bytes.fromhex(ciphertext_hex),
        bytes.fromhex(tag_hex),
    )
    if len(tag) != 16:
        raise ValueError("the tag is not 16 bytes")
    return AESGCM(key).decrypt(iv, ciphertext + tag, None).decode()


def _utc(moment: datetime | None) -> datetime | None:
    """Prisma's TIMESTAMP(3) columns have no zone: they hold UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    utc = _utc(moment)
    return utc.isoformat().replace("+00:00", "Z") if utc else None


def _plain(value: Any) -> Any:
    """A database value as JSON."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# -- reading the original's database ------------------------------------------------------


class Original(msgspec.Struct, kw_only=True):
    tables: set[str]
    configurations: list[dict[str, Any]] = []
    secrets: list[dict[str, Any]] = []
    flags: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    #: (flagKey, enabled, variant, day, count)
    evaluations: list[tuple[str, bool, str | None, date, int]] = []
    audit: dict[str, list[dict[str, Any]]] = {}


async def read_original(url: str) -> Original:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=30)
    except (TimeoutError, OSError, ValueError, asyncpg.PostgresError) as error:
        raise CliError(f"cannot connect to the original's database: {error}") from None
    try:
        for kind in ("json", "jsonb"):
            await conn.set_type_codec(
                kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
            )
        await conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            )
        }
        found = Original(tables=tables)

        async def rows(table: str, order: str) -> list[dict[str, Any]]:
            if table not in tables:
                return []
            return [dict(r) for r in await conn.fetch(f'SELECT * FROM "{table}" ORDER BY {order}')]

        found.configurations = await rows("configurations", '"serviceName", environment, version')
        found.secrets = await rows("configuration_secrets", '"configurationId", key')
        found.flags = await rows("feature_flags", "key")
        found.services = await rows("service_registry", '"serviceName"')
        if "feature_flag_evaluations" in tables:
            found.evaluations = [
                (r[0], r[1], r[2], r[3], r[4])
                for r in await conn.fetch(
                    'SELECT "flagKey", enabled, variant, ("evaluatedAt")::date AS day, count(*)'
                    " FROM feature_flag_evaluations GROUP BY 1, 2, 3, 4 ORDER BY 1, 4, 2, 3"
                )
            ]
        for table in sorted(t for t in tables if "audit" in t.lower()):
            columns = {
                r["column_name"]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = $1",
                    table,
                )
            }
            order = '"createdAt", 1' if "createdAt" in columns else "1"
            found.audit[table] = [
                dict(r) for r in await conn.fetch(f'SELECT * FROM "{table}" ORDER BY {order}')
            ]
        return found
    finally:
        await conn.close()


# -- mapping to fpcd ---------------------------------------------------------------------


def registration_body(row: dict[str, Any]) -> dict[str, Any]:
    """The original's service_registry row as a registration body: fpcd takes the
    original's body verbatim (serviceName, displayName, endpoints, optionalConfigs...)."""
    health = row.get("healthCheck")
    if isinstance(health, dict):
        health = health.get("url") or health.get("endpoint")
    body: dict[str, Any] = {
        "serviceName": row["serviceName"],
        "displayName": row.get("displayName") or "",
        "description": row.get("description") or "",
        "version": row.get("version") or "",
        "endpoints": [str(e) for e in row.get("endpoints") or [] if isinstance(e, str)],
        "healthCheck": health if isinstance(health, str) and health else None,
        "tags": list(row.get("tags") or []),
        "environment": row.get("environment") or None,
        "requiredConfigs": list(row.get("requiredConfigs") or []),
        "optionalConfigs": list(row.get("optionalConfigs") or []),
    }
    return {k: v for k, v in body.items() if v not in (None, "", [], {})} | {
        "serviceName": row["serviceName"]
    }


def _same_registration(body: dict[str, Any], view: dict[str, Any]) -> bool:
    """The stored registration already says what the body says (the view answers with the
    same field names)."""
    return all(view.get(k) == v or (not v and not view.get(k)) for k, v in body.items())


def _rules(conditions: Any) -> list[dict[str, Any]]:
    """The original's conditions as fpcd rules; ValueError when they cannot be."""
    if conditions in (None, [], {}):
        return []
    if isinstance(conditions, dict):
        conditions = conditions.get("rules") or conditions.get("conditions") or [conditions]
    if not isinstance(conditions, list):
        raise ValueError("not a list")
    rules = []
    for c in conditions:
        if not isinstance(c, dict):
            raise ValueError("a condition is not an object")
        attribute = c.get("attribute") or c.get("field") or c.get("property")
        operator = _OPERATORS.get(str(c.get("operator", "")).lower())
        values = c["values"] if "values" in c else c.get("value")
        if not attribute or operator is None or values is None:
            raise ValueError(f"condition {json.dumps(_plain(c))[:80]} has no fpcd equivalent")
        rules.append(
            {
                "attribute": attribute,
                "operator": operator,
                "values": values if isinstance(values, list) else [values],
            }
        )
    return rules


def flag_body(row: dict[str, Any]) -> tuple[str, dict[str, Any], list[str]]:
    """(key, fpcd flag definition, what could not be carried over)."""
    lost: list[str] = []
    key = row["key"] if valid_flag_key(row["key"]) else derive_key(row["key"])
    if key != row["key"]:
        lost.append(f"key renamed from {row['key']!r}")
    rollout: dict[str, Any] = {
        "percentage": min(max(float(row.get("rolloutPercentage") or 0), 0.0), 100.0)
    }
    for column, field in (("rolloutUserGroups", "userGroups"), ("rolloutRegions", "regions")):
        if row.get(column):
            rollout[field] = list(row[column])
    for column, field in (("rolloutStartDate", "startDate"), ("rolloutEndDate", "endDate")):
        if row.get(column):
            rollout[field] = _iso(row[column])
    variants = [
        {
            "id": str(v.get("id") or v.get("name")),
            "name": str(v.get("name") or ""),
            "weight": v.get("weight", 1),
            "configuration": v.get("configuration"),
        }
        for v in row.get("variants") or []
        if isinstance(v, dict) and (v.get("id") or v.get("name"))
    ]
    body: dict[str, Any] = {
        "key": key,
        "name": row.get("name") or key,
        "description": row.get("description") or "",
        "enabled": bool(row.get("enabled")),
        "rollout": rollout,
        "variants": variants,
        "dependencies": list(row.get("dependencies") or []),
        "tags": list(row.get("tags") or []),
    }
    try:
        body["rules"] = _rules(row.get("conditions"))
    except ValueError as error:
        lost.append(f"conditions not imported: {error}")
    environment = row.get("environment")
    if environment and environment not in ("all", "*") and valid_name(environment):
        # The original served the flag in its environment only.
        body["environments"] = {environment: {"enabled": body["enabled"]}}
        body["enabled"] = False
    return key, body, lost


def _flag_order(bodies: dict[str, dict[str, Any]]) -> list[str]:
    """Dependencies before the flags that need them."""
    ordered: list[str] = []
    seen: set[str] = set()

    def visit(key: str, path: frozenset[str]) -> None:
        if key in seen or key in path or key not in bodies:
            return
        for dep in bodies[key]["dependencies"]:
            visit(dep, path | {key})
        seen.add(key)
        ordered.append(key)

    for key in sorted(bodies):
        visit(key, frozenset())
    return ordered


def config_versions(rows: Iterable[dict[str, Any]], report: ImportReport) -> list[dict[str, Any]]:
    items = []
    for row in rows:
        label = f"{row['serviceName']}/{row['environment']}@{row['version']}"
        config = row.get("config")
        if not isinstance(config, dict):
            report.skip("configs", label, "config is not a JSON object")
            continue
        created = _utc(row.get("createdAt")) or datetime.now(UTC)
        items.append(
            {
                "type": "config",
                "service": row["serviceName"],
                "environment": row["environment"],
                "version": row["version"],
                "config": config,
                "checksum": content_checksum(config, {}),
                "description": row.get("description") or "",
                "tags": list(row.get("tags") or []),
                "action": "import",
                "created_at": _iso(created),
                "created_by": row.get("createdBy") or SOURCE,
            }
        )
    return items


# -- the import ---------------------------------------------------------------------------


def _import_configs(api: Transport, original: Original, report: ImportReport, dry: bool) -> None:
    rows = original.configurations
    post_batches(api, "configs", config_versions(rows, report), report, dry_run=dry)
    # The original could mark an older version active; fpcd's head is its newest version,
    # so a layer whose active version is not the newest gets a rollback to it.
    layers: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        layers[(row["serviceName"], row["environment"])].append(row)
    for (service, environment), versions in sorted(layers.items()):
        active = [r for r in versions if r.get("isActive")]
        newest = max(r["version"] for r in versions)
        if not active or max(r["version"] for r in active) == newest:
            continue
        target = max(r["version"] for r in active)
        label = f"{service}/{environment}"
        if dry:
            report.count("rollbacks to the active version")
            continue
        head = api.request(
            "GET", f"/api/config/{quote(service)}", query={"environment": environment, "raw": True}
        )
        wanted = next(r for r in versions if r["version"] == target)
        if head.status == 200 and head.json()["config"] == wanted["config"]:
            report.skip("rollbacks to the active version", label, "already present")
            continue
        body = {
            "environment": environment,
            "version": target,
            "description": f"imported: version {target} was the active one",
        }
        result = check(api.request("POST", f"/api/config/{quote(service)}/rollback", body=body))
        if result["changed"]:
            report.count("rollbacks to the active version")
    # The schema of a service: the newest version's (fpcd keeps one per service).
    schemas: dict[str, dict[str, Any]] = {}
    for row in sorted(
        rows,
        key=lambda r: (_utc(r.get("createdAt")) or datetime.min.replace(tzinfo=UTC), r["version"]),
    ):
        if isinstance(row.get("schema"), dict):
            schemas[row["serviceName"]] = row
    records = [
        {
            "type": "schema",
            "service": service,
            "schema": row["schema"],
            "version": 1,
            "updated_at": _iso(_utc(row.get("createdAt")) or datetime.now(UTC)),
            "updated_by": row.get("createdBy") or SOURCE,
        }
        for service, row in sorted(schemas.items())
    ]
    post_batches(api, "schemas", records, report, dry_run=dry)


def _import_secrets(
    api: Transport, original: Original, key: bytes, report: ImportReport, dry: bool
) -> None:
    by_id = {r["id"]: r for r in original.configurations}
    current: dict[tuple[str, str, str], tuple[int, dict[str, Any]]] = {}
    for secret in original.secrets:
        config = by_id.get(secret["configurationId"])
        label = f"{secret['key']} of configuration {secret['configurationId']}"
        if config is None:
            report.skip("secrets", label, "orphaned: its configuration is gone")
            continue
        where = (config["serviceName"], config["environment"], secret["key"])
        if where not in current or current[where][0] < config["version"]:
            current[where] = (config["version"], secret)
    now = datetime.now(UTC)
    for (service, environment, name), (_, secret) in sorted(current.items()):
        label = f"{service}/{environment}/{name}"
        expires = _utc(secret.get("expiresAt"))
        if expires is not None and expires <= now:
            report.skip("secrets", label, "expired in the original")
            continue
        try:
            value = decrypt_original(key, secret["iv"], secret["encryptedValue"])
        except (ValueError, InvalidTag, UnicodeDecodeError):
            report.skip(
                "secrets", label, "cannot decrypt: wrong --encryption-key, or a damaged row"
            )
            continue
        put_secret(
            api,
            report,
            service=service,
            environment=environment,
            name=name,
            value=value,
            description=secret.get("description") or "",
            expires_at=_iso(expires),
            dry_run=dry,
        )


def _import_flags(api: Transport, original: Original, report: ImportReport, dry: bool) -> None:
    bodies: dict[str, dict[str, Any]] = {}
    for row in original.flags:
        key, body, lost = flag_body(row)
        bodies[key] = body
        for what in lost:
            report.skip("flag details", key, what)
    for key in _flag_order(bodies):
        body = bodies[key]
        path = f"/api/features/{quote(key)}"
        stored = api.request("GET", path, query={"includeArchived": True})
        if stored.status == 200:
            doc = stored.json()
            if doc.get("archived"):
                report.skip("flags", key, "archived in fpcd: left archived")
                continue
            meta = ("version", "archived", "createdAt", "updatedAt", "updatedBy")
            same = msgspec.convert(
                {k: v for k, v in doc.items() if k not in meta}, FlagDefinition
            ) == msgspec.convert(body, FlagDefinition)
            if same:
                report.skip("flags", key, "already present")
                continue
        if dry:
            report.count("flags" if stored.status == 404 else "flags updated")
            continue
        response = api.request("PUT", path, body=body)
        if response.status >= 400:
            problem = response.json() or {}
            errors = "; ".join(f"{e['path']}: {e['message']}" for e in problem.get("errors") or [])
            report.skip("flags", key, f"refused: {errors or problem.get('detail', '')}")
        else:
            report.count("flags" if stored.status == 404 else "flags updated")


def _import_services(api: Transport, original: Original, report: ImportReport, dry: bool) -> None:
    for row in original.services:
        name = row["serviceName"]
        if row.get("isActive") is False:
            report.skip("services", name, "inactive in the original")
            continue
        body = registration_body(row)
        stored = api.request("GET", f"/api/services/{quote(name)}")
        if stored.status == 200 and _same_registration(body, stored.json()):
            report.skip("services", name, "already present")
            continue
        if dry:
            report.count("services")
            continue
        response = api.request("POST", "/api/services/register", body=body)
        if response.status >= 400:
            problem = response.json() or {}
            errors = "; ".join(f"{e['path']}: {e['message']}" for e in problem.get("errors") or [])
            report.skip("services", name, f"refused: {errors or problem.get('detail', '')}")
        else:
            report.count("services")


def _import_evaluations(
    api: Transport, original: Original, report: ImportReport, dry: bool
) -> None:
    counts = []
    for flag, enabled, variant, day, n in original.evaluations:
        key = flag if valid_flag_key(flag or "") else derive_key(flag or "")
        if not key:
            report.skip("evaluations", str(flag), "not a flag key")
            continue
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        counts.append(
            {
                "flag": key,
                "variant": (variant or None) and str(variant)[:128],
                "enabled": bool(enabled),
                "reason": "UNKNOWN",
                "hour": int(midnight.timestamp() // 3600),
                "count": n,
            }
        )
    post_batches(
        api, "analytics", counts, report, dry_run=dry, label="evaluations",
        extra={"source": SOURCE}, field="counts", batch=10_000,
    )  # fmt: skip


def _import_audit(api: Transport, original: Original, report: ImportReport, dry: bool) -> None:
    for table, rows in original.audit.items():
        action = "fineprint." + re.sub(r"[^a-z0-9_]+", "_", table.lower())[:50]
        notes = []
        for row in rows:
            plain = {k: _plain(v) for k, v in row.items() if not _SENSITIVE.search(k)}
            row_id = row.get("id")
            if row_id is None:
                row_id = hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:24]
            notes.append(
                {
                    "action": action,
                    "target": f"{SOURCE}:{table}/{row_id}"[:256],
                    "details": {"table": table, "row": plain},
                }
            )
        post_batches(api, "notes", notes, report, dry_run=dry, label="audit notes", batch=200)


def cmd_import_fineprint(args: argparse.Namespace) -> int:
    passphrase = args.encryption_key
    if args.encryption_key_file:
        try:
            passphrase = Path(args.encryption_key_file).read_text().rstrip("\r\n")
        except OSError as error:
            raise CliError(f"{args.encryption_key_file}: {error.strerror}") from None
    passphrase = passphrase or os.environ.get("FINEPRINT_ENCRYPTION_KEY")
    if not passphrase:
        raise CliError(
            "the original's CONFIG_ENCRYPTION_KEY is needed to read its secrets:"
            " --encryption-key, --encryption-key-file or FINEPRINT_ENCRYPTION_KEY"
        )
    original = asyncio.run(read_original(args.database_url))
    missing = {
        "configurations", "configuration_secrets", "feature_flags", "service_registry",
        "feature_flag_evaluations",
    } - original.tables  # fmt: skip
    if "configurations" in missing and "feature_flags" in missing:
        raise CliError(
            "no `configurations` or `feature_flags` table: is this the original's database?"
        )
    api = connect(args)
    report = ImportReport()
    for table in sorted(missing):
        report.skip("tables", table, "not in the original's database")
    dry = args.dry_run
    _import_configs(api, original, report, dry)
    _import_secrets(api, original, derive_original_key(passphrase), report, dry)
    _import_flags(api, original, report, dry)
    _import_services(api, original, report, dry)
    _import_evaluations(api, original, report, dry)
    _import_audit(api, original, report, dry)
    report.print(as_json=args.json, dry_run=dry)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "import-fineprint",
        help="import the original @fineprintai/shared-config database into this daemon",
    )
    add_client_options(p)
    p.add_argument("--database-url", required=True, help="the original's DATABASE_URL")
    p.add_argument("--encryption-key", help="the original's CONFIG_ENCRYPTION_KEY")
    p.add_argument("--encryption-key-file", help="a file holding it (kept out of `ps`)")
    p.add_argument("--dry-run", action="store_true", help="report what would be imported")
    p.set_defaults(handler=cmd_import_fineprint)
