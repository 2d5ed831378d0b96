"""Who is calling: a JWT bearer token on TCP, the peer's credentials on a Unix socket.

Unix sockets are guarded by their file's owner, group and mode, like docker.sock: a
peer that can connect is trusted as an administrator, and its uid/pid (SO_PEERCRED) go
into the audit log. TCP callers present a token (PyJWT): HS256 with a shared secret, or
RS256/ES256 with a public key or a JWKS file; exp, nbf, iss and aud are checked, and
`alg: none` or any algorithm outside the configured ones is refused.
"""

from __future__ import annotations

import base64
import logging
import os
import pwd
import secrets as random
import socket
import struct
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
import msgspec
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fpcd.domain.access import ROLES
from fpcd.domain.errors import BadRequest, Unauthenticated
from fpcd.domain.model import SYSTEM_SCOPES, Caller
from fpcd.settings import Settings

log = logging.getLogger("fpcd.auth")

AUTH_KEY_FILE = "auth.key"
ADMIN_TOKEN_FILE = "admin.token"
#: The subject of a request without a token under auth.anonymous_role (audit, rate limits).
ANONYMOUS = "anonymous"


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def unix_peer(request: web.Request) -> tuple[int, int] | None:
    """(uid, pid) of the process at the other end of a Unix socket, else None."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return uid, pid


def bearer_token(request: web.Request) -> str | None:
    """From `Authorization: Bearer`, or `?token=` (for WebSocket clients that cannot set
    headers; the access log never records query strings)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("use Authorization: Bearer <token>")
        return token.strip()
    return request.query.get("token") or None


def _listish(value: Any, claim: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise Unauthenticated(f"the token's {claim} claim must be a string or a list of strings")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


class TokenVerifier:
    """Checks tokens (and, with a shared secret, issues them)."""

    def __init__(self, settings: Settings) -> None:
        auth = settings.auth
        self.issuer = auth.issuer or None
        self.audience = auth.audience or None
        self.leeway = float(auth.leeway)
        self._secret: bytes | None = None
        self._key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        if auth.jwt_public_key_file:
            key = serialization.load_pem_public_key(Path(auth.jwt_public_key_file).read_bytes())
            self._key = key
            # Exactly the algorithm of the key: a token naming another one is refused.
            self.algorithms = ["RS256"] if isinstance(key, rsa.RSAPublicKey) else ["ES256"]
        elif auth.jwks_file:
            self._jwks = jwt.PyJWKSet.from_json(Path(auth.jwks_file).read_text())
            self.algorithms = ["RS256", "ES256"]
        else:
            self._secret = (
                auth.jwt_secret.encode()
                if auth.jwt_secret
                else self._local_secret(settings.data_dir)
            )
            self.algorithms = ["HS256"]
        self._cache: dict[str, tuple[Caller, float]] = {}

    @staticmethod
    def _local_secret(data_dir: Path) -> bytes:
        """The embedded default: a secret of our own, made once, kept 0600 in the data dir."""
        path = data_dir / AUTH_KEY_FILE
        if not path.exists():
            _write_private(path, base64.b64encode(random.token_bytes(32)).decode())
        return base64.b64decode(path.read_text().strip())

    @property
    def can_issue(self) -> bool:
        return self._secret is not None

    def issue(
        self,
        *,
        subject: str,
        roles: list[str],
        services: list[str] | None = None,
        environments: list[str] | None = None,
        scopes: list[str] | None = None,
        ttl_seconds: float | None = None,
    ) -> str:
        if self._secret is None:
            raise RuntimeError("tokens are issued by your identity provider (RS256/ES256 set)")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": subject, "roles": roles, "iat": now}
        if ttl_seconds:
            claims["exp"] = now + int(ttl_seconds)
        if services:
            claims["services"] = services
        if environments:
            claims["environments"] = environments
        if scopes:
            claims["scopes"] = scopes
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def _key_for(self, token: str) -> Any:
        if self._secret is not None:
            return self._secret
        if self._key is not None:
            return self._key
        assert self._jwks is not None
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._jwks.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise Unauthenticated("the token's key id is not in the key set")

    def verify(self, token: str, *, peer: str = "") -> Caller:
        cached = self._cache.get(token)
        now = time.time()
        if cached is not None and cached[1] > now:
            caller = cached[0]
            return caller if caller.peer == peer else msgspec.structs.replace(caller, peer=peer)
        if not token.isascii():  # a JWT is base64url and dots; anything else is not one
            raise Unauthenticated("the token is not valid")
        try:
            claims = jwt.decode(
                token,
                self._key_for(token),
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token is from another issuer") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthenticated("the token is not valid") from None
        roles = _listish(claims.get("roles", claims.get("role")), "roles") or ()
        caller = Caller(
            subject=str(claims["sub"]),
            peer=peer,
            roles=tuple(r for r in roles if r in ROLES),
            services=_listish(claims.get("services"), "services"),
            environments=_listish(claims.get("environments"), "environments"),
            scopes=frozenset(_listish(claims.get("scopes", claims.get("scope")), "scopes") or ())
            - {"*"},
            expires_at=float(claims["exp"]) + self.leeway if "exp" in claims else None,
        )
        if len(self._cache) > 4096:
            self._cache.clear()
        expires = float(claims.get("exp", now + 300))
        self._cache[token] = (caller, min(expires, now + 300))
        return caller

    def ensure_admin_token(self, data_dir: Path) -> Path | None:
        """First start with the embedded default: an admin token file for the local CLI."""
        if not self.can_issue:
            return None
        path = data_dir / ADMIN_TOKEN_FILE
        if path.exists():
            return None
        _write_private(path, self.issue(subject="admin", roles=["admin"]) + "\n")
        return path


class Authenticator:
    """The request pipeline's one question: who is this?"""

    def __init__(
        self, verifier: TokenVerifier | None, *, anonymous_role: str | None = None
    ) -> None:
        #: None: auth is off (TCP callers are anonymous editors, never given secret values).
        self.verifier = verifier
        #: auth.anonymous_role: the role of a TCP request that carries no token at all.
        self.anonymous_role = anonymous_role

    def unix_caller(self, request: web.Request) -> Caller | None:
        if request.remote:  # an address: TCP (a Unix socket peer has none)
            return None
        peer = unix_peer(request)
        if peer is None:
            return None
        uid, pid = peer
        return Caller(
            subject=f"unix:{_user_name(uid)}",
            peer=f"uid={uid} pid={pid}",
            roles=("admin",),
            scopes=SYSTEM_SCOPES,
        )

    def identify(self, request: web.Request, *, optional: bool = False) -> Caller | None:
        """Who is calling (it never waits): the request pipeline's call."""
        local = self.unix_caller(request)
        if local is not None:
            return local
        peer = request.remote or ""
        if self.verifier is None:
            return Caller(subject="anonymous", peer=peer, roles=("editor",))
        token = bearer_token(request)
        if token is None:
            if self.anonymous_role is not None:
                return Caller(subject=ANONYMOUS, peer=peer, roles=(self.anonymous_role,))
            if optional:
                return None
            raise Unauthenticated(
                "a bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="fpcd"'}
            )
        try:
            return self.verifier.verify(token, peer=peer)
        except Unauthenticated as error:
            error.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
            raise

    def verify_token(self, token: str, *, peer: str) -> Caller:
        if self.verifier is None:
            raise BadRequest("token auth is off")
        return self.verifier.verify(token, peer=peer)
