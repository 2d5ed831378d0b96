"""`fpcd serve` as a process: embedded default, settings errors, signals, restart."""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import (
    FPCD,
    DaemonProcess,
    auth_for,
    eventually_blocking,
    free_port,
    run_cli,
)


def request(method: str, url: str, body: Any = None, timeout: float = 5) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **auth_for(url)}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_embedded_default_uses_cwd_data_dir(tmp_path: Path) -> None:
    import subprocess

    port, ws_port = free_port(), free_port()
    proc = subprocess.Popen(
        [*FPCD, "serve", "--api-port", str(port), "--ws-port", str(ws_port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # A daemon that never answers fails here, naming what it waited for (this loop
        # once ended in an UnboundLocalError instead).
        answer: tuple[int, Any] = (0, None)

        def answers() -> bool:
            nonlocal answer
            try:
                answer = request("GET", f"http://127.0.0.1:{port}/health")
            except OSError:
                return False
            return True

        eventually_blocking(answers, 20, what="an answer from /health")
        status, doc = answer
        assert status == 200 and doc["status"] == "ok"
        assert (tmp_path / "fpcd-data" / "fpcd.db").exists()
        assert (tmp_path / "fpcd-data" / "fpcd.sock").is_socket()
        assert (tmp_path / "fpcd-data" / "fpcd.sock").stat().st_mode & 0o777 == 0o660
        with socket.create_connection(("127.0.0.1", ws_port), timeout=2):
            pass  # the WebSocket port is bound
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert any(line["msg"] == "fpcd ready" for line in lines)
    assert not (tmp_path / "fpcd-data" / "fpcd.sock").exists()


def test_config_example_starts(spawn: Any) -> None:
    root = Path(__file__).resolve().parent.parent
    proc: DaemonProcess = spawn(args=["--config", str(root / "config.example.toml")])
    proc.start()
    assert request("GET", proc.url + "/health")[0] == 200
    assert proc.stop() == 0


def test_bad_settings_file_stops_startup_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\napi_port = 'three thousand'\n")
    r = run_cli("serve", "--config", str(bad), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 78
    assert r.stderr.strip().count("\n") == 0
    assert "server.api_port" in r.stderr and "expected" in r.stderr
    assert not (tmp_path / "d").exists()


def test_port_in_use_is_a_clear_error(spawn: Any) -> None:
    first: DaemonProcess = spawn("one").start()
    second: DaemonProcess = spawn("two")
    second.port = first.port
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(20) == 1
    assert f"cannot listen on 127.0.0.1:{first.port}" in second.log()


def test_second_daemon_on_same_runtime_dir_is_refused(spawn: Any, tmp_path: Path) -> None:
    first: DaemonProcess = spawn("same").start()
    # Another data dir (the same one is refused by its lock: test_storage_safety.py).
    clash = DaemonProcess(tmp_path / "other", args=["--runtime-dir", str(first.data_dir)])
    clash.start(wait=False)
    assert clash.proc is not None and clash.proc.wait(20) == 1
    assert "is in use: is another fpcd running with this runtime dir?" in clash.log()
    assert request("GET", first.url + "/health")[0] == 200  # the first one is unharmed


def test_restart_keeps_everything(spawn: Any) -> None:
    proc: DaemonProcess = spawn().start()
    request(
        "PUT",
        proc.url + "/api/config/web",
        {"environment": "default", "config": {"a": 1, "b": {"c": 2}}},
    )
    request(
        "PUT",
        proc.url + "/api/config/web",
        {"environment": "prod", "config": {"b": {"d": 3}}, "secrets": {"K": "v"}},
    )
    request("PUT", proc.url + "/api/config/web/schema", {"type": "object"})
    before = request("GET", proc.url + "/api/config/web?environment=prod")[1]
    assert proc.stop() == 0
    proc.start()
    after = request("GET", proc.url + "/api/config/web?environment=prod")[1]
    assert after == before
    assert request("GET", proc.url + "/api/config/web/schema")[0] == 200
    status, written = request(
        "PUT", proc.url + "/api/config/web", {"environment": "prod", "config": {"b": {"d": 4}}}
    )
    assert status == 200 and written["version"] == 2
    assert request("GET", proc.url + "/api/audit/verify")[1]["ok"] is True


def test_writes_acknowledged_before_sigterm_survive(spawn: Any) -> None:
    proc: DaemonProcess = spawn().start()
    acknowledged: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                status, body = request(
                    "PUT",
                    proc.url + "/api/config/busy",
                    {"environment": "prod", "config": {"n": n}},
                    timeout=2,
                )
            except OSError:
                return
            if status == 200:
                acknowledged.append(body["version"])

    thread = threading.Thread(target=writer)
    thread.start()
    eventually_blocking(lambda: len(acknowledged) > 5, 30, what="writes in flight")
    assert proc.stop() == 0
    stop.set()
    thread.join(10)
    assert len(acknowledged) > 5
    proc.start()
    _, history = request("GET", proc.url + "/api/config/busy/history?environment=prod&limit=1000")
    stored = {item["version"] for item in history["items"]}
    assert set(acknowledged) <= stored
    assert sorted(stored) == list(range(1, len(stored) + 1))  # no gaps


def test_sighup_rereads_settings(spawn: Any, tmp_path: Path) -> None:
    settings = tmp_path / "fpcd.toml"
    settings.write_text("[log]\nlevel = 'info'\n")
    proc: DaemonProcess = spawn(args=["--config", str(settings)]).start()
    big = {"environment": "prod", "config": {"x": "y" * 5000}}
    assert request("PUT", proc.url + "/api/config/web", big)[0] == 200
    settings.write_text(
        "[log]\nlevel = 'debug'\n[limits]\nmax_body_bytes = 1000\n"
        "[storage]\nsynchronous = 'normal'\n[server]\nws_port = 1\n"
    )
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    eventually_blocking(lambda: "settings reloaded" in proc.log(), 10, what="the reload")
    reloaded = next(
        json.loads(line) for line in proc.log().splitlines() if "settings reloaded" in line
    )
    assert "limits.max_body_bytes" in reloaded["applied"]
    assert reloaded["need_restart"] == ["storage.synchronous"]  # ws_port: the flag still wins
    big["config"] = {"x": "z" * 5000}
    assert request("PUT", proc.url + "/api/config/web", big)[0] == 413
    # A broken file on SIGHUP keeps the running settings.
    settings.write_text("[limits]\nmax_body_bytes = 'lots'\n")
    proc.proc.send_signal(signal.SIGHUP)
    eventually_blocking(lambda: "settings reload refused" in proc.log(), 10, what="the refusal")
    assert request("PUT", proc.url + "/api/config/web", big)[0] == 413
    assert request("GET", proc.url + "/health")[0] == 200


def test_kill_9_then_restart_is_consistent(spawn: Any) -> None:
    proc: DaemonProcess = spawn().start()
    for n in range(20):
        request("PUT", proc.url + "/api/config/web", {"environment": "prod", "config": {"n": n}})
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)
    proc.start()
    doc = request("GET", proc.url + "/api/config/web?environment=prod")[1]
    assert doc["version"] == 20 and doc["config"] == {"n": 19}
    assert request("GET", proc.url + "/api/audit/verify")[1]["ok"] is True
