"""File sync with real files in temp dirs: formats, atomicity, debounce, commands, drift."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fpcd.app import Daemon
from fpcd.domain.errors import SettingsError
from fpcd.domain.render import RenderError, flatten, render
from fpcd.settings import load_settings
from tests.conftest import (
    api_session,
    eventually,
    eventually_blocking,
    make_settings,
    run_cli,
    secret_value,
)

CONFIG = {
    "db": {"host": "db1", "port": 5432, "opts": {"ssl": True}},
    "name": "web app",
    "list": [1, "two"],
    "nothing": None,
}


# -- rendering (pure) ------------------------------------------------------------------


def test_json_yaml_toml() -> None:
    assert json.loads(render("json", CONFIG)) == CONFIG
    assert yaml.safe_load(render("yaml", CONFIG)) == CONFIG
    no_null = {k: v for k, v in CONFIG.items() if k != "nothing"}
    assert tomllib.loads(render("toml", no_null).decode()) == no_null
    with pytest.raises(RenderError, match=r"\$.nothing is null"):
        render("toml", CONFIG)
    # Deterministic: key order does not change the bytes.
    assert render("json", dict(reversed(CONFIG.items()))) == render("json", CONFIG)


def test_env_flattening_and_quoting() -> None:
    text = render("env", {**CONFIG, "quote": 'say "hi" $HOME\nbye'}).decode()
    assert text.splitlines() == [
        "DB__HOST=db1",
        "DB__OPTS__SSL=true",
        "DB__PORT=5432",
        "LIST='[1,\"two\"]'",
        "NAME='web app'",
        "NOTHING=",
        'QUOTE=\'say "hi" $HOME',
        "bye'",
    ]
    assert flatten({"a-b": {"c.d": 1}}, {"DB_PASSWORD": "x"}) == {
        "A_B__C_D": "1",
        "DB_PASSWORD": "x",
    }


def test_template_and_secrets() -> None:
    out = render(
        "template",
        CONFIG,
        template="host=$DB__HOST port=${DB__PORT} pw=$PW\n",
        secrets={"PW": "s3"},
    )
    assert out == b"host=db1 port=5432 pw=s3\n"
    with pytest.raises(RenderError, match=r"\$MISSING"):
        render("template", CONFIG, template="$MISSING")
    assert json.loads(render("json", {"a": 1}, secrets={"PW": "x"}))["secrets"] == {"PW": "x"}


def test_empty_is_refused_unless_allowed() -> None:
    with pytest.raises(RenderError, match="empty"):
        render("json", {})
    assert render("json", {}, allow_empty=True) == b"{}\n"


# -- the daemon writing files ---------------------------------------------------------


def entry(path: Path, **extra: Any) -> dict[str, Any]:
    return {"service": "web", "environment": "prod", "path": str(path), **extra}


@pytest.fixture
async def make_daemon(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Daemon] = []

    async def start(*files: dict[str, Any], **sections: Any) -> Daemon:
        daemon = Daemon(make_settings(tmp_path / "data", files=list(files), **sections))
        await daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        await daemon.stop()


async def put(daemon: Daemon, config: dict[str, Any], env: str = "prod", **extra: Any) -> None:
    async with (
        api_session(daemon) as http,
        http.put("/api/config/web", json={"environment": env, "config": config, **extra}) as r,
    ):
        assert r.status == 200, await r.text()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def parsed(path: Path, parse: Callable[[str], Any]) -> Any:
    """The file's content through `parse`, or None while it is missing or not yet complete."""
    try:
        return parse(path.read_text())
    except (FileNotFoundError, ValueError, yaml.YAMLError):
        return None


