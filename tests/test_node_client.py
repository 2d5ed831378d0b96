"""The Node.js client (clients/node): built, and its own suite run against real daemons.

`npm test` there (node's test runner) starts `python -m fpcd serve` with this
interpreter, so the Python suite's command covers the Node client too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENT = ROOT / "clients" / "node"


def _npm(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    npm = shutil.which("npm")
    assert npm, "node and npm are needed (.ci/run installs them)"
    env = {**os.environ, "FPCD_PYTHON": sys.executable, "NO_COLOR": "1"}
    return subprocess.run(
        [npm, *args], cwd=NODE_CLIENT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _built() -> None:
    if not (NODE_CLIENT / "node_modules" / ".package-lock.json").exists():
        out = _npm("ci", "--no-audit", "--no-fund")
        assert out.returncode == 0, out.stdout + out.stderr
    out = _npm("run", "build")
    assert out.returncode == 0, out.stdout + out.stderr


def test_node_client_builds_and_its_suite_passes() -> None:
    _built()
    out = _npm("test")
    report = out.stdout + out.stderr
    assert out.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", report, re.M)
    failed = re.search(r"^# fail (\d+)$", report, re.M)
    skipped = re.search(r"^# skipped (\d+)$", report, re.M)
    assert passed and failed and skipped, report
    assert (int(failed[1]), int(skipped[1])) == (0, 0), report
    assert int(passed[1]) >= 16, report


def test_readme_node_example_prints_what_it_shows(spawn: Any, tmp_path: Path) -> None:
    """The README's Node.js example, as written, against a daemon (addresses moved)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Node.js client") :]
    section = section[: section.index("\n## ", 1)]
    (setup,) = re.findall(r"```sh\n(.*?)```", section, re.S)
    (example,) = re.findall(r"```js\n(.*?)```", section, re.S)
    (shown,) = re.findall(r"```text\n(.*?)```", section, re.S)
    _built()
    proc = spawn().start()
    for command in setup.replace("\\\n", " ").splitlines():
        if not command.startswith("curl"):
            continue
        command = command.replace("localhost:3001", f"127.0.0.1:{proc.port}")
        command = command.replace('"$TOKEN"', proc.token)
        subprocess.run([*shlex.split(command), "-o", "/dev/null", "--fail"], check=True, timeout=30)
    # The package as an application would have it installed.
    (tmp_path / "node_modules" / "@fpcd").mkdir(parents=True)
    (tmp_path / "node_modules" / "@fpcd" / "client").symlink_to(NODE_CLIENT)
    script = tmp_path / "example.js"
    script.write_text(
        example.replace("localhost:3001", f"127.0.0.1:{proc.port}").replace(
            "localhost:8080", f"127.0.0.1:{proc.ws_port}"
        )
    )
    node = shutil.which("node")
    assert node
    out = subprocess.run(
        [node, str(script)],
        cwd=tmp_path,
        env={**os.environ, "TOKEN": proc.token},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == shown, out.stdout
