"""`fpcd export` / `fpcd import` round trips, and `fpcd backup` while the daemon serves."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

from fpcd.client.transport import Transport
from tests.conftest import DaemonProcess, run_cli, secret_value


def api(proc: DaemonProcess) -> Transport:
    return Transport(socket_path=str(proc.socket))


def call(proc: DaemonProcess, method: str, path: str, body: Any = None, **query: Any) -> Any:
    response = api(proc).request(method, path, query=query or None, body=body)
    assert response.status < 400, (method, path, response.status, response.body)
    return response.json()


def cli(proc: DaemonProcess, *args: str) -> Any:
    out = run_cli(*args, "--socket", str(proc.socket))
    assert out.returncode == 0, out.stderr
    return out


def populate(proc: DaemonProcess) -> dict[str, str]:
    """Configs with history (a rollback, layers, a secret), a schema, flags with history
    (a dependency, an archived one), a registration and evaluation counts."""
    stripe = secret_value("export-stripe")
    db_password = secret_value("export-db")
    call(proc, "PUT", "/api/config/checkout", {"environment": "default", "config": {"retries": 3}})
    call(
        proc,
        "PUT",
        "/api/config/checkout",
        {
            "environment": "production",
            "config": {"db": {"host": "db.prod"}},
            "description": "prod database",
            "tags": ["db"],
            "secrets": {"DB_PASSWORD": db_password},
        },
    )
    call(proc, "PUT", "/api/config/checkout", {"environment": "production", "config": {"x": 1}})
    call(proc, "POST", "/api/config/checkout/rollback", {"environment": "production", "version": 1})
    call(proc, "PUT", "/api/config/billing", {"environment": "staging", "config": {"a": [1, 2]}})
    call(
        proc,
        "PUT",
        "/api/config/checkout/schema",
        {"schema": {"type": "object", "properties": {"retries": {"type": "integer"}}}},
    )
    call(
        proc, "PUT", "/api/secrets/checkout/STRIPE_KEY", {"value": stripe}, environment="production"
    )
    call(proc, "POST", "/api/features", {"name": "Base", "enabled": True})
    call(
        proc,
        "POST",
        "/api/features",
        {
            "name": "New Checkout Flow",
            "enabled": True,
            "rollout": {"percentage": 50},
            "variants": [
                {"id": "control", "weight": 50, "configuration": {"steps": 3}},
                {"id": "onepage", "weight": 50, "configuration": {"steps": 1}},
            ],
            "dependencies": ["base"],
        },
    )
    call(proc, "PATCH", "/api/features/new_checkout_flow", {"rollout": {"percentage": 70}})
    call(proc, "PUT", "/api/features/dark_mode", {"name": "Dark mode", "enabled": True})
    call(proc, "DELETE", "/api/features/dark_mode")
    call(
        proc,
        "POST",
        "/api/services/register",
        {"name": "checkout", "version": "2.1.0", "tags": ["api"], "environment": "production"},
    )
    for user in range(40):
        call(
            proc,
            "POST",
            "/api/features/evaluate",
            {"flags": ["new_checkout_flow"], "context": {"userId": f"u-{user}"}},
        )
    return {"DB_PASSWORD": db_password, "STRIPE_KEY": stripe}


def reads(proc: DaemonProcess) -> dict[str, Any]:
    """Every read a client of the exported data would make."""
    out: dict[str, Any] = {}
    for layer in ("default", "production", "staging"):
        service = "billing" if layer == "staging" else "checkout"
        out[f"config {layer}"] = call(
            proc, "GET", f"/api/config/{service}", environment=layer, includeSecrets=True
        )
        out[f"history {layer}"] = call(
            proc, "GET", f"/api/config/{service}/history", environment=layer
        )
    out["schema"] = call(proc, "GET", "/api/config/checkout/schema")
    out["flags"] = call(proc, "GET", "/api/features", includeArchived=True)
    for key in ("base", "new_checkout_flow", "dark_mode"):
        out[f"flag history {key}"] = call(proc, "GET", f"/api/features/{key}/history")
        out[f"analytics {key}"] = call(
            proc,
            "GET",
            f"/api/features/{key}/analytics",
            startDate="2020-01-01",
            endDate="2100-01-01",
        )
    out["evaluations"] = call(
        proc,
        "POST",
        "/api/features/evaluate",
        {"context": {"userId": "u-42"}},
    )
    services = call(proc, "GET", "/api/services")["items"]
    out["services"] = [
        {k: v for k, v in s.items() if k not in ("status", "lastHeartbeat", "lastCheck")}
        for s in services
    ]
    return out


def test_export_import_round_trip(spawn: Any, tmp_path: Path) -> None:
    a = spawn("a").start()
    values = populate(a)
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse battery staple\n")
    export = tmp_path / "export.json"
    cli(a, "export", "--output", str(export), "--secrets-passphrase-file", str(passphrase))
    document = json.loads(export.read_text())
    assert document["format"] == "fpcd-export" and document["formatVersion"] == 1
    assert len(document["configs"]) == 5 and len(document["flags"]) == 5
    assert export.stat().st_mode & 0o777 == 0o600
    text = export.read_text()
    assert all(value not in text for value in values.values())  # encrypted, not plain

    b = spawn("b").start()
    before = call(b, "GET", "/api/audit", limit=1)["total"]
    dry = cli(b, "import", str(export), "--dry-run", "--json")
    assert json.loads(dry.stdout)["imported"]["configs"] == 5
    assert call(b, "GET", "/api/audit", limit=1)["total"] == before  # a dry run changes nothing
    assert api(b).request("GET", "/api/config").json()["total"] == 0

    out = cli(b, "import", str(export), "--secrets-passphrase-file", str(passphrase), "--json")
    report = json.loads(out.stdout)
    assert report["imported"] == {
        "configs": 5,
        "schemas": 1,
        "flags": 5,
        "services": 1,
        "analytics": 40,
        "secrets": 2,
    }, report
    assert report["skipped"] == []
    assert reads(b) == reads(a)
    production = call(
        b, "GET", "/api/config/checkout", environment="production", includeSecrets=True
    )
    assert production["secrets"]["DB_PASSWORD"]["value"] == values["DB_PASSWORD"]

    again = json.loads(
        cli(b, "import", str(export), "--secrets-passphrase-file", str(passphrase), "--json").stdout
    )
    assert set(again["imported"].values()) == {0}
    assert {s["reason"] for s in again["skipped"]} == {"already present", "already imported"}


def test_import_refuses_wrong_passphrase_and_other_files(spawn: Any, tmp_path: Path) -> None:
    a = spawn("a").start()
    call(a, "PUT", "/api/secrets/web/TOKEN", {"value": secret_value("wrong-pass")})
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.write_text("the right passphrase")
    wrong.write_text("not the passphrase")
    export = tmp_path / "export.json"
    cli(a, "export", "-o", str(export), "--secrets-passphrase-file", str(right))
    b = spawn("b").start()
    out = run_cli(
        "import", str(export), "--secrets-passphrase-file", str(wrong), "--socket", str(b.socket)
    )
    assert out.returncode == 1 and "wrong passphrase" in out.stderr
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    out = run_cli("import", str(other), "--socket", str(b.socket))
    assert out.returncode == 1 and "not an fpcd export" in out.stderr
    # Without a passphrase the export holds no values, and says so on import.
    plain = tmp_path / "plain.json"
    cli(a, "export", "-o", str(plain))
    assert json.loads(plain.read_text())["secrets"] == {"mode": "omitted", "count": 1}
    report = json.loads(cli(b, "import", str(plain), "--json").stdout)
    assert report["skipped"][0]["reason"].startswith("omitted")


def test_backup_while_serving_and_restore(spawn: Any, tmp_path: Path) -> None:
    a = spawn("a").start()
    token = secret_value("backup-kept")
    call(a, "PUT", "/api/secrets/web/KEPT", {"value": token}, environment="production")
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            call(a, "PUT", "/api/config/busy", {"environment": "production", "config": {"n": n}})
            written.append(n)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 5:  # the daemon is busy writing when the backup starts
            thread.join(0.01)
        backup = tmp_path / "backup.db"
        out = cli(a, "backup", str(backup))
    finally:
        stop.set()
        thread.join()
    assert "integrity ok" in out.stdout
    assert backup.stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(backup) as db:
        (copied,) = db.execute(
            "SELECT max(version) FROM config_versions WHERE service = 'busy'"
        ).fetchone()
    assert 5 <= copied <= len(written)

    # Restore as the README says: the copy becomes fpcd.db next to the keyring and auth key.
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(backup, restored / "fpcd.db")
    for name in ("keyring.json", "auth.key", "admin.token"):
        shutil.copy(a.data_dir / name, restored / name)
    b = spawn("restored").start()
    head = call(b, "GET", "/api/config/busy", environment="production")
    assert head["version"] == copied and head["config"] == {"n": copied}
    value = call(b, "GET", "/api/secrets/web/KEPT", environment="production")["value"]
    assert value == token
    assert call(b, "GET", "/api/audit/verify")["ok"] is True


def test_backup_never_holds_destroyed_secrets(spawn: Any, tmp_path: Path) -> None:
    a = spawn("a").start()
    value = secret_value("backup-destroyed")
    call(a, "PUT", "/api/secrets/web/GONE", {"value": value}, environment="production")
    with sqlite3.connect(f"file:{a.data_dir / 'fpcd.db'}?mode=ro", uri=True) as db:
        (ciphertext,) = db.execute(
            "SELECT ciphertext FROM secret_versions WHERE name = 'GONE'"
        ).fetchone()
    response = api(a).request(
        "DELETE", "/api/secrets/web/GONE", query={"environment": "production"}
    )
    assert response.status == 204
    backup = tmp_path / "after-delete.db"
    cli(a, "backup", str(backup))
    data = backup.read_bytes()
    forms = [ciphertext, base64.b64encode(ciphertext), ciphertext[:16], value.encode()]
    assert not any(form in data for form in forms)
    with sqlite3.connect(backup) as db:
        (destroyed,) = db.execute(
            "SELECT destroyed FROM secret_versions WHERE name = 'GONE'"
        ).fetchone()
    assert destroyed == "deleted"


def test_import_sends_large_histories_in_batches_under_the_body_limit(
    spawn: Any, tmp_path: Path
) -> None:
    a = spawn("a").start()
    for n in range(6):  # about 300 KiB each: a few per request at most
        big = {f"k{i}": f"{n}-{i}-" + "x" * 290 for i in range(1000)}
        call(a, "PUT", "/api/config/big", {"environment": "production", "config": big})
    export = tmp_path / "export.json"
    cli(a, "export", "-o", str(export))
    b = spawn("b").start()
    report = json.loads(cli(b, "import", str(export), "--json").stdout)
    assert report["imported"]["configs"] == 6 and report["skipped"] == []
    assert reads_history(b) == reads_history(a)


def reads_history(proc: DaemonProcess) -> Any:
    return call(proc, "GET", "/api/config/big/history", environment="production")
