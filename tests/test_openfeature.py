"""FpcdProvider through the OpenFeature SDK's own API, against a running daemon."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from fpcd.client import SyncConfigurationClient
from fpcd.client.openfeature import FpcdProvider
from tests.conftest import DaemonProcess, eventually_blocking

FLAGS: list[dict[str, Any]] = [
    {"key": "dark_mode", "name": "Dark mode", "enabled": True},
    {"key": "off_flag", "name": "Off", "enabled": False, "variants": [{"id": "x"}]},
    {
        "key": "checkout",
        "name": "Checkout",
        "enabled": True,
        "rollout": {"percentage": 100, "userGroups": ["beta"]},
        "variants": [
            {"id": "control", "weight": 1, "configuration": {"steps": 3}},
            {"id": "onepage", "weight": 1, "configuration": {"steps": 1}},
        ],
    },
    {"key": "color", "name": "Color", "enabled": True, "variants": [{"id": "blue"}]},
    {
        "key": "limit",
        "name": "Limit",
        "enabled": True,
        "variants": [{"id": "l", "configuration": 25}],
    },
    {
        "key": "ratio",
        "name": "Ratio",
        "enabled": True,
        "variants": [{"id": "r", "configuration": 0.5}],
    },
    {
        "key": "pro_only",
        "name": "Pro only",
        "enabled": True,
        "rules": [{"attribute": "plan", "operator": "eq", "values": ["pro"]}],
    },
]


def call(proc: DaemonProcess, method: str, path: str, body: Any) -> None:
    req = urllib.request.Request(
        proc.url + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={**proc.auth, "Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()


@pytest.fixture
def proc(spawn: Any) -> DaemonProcess:
    daemon: DaemonProcess = spawn().start()
    for flag in FLAGS:
        call(daemon, "POST", "/api/features", flag)
    return daemon


@pytest.fixture
def provider(proc: DaemonProcess) -> Iterator[FpcdProvider]:
    client = SyncConfigurationClient(
        api_url=proc.url,
        ws_url=f"ws://127.0.0.1:{proc.ws_port}",
        token=proc.token,
        service_name="web",
        environment="prod",
        reconnect_delay=0.2,
        max_reconnect_delay=1.0,
    )
    provider = FpcdProvider(client)
    api.set_provider_and_wait(provider, "fpcd-test")  # initialize() starts the client
    yield provider
    api.shutdown()  # shutdown() closes it
    assert not client.started


def test_resolution_through_the_sdk(provider: FpcdProvider) -> None:
    client = api.get_client("fpcd-test")
    assert client.get_provider_status() == ProviderStatus.READY
    assert api.get_provider_metadata("fpcd-test").name == "fpcd"
    details = client.get_boolean_details("dark_mode", False)
    assert (details.value, details.reason, details.variant) == (True, Reason.STATIC, "on")
    assert details.flag_metadata == {"enabled": True, "flagVersion": 1}
    beta = EvaluationContext("user-7", {"userGroup": "beta"})
    checkout = client.get_object_details("checkout", {}, beta)
    assert checkout.value in ({"steps": 3}, {"steps": 1})
    assert checkout.variant in ("control", "onepage") and checkout.reason == Reason.TARGETING_MATCH
    # The same user always gets the same variant (the daemon's bucketing).
    assert client.get_object_value("checkout", {}, beta) == checkout.value
    assert client.get_boolean_value("checkout", False, beta) is True
    public = EvaluationContext("user-7", {"userGroup": "public"})
    checkout = client.get_object_details("checkout", {"steps": 0}, public)
    assert (checkout.value, checkout.reason, checkout.error_code) == ({"steps": 0}, "DEFAULT", None)
    assert checkout.flag_metadata["detail"] == "not_targeted"
    assert client.get_string_value("color", "red") == "blue"  # the variant id
    assert client.get_integer_value("limit", 1) == 25
    assert client.get_float_value("ratio", 1.0) == 0.5
    assert client.get_float_value("limit", 1.0) == 25.0
    # Off: the caller's default, with DISABLED.
    off = client.get_string_details("off_flag", "fallback")
    assert (off.value, off.reason, off.error_code) == ("fallback", "DISABLED", None)
    pro = EvaluationContext("u", {"plan": "pro"})
    assert client.get_boolean_value("pro_only", False, pro) is True
    assert client.get_boolean_value("pro_only", True, EvaluationContext("u")) is False


def test_errors_through_the_sdk(provider: FpcdProvider) -> None:
    client = api.get_client("fpcd-test")
    details = client.get_boolean_details("missing", True)
    assert (details.value, details.error_code, details.reason) == (
        True,
        ErrorCode.FLAG_NOT_FOUND,
        Reason.ERROR,
    )
    number = client.get_integer_details(
        "checkout", 7, EvaluationContext("u", {"userGroup": "beta"})
    )
    assert (number.value, number.error_code) == (7, ErrorCode.TYPE_MISMATCH)
    text = client.get_string_details("dark_mode", "x")  # on, but no variant to give
    assert (text.value, text.error_code) == ("x", ErrorCode.TYPE_MISMATCH)
    details = client.get_boolean_details("dark_mode", False, EvaluationContext("u", {"region": 3}))
    assert (details.value, details.error_code) == (False, ErrorCode.INVALID_CONTEXT)


def test_provider_events(provider: FpcdProvider, proc: DaemonProcess) -> None:
    client = api.get_client("fpcd-test")
    events: list[tuple[ProviderEvent, list[str] | None]] = []
    changed, stale, ready = threading.Event(), threading.Event(), threading.Event()

    def record(kind: ProviderEvent, flag: threading.Event) -> Any:
        def handler(details: EventDetails) -> None:
            events.append((kind, details.flags_changed))
            flag.set()

        return handler

    client.add_handler(
        ProviderEvent.PROVIDER_CONFIGURATION_CHANGED,
        record(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changed),
    )
    client.add_handler(ProviderEvent.PROVIDER_STALE, record(ProviderEvent.PROVIDER_STALE, stale))
    # (The SDK also runs a READY handler once on its own when added to a ready provider.)
    client.add_handler(ProviderEvent.PROVIDER_READY, record(ProviderEvent.PROVIDER_READY, ready))
    # Wait for the live subscription before changing anything.
    sync_client = provider.client
    assert isinstance(sync_client, SyncConfigurationClient)
    eventually_blocking(lambda: sync_client.connected)
    call(proc, "PATCH", "/api/features/dark_mode", {"enabled": False})
    assert changed.wait(15)
    assert (ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, ["dark_mode"]) in events
    assert client.get_boolean_value("dark_mode", True) is False
    # The daemon goes away: STALE, and the last known values still answer.
    proc.stop()
    assert stale.wait(15)
    assert client.get_provider_status() == ProviderStatus.STALE
    assert client.get_object_value("checkout", {}, EvaluationContext("u", {"userGroup": "beta"}))
    # Back: READY again (the SDK sets the status before it runs the handlers: wait for
    # the handler itself).
    ready.clear()
    proc.start()
    assert ready.wait(15)
    assert client.get_provider_status() == ProviderStatus.READY
    kinds = [kind for kind, _ in events]
    last_stale = len(kinds) - 1 - kinds[::-1].index(ProviderEvent.PROVIDER_STALE)
    assert ProviderEvent.PROVIDER_READY in kinds[last_stale:]
