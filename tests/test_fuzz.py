"""Schemathesis against /openapi.json: no request gets a 500, and a rejected request
changes nothing. A bounded number of examples per operation keeps it quick."""

from __future__ import annotations

import itertools
import json
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


@pytest.fixture(autouse=True)
def lived_through_it(target: DaemonProcess) -> Iterator[None]:
    """After each test, whatever ran before it: the daemon is up, healthy, and logged no
    traceback (so no test here depends on running last)."""
    yield
    assert target.proc is not None and target.proc.poll() is None
    with urllib.request.urlopen(target.url + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
    assert "Traceback" not in Path(target.log_path).read_text()


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


# -- inputs the schema-driven generators rarely or never produce ----------------------
#
# Hand-found 500s, each turned into a generator: integer query parameters made of Unicode
# digits ("²".isdigit() is true, int("²") fails), integers far beyond 64 bits anywhere in
# a JSON body or an evaluation context, Authorization headers that are not ASCII, bodies
# that do not decode as their Content-Encoding says.

#: Strings that `str.isdigit()` accepts, most of them not ASCII (superscripts, other
#: scripts' digits), some mixed with ASCII digits.
DIGITISH = st.one_of(
    st.text(
        st.characters(categories=("Nd", "No")).filter(lambda c: c.isdigit() and not c.isascii()),
        min_size=1,
        max_size=4,
    ),
    st.tuples(st.sampled_from(["1", "10", "0"]), st.sampled_from(["²", "³", "¹", "٣", "߁"])).map(
        "".join
    ),
)
#: Integers no 64-bit type holds, up to far beyond a float (10**400).
HUGE = st.one_of(
    st.integers(min_value=2**63, max_value=10**400),
    st.integers(min_value=-(10**400), max_value=-(2**63)),
    st.sampled_from([10**400, -(10**400), 2**64, 10**308 * 10]),
)
PATH_VALUES = {"service": "web", "key": "f1", "name": "FZ", "kind": "configs", "key_id": "k1"}


def _integer_query_params() -> list[tuple[str, str, str]]:
    found = []
    for path, operations in build_document()["paths"].items():
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                if param["in"] == "query" and param.get("schema", {}).get("type") == "integer":
                    found.append((method.upper(), path.format(**PATH_VALUES), param["name"]))
    return found


def _status_line(port: int, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    return int(data.split(b" ", 2)[1]), head


@pytest.mark.parametrize(("method", "path", "name"), _integer_query_params())
@QUICK
@given(value=DIGITISH)
def test_unicode_digits_in_integer_query_parameters(
    target: DaemonProcess, method: str, path: str, name: str, value: str
) -> None:
    url = f"{target.url}{path}?environment=prod&{name}={urllib.parse.quote(value)}"
    response = requests.request(method, url, headers=target.auth, timeout=10)
    assert response.status_code == 400, (path, name, value, response.text)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["path"] == f"query.{name}"


#: A valid body per operation; the test puts a huge integer in one place of it.
TEMPLATES: list[tuple[str, str, Any]] = [
    ("PUT", "/api/config/web", {"environment": "fuzz", "config": {"port": 80, "n": [1, {"a": 2}]}}),
    ("POST", "/api/config/web/rollback", {"environment": "prod", "version": 1}),
    ("PUT", "/api/config/web/schema", {"type": "object", "properties": {"n": {"maximum": 9}}}),
    (
        "POST",
        "/api/features",
        {
            "name": "fz",
            "enabled": True,
            "rollout": {"percentage": 50},
            "rules": [{"attribute": "n", "operator": "gt", "values": [1]}],
            "variants": [{"id": "a", "weight": 50}, {"id": "b", "weight": 50}],
        },
    ),
    (
        "POST",
        "/api/features/evaluate",
        {"flags": ["f1", "huge"], "context": {"userId": "u", "customAttributes": {"n": 1}}},
    ),
    ("POST", "/ofrep/v1/evaluate/flags/huge", {"context": {"targetingKey": "u", "n": 1}}),
    ("POST", "/ofrep/v1/evaluate/flags", {"context": {"targetingKey": "u", "n": 1}}),
    ("POST", "/api/services/register", {"name": "fz", "port": 80, "ttlSeconds": 30}),
    ("PUT", "/api/secrets/web/FZ", {"value": "x", "ttlSeconds": 60}),
]


def _places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _places(item, (*path, i))


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    holder = copy
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = new
    return copy


def _seed_huge_flag(target: DaemonProcess) -> None:
    """A flag whose rule compares with 10**400 (accepted): evaluating it must work too."""
    body: dict[str, Any] = {
        "key": "huge",
        "name": "huge",
        "enabled": True,
        "rules": [{"attribute": "n", "operator": "lt", "values": [10**400]}],
    }
    response = requests.post(target.url + "/api/features", json=body, headers=target.auth)
    assert response.status_code in (201, 409), response.text


@pytest.mark.parametrize(("method", "path", "template"), TEMPLATES, ids=lambda v: str(v)[:40])
@QUICK
@given(data=st.data(), huge=HUGE)
def test_huge_integers_anywhere_in_a_body(
    target: DaemonProcess, method: str, path: str, template: Any, data: Any, huge: int
) -> None:
    _seed_huge_flag(target)
    where = data.draw(st.sampled_from(list(_places(template))))
    body = _replaced(template, where, huge)
    if path == "/api/features" and isinstance(body, dict):
        body["name"] = f"fz {next(_ids)}"  # a new flag each time, not a 409
    response = requests.request(
        method, target.url + path, data=json.dumps(body), headers=target.auth, timeout=10
    )
    assert response.status_code < 500, (path, where, response.text)


@QUICK
@given(huge=HUGE, flag=st.sampled_from(["f1", "huge"]))
def test_huge_integers_in_a_flag_socket_context(
    target: DaemonProcess, huge: int, flag: str
) -> None:
    _seed_huge_flag(target)
    line = json.dumps({"id": 1, "flag": flag, "context": {"customAttributes": {"n": huge}}})
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(target.data_dir / "flags.sock"))
        sock.sendall(line.encode() + b"\n")
        answer = json.loads(sock.makefile("rb").readline())
    assert answer.get("error", {}).get("code") != "INTERNAL", answer
    assert answer["id"] == 1 and "flagKey" in answer.get("result", answer), answer


@QUICK
@given(token=st.binary(min_size=1, max_size=24).filter(lambda b: not (set(b) & set(b"\r\n"))))
def test_authorization_headers_that_are_not_ascii(target: DaemonProcess, token: bytes) -> None:
    for port, path in ((target.port, b"/api/config"), (target.ws_port, b"/")):
        status, head = _status_line(
            port,
            b"GET "
            + path
            + b" HTTP/1.1\r\nHost: fpcd\r\nAuthorization: Bearer "
            + token
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert status < 500, (port, token, head)
        assert b"content-type: application/problem+json" in head, head


@QUICK
@given(
    encoding=st.sampled_from(["gzip", "deflate", "br", "x-unknown", "gzip, gzip"]),
    body=st.binary(max_size=64),
)
def test_bodies_that_do_not_match_their_content_encoding(
    target: DaemonProcess, encoding: str, body: bytes
) -> None:
    headers = {**target.auth, "Content-Encoding": encoding, "Content-Type": "application/json"}
    response = requests.put(target.url + "/api/config/web", data=body, headers=headers, timeout=10)
    assert response.status_code < 500, (encoding, body, response.text)
    assert response.headers["Content-Type"].startswith("application/problem+json")


def test_http_parser_errors_are_problems(target: DaemonProcess) -> None:
    for request in (
        b"GET /api/config HTTP/1.1\r\nHost: fpcd\r\nBad Header\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ):
        status, head = _status_line(target.port, request)
        assert status == 400 and b"content-type: application/problem+json" in head, head
