"""The README's curl examples work as written (against a daemon on a free port)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def curl_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    reference = text[text.index("## API reference") : text.index("## CLI")]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", reference, re.S):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending)
            except ValueError:  # an open quote: the command goes on on the next line
                continue
            if pending.startswith("curl") and "token create" not in pending:
                commands.append(pending)
            pending = ""
    return commands


def test_readme_has_quick_start_commands() -> None:
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start") : text.index("## Settings")]
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.S)
    assert blocks[0].strip().endswith("fpcd serve")
    assert blocks[1].strip().endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci  # CI runs exactly the README's test command


def test_readme_curl_examples_work(spawn: Any) -> None:
    proc = spawn().start()
    commands = curl_commands()
    assert len(commands) >= 15
    for command in commands:
        command = command.replace("localhost:3001", f"127.0.0.1:{proc.port}")
        command = command.replace("fpcd-data/", f"{proc.data_dir}/")
        command = command.replace('"$TOKEN"', proc.token)
        args = [*shlex.split(command), "-o", "/dev/null", "-w", "%{http_code}"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
        status = int(out.stdout)
        # The examples that show a refusal: a schema violation, an undeclared environment.
        expected = (
            422 if '"retries": -1' in command else 404 if "environment=prod'" in command else None
        )
        assert (status == expected) if expected else (status < 400), (command, status)


def test_readme_python_client_example_runs(spawn: Any, tmp_path: Path) -> None:
    """The README's client example, as written, against a daemon (URLs and paths moved)."""
    import sys
    import urllib.request

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python client") : text.index("## CLI")]
    (example,) = re.findall(r"```python\n(.*?)```", section, re.S)
    proc = spawn().start()
    flag = b'{"name": "New Checkout Flow", "enabled": true}'
    create = urllib.request.Request(f"{proc.url}/api/features", flag, headers=proc.auth)
    urllib.request.urlopen(create, timeout=10).close()
    example = (
        example.replace("localhost:3001", f"127.0.0.1:{proc.port}")
        .replace("localhost:8080", f"127.0.0.1:{proc.ws_port}")
        .replace("fpcd-data/", f"{proc.data_dir}/")
    )
    out = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["{}", "True None None STATIC"], out.stdout
    assert (tmp_path / "checkout-cache.json").exists()
