"""The web console's browser session: the token in a cookie, and what keeps other sites out.

`POST /ui/session` checks a token and puts it in the `fpcd_session` cookie (HttpOnly,
SameSite=Strict, Secure over TLS), so page scripts never hold it; the `Authenticator`
then takes the cookie as a token source after `Authorization` and `?token=`. A request
the cookie authenticates must come from the console's own origin (an `Origin` header, which
browsers send on every cross-origin request, on every write and on WebSocket upgrades, must
name this host), and one that changes something (any method but GET, HEAD and OPTIONS)
must carry `X-CSRF-Token`: an HMAC of the cookie under a key only this daemon holds, which
`GET /ui/session` hands to the console's script. A page on another origin can make the
browser send the cookie (SameSite does not separate two ports of one host) but can read
neither the cookie nor the token, so it can change nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from aiohttp import web

from fpcd.domain.errors import Forbidden

SESSION_COOKIE = "fpcd_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_token(request: web.Request) -> str | None:
    """The token the console's cookie holds, if any."""
    if "Cookie" not in request.headers:  # the common case (API clients): parse nothing
        return None
    return request.cookies.get(SESSION_COOKIE) or None


def same_origin(origin: str, host: str) -> bool:
    """An `Origin` header names this host (scheme aside: TLS may end at a proxy)."""
    _scheme, sep, rest = origin.partition("://")
    return bool(sep) and bool(host) and rest.lower() == host.lower()


class SessionGuard:
    """CSRF tokens for cookie sessions: HMAC-SHA256 of the cookie under a per-daemon key.

    The key is made at start and never stored, so a restart makes the console fetch a new
    CSRF token (it does, on the 403 it gets); the session itself lives as long as its token.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def csrf_token(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def check_origin(self, request: web.Request) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and not same_origin(origin, request.host):
            raise Forbidden("a console session is not accepted from another origin")

    def check(self, request: web.Request, session: str) -> None:
        """A request the cookie authenticates: same origin, and for a write the CSRF token."""
        self.check_origin(request)
        if request.method in SAFE_METHODS:
            return
        given = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.csrf_token(session).encode()):
            raise Forbidden(
                f"a change made with the console's session needs the {CSRF_HEADER} header"
                " that GET /ui/session returns"
            )
