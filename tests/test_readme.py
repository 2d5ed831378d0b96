"""The README's curl examples work as written (against a daemon on a free port)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import DaemonProcess

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


#: Stands for a value that differs on every run (a checksum, a time) in shown outputs.
ANY = "…"


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return re.findall(r"```(\w*)\n(.*?)```", text, re.S)


def shell_commands(block: str) -> list[str]:
    """The commands of a sh block (continued lines joined, open quotes followed)."""
    commands: list[str] = []
    pending = ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        if pending.strip():
            commands.append(pending)
        pending = ""
    return commands


def same(shown: Any, actual: Any) -> bool:
    """`actual` is what the README shows, `…` standing for any value."""
    if shown == ANY:
        return True
    if isinstance(shown, dict):
        return (
            isinstance(actual, dict)
            and shown.keys() == actual.keys()
            and all(same(v, actual[k]) for k, v in shown.items())
        )
    if isinstance(shown, list):
        return (
            isinstance(actual, list)
            and len(shown) == len(actual)
            and all(same(a, b) for a, b in zip(shown, actual, strict=True))
        )
    return bool(shown == actual)


def json_documents(text: str) -> list[Any]:
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:  # one document per line (NDJSON)
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_shown(lang: str, shown: str, actual: str, command: str) -> None:
    if lang == "json":
        expected, got = json_documents(shown), json_documents(actual)
        assert same(expected, got), (command, got)
    else:
        pattern = "\n".join(
            ".*?".join(re.escape(part) for part in line.rstrip().split(ANY))
            for line in shown.strip("\n").splitlines()
        )
        lines = "\n".join(line.rstrip() for line in actual.strip("\n").splitlines())
        assert re.fullmatch(pattern, lines), (command, actual)


def flag_socket_exchange(command: str, socket_path: Path) -> str:
    """`printf ... | socat - UNIX-CONNECT:flags.sock`, without needing socat."""
    import socket

    args = shlex.split(command.split("|")[0])
    lines = args[2:]  # printf '%s\n' LINE...
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path))
        sock.sendall("".join(f"{line}\n" for line in lines).encode())
        received = b""
        while received.count(b"\n") < len(lines):
            received += sock.recv(65536)
    return received.decode()


def run_api_reference(proc: DaemonProcess) -> int:
    """Every curl example of the API reference in order, checking statuses and the
    outputs shown; returns how many commands ran."""
    text = (ROOT / "README.md").read_text()
    reference = text[text.index("## API reference") : text.index("## CLI")]
    blocks = fenced_blocks(reference)
    ran = 0
    for i, (lang, body) in enumerate(blocks):
        if lang != "sh":
            continue
        outputs: list[tuple[str, str]] = []
        for command in shell_commands(body):
            if "socat" in command:
                outputs.append(
                    (command, flag_socket_exchange(command, proc.data_dir / "flags.sock"))
                )
                continue
            if not command.startswith("curl") or "token create" in command:
                continue
            ran += 1
            line = command.replace("localhost:3001", f"127.0.0.1:{proc.port}")
            line = line.replace("127.0.0.1:3001", f"127.0.0.1:{proc.port}")
            line = line.replace("fpcd-data/", f"{proc.data_dir}/")
            line = line.replace('"$TOKEN"', proc.token)
            args = [*shlex.split(line), "-w", "\n%{http_code}"]
            out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
            body_text, _, status_text = out.stdout.rpartition("\n")
            # Answers that echo the daemon's address show it as the README has it.
            body_text = body_text.replace(f"127.0.0.1:{proc.port}", "127.0.0.1:3001")
            status = int(status_text)
            # The examples that show a refusal: a schema violation, an undeclared environment.
            expected = (
                422
                if '"retries": -1' in command
                else 404
                if "environment=prod'" in command
                else None
            )
            assert (status == expected) if expected else (status < 400), (command, status)
            outputs.append((command, body_text))
        following = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
        if following[0] in ("json", "text") and outputs:
            check_shown(following[0], following[1], outputs[0][1], outputs[0][0])
    return ran


def run_cli_section(proc: DaemonProcess, cwd: Path) -> None:
    """The CLI section top to bottom: its files written from the README, every command
    run as a newcomer would paste it (exit 0), and the outputs shown checked."""
    import sys

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## CLI") : text.index("## Benchmarks")]
    files = re.findall(
        r"^`([\w.-]+\.(?:toml|json|yaml))`, [^\n]*\n\n```\w+\n(.*?)```", section, re.S | re.M
    )
    assert {name for name, _ in files} == {"checkout.toml", "schema.json", "checkout-flag.toml"}
    for name, content in files:
        (cwd / name).write_text(content)
    blocks = fenced_blocks(section)
    fpcd = f"{sys.executable} -m fpcd"
    for i, (lang, body) in enumerate(blocks):
        if lang != "sh":
            continue
        outputs = []
        for command in shell_commands(body):
            if "sudo " in command or "DATABASE_URL" in command:
                continue  # the restore and replication examples: not on this host
            line = command.replace(".venv/bin/fpcd", fpcd)
            out = subprocess.run(
                ["bash", "-c", line], capture_output=True, text=True, timeout=120, cwd=cwd
            )
            assert out.returncode == 0, (command, out.stdout, out.stderr)
            outputs.append((command, out.stdout))
        following = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
        if following[0] in ("json", "text") and outputs:
            check_shown(following[0], following[1], outputs[0][1], outputs[0][0])


def test_readme_top_to_bottom(spawn: Any, tmp_path: Path) -> None:
    """A newcomer in one directory: the daemon's data in ./fpcd-data, the API reference's
    curl examples, then the CLI section's commands and files; what they print is what
    the README shows."""
    # The shipped environments (the suite's daemons declare more for older tests).
    shipped = {"FPCD_SERVER__ENVIRONMENTS": "development,staging,production"}
    proc = spawn("newcomer/fpcd-data", env=shipped).start()
    assert run_api_reference(proc) >= 15
    run_cli_section(proc, tmp_path / "newcomer")


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
