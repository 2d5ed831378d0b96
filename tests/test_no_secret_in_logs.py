"""No secret value reaches a log, an error or an audit entry.

Every test is checked after it runs (conftest's `no_secret_in_logs` scans the in-process
log lines and the daemon log files it made) and the whole suite once more at the end,
so nothing here depends on running last. This file adds a scenario of its own, at debug
level with bodies that fail in every way, and checks the scan itself.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

from tests.conftest import (
    MARKED_LINES,
    SECRET_VALUES,
    auth_for,
    leaked,
    read_new_log_lines,
    run_cli,
    secret_value,
)


def request(url: str, method: str, body: Any) -> tuple[int, str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method=method, headers=auth_for(url)
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_secret_values_never_reach_logs(spawn: Any) -> None:
    proc = spawn(args=["--log-level", "debug"]).start()
    sock = ["--socket", str(proc.socket)]
    value = secret_value("leakcheck")
    bodies = [
        ("PUT", "/api/config/leak", {"config": {}, "secrets": {"PW": value}}),
        ("PUT", "/api/config/leak", {"config": {}, "secrets": {"bad name": value}}),
        ("PUT", "/api/config/leak", {"config": [], "secrets": {"PW": value}}),
        ("PUT", "/api/secrets/leak/TOKEN", {"value": value, "ttlSeconds": -1}),
        ("PUT", "/api/secrets/leak/TOKEN", {"value": value, "extra": value}),
        ("PUT", "/api/secrets/leak/TOKEN", {"value": value}),
        ("GET", "/api/secrets/leak/TOKEN", None),
    ]
    for method, path, body in bodies:
        status, text = request(proc.url + path, method, body)
        if status >= 400:
            assert value not in text, (path, text)
    r = run_cli("secret", "get", "leak", "TOKEN", *sock)
    assert r.stdout.strip() == value
    r = run_cli("audit", "tail", "--limit", "100", "--json", *sock)
    assert value not in r.stdout
    proc.stop()
    log = proc.log()
    assert "secret.read" in log or "request" in log  # the debug log really was written
    assert value not in log
    # The conftest scan sees this daemon's log too (and checks it after this test).
    read_new_log_lines()
    assert leaked(MARKED_LINES, SECRET_VALUES) == []


def test_the_scan_finds_a_leak() -> None:
    """The check is real: a value in a captured line or a daemon log line is found."""
    value = "plain-scan-0123456789abcdef"  # not registered: this test must not fail itself
    logging.getLogger("fpcd.test").debug("harmless line")
    logging.getLogger("fpcd.test").debug("oops %s", "plain-other")
    assert leaked(["x", f'{{"msg": "oops {value}"}}'], {value, "plain-y"}) == [value]
    assert leaked(list(MARKED_LINES), {value}) == []
    assert any("plain-other" in line for line in MARKED_LINES)  # the capture feeds the scan
