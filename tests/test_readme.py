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
        joined = block.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.startswith("curl")]
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
        args = [*shlex.split(command), "-o", "/dev/null", "-w", "%{http_code}"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
        status = int(out.stdout)
        expected_failure = '"retries": -1' in command
        assert (status == 422) if expected_failure else (status < 400), (command, status)