async def test_every_format_is_written_with_its_mode(tmp_path: Path, make_daemon: Any) -> None:
    out = tmp_path / "out"
    template = tmp_path / "app.tmpl"
    template.write_text("listen ${DB__HOST}:${DB__PORT}\n")
    daemon = await make_daemon(
        entry(out / "a.json"),
        entry(out / "a.toml", format="toml"),
        entry(out / "a.yaml", format="yaml", mode="0600"),
        entry(out / "a.env", format="env"),
        entry(out / "a.conf", format="template", template=str(template)),
    )
    await put(daemon, {"db": {"host": "h", "port": 1}})
    # Each file is written on its own: wait for every one, not for the last of the list.
    expected = {"host": "h", "port": 1}
    await eventually(lambda: parsed(out / "a.json", json.loads) == {"db": expected})
    await eventually(lambda: parsed(out / "a.toml", tomllib.loads) == {"db": expected})
    await eventually(lambda: parsed(out / "a.yaml", yaml.safe_load) == {"db": expected})
    await eventually(lambda: parsed(out / "a.env", str) == "DB__HOST=h\nDB__PORT=1\n")
    await eventually(lambda: parsed(out / "a.conf", str) == "listen h:1\n")
    assert stat.S_IMODE((out / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "a.yaml").stat().st_mode) == 0o600
    # default layer changes reach the file too
    await put(daemon, {"db": {"port": 2}, "extra": True}, env="default")
    await eventually(lambda: "EXTRA" in (out / "a.env").read_text())
    # prod's own port wins over default's
    assert (out / "a.env").read_text() == "DB__HOST=h\nDB__PORT=1\nEXTRA=true\n"


async def test_readers_never_see_a_partial_file(tmp_path: Path, make_daemon: Any) -> None:
    target = tmp_path / "out" / "big.json"
    daemon = await make_daemon(entry(target))
    await put(daemon, {"n": -1, "blob": "x" * 200_000})
    await eventually(target.exists)
    seen: set[int] = set()
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(json.loads(target.read_bytes())["n"])
            except FileNotFoundError:
                errors.append("missing")
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                errors.append(str(error))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(40):
            await put(daemon, {"n": n, "blob": str(n) * 200_000})
        await eventually(lambda: 39 in seen)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert len(seen) > 2


async def test_unchanged_content_is_not_rewritten(tmp_path: Path, make_daemon: Any) -> None:
    target, ran = tmp_path / "out" / "c.json", tmp_path / "ran.log"
    daemon = await make_daemon(entry(target, command=f"sh -c 'echo run >> {ran}'"))
    await put(daemon, {"a": 1})
    await eventually(lambda: len(lines(ran)) == 1)
    inode, mtime = target.stat().st_ino, target.stat().st_mtime_ns
    await put(daemon, {"a": 1}, description="same content")  # no version
    await put(daemon, {"a": 1}, env="staging")  # other environment
    await eventually(daemon.components.files.idle)  # anything these caused would be queued by now
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (inode, mtime)
    assert lines(ran) == ["run"]


async def test_burst_gives_one_write_and_one_command(tmp_path: Path, make_daemon: Any) -> None:
    a, b, ran = tmp_path / "out" / "a.json", tmp_path / "out" / "b.env", tmp_path / "ran.log"
    command = ["sh", "-c", f"echo run >> {ran}"]
    wait = {"min": "300ms", "max": "3s"}
    daemon = await make_daemon(
        entry(a, command=command, wait=wait), entry(b, format="env", command=command, wait=wait)
    )
    for n in range(10):
        await put(daemon, {"n": n})
    await eventually(lambda: len(lines(ran)) >= 1)
    await eventually(daemon.components.files.idle)
    assert json.loads(a.read_text()) == {"n": 9}
    assert lines(ran) == ["run"]  # one run for both files and all ten changes


async def test_max_wait_bounds_a_long_burst(tmp_path: Path, make_daemon: Any) -> None:
    target = tmp_path / "out" / "a.json"
    daemon = await make_daemon(entry(target, wait={"min": "400ms", "max": "1s"}))
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 2.0:  # changes every 100 ms, never quiet for 400 ms
        await put(daemon, {"n": n})
        n += 1
        await asyncio.sleep(0.1)
        if target.exists():
            break
    assert target.exists() and time.monotonic() - started < 1.8


