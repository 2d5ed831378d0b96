"""The `fpcd` CLI against a running daemon, through its Unix socket."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from fpcd.store.migrations import LATEST
from tests.conftest import DaemonProcess, run_cli


@pytest.fixture
def running(spawn: Any) -> DaemonProcess:
    proc: DaemonProcess = spawn()
    return proc.start()


def cli(proc: DaemonProcess, *args: str, **kwargs: Any) -> Any:
    return run_cli(*args, "--socket", str(proc.socket), **kwargs)


def test_config_round_trip(running: DaemonProcess, tmp_path: Path) -> None:
    r = cli(
        running,
        "config",
        "set",
        "web",
        "--env",
        "prod",
        "--data",
        '{"port": 80}',
        "--description",
        "first",
        "--tag",
        "a",
        "--secret",
        "DB_PASSWORD=s3cret",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "web/prod: version 1"

    toml_file = tmp_path / "web.toml"
    toml_file.write_text('port = 8080\n[db]\nhost = "db1"\n')
    r = cli(running, "config", "set", "web", "--env", "prod", "--file", str(toml_file))
    assert r.stdout.strip() == "web/prod: version 2"
    r = cli(running, "config", "set", "web", "--env", "prod", "--file", str(toml_file))
    assert "unchanged (still version 2)" in r.stdout

    yaml_file = tmp_path / "web.yaml"
    yaml_file.write_text("port: 9090\ndb:\n  host: db2\n")
    assert (
        cli(running, "config", "set", "web", "--env", "prod", "--file", str(yaml_file)).returncode
        == 0
    )

    r = cli(running, "config", "get", "web", "--env", "prod", "--json")
    doc = json.loads(r.stdout)
    assert doc["version"] == 3 and doc["config"] == {"port": 9090, "db": {"host": "db2"}}
    assert doc["createdBy"].startswith("unix:")

    r = cli(running, "config", "get", "web", "--env", "prod")
    assert "version:     3" in r.stdout and '"port": 9090' in r.stdout

    r = cli(running, "config", "history", "web", "--env", "prod")
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["VERSION", "CREATED", "BY", "ACTION"]
    assert [line.split()[0] for line in lines[1:]] == ["3", "2", "1"]

    r = cli(running, "config", "rollback", "web", "1", "--env", "prod")
    assert "version 4 restores version 1" in r.stdout
    r = cli(running, "config", "diff", "web", "--env", "prod")
    assert "- /db:" in r.stdout and "~ /port: 9090 -> 80" in r.stdout

    r = cli(running, "config", "list")
    assert r.stdout.splitlines()[1].split() == ["web", "prod", "4"]

    assert "reload sent" in cli(running, "config", "reload", "web", "--env", "prod").stdout
    assert "unchanged" in cli(running, "config", "reload", "web", "--env", "prod").stdout


def test_schema_commands_and_validation_errors(running: DaemonProcess, tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"port": {"type": "integer"}}}))
    r = cli(running, "config", "schema", "set", "web", "--file", str(schema))
    assert r.returncode == 0 and "schema version 1 stored" in r.stdout
    r = cli(running, "config", "schema", "get", "web")
    assert json.loads(r.stdout)["properties"]["port"]["type"] == "integer"
    r = cli(running, "config", "set", "web", "--env", "prod", "--data", '{"port": "x"}')
    assert r.returncode == 1
    assert "Validation failed (422)" in r.stderr and "$.config.port" in r.stderr
    assert r.stdout == ""


def test_usage_errors(running: DaemonProcess, tmp_path: Path) -> None:
    r = cli(running, "config", "set", "web", "--data", "{not json")
    assert r.returncode == 2 and "--data is not valid JSON" in r.stderr
    r = cli(running, "config", "set", "web", "--data", "[1]")
    assert r.returncode == 2 and "must be a JSON object" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    r = cli(running, "config", "set", "web", "--file", str(bad))
    assert r.returncode == 1 and "not valid YAML" in r.stderr
    r = cli(running, "config", "get", "nothing", "--env", "prod")
    assert r.returncode == 1 and "Not found (404)" in r.stderr
    r = run_cli("config", "get", "web", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and "cannot reach fpcd" in r.stderr
    assert "Traceback" not in r.stderr


def test_url_and_json_output(running: DaemonProcess) -> None:
    args = [
        "config",
        "set",
        "web",
        "--env",
        "prod",
        "--data",
        '{"a": 1}',
        "--json",
        "--url",
        running.url,
    ]
    r = run_cli(*args)
    assert r.returncode == 1 and "Authentication required (401)" in r.stderr
    r = run_cli(*args, "--token", running.token)
    result = json.loads(r.stdout)
    assert result["changed"] is True and result["version"] == 1
    r = run_cli(*args, cwd=running.data_dir.parent)  # ./fpcd-data is not there: no token
    assert r.returncode == 1
    r = run_cli(*args, "--config", str(_settings_for(running)))  # finds admin.token itself
    assert r.returncode == 0 and json.loads(r.stdout)["changed"] is False


def _settings_for(proc: DaemonProcess) -> Path:
    path = proc.data_dir.parent / "cli.toml"
    path.write_text(f'[server]\ndata_dir = "{proc.data_dir}"\n')
    return path


def test_audit_tail_and_verify_detects_tampering(running: DaemonProcess) -> None:
    for n in range(3):
        cli(running, "config", "set", "web", "--env", "prod", "--data", json.dumps({"n": n}))
    r = cli(running, "audit", "tail", "--target", "config:web/prod")
    rows = r.stdout.splitlines()[1:]
    assert len(rows) == 3 and all("config.update" in row for row in rows)
    r = cli(running, "audit", "verify")
    assert r.returncode == 0 and "4 entries verified" in r.stdout  # with the keyring's

    with sqlite3.connect(running.data_dir / "fpcd.db") as db:
        db.execute("UPDATE audit_log SET details = '{\"version\":99}' WHERE id = 3")
    r = cli(running, "audit", "verify")
    assert r.returncode == 1
    assert "TAMPERED" in r.stdout and "entry 3" in r.stdout

    running.stop()
    r = run_cli("audit", "verify", "--data-dir", str(running.data_dir))
    assert r.returncode == 1 and "entry 3" in r.stdout
    with sqlite3.connect(running.data_dir / "fpcd.db") as db:
        db.execute("DELETE FROM audit_log WHERE id = 4")
    r = run_cli("audit", "verify", "--data-dir", str(running.data_dir), "--json")
    reasons = [b["reason"] for b in json.loads(r.stdout)["breaks"]]
    assert any("expected 4" in reason for reason in reasons)


def test_migrate(tmp_path: Path) -> None:
    r = run_cli("migrate", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0 and f"upgraded from version 0 to {LATEST}" in r.stdout
    r = run_cli("migrate", "--data-dir", str(tmp_path / "d"))
    assert "schema is current" in r.stdout


def test_flag_commands(running: DaemonProcess, tmp_path: Path) -> None:
    r = cli(
        running,
        "flag",
        "create",
        "--name",
        "Dark Mode",
        "--enabled",
        "true",
        "--percentage",
        "100",
        "--tag",
        "ui",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "flag dark_mode created (version 1)"

    definition = tmp_path / "checkout.toml"
    definition.write_text(
        'name = "New Checkout"\nenabled = true\ntags = ["checkout"]\n'
        "[rollout]\npercentage = 50\n"
        '[[variants]]\nid = "a"\nweight = 1\n[[variants]]\nid = "b"\nweight = 1\n'
    )
    r = cli(running, "flag", "create", "--file", str(definition))
    assert "flag new_checkout created" in r.stdout

    r = cli(running, "flag", "list")
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["dark_mode", "new_checkout"]
    assert rows[1][:4] == ["new_checkout", "on", "50.0", "a,b"]

    r = cli(running, "flag", "set", "new_checkout", "--percentage", "100")
    assert r.stdout.strip() == "flag new_checkout: version 2"
    r = cli(
        running,
        "flag",
        "eval",
        "new_checkout",
        "dark_mode",
        "nope",
        "--user",
        "u1",
        "--attr",
        "plan=pro",
    )
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert rows[0][:2] == ["new_checkout", "on"] and rows[0][2] in ("a", "b")
    assert rows[1][:2] == ["dark_mode", "on"]
    assert rows[2][-1] == "FLAG_NOT_FOUND"
    r = cli(running, "flag", "eval", "--user", "u1", "--json")
    assert sorted(json.loads(r.stdout)) == ["dark_mode", "new_checkout"]

    r = cli(running, "flag", "get", "new_checkout")
    assert json.loads(r.stdout)["rollout"]["percentage"] == 100
    r = cli(running, "flag", "archive", "dark_mode")
    assert "archived (version 2; history kept)" in r.stdout
    r = cli(running, "flag", "history", "dark_mode")
    assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == ["2", "1"]

    r = cli(running, "flag", "set", "new_checkout", "--percentage", "150")
    assert r.returncode == 1 and "$.rollout.percentage" in r.stderr
    r = cli(running, "flag", "set", "new_checkout")
    assert r.returncode == 2 and "nothing to change" in r.stderr
    r = cli(running, "flag", "eval", "x", "--context", "{nope")
    assert r.returncode == 2
