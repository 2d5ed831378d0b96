"""`env` files are data, never code: every reader gets back exactly the stored strings.

Readers: `set -a; . file` in sh, bash and dash; systemd's EnvironmentFile= (its parser,
src/basic/env-file.c, ported below as a state machine, since no systemd runs here); and
python-dotenv.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dotenv
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpcd.domain.render import RenderError, render
from tests.conftest import api_session, eventually, run_cli
from tests.test_files import entry, make_daemon

__all__ = ["make_daemon"]

SHELLS = [shell for shell in ("sh", "bash", "dash") if shutil.which(shell)]


def test_every_shell_is_here() -> None:
    assert SHELLS == ["sh", "bash", "dash"]


def source_with(shell: str, path: Path, names: list[str]) -> list[str]:
    """`set -a; . file` as a unit's ExecStartPre or an entrypoint script does, then each
    variable's value as the shell holds it (NUL-separated: no value can hold a NUL)."""
    script = "set -a; . ./" + path.name + "; printf '%s\\0' " + " ".join(f'"${n}"' for n in names)
    out = subprocess.run(
        [shell, "-c", script], cwd=path.parent, capture_output=True, timeout=20, env={}
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.decode().split("\0")[:-1]


def systemd_environment_file(data: bytes) -> dict[str, str]:
    """systemd's parse_env_file_internal (env-file.c), state for state."""
    text = data.decode()
    whitespace, newline, comments = " \t\n\r", "\n\r", "#;"
    result: dict[str, str] = {}
    key: list[str] = []
    value: list[str] = []
    state = "PRE_KEY"
    last_value_ws: int | None = None
    last_key_ws: int | None = None

    def push(strip_value: bool) -> None:
        k = "".join(key[:last_key_ws] if last_key_ws is not None else key)
        v = value[:last_value_ws] if strip_value and last_value_ws is not None else value
        result[k] = "".join(v)

    for c in text:
        if state == "PRE_KEY":
            if c in comments:
                state = "COMMENT"
            elif c not in whitespace:
                state, last_key_ws, key = "KEY", None, [c]
        elif state == "KEY":
            if c in newline:
                state, key = "PRE_KEY", []
            elif c == "=":
                state, last_value_ws, value = "PRE_VALUE", None, []
            else:
                if c not in whitespace:
                    last_key_ws = None
                elif last_key_ws is None:
                    last_key_ws = len(key)
                key.append(c)
        elif state == "PRE_VALUE":
            if c in newline:
                push(False)
                state, key, value = "PRE_KEY", [], []
            elif c == "'":
                state = "SINGLE"
            elif c == '"':
                state = "DOUBLE"
            elif c == "\\":
                state = "VALUE_ESCAPE"
            elif c not in whitespace:
                state = "VALUE"
                value.append(c)
        elif state == "VALUE":
            if c in newline:
                push(True)
                state, key, value = "PRE_KEY", [], []
            elif c == "\\":
                state, last_value_ws = "VALUE_ESCAPE", None
            else:
                if c not in whitespace:
                    last_value_ws = None
                elif last_value_ws is None:
                    last_value_ws = len(value)
                value.append(c)
        elif state == "VALUE_ESCAPE":
            state = "VALUE"
            if c not in newline:
                value.append(c)
        elif state == "SINGLE":
            if c == "'":
                state = "PRE_VALUE"
            else:
                value.append(c)
        elif state == "DOUBLE":
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_ESCAPE"
            else:
                value.append(c)
        elif state == "DOUBLE_ESCAPE":
            state = "DOUBLE"
            if c in '"\\`$':
                value.append(c)
            elif c != "\n":
                value += ["\\", c]
        elif state == "COMMENT":
            if c == "\\":
                state = "COMMENT_ESCAPE"
            elif c in newline:
                state = "PRE_KEY"
        elif state == "COMMENT_ESCAPE":
            state = "PRE_KEY" if c in newline else "COMMENT"
    if state not in ("PRE_KEY", "KEY", "COMMENT", "COMMENT_ESCAPE"):
        push(state == "VALUE")
    return result


def test_the_systemd_port_follows_the_documented_rules() -> None:
    parsed = systemd_environment_file(
        b"# comment\n; comment\nA=plain  \nB='single $x \\n'\nC=\"d \\$x \\q \\\\\"\n"
        b"D=a\\\nb\nE='multi\nline'\nF='x'\"y\"'z'\n"
    )
    assert parsed == {
        "A": "plain",
        "B": "single $x \\n",
        "C": "d $x \\q \\",
        "D": "ab",
        "E": "multi\nline",
        "F": "xyz",
    }


def dotenv_form(value: str) -> bool:
    """Whether python-dotenv shares a syntax with the shells for this value (see
    fpcd.domain.render._env_value): no CR, and not both a `'` and a `$` or backquote,
    nor `$`/backquote with a backslash python-dotenv would unescape in '...'."""
    if "\r" in value:
        return False
    expands = "$" in value or "`" in value
    dotenv_escape = "\\\\" in value or value.endswith("\\")
    return not (expands and ("'" in value or dotenv_escape))


def check_round_trip(values: list[str], tmp: Path) -> None:
    config = {f"v{i}": value for i, value in enumerate(values)}
    data = render("env", config)
    path = tmp / "app.env"
    path.write_bytes(data)
    names = [f"V{i}" for i in range(len(values))]
    for shell in SHELLS:
        assert source_with(shell, path, names) == values, shell
    assert systemd_environment_file(data) == dict(zip(names, values, strict=True))
    read = dotenv.dotenv_values(path, interpolate=False)
    assert set(read) <= set(names)  # no line of a value ever passes for a key of its own
    for name, value in zip(names, values, strict=True):
        if dotenv_form(value):
            assert read[name] == value, (name, value, data)
        else:  # no common syntax: python-dotenv refuses the line instead of misreading it
            assert name not in read, (name, value, data)


TRICKY = "ab $`'\"\\\n\r\t #=;{}()!*?~&|<>%^[]"
VALUE = st.text(
    alphabet=st.sampled_from(TRICKY)
    | st.characters(codec="utf-8", exclude_characters="\x00", exclude_categories=("Cs", "Cn")),
    max_size=24,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(values=st.lists(VALUE, min_size=1, max_size=12))
def test_any_value_round_trips_through_every_reader(values: list[str], tmp_path: Path) -> None:
    check_round_trip(values, tmp_path)


def test_the_reported_attacks_run_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    attacks = [
        f"hi `touch {marker}`",
        f"$(touch {marker})",
        f"x\rtouch {marker}",
        f"x\ntouch {marker}",
        f"'; touch {marker}; '",
        f'"; touch {marker}; "',
        f"\\`touch {marker}\\`",
        f"it's $(touch {marker}) \\\\",
        f"x\nEVIL=1\r\nOTHER=`touch {marker}`",
    ]
    check_round_trip(attacks, tmp_path)
    assert not marker.exists()


def test_what_no_environment_can_hold_is_refused() -> None:
    for bad in ("a\x00b", "\ufffe", "\U0001ffff", "\ufdd0"):
        with pytest.raises(RenderError, match="V holds a character no environment variable can"):
            render("env", {"v": bad})
    with pytest.raises(RenderError, match="not a valid environment variable name"):
        render("env", {"1st": "x"})


def test_keys_that_become_one_name_are_refused() -> None:
    with pytest.raises(RenderError, match=r"\$.a-b and \$.a_b both become A_B"):
        render("env", {"a_b": 1, "a-b": 2})
    with pytest.raises(RenderError, match=r"\$.db.host and secret DB__HOST both become DB__HOST"):
        render("env", {"db": {"host": "h"}}, secrets={"DB__HOST": "s"})
    with pytest.raises(RenderError, match="both become A_B"):
        render("template", {"a_b": 1, "a.b": 2}, template="$A_B")


async def test_file_sync_and_the_cli_refuse_colliding_keys(
    tmp_path: Path, make_daemon: Any
) -> None:
    out = tmp_path / "out" / "app.env"
    daemon = await make_daemon(entry(out, format="env"))
    async with api_session(daemon) as http:
        body = {"environment": "prod", "config": {"a_b": "one"}}
        async with http.put("/api/config/web", json=body) as r:
            assert r.status == 200
        await eventually(lambda: out.exists())
        assert out.read_text() == "A_B=one\n"
        body = {"environment": "prod", "config": {"a_b": "one", "a-b": "two"}}
        async with http.put("/api/config/web", json=body) as r:
            assert r.status == 200

        async def file_sync_health() -> dict[str, Any]:
            async with http.get("/health") as r:
                files: dict[str, Any] = (await r.json())["components"]["files"]
                return files

        for _ in range(500):
            if (await file_sync_health())["status"] == "degraded":
                break
            await asyncio.sleep(0.02)
        health = await file_sync_health()
        assert health["status"] == "degraded"
        assert "$.a-b and $.a_b both become A_B" in health["detail"], health
        assert out.read_text() == "A_B=one\n"  # the last good file stays
    sock = daemon.settings.runtime_dir / "fpcd.sock"
    result = await asyncio.to_thread(
        run_cli, "render", "--service", "web", "--env", "prod", "--format", "env", "--socket",
        str(sock),
    )  # fmt: skip
    assert result.returncode != 0 and "both become A_B" in result.stderr
    assert result.stdout == ""
