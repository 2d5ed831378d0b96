"""`fpcd export`, `fpcd import` and `fpcd backup`: fpcd's data in one file, and back.

Everything goes through the daemon's API (admin only; the Unix socket by default), so
an import is applied, audited and replicated like any other write. The file format is
docs/export-format.md.
"""

from __future__ import annotations

import argparse
import base64
import os
import sqlite3
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fpcd import __version__
from fpcd.cli.common import CliError, add_client_options, check, emit_json, table
from fpcd.cli.common import transport as connect
from fpcd.client.transport import Transport

FORMAT = "fpcd-export"
FORMAT_VERSION = 1
#: Kinds of records in the file, in the order an import applies them.
KINDS = ("configs", "schemas", "flags", "services", "analytics")
BATCH = 500
#: scrypt parameters for a passphrase-encrypted export (about 32 MiB, 0.1 s).
SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class ImportReport:
    """Counts of what an import did per kind, and why records were skipped."""

    def __init__(self) -> None:
        self.imported: Counter[str] = Counter()
        self.skipped: dict[str, Counter[str]] = {}
        self.details: list[dict[str, str]] = []

    def add(self, kind: str, result: dict[str, Any]) -> None:
        self.imported[kind] += result["imported"]
        reasons = self.skipped.setdefault(kind, Counter())
        for skip in result["skipped"]:
            reasons[_reason_class(skip["reason"])] += 1
            self.details.append({"kind": kind, "key": skip["key"], "reason": skip["reason"]})

    def skip(self, kind: str, key: str, reason: str) -> None:
        self.add(kind, {"imported": 0, "skipped": [{"key": key, "reason": reason}]})

    def count(self, kind: str, n: int = 1) -> None:
        self.imported[kind] += n
        self.skipped.setdefault(kind, Counter())

    def print(self, *, as_json: bool, dry_run: bool) -> None:
        kinds = list(dict.fromkeys([*self.imported, *self.skipped]))
        if as_json:
            emit_json(
                {
                    "dryRun": dry_run,
                    "imported": {k: self.imported[k] for k in kinds},
                    "skipped": self.details,
                }
            )
            return
        verb = "would import" if dry_run else "imported"
        rows = []
        for kind in kinds:
            reasons = self.skipped.get(kind, Counter())
            why = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
            rows.append((kind, self.imported[kind], sum(reasons.values()), why))
        table(rows, ["kind", verb, "skipped", "why skipped"])
        quiet = ("already present", "already imported")
        shown = [d for d in self.details if _reason_class(d["reason"]) not in quiet]
        if shown:
            print("not imported:")
            for d in shown[:50]:
                print(f"  {d['kind']} {d['key']}: {d['reason']}")
            if len(shown) > 50:
                print(f"  ... and {len(shown) - 50} more (--json lists them all)")
        if dry_run:
            print("dry run: nothing was changed")


def _reason_class(reason: str) -> str:
    """A skip reason without its particulars, to count alike reasons together."""
    return reason.split(":", 1)[0]


#: Bytes of one import request the CLI aims at: well under the daemon's default body
#: limit (1 MiB); a larger single record goes alone, and a 413 splits a batch in two.
BATCH_BYTES = 512 * 1024


def post_batches(
    api: Transport,
    kind: str,
    items: list[Any],
    report: ImportReport,
    *,
    dry_run: bool,
    label: str | None = None,
    extra: dict[str, Any] | None = None,
    field: str = "items",
    batch: int = BATCH,
) -> None:
    chunk: list[Any] = []
    size = 0
    for item in items:
        length = len(msgspec.json.encode(item))
        if chunk and (len(chunk) >= batch or size + length > BATCH_BYTES):
            _post(api, kind, chunk, report, dry_run, label or kind, extra or {}, field)
            chunk, size = [], 0
        chunk.append(item)
        size += length
    if chunk:
        _post(api, kind, chunk, report, dry_run, label or kind, extra or {}, field)


def _post(
    api: Transport,
    kind: str,
    chunk: list[Any],
    report: ImportReport,
    dry_run: bool,
    label: str,
    extra: dict[str, Any],
    field: str,
) -> None:
    body = {**extra, field: chunk}
    response = api.request("POST", f"/api/import/{kind}", query={"dryRun": dry_run}, body=body)
    if response.status == 413 and len(chunk) > 1:
        half = len(chunk) // 2
        _post(api, kind, chunk[:half], report, dry_run, label, extra, field)
        _post(api, kind, chunk[half:], report, dry_run, label, extra, field)
    elif response.status == 413:
        report.skip(label, _label(chunk[0]), "larger than the daemon's limits.max_body_bytes")
    else:
        report.add(label, check(response))


def _label(item: Any) -> str:
    if isinstance(item, dict):
        parts = [item.get(k) for k in ("service", "environment", "key", "name", "target")]
        text = "/".join(str(p) for p in parts if p)
        return f"{text}@{item['version']}" if "version" in item else text
    return str(item)[:80]


