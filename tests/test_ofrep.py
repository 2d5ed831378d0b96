"""OFREP: the OpenFeature Remote Evaluation Protocol, through the Python OFREP provider
from PyPI and against the protocol's own schemas (tests/fixtures/ofrep_schemas.json)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from tests.conftest import DaemonProcess

SCHEMAS = json.loads((Path(__file__).parent / "fixtures" / "ofrep_schemas.json").read_text())

FLAGS: list[dict[str, Any]] = [
    {"key": "dark_mode", "name": "Dark mode", "enabled": True},
    {"key": "off_flag", "name": "Off", "enabled": False},
    {
        "key": "checkout",
        "name": "Checkout",
        "enabled": True,
        "rollout": {"percentage": 100, "userGroups": ["beta"]},
        "variants": [
            {"id": "control", "weight": 50, "configuration": {"steps": 3}},
            {"id": "onepage", "weight": 50, "configuration": {"steps": 1}},
        ],
    },
    {
        "key": "banner",
        "name": "Banner",
        "enabled": True,
        "variants": [{"id": "blue", "configuration": "blue"}],
    },
    {
        "key": "ratio",
        "name": "Ratio",
        "enabled": True,
        "variants": [{"id": "r", "configuration": 0.25}],
    },
    {
        "key": "pro_only",
        "name": "Pro only",
        "enabled": True,
        "rules": [{"attribute": "plan", "operator": "eq", "values": ["pro"]}],
    },
]


def request(
    proc: DaemonProcess,
    path: str,
    body: bytes | None = b"{}",
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], Any]:
    req = urllib.request.Request(
        proc.url + path,
        data=body,
        method=method,
        headers={**proc.auth, "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, dict(r.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, dict(error.headers), json.loads(raw) if raw else None


def schema(name: str) -> dict[str, Any]:
    return {**SCHEMAS, "$ref": f"#/$defs/{name}"}


@pytest.fixture(scope="module")
def proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("ofrep") / "data").start()
    for flag in FLAGS:
        status, _, _ = request(daemon, "/api/features", json.dumps(flag).encode())
        assert status == 201
    yield daemon
    daemon.kill()


@pytest.fixture
def client(proc: DaemonProcess) -> Iterator[Any]:
    provider = OFREPProvider(proc.url, headers_factory=lambda: proc.auth)
    api.set_provider(provider, "ofrep-test")
    yield api.get_client("ofrep-test")
    api.shutdown()


def test_the_pypi_ofrep_provider_resolves_every_type(client: Any) -> None:
    details = client.get_boolean_details("dark_mode", False)
    assert (details.value, details.reason, details.variant) == (True, Reason.STATIC, "on")
    assert details.flag_metadata["flagVersion"] == 1
    details = client.get_boolean_details("off_flag", True)
    assert (details.value, details.reason, details.variant) == (False, Reason.DISABLED, "off")
    beta = EvaluationContext(targeting_key="user-7", attributes={"userGroup": "beta"})
    details = client.get_object_details("checkout", {}, beta)
    assert details.value in ({"steps": 3}, {"steps": 1})
    assert details.variant in ("control", "onepage")
    assert details.reason == Reason.TARGETING_MATCH
    outsider = EvaluationContext(targeting_key="user-7", attributes={"userGroup": "public"})
    details = client.get_boolean_details("checkout", True, outsider)
    assert (details.value, details.reason) == (False, Reason.DEFAULT)
    assert details.flag_metadata["detail"] == "not_targeted"
    assert client.get_string_value("banner", "red") == "blue"
    assert client.get_float_value("ratio", 1.0) == 0.25
    pro = EvaluationContext(targeting_key="u", attributes={"plan": "pro"})
    assert client.get_boolean_value("pro_only", False, pro) is True
    assert client.get_boolean_value("pro_only", False, EvaluationContext("u")) is False


def test_errors_reach_the_sdk_as_openfeature_errors(client: Any, proc: DaemonProcess) -> None:
    details = client.get_boolean_details("no_such_flag", True)
    assert (details.value, details.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
    # A type the flag does not have: the SDK keeps the default.
    details = client.get_string_details("dark_mode", "x")
    assert (details.value, details.error_code) == ("x", ErrorCode.TYPE_MISMATCH)
    bad = EvaluationContext(targeting_key="u", attributes={"region": 5})
    details = client.get_boolean_details("dark_mode", False, bad)
    assert (details.value, details.error_code) == (False, ErrorCode.INVALID_CONTEXT)
    # Without a token: the SDK gets a general error and the default value.
    api.set_provider(OFREPProvider(proc.url), "ofrep-anonymous")
    anonymous = api.get_client("ofrep-anonymous")
    details = anonymous.get_boolean_details("dark_mode", False)
    assert details.value is False and details.error_code == ErrorCode.GENERAL


def test_single_evaluation_matches_the_protocol_schema(proc: DaemonProcess) -> None:
    for flag in FLAGS:
        body = json.dumps({"context": {"targetingKey": "u-1", "userGroup": "beta"}}).encode()
        status, _, doc = request(proc, f"/ofrep/v1/evaluate/flags/{flag['key']}", body)
        assert status == 200
        jsonschema.validate(doc, schema("serverEvaluationSuccess"))
        assert doc["key"] == flag["key"]
    status, _, doc = request(proc, "/ofrep/v1/evaluate/flags/nope")
    assert status == 404 and doc["errorCode"] == "FLAG_NOT_FOUND"
    jsonschema.validate(doc, schema("flagNotFound"))
    status, _, doc = request(proc, "/ofrep/v1/evaluate/flags/dark_mode", b"{not json")
    assert status == 400 and doc["errorCode"] == "PARSE_ERROR"
    jsonschema.validate(doc, schema("evaluationFailure"))
    bad: dict[str, Any]
    for bad in ({"context": []}, {"context": {"targetingKey": 7}}, {"context": {"userId": {}}}):
        status, _, doc = request(
            proc, "/ofrep/v1/evaluate/flags/dark_mode", json.dumps(bad).encode()
        )
        assert status == 400 and doc["errorCode"] == "INVALID_CONTEXT", bad
        jsonschema.validate(doc, schema("evaluationFailure"))
    status, _, doc = request(proc, "/ofrep/v1/configuration", None, method="GET")
    assert status == 200 and doc["name"] == "fpcd"
    jsonschema.validate(doc, schema("configurationResponse"))


def test_bulk_evaluation_with_etag(proc: DaemonProcess) -> None:
    # A flag of this test's own to change (the module's flags stay as the other tests
    # expect them, whatever order they run in).
    probe = {"key": "etag_probe", "name": "ETag probe", "enabled": True}
    status, _, _ = request(proc, "/api/features", json.dumps(probe).encode())
    assert status == 201
    body = json.dumps({"context": {"targetingKey": "u-2", "userGroup": "beta"}}).encode()
    status, headers, doc = request(proc, "/ofrep/v1/evaluate/flags", body)
    assert status == 200
    jsonschema.validate(doc, schema("bulkEvaluationSuccess"))
    by_key = {f["key"]: f for f in doc["flags"]}
    assert set(by_key) == {f["key"] for f in FLAGS} | {"etag_probe"}
    assert by_key["dark_mode"]["value"] is True and by_key["off_flag"]["reason"] == "DISABLED"
    etag = headers["ETag"]
    status, again, _ = request(proc, "/ofrep/v1/evaluate/flags", body, {"If-None-Match": etag})
    assert status == 304 and again["ETag"] == etag
    # Another context answers differently, so its ETag differs.
    other = json.dumps({"context": {"targetingKey": "u-2", "userGroup": "public"}}).encode()
    status, headers, _ = request(proc, "/ofrep/v1/evaluate/flags", other, {"If-None-Match": etag})
    assert status == 200 and headers["ETag"] != etag
    # A flag change changes the answer, and so the ETag.
    status, _, _ = request(
        proc, "/api/features/etag_probe", json.dumps({"enabled": False}).encode(), method="PATCH"
    )
    assert status == 200
    status, headers, doc = request(proc, "/ofrep/v1/evaluate/flags", body, {"If-None-Match": etag})
    assert status == 200 and headers["ETag"] != etag
    assert {f["key"]: f for f in doc["flags"]}["etag_probe"]["value"] is False
    status, _, doc = request(proc, "/ofrep/v1/evaluate/flags", b'{"context": 3}')
    assert status == 400 and doc["errorCode"] == "INVALID_CONTEXT"
    jsonschema.validate(doc, schema("bulkEvaluationFailure"))


def test_ofrep_evaluations_count_in_analytics(proc: DaemonProcess) -> None:
    for _ in range(3):
        request(proc, "/ofrep/v1/evaluate/flags/banner")
    status, _, report = request(proc, "/api/features/banner/analytics", None, method="GET")
    assert status == 200 and report["variants"].get("blue", 0) >= 3
