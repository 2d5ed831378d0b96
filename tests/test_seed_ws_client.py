"""The seed's own Node `ws` client example works unchanged against fpcd."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import auth_for, eventually_blocking

ROOT = Path(__file__).resolve().parent.parent


def http(url: str, method: str, body: Any) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method=method, headers=auth_for(url)
    )
    with urllib.request.urlopen(req, timeout=10):
        pass


def test_seed_node_example(spawn: Any, tmp_path: Path) -> None:
    proc = spawn().start()
    # Only the address changes (and the token rides in the query, as for any browser).
    run_example(proc, tmp_path, f"ws://127.0.0.1:{proc.ws_port}/?token={proc.token}")


def test_seed_node_example_without_credentials(spawn: Any, tmp_path: Path) -> None:
    """With auth.anonymous_role, the example runs as the original documents it: no token."""
    proc = spawn(env={"FPCD_AUTH__ANONYMOUS_ROLE": "viewer"}).start()
    run_example(proc, tmp_path, f"ws://127.0.0.1:{proc.ws_port}")


def run_example(proc: Any, tmp_path: Path, address: str) -> None:
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "node and npm are needed (.ci/run installs them)"
    subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "ws@8"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=180,
    )
    example = (ROOT / "docs" / "examples" / "seed-ws-client.js").read_text()
    script = tmp_path / "client.js"
    script.write_text(example.replace("ws://localhost:8080", address))
    with subprocess.Popen(  # closes its pipe when done
        [node, str(script)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as client:
        try:
            lines = talk_to(proc, client)
        finally:
            client.kill()
    assert lines == [
        'Configuration updated: {"maxUsers":100}',
        "Feature flag updated: new_signup true",
        "Configuration reload requested",
    ], lines


def subscriptions(proc: Any) -> int:
    with urllib.request.urlopen(proc.url + "/health", timeout=5) as r:
        count: int = json.loads(r.read())["components"]["websocket"]["counts"]["subscriptions"]
    return count


def talk_to(proc: Any, client: subprocess.Popen[str]) -> list[str]:
    """Change what the example subscribed to; the first three lines it prints."""
    eventually_blocking(lambda: subscriptions(proc) == 1, what="the example's subscription")
    http(
        proc.url + "/api/config/user-service",
        "PUT",
        {"environment": "production", "config": {"maxUsers": 100}},
    )
    http(proc.url + "/api/features", "POST", {"name": "new-signup", "enabled": True})
    http(
        proc.url + "/api/config/user-service/reload",
        "POST",
        {"environment": "production", "force": True},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 15
    assert client.stdout is not None
    while len(lines) < 3 and time.monotonic() < deadline:
        line = client.stdout.readline()
        if line:
            lines.append(line.strip())
    return lines