async def test_failing_command_is_logged_and_blocks_nothing(
    tmp_path: Path, make_daemon: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = tmp_path / "out" / "bad.json", tmp_path / "out" / "good.json"
    ran = tmp_path / "ran.log"
    daemon = await make_daemon(
        entry(bad, command=["sh", "-c", "echo boom; exit 3"]),
        entry(good, command=["sh", "-c", f"echo ok >> {ran}"]),
    )
    await put(daemon, {"a": 1})
    await eventually(lambda: len(lines(ran)) == 1)
    await eventually(lambda: any(getattr(r, "exit_status", None) == 3 for r in caplog.records))
    failed = next(r for r in caplog.records if getattr(r, "exit_status", None) == 3)
    output, command = getattr(failed, "output", ""), getattr(failed, "command", None)
    assert "boom" in output and command == ["sh", "-c", "echo boom; exit 3"]
    assert json.loads(bad.read_text()) == {"a": 1}
    caplog.clear()
    await put(daemon, {"a": 2})  # retried on the next change (after its back-off)
    await eventually(lambda: any(getattr(r, "exit_status", None) == 3 for r in caplog.records), 15)
    assert lines(ran) == ["ok", "ok"]


async def test_commands_never_use_a_shell_unless_asked(tmp_path: Path, make_daemon: Any) -> None:
    plain, shelled = tmp_path / "plain-out", tmp_path / "shell-out"
    daemon = await make_daemon(
        # Without a shell, ">" is just an argument to echo: no file appears.
        entry(tmp_path / "out" / "p.json", command=f"echo hi > {plain}"),
        entry(tmp_path / "out" / "s.json", command=f"echo hi > {shelled}", shell=True),
    )
    await put(daemon, {"a": 1})
    await eventually(
        lambda: daemon.components.files.command_runs == 2 and daemon.components.files.idle()
    )
    assert shelled.read_text() == "hi\n"
    assert not plain.exists()


async def test_drift_is_restored_or_reported(tmp_path: Path, make_daemon: Any) -> None:
    kept, reported = tmp_path / "out" / "kept.json", tmp_path / "out" / "reported.json"
    daemon = await make_daemon(entry(kept), entry(reported, on_drift="report"))
    await put(daemon, {"a": 1})
    await eventually(lambda: reported.exists() and kept.exists())
    original = kept.read_bytes()
    kept.write_text('{"hacked": true}')
    await eventually(lambda: kept.read_bytes() == original)
    kept.unlink()
    await eventually(lambda: kept.exists() and kept.read_bytes() == original)
    seen = daemon.components.files.drift_detected
    reported.write_text("edited by hand")
    await eventually(
        lambda: daemon.components.files.drift_detected > seen and daemon.components.files.idle()
    )
    assert reported.read_text() == "edited by hand"
    async with (
        api_session(daemon) as http,
        http.get("/api/audit?limit=100") as r,
    ):
        audit = await r.json()
    drift = [e for e in audit["items"] if e["action"] == "file.drift"]
    assert {(e["target"], e["details"]["action"]) for e in drift} >= {
        (f"file:{kept}", "restored"),
        (f"file:{reported}", "reported"),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_reading_synced_files_leaves_the_daemon_idle(spawn: Any, tmp_path: Path) -> None:
    """A consumer reading its file (1,000 times each) must not make fpcd spin."""
    import urllib.request

    out = tmp_path / "out"
    files = [out / "a.json", out / "b.env", out / "c.yaml"]
    settings = tmp_path / "fpcd.toml"
    settings.write_text(
        "".join(
            f'[[files]]\nservice = "web"\nenvironment = "prod"\npath = "{path}"\n'
            f'format = "{path.suffix[1:]}"\n'
            for path in files
        )
    )
    proc = spawn(args=["--config", str(settings)]).start()
    assert proc.proc is not None

    def put(config: dict[str, Any]) -> None:
        body = json.dumps({"environment": "prod", "config": config}).encode()
        req = urllib.request.Request(
            proc.url + "/api/config/web", data=body, method="PUT", headers=proc.auth
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200

    put({"n": 1})
    eventually_blocking(
        lambda: all(parsed(f, str) for f in files) and parsed(files[0], json.loads) == {"n": 1},
        20,
        what="files written",
    )
    for path in files:
        for _ in range(1000):
            path.read_bytes()
    before = cpu_seconds(proc.proc.pid)
    started = time.monotonic()
    time.sleep(2.0)  # the measurement window itself
    used = cpu_seconds(proc.proc.pid) - before
    elapsed = time.monotonic() - started
    # Spinning costs a whole core (2 s here); an idle daemon only runs its timers.
    assert used < 0.25 * elapsed, f"{used:.2f} s of CPU in {elapsed:.1f} s after reads"
    put({"n": 2})
    eventually_blocking(lambda: parsed(files[0], json.loads) == {"n": 2}, 1.0, what="the write")
    assert proc.stop(timeout=10) == 0  # and it stops promptly


async def test_secrets_only_in_private_files(tmp_path: Path, make_daemon: Any) -> None:
    with pytest.raises(SettingsError, match="others read it"):
        make_settings(
            tmp_path, files=[entry(tmp_path / "x.env", include_secrets=True, mode="0644")]
        )
    target = tmp_path / "out" / "app.env"
    daemon = await make_daemon(
        entry(target, format="env", include_secrets=True, mode="0600"),
        entry(tmp_path / "out" / "public.json"),
    )
    value = secret_value("filesync")
    await put(daemon, {"a": 1}, secrets={"DB_PASSWORD": value})
    await eventually(lambda: target.exists() and value in target.read_text())
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    public = tmp_path / "out" / "public.json"
    await eventually(lambda: parsed(public, json.loads) == {"a": 1})  # written on its own
    assert value not in public.read_text()


async def test_stale_temp_files_are_removed_at_start(tmp_path: Path, make_daemon: Any) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".a.json.abc123.fpcd-tmp"
    stale.write_text("half")
    await make_daemon(entry(out / "a.json"))
    assert not stale.exists()


async def test_reload_force_runs_the_command(tmp_path: Path, make_daemon: Any) -> None:
    target, ran = tmp_path / "out" / "a.json", tmp_path / "ran.log"
    daemon = await make_daemon(entry(target, command=["sh", "-c", f"echo run >> {ran}"]))
    await put(daemon, {"a": 1})
    await eventually(lambda: len(lines(ran)) == 1)
    async with (
        api_session(daemon) as http,
        http.post("/api/config/web/reload", json={"environment": "prod", "force": True}) as r,
    ):
        assert r.status == 200
    await eventually(lambda: len(lines(ran)) == 2)


# -- the declarative source directory ---------------------------------------------------


async def test_source_dir_imports_and_rejects(tmp_path: Path, make_daemon: Any) -> None:
    src = tmp_path / "src"
    (src / "services" / "web").mkdir(parents=True)
    (src / "flags").mkdir()
    (src / "services" / "web" / "prod.toml").write_text('port = 80\n[db]\nhost = "a"\n')
    (src / "flags" / "dark_mode.json").write_text('{"enabled": true, "tags": ["ui"]}')
    daemon = await make_daemon(sync={"source_dir": str(src)})
    async with api_session(daemon) as http:

        async def config() -> Any:
            async with http.get("/api/config/web?environment=prod") as r:
                return await r.json()

        doc = await config()
        assert doc["config"] == {"port": 80, "db": {"host": "a"}}
        assert doc["createdBy"] == "file:services/web/prod.toml"
        async with http.get("/api/features/dark_mode") as r:
            flag = await r.json()
        assert flag["enabled"] is True and flag["updatedBy"] == "file:flags/dark_mode.json"

        (src / "services" / "web" / "staging.yaml").write_text("port: 8080\nlist: [1, 2]\n")

        async def staging_ok() -> bool:
            async with http.get("/api/config/web?environment=staging") as r:
                return r.status == 200

        await eventually(staging_ok, 10)

        (src / "services" / "web" / "prod.toml").write_text('port = 80\n[db\nhost = "b"\n')
        source_dir: dict[str, Any] = {}

        async def refused() -> bool:
            nonlocal source_dir
            async with http.get("/health") as r:
                source_dir = (await r.json())["components"]["source_dir"]
            return bool(source_dir["status"] == "degraded")

        await eventually(refused, 10)
        detail = source_dir["detail"]
        assert "services/web/prod.toml:2" in detail
        assert (await config())["config"]["db"] == {"host": "a"}  # the last good version

        (src / "services" / "web" / "prod.toml").write_text("port = 90\n")

        async def port_90() -> bool:
            return bool((await config())["config"].get("port") == 90)

        await eventually(port_90, 10, what="the source file's new port")
        assert (await config())["config"] == {"port": 90}
        async with http.get("/health") as r:
            assert (await r.json())["components"]["source_dir"]["status"] == "ok"


# -- sd_notify, render, deployment files -----------------------------------------------------


def test_sd_notify_protocol(spawn: Any, tmp_path: Path) -> None:
    import signal
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(20)
    proc = spawn(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
    proc.start()

    def receive_until(word: str) -> list[str]:
        got: list[str] = []
        while not any(word in m for m in got):
            got.append(sock.recv(4096).decode())
        return got

    assert any(m.startswith("READY=1") for m in receive_until("READY=1"))
    assert receive_until("WATCHDOG=1")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    messages = receive_until("RELOADING=1")
    messages += receive_until("READY=1")
    proc.proc.send_signal(signal.SIGTERM)
    assert any("STOPPING=1" in m for m in receive_until("STOPPING=1"))
    assert proc.proc.wait(20) == 0
    sock.close()


def test_render_command(spawn: Any) -> None:
    proc = spawn().start()
    import urllib.request

    req = urllib.request.Request(
        proc.url + "/api/config/web",
        method="PUT",
        data=json.dumps({"environment": "prod", "config": {"db": {"host": "h"}}}).encode(),
        headers=proc.auth,
    )
    urllib.request.urlopen(req, timeout=10).close()
    r = run_cli(
        "render",
        "--service",
        "web",
        "--environment",
        "prod",
        "--format",
        "env",
        "--socket",
        str(proc.socket),
    )
    assert r.returncode == 0 and r.stdout == "DB__HOST=h\n"
    r = run_cli(
        "render",
        "--service",
        "web",
        "--environment",
        "prod",
        "--format",
        "yaml",
        "--socket",
        str(proc.socket),
    )
    assert yaml.safe_load(r.stdout) == {"db": {"host": "h"}}
    r = run_cli("render", "--service", "nope", "--socket", str(proc.socket))
    assert r.returncode == 1 and "Not found" in r.stderr


ROOT = Path(__file__).resolve().parent.parent


def test_deployment_files() -> None:
    daemonset = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    assert daemonset["kind"] == "DaemonSet"
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in container["ports"]} == {3001, 8080}
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    env = {e["name"]: e for e in container["env"]}
    assert env["CONFIG_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "fpcd"
    # The pod's environment must pass the daemon's own start-up checks (0.0.0.0 needs
    # an explicit allow, since TLS is terminated in front of it).
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    loaded = load_settings(None, environ=plain)
    assert loaded.server.api_host == "0.0.0.0" and loaded.server.allow_insecure
    assert "FPCD_SERVER__ALLOW_INSECURE=true" in (ROOT / "deploy" / "Dockerfile").read_text()
    secret = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "secret.yaml").read_text())
    assert secret["kind"] == "Secret" and "encryption-key" in secret["stringData"]
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "USER fpcd" in dockerfile and 'ENTRYPOINT ["fpcd", "serve"]' in dockerfile
    assert "EXPOSE 3001 8080" in dockerfile
    unit = (ROOT / "systemd" / "fpcd.service").read_text()
    for line in (
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=fpcd",
        "RuntimeDirectory=fpcd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "WatchdogSec=",
    ):
        assert line in unit, line