def fetch_all(api: Transport, kind: str) -> list[Any]:
    items: list[Any] = []
    while True:
        page = check(
            api.request("GET", f"/api/export/{kind}", query={"limit": 1000, "offset": len(items)})
        )
        items += page["items"]
        if not page["items"] or len(items) >= page["total"]:
            return items


# -- secrets under a passphrase --------------------------------------------------------


def _passphrase(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text().rstrip("\r\n")
    except OSError as error:
        raise CliError(f"{path}: {error.strerror}") from None
    if len(text) < 8:
        raise CliError(f"{path}: the passphrase must be at least 8 characters")
    return text.encode()


def _derive(passphrase: bytes, salt: bytes, params: dict[str, int]) -> AESGCM:
    kdf = Scrypt(salt=salt, length=32, n=params["n"], r=params["r"], p=params["p"])
    return AESGCM(kdf.derive(passphrase))


def _secret_aad(item: dict[str, Any]) -> bytes:
    parts = (FORMAT, item["service"], item["environment"], item["name"], str(item["version"]))
    return "\0".join(parts).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def export_secrets(api: Transport, passphrase: bytes | None) -> dict[str, Any]:
    metadata = fetch_all(api, "secrets")
    if passphrase is None:
        return {"mode": "omitted", "count": len(metadata)}
    salt = os.urandom(16)
    aead = _derive(passphrase, salt, SCRYPT)
    items = []
    now = datetime.now(UTC)
    for meta in metadata:
        expires = meta.get("expiresAt")
        if expires and datetime.fromisoformat(expires) <= now:
            continue
        path = f"/api/secrets/{quote(meta['serviceName'])}/{quote(meta['name'])}"
        query = {"environment": meta["environment"], "version": meta["version"]}
        response = api.request("GET", path, query=query)
        if response.status in (404, 410):  # destroyed or expired since the listing
            continue
        value = check(response)["value"]
        item = {
            "service": meta["serviceName"],
            "environment": meta["environment"],
            "name": meta["name"],
            "version": meta["version"],
            "description": meta.get("description", ""),
            "expiresAt": expires,
            "createdAt": meta["createdAt"],
            "createdBy": meta["createdBy"],
        }
        nonce = os.urandom(12)
        item["nonce"] = _b64(nonce)
        item["ciphertext"] = _b64(aead.encrypt(nonce, value.encode(), _secret_aad(item)))
        items.append(item)
    return {
        "mode": "encrypted",
        "cipher": "AES-256-GCM",
        "kdf": {"name": "scrypt", "salt": _b64(salt), **SCRYPT},
        "items": items,
    }


def import_secrets(
    api: Transport,
    section: dict[str, Any],
    passphrase: bytes | None,
    report: ImportReport,
    *,
    dry_run: bool,
) -> None:
    mode = section.get("mode")
    if mode != "encrypted":
        if section.get("count"):
            report.skip(
                "secrets",
                f"{section['count']} secret value" + ("" if section["count"] == 1 else "s"),
                "omitted: exported without --secrets-passphrase-file",
            )
        return
    if passphrase is None:
        for item in section["items"]:
            report.skip("secrets", _secret_key(item), "no --secrets-passphrase-file given")
        return
    kdf = section["kdf"]
    aead = _derive(passphrase, base64.b64decode(kdf["salt"]), kdf)
    now = datetime.now(UTC)
    for item in sorted(section["items"], key=lambda i: (_secret_key(i), i["version"])):
        key = _secret_key(item)
        try:
            value = aead.decrypt(
                base64.b64decode(item["nonce"]),
                base64.b64decode(item["ciphertext"]),
                _secret_aad(item),
            ).decode()
        except InvalidTag:
            raise CliError(
                "cannot decrypt the secrets: wrong passphrase, or the file was altered"
            ) from None
        expires = item.get("expiresAt")
        if expires and datetime.fromisoformat(expires) <= now:
            report.skip("secrets", key, "expired")
            continue
        put_secret(
            api,
            report,
            service=item["service"],
            environment=item["environment"],
            name=item["name"],
            value=value,
            description=item.get("description", ""),
            expires_at=expires,
            dry_run=dry_run,
        )


def _secret_key(item: dict[str, Any]) -> str:
    return f"{item['service']}/{item['environment']}/{item['name']}@{item['version']}"


def put_secret(
    api: Transport,
    report: ImportReport,
    *,
    service: str,
    environment: str,
    name: str,
    value: str,
    description: str,
    expires_at: str | None,
    dry_run: bool,
) -> None:
    """Store a value through the secrets API (unchanged values make no version)."""
    key = f"{service}/{environment}/{name}"
    path = f"/api/secrets/{quote(service)}/{quote(name)}"
    if dry_run:
        listing = api.request(
            "GET", f"/api/secrets/{quote(service)}", query={"environment": environment}
        )
        names = {s["name"] for s in check(listing)["items"]} if listing.status == 200 else set()
        if name in names:
            report.skip("secrets", key, "already present (updated if the value differs)")
        else:
            report.count("secrets")
        return
    body: dict[str, Any] = {"value": value, "description": description}
    if expires_at:
        body["expiresAt"] = expires_at
    response = api.request("PUT", path, query={"environment": environment}, body=body)
    if response.status >= 400:
        problem = response.json() or {}
        errors = "; ".join(f"{e['path']}: {e['message']}" for e in problem.get("errors") or [])
        report.skip("secrets", key, f"refused: {problem.get('detail', '')} {errors}".strip())
    elif response.json()["changed"]:
        report.count("secrets")
    else:
        report.skip("secrets", key, "already present")


# -- commands ---------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    api = connect(args)
    passphrase = _passphrase(args.secrets_passphrase_file)
    health = check(api.request("GET", "/health"))
    document: dict[str, Any] = {
        "format": FORMAT,
        "formatVersion": FORMAT_VERSION,
        "fpcdVersion": __version__,
        "exportedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "source": health.get("nodeId", ""),
    }
    for kind in KINDS:
        document[kind] = fetch_all(api, kind)
    document["secrets"] = export_secrets(api, passphrase)
    data = msgspec.json.format(msgspec.json.encode(document), indent=1) + b"\n"
    if args.output in (None, "-"):
        sys.stdout.buffer.write(data)
    else:
        _write_private(Path(args.output), data)
        counts = ", ".join(f"{len(document[k])} {k}" for k in KINDS)
        secrets = document["secrets"]
        held = (
            f"{len(secrets['items'])} secret values (encrypted)"
            if secrets["mode"] == "encrypted"
            else "no secret values"
        )
        print(f"exported {counts}; {held} to {args.output}", file=sys.stderr)
    return 0


def _write_private(path: Path, data: bytes) -> None:
    """Atomically, mode 0600 (exports and backups may hold secrets, even encrypted)."""
    directory = path.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_import(args: argparse.Namespace) -> int:
    try:
        document = msgspec.json.decode(Path(args.file).read_bytes())
    except OSError as error:
        raise CliError(f"{args.file}: {error.strerror}") from None
    except msgspec.DecodeError as error:
        raise CliError(f"{args.file}: not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CliError(f'{args.file}: not an fpcd export (no "format": "{FORMAT}")')
    if document.get("formatVersion") != FORMAT_VERSION:
        raise CliError(
            f"{args.file}: format version {document.get('formatVersion')} is not supported"
            f" by fpcd {__version__} (it reads version {FORMAT_VERSION})"
        )
    passphrase = _passphrase(args.secrets_passphrase_file)
    api = connect(args)
    report = ImportReport()
    here = check(api.request("GET", "/health")).get("nodeId")
    for kind in KINDS:
        items = document.get(kind) or []
        if kind == "analytics" and items and document.get("source") == here:
            # Counts already in this daemon: adding them again would count them twice.
            report.skip(kind, f"{len(items)} counts", "already present: exported from here")
        elif kind == "analytics":
            source = f"fpcd:{document.get('source') or 'export'}"
            post_batches(
                api, kind, items, report, dry_run=args.dry_run,
                extra={"source": source}, field="counts", batch=10_000,
            )  # fmt: skip
        else:
            post_batches(api, kind, items, report, dry_run=args.dry_run)
    import_secrets(api, document.get("secrets") or {}, passphrase, report, dry_run=args.dry_run)
    report.print(as_json=args.json, dry_run=args.dry_run)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    api = connect(args)
    response = api.request("GET", "/api/backup")
    if response.status >= 400:
        check(response)
    target = Path(args.path)
    if target.is_dir():
        target = target / f"fpcd-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.db"
    _write_private(target, response.body)
    db = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        status = db.execute("PRAGMA integrity_check").fetchone()[0]
        versions = db.execute("SELECT count(*) FROM config_versions").fetchone()[0]
        flags = db.execute("SELECT count(DISTINCT key) FROM flag_versions").fetchone()[0]
    finally:
        db.close()
    if status != "ok":
        raise CliError(f"{target}: the copy fails SQLite's integrity check: {status}")
    print(f"backup written to {target} ({len(response.body)} bytes,"
          f" {versions} config versions, {flags} flags; integrity ok)")  # fmt: skip
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "export", help="write every config, schema, flag, registration and count to one file"
    )
    add_client_options(p)
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p.add_argument(
        "--secrets-passphrase-file",
        help="include secret values, encrypted under the passphrase in this file"
        " (without it, secrets are omitted)",
    )
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("import", help="load an `fpcd export` file into this daemon")
    add_client_options(p)
    p.add_argument("file")
    p.add_argument(
        "--secrets-passphrase-file", help="the passphrase the export's secrets were encrypted with"
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be imported")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("backup", help="a consistent copy of the daemon's database, taken online")
    add_client_options(p)
    p.add_argument("path", help="file to write (or a directory: a dated name inside it)")
    p.set_defaults(handler=cmd_backup)
