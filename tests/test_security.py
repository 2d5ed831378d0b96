"""Tokens, the permission table, rate limits, TLS and listening rules."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from fpcd.api.permissions import RULES
from fpcd.app import Daemon
from fpcd.domain import access
from fpcd.domain.errors import SettingsError
from tests.conftest import (
    admin_token,
    api_session,
    eventually,
    issue_token,
    make_settings,
    run_cli,
)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with session.request(method, path, json=body, headers=headers) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text) if text else None
        except json.JSONDecodeError:
            return r.status, text


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def anon(daemon: Daemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=daemon.addresses["api"]) as session:
        yield session


# -- tokens -------------------------------------------------------------------------------


async def test_no_or_bad_token_is_401(daemon: Daemon, anon: aiohttp.ClientSession) -> None:
    async with anon.get("/api/config") as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await r.json())["type"] == "urn:fpcd:problem:unauthenticated"
    assert (await call(anon, "GET", "/health"))[0] == 200  # public
    assert (await call(anon, "GET", "/openapi.json"))[0] == 200
    secret = (daemon.settings.data_dir / "auth.key").read_text()
    import base64

    key = base64.b64decode(secret)
    now = int(time.time())
    cases = {
        "expired": jwt.encode({"sub": "a", "roles": ["admin"], "exp": now - 3600}, key),
        "not yet valid": jwt.encode({"sub": "a", "roles": ["admin"], "nbf": now + 3600}, key),
        "wrong signature": jwt.encode({"sub": "a", "roles": ["admin"]}, b"x" * 32),
        "alg none": jwt.encode({"sub": "a", "roles": ["admin"]}, "", algorithm="none"),
        "no subject": jwt.encode({"roles": ["admin"]}, key),
        "garbage": "not.a.token",
    }
    for label, token in cases.items():
        status, problem = await call(anon, "GET", "/api/config", headers=bearer(token))
        assert status == 401, label
        assert "token" in problem["detail"], label
    status, _ = await call(anon, "GET", "/api/config", headers={"Authorization": "Basic x"})
    assert status == 401
    ok = jwt.encode({"sub": "a", "roles": ["viewer"], "exp": now + 60}, key)
    assert (await call(anon, "GET", "/api/config", headers=bearer(ok)))[0] == 200
    # Within the leeway (30 s by default) a just-expired token still works.
    recent = jwt.encode({"sub": "a", "roles": ["viewer"], "exp": now - 5}, key)
    assert (await call(anon, "GET", "/api/config", headers=bearer(recent)))[0] == 200


def _rsa_pem() -> tuple[rsa.RSAPrivateKey, bytes]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


async def test_rs256_issuer_and_audience(tmp_path: Path) -> None:
    private, public = _rsa_pem()
    (tmp_path / "issuer.pem").write_bytes(public)
    daemon = Daemon(
        make_settings(
            tmp_path / "d",
            auth={
                "jwt_public_key_file": str(tmp_path / "issuer.pem"),
                "issuer": "https://idp",
                "audience": "fpcd",
            },
        )
    )
    await daemon.start()
    try:
        assert not (tmp_path / "d" / "admin.token").exists()  # tokens come from the issuer
        good = {"sub": "alice", "roles": ["viewer"], "iss": "https://idp", "aud": "fpcd"}
        async with aiohttp.ClientSession(base_url=daemon.addresses["api"]) as s:
            token = jwt.encode(good, private, algorithm="RS256")
            assert (await call(s, "GET", "/api/config", headers=bearer(token)))[0] == 200
            for label, claims in {
                "wrong audience": {**good, "aud": "other"},
                "wrong issuer": {**good, "iss": "https://evil"},
                "no audience": {k: v for k, v in good.items() if k != "aud"},
            }.items():
                token = jwt.encode(claims, private, algorithm="RS256")
                assert (await call(s, "GET", "/api/config", headers=bearer(token)))[0] == 401, label
            # alg confusion: the public key used as an HS256 secret must not work
            forged = jwt.encode(good, b"x" * 32, algorithm="HS256")
            assert (await call(s, "GET", "/api/config", headers=bearer(forged)))[0] == 401
    finally:
        await daemon.stop()


async def test_es256_from_a_jwks_file(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(
        json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "ES256", "use": "sig"}]})
    )
    daemon = Daemon(make_settings(tmp_path / "d", auth={"jwks_file": str(tmp_path / "jwks.json")}))
    await daemon.start()
    try:
        async with aiohttp.ClientSession(base_url=daemon.addresses["api"]) as s:
            token = jwt.encode(
                {"sub": "svc", "roles": ["viewer"]},
                private,
                algorithm="ES256",
                headers={"kid": "k1"},
            )
            assert (await call(s, "GET", "/api/config", headers=bearer(token)))[0] == 200
            other = ec.generate_private_key(ec.SECP256R1())
            token = jwt.encode(
                {"sub": "svc", "roles": ["viewer"]}, other, algorithm="ES256", headers={"kid": "k1"}
            )
            assert (await call(s, "GET", "/api/config", headers=bearer(token)))[0] == 401
    finally:
        await daemon.stop()


def test_admin_token_file_and_token_command(spawn: Any) -> None:
    proc = spawn().start()
    for name in ("admin.token", "auth.key"):
        assert stat.S_IMODE((proc.data_dir / name).stat().st_mode) == 0o600
    assert f"admin token written to {proc.data_dir / 'admin.token'}" in proc.log()
    r = run_cli(
        "token",
        "create",
        "--role",
        "viewer",
        "--service",
        "web-*",
        "--ttl",
        "1h",
        "--subject",
        "ci",
        "--data-dir",
        str(proc.data_dir),
    )
    assert r.returncode == 0
    token = r.stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["roles"] == ["viewer"] and claims["services"] == ["web-*"]
    assert claims["sub"] == "ci" and claims["exp"] - claims["iat"] == 3600
    r = run_cli("config", "list", "--url", proc.url, "--token", token)
    assert r.returncode == 0
    r = run_cli("config", "set", "web-1", "--data", "{}", "--url", proc.url, "--token", token)
    assert r.returncode == 1 and "Forbidden (403)" in r.stderr
    r = run_cli("token", "create", "--role", "wizard", "--data-dir", str(proc.data_dir))
    assert r.returncode == 2


# -- the permission table ----------------------------------------------------------------------

# One request per action: (action, method, path, body).
ACTION_REQUESTS: list[tuple[str, str, str, Any]] = [
    (access.CONFIG_READ, "GET", "/api/config/web?environment=prod", None),
    (access.CONFIG_WRITE, "PUT", "/api/config/web", {"environment": "prod", "config": {"a": 2}}),
    (
        access.CONFIG_RELOAD,
        "POST",
        "/api/config/web/reload",
        {"environment": "prod", "force": True},
    ),
    (access.SCHEMA_WRITE, "PUT", "/api/config/web/schema", {"type": "object"}),
    (access.FLAGS_READ, "GET", "/api/features/f1", None),
    (access.FLAGS_WRITE, "PATCH", "/api/features/f1", {"description": "x"}),
    (access.FLAGS_EVALUATE, "POST", "/api/features/evaluate", {"context": {"userId": "u"}}),
    (access.FLAGS_EVALUATE, "POST", "/api/features/evaluations", {"counts": []}),
    (
        access.FLAGS_EVALUATE,
        "POST",
        "/ofrep/v1/evaluate/flags/f1",
        {"context": {"targetingKey": "u"}},
    ),
    (access.FLAGS_EVALUATE, "POST", "/ofrep/v1/evaluate/flags", {}),
    (access.SECRETS_LIST, "GET", "/api/secrets/web?environment=prod", None),
    (access.SECRETS_WRITE, "PUT", "/api/secrets/web/TOKEN?environment=prod", {"value": "v2"}),
    (access.SECRETS_READ, "GET", "/api/secrets/web/TOKEN?environment=prod", None),
    (access.KEYRING_ADMIN, "GET", "/api/keyring", None),
    (access.AUDIT_READ, "GET", "/api/audit", None),
    (access.REGISTRY_READ, "GET", "/api/services", None),
    (access.REGISTRY_WRITE, "POST", "/api/services/web/heartbeat", None),
    (access.METRICS_READ, "GET", "/api/status", None),
    (access.DATA_ADMIN, "GET", "/api/export/flags", None),
]


@pytest.fixture
async def seeded(http: aiohttp.ClientSession) -> aiohttp.ClientSession:
    assert (
        await call(http, "PUT", "/api/config/web", {"environment": "prod", "config": {"a": 1}})
    )[0] == 200
    assert (await call(http, "POST", "/api/features", {"name": "f1", "enabled": True}))[0] == 201
    assert (await call(http, "PUT", "/api/secrets/web/TOKEN?environment=prod", {"value": "v1"}))[
        0
    ] == 200
    assert (await call(http, "POST", "/api/services/register", {"name": "web"}))[0] == 201
    return http


@pytest.mark.parametrize("role", sorted(access.ROLES))
async def test_permission_table(daemon: Daemon, seeded: aiohttp.ClientSession, role: str) -> None:
    assert {a for a, *_ in ACTION_REQUESTS} == set(access.ACTIONS)
    services = ["web"] if role == "service" else None
    token = issue_token(daemon, role, services=services)
    async with api_session(daemon, token) as s:
        for action, method, path, body in ACTION_REQUESTS:
            status, doc = await call(s, method, path, body)
            allowed = action in access.ROLES[role]
            assert (status < 400) is allowed, (role, action, status, doc)
            if not allowed:
                assert status == 403 and doc["type"] == "urn:fpcd:problem:forbidden"


async def test_secrets_read_scope_and_service_limits(
    daemon: Daemon, seeded: aiohttp.ClientSession
) -> None:
    await call(seeded, "PUT", "/api/config/billing", {"environment": "prod", "config": {}})
    token = issue_token(
        daemon, "viewer", services=["web"], environments=["prod"], scopes=["secrets:read"]
    )
    async with api_session(daemon, token) as s:
        assert (await call(s, "GET", "/api/secrets/web/TOKEN?environment=prod"))[1]["value"] == "v1"
        assert (await call(s, "GET", "/api/config/web?environment=staging"))[0] == 403
        assert (await call(s, "GET", "/api/config/billing?environment=prod"))[0] == 403
        # Forbidden looks the same whether the service exists or not.
        missing = await call(s, "GET", "/api/config/no-such?environment=prod")
        existing = await call(s, "GET", "/api/config/billing?environment=prod")
        assert missing[0] == existing[0] == 403
        assert missing[1]["detail"].replace("no-such", "X") == existing[1]["detail"].replace(
            "billing", "X"
        )
        _, listing = await call(s, "GET", "/api/config")
        assert [i["serviceName"] for i in listing["items"]] == ["web"]
        assert (await call(s, "GET", "/api/audit"))[0] == 403  # spans every service
    glob = issue_token(daemon, "editor", services=["we*"])
    async with api_session(daemon, glob) as s:
        assert (
            await call(s, "PUT", "/api/config/web", {"environment": "prod", "config": {"b": 1}})
        )[0] == 200
        assert (
            await call(s, "PUT", "/api/config/billing", {"environment": "prod", "config": {"b": 1}})
        )[0] == 403
    lonely = issue_token(daemon, "service")  # a service role naming no service reaches none
    async with api_session(daemon, lonely) as s:
        assert (await call(s, "GET", "/api/config/web?environment=prod"))[0] == 403
        assert (await call(s, "POST", "/api/features/evaluate", {"context": {}}))[0] == 200


def test_every_rule_is_documented_in_openapi() -> None:
    from fpcd.api.openapi import build_document

    spec = build_document()["paths"]
    for method, path in RULES:
        if path in ("/", "/ws"):  # the WebSocket upgrade is not an HTTP API operation
            continue
        if path == "/ui" or path.startswith("/ui/"):
            continue  # the web console's own files and browser session (docs/console.md)
        assert path in spec and method.lower() in spec[path], (method, path)


async def test_every_registered_route_has_a_rule(daemon: Daemon) -> None:
    routes = [
        (route.method, resource.canonical)
        for app in (daemon.components.api_app, daemon.components.ws_app)
        for resource in app.router.resources()
        for route in resource
        if route.method != "HEAD"
    ]
    assert len(routes) > 40
    missing = [r for r in routes if r not in RULES]
    assert missing == []


async def test_unix_socket_peer_is_in_the_audit_log(daemon: Daemon) -> None:
    connector = aiohttp.UnixConnector(path=daemon.addresses["socket"])
    async with aiohttp.ClientSession(connector=connector) as unix:
        async with unix.put(
            "http://fpcd/api/config/web", json={"environment": "prod", "config": {}}
        ) as r:
            assert r.status == 200
        async with unix.get("http://fpcd/api/audit?target=config:web/prod") as r:
            entry = (await r.json())["items"][0]
    assert entry["actor"] == "unix:root"
    assert entry["details"]["peer"] == f"uid={os.getuid()} pid={os.getpid()}"


async def test_rate_limit(tmp_path: Path) -> None:
    daemon = Daemon(
        make_settings(tmp_path, rate_limit={"per_subject_rps": 2, "per_subject_burst": 5})
    )
    await daemon.start()
    try:
        async with api_session(daemon) as s:
            statuses = [(await call(s, "GET", "/api/config"))[0] for _ in range(8)]
            assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
            async with s.get("/api/config") as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
            assert (await call(s, "GET", "/health"))[0] == 200  # not limited
            other = issue_token(daemon, "viewer")  # another subject has its own bucket
        async with api_session(daemon, other) as o:
            assert (await call(o, "GET", "/api/config"))[0] == 200
        async with api_session(daemon) as s:  # the bucket refills: 2 tokens a second

            async def refilled() -> bool:
                return (await call(s, "GET", "/api/config"))[0] != 429

            await eventually(refilled, 10, what="the bucket refilling")
    finally:
        await daemon.stop()


async def test_websocket_auth(daemon: Daemon) -> None:
    token = admin_token(daemon.settings.data_dir)
    base = daemon.addresses["ws"] + "/"
    sub = {"type": "SUBSCRIBE", "serviceName": "web", "environment": "prod"}
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(base)  # no token yet
        await ws.send_json(sub)
        first = await ws.receive_json()
        assert first.get("code") == "UNAUTHENTICATED", first
        await ws.send_json({"type": "AUTH", "token": "nope"})
        assert (await ws.receive_json())["code"] == "UNAUTHENTICATED"
        await ws.send_json({"type": "AUTH", "token": token})
        assert (await ws.receive_json()) == {"type": "AUTHENTICATED", "subject": "admin"}
        await ws.send_json(sub)
        assert (await ws.receive_json())["type"] == "SUBSCRIBED"
        await ws.close()
        limited = issue_token(daemon, "viewer", services=["other"])
        ws = await session.ws_connect(base, headers=bearer(limited))
        await ws.send_json(sub)
        assert (await ws.receive_json())["code"] == "FORBIDDEN"
        await ws.close()
        async with session.get(base + "?token=bad") as r:
            assert r.status == 401


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    daemon = Daemon(make_settings(tmp_path / "d", tls={"cert": str(cert), "key": str(key)}))
    await daemon.start()
    try:
        assert daemon.addresses["api"].startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(
            base_url=daemon.addresses["api"],
            connector=aiohttp.TCPConnector(ssl=context),
            headers=bearer(admin_token(tmp_path / "d")),
        ) as s:
            assert (await call(s, "GET", "/api/config"))[0] == 200
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                await plain.get(daemon.addresses["api"].replace("https", "http") + "/health")
    finally:
        await daemon.stop()


def test_non_loopback_needs_tls_and_auth(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not loopback"):
        make_settings(tmp_path, server={"api_host": "0.0.0.0"})
    make_settings(tmp_path, server={"api_host": "0.0.0.0", "allow_insecure": True})
    cert, key = _self_signed(tmp_path)
    make_settings(
        tmp_path, server={"api_host": "0.0.0.0"}, tls={"cert": str(cert), "key": str(key)}
    )
    with pytest.raises(SettingsError, match="not loopback"):
        make_settings(
            tmp_path,
            server={"api_host": "0.0.0.0"},
            auth={"enabled": False},
            tls={"cert": str(cert), "key": str(key)},
        )


async def test_a_burst_of_one_lets_the_first_request_of_every_bucket_through(
    tmp_path: Path,
) -> None:
    daemon = Daemon(
        make_settings(
            tmp_path,
            rate_limit={"per_service_rps": 1, "per_subject_rps": 1, "per_subject_burst": 1},
        )
    )
    await daemon.start()
    try:
        for n in range(5):  # a new subject and a new service each time: two fresh buckets
            async with api_session(daemon, issue_token(daemon, "admin", subject=f"u{n}")) as s:
                first = (await call(s, "GET", f"/api/config/svc{n}?environment=prod"))[0]
                assert first == 404  # not found, but not refused: 429 was the bug
                async with s.get(f"/api/config/svc{n}?environment=prod") as again:
                    assert again.status == 429 and int(again.headers["Retry-After"]) >= 1
    finally:
        await daemon.stop()
