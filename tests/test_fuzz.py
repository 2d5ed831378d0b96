"""Schemathesis against /openapi.json: no request gets a 500, and a rejected request
changes nothing. A bounded number of examples per operation keeps it quick."""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from fpcd.api.openapi import build_document
from tests.conftest import DaemonProcess

EXAMPLES = 20
_ids = itertools.count()

positive = schemathesis.openapi.from_dict(build_document())
positive.config.generation.update(modes=[GenerationMode.POSITIVE], max_examples=EXAMPLES)
# Operations that take no input have no invalid input to generate.
NO_INPUT = (
    "/health",
    "/health/live",
    "/health/ready",
    "/openapi.json",
    "/api/config",
    "/api/keyring",
    "/api/keyring/rotate",
    "/api/secrets/rotate-key",
    "/api/audit/verify",
)
negative = schemathesis.openapi.from_dict(build_document()).exclude(path=list(NO_INPUT))
negative.config.generation.update(modes=[GenerationMode.NEGATIVE], max_examples=EXAMPLES)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path_factory.mktemp("fuzz") / "data")
    proc.start()
    for method, path, body in (
        ("PUT", "/api/config/web", {"environment": "prod", "config": {"port": 80}}),
        ("POST", "/api/features", {"name": "f1", "enabled": True}),
        ("POST", "/api/services/register", {"name": "web"}),
    ):
        req = urllib.request.Request(
            proc.url + path, data=json.dumps(body).encode(), method=method, headers=proc.auth
        )
        urllib.request.urlopen(req, timeout=10).close()
    yield proc
    proc.kill()


def audited(proc: DaemonProcess, request_id: str) -> bool:
    """Did the request with this id leave any audit entry (that is, change anything)?"""
    req = urllib.request.Request(proc.url + "/api/audit?limit=50", headers=proc.auth)
    with urllib.request.urlopen(req, timeout=10) as r:
        return any(e["requestId"] == request_id for e in json.loads(r.read())["items"])


QUICK = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@positive.parametrize()
@QUICK
def test_valid_requests_never_get_a_500(case: Any, target: DaemonProcess) -> None:
    response = case.call(base_url=target.url, headers=target.auth)
    case.validate_response(response, checks=[not_a_server_error])


@negative.parametrize()
@QUICK
def test_invalid_requests_are_refused_and_change_nothing(case: Any, target: DaemonProcess) -> None:
    request_id = f"fuzz-{next(_ids)}"
    response = case.call(base_url=target.url, headers={**target.auth, "X-Request-Id": request_id})
    case.validate_response(response, checks=[not_a_server_error])
    if response.status_code >= 400:
        assert not audited(target, request_id), (case.method, case.path, response.status_code)


def test_the_daemon_lived_through_it(target: DaemonProcess) -> None:
    assert target.proc is not None and target.proc.poll() is None
    with urllib.request.urlopen(target.url + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
    assert "Traceback" not in Path(target.log_path).read_text()
