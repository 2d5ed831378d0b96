"""No secret value written during the suite appears in any log, error or audit entry.

Named to run last: it scans everything the earlier tests logged (in-process records
and the log files of every daemon process they started), after adding a scenario of
its own so the check means something when run alone.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.conftest import LOG_FILES, LOG_LINES, SECRET_VALUES, auth_for, run_cli, secret_value


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

    assert SECRET_VALUES, "no secret values were recorded"
    texts = list(LOG_LINES) + [
        path.read_text(errors="replace") for path in LOG_FILES if path.exists()
    ]
    assert any("secret.read" in t or "request" in t for t in texts)
    leaks = sorted({v for v in SECRET_VALUES for t in texts if v in t})
    assert leaks == [], f"secret values found in logs: {len(leaks)}"
