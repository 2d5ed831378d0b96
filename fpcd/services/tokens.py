"""Bearer tokens (PyJWT): issued with this host's shared secret, verified on every door.

HS256 with a shared secret (the embedded default keeps one in the data dir), or
RS256/ES256 with a public key or a JWKS file; exp, nbf, iat, iss and aud are checked, and
`alg: none` or any algorithm outside the configured ones is refused. The API's
Authenticator verifies with it; `fpcd token create` issues with it.
"""

from __future__ import annotations

import base64
import os
import secrets as random
from pathlib import Path
from typing import Any

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fpcd.clock import SYSTEM_CLOCK, Clock
from fpcd.domain.access import ROLES
from fpcd.domain.errors import Unauthenticated
from fpcd.domain.model import Caller
from fpcd.settings import Settings

AUTH_KEY_FILE = "auth.key"
ADMIN_TOKEN_FILE = "admin.token"


def _check_times(claims: dict[str, Any], now: float, leeway: float) -> None:
    """PyJWT's iat, nbf and exp rules (the same errors), at `now` instead of its own."""
    for claim, error, message in (
        ("iat", jwt.InvalidIssuedAtError, "Issued At claim (iat) must be an integer."),
        ("nbf", jwt.DecodeError, "Not Before claim (nbf) must be an integer."),
        ("exp", jwt.DecodeError, "Expiration Time claim (exp) must be an integer."),
    ):
        if claim not in claims:
            continue
        try:
            value = int(claims[claim])
        except (ValueError, TypeError, OverflowError):
            raise error(message) from None
        if claim == "exp":
            if value <= now - leeway:
                raise jwt.ExpiredSignatureError("Signature has expired")
        elif value > now + leeway:
            raise jwt.ImmatureSignatureError(f"The token is not yet valid ({claim})")


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

    def __init__(self, settings: Settings, *, clock: Clock = SYSTEM_CLOCK) -> None:
        auth = settings.auth
        #: Expiry (exp), not-before (nbf) and issued-at (iat) are judged at this clock's
        #: now; its bound `time` (time.time itself for the system clock) is read per request.
        self._time = clock.time
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
        now = int(self._time())
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
        now = self._time()
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
                options={
                    "require": ["sub"],
                    "verify_aud": self.audience is not None,
                    # Judged below at the daemon's clock (PyJWT reads the host's).
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
            _check_times(claims, now, self.leeway)
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
