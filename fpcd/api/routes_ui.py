"""The web console at `/ui/`: its files, served from memory, and the browser session.

The console is four files in `fpcd/ui/` (HTML, one script, one style sheet, an icon):
no build step, nothing fetched from elsewhere. They are read once at start, with a
gzipped copy and an ETag each, and every answer carries a Content-Security-Policy that
allows scripts, styles and connections only from this origin, no inline script and no
framing. Everything the console shows comes from the REST API and the WebSocket at `/ws`,
authorized exactly as for any other client; the session (api/session.py) only carries
the token there. docs/console.md has the design.
"""

from __future__ import annotations

import gzip
import hashlib
from functools import cache
from pathlib import Path
from typing import Annotated, NamedTuple

import msgspec
from aiohttp import web

from fpcd.api.auth import bearer_token
from fpcd.api.http import AUTHENTICATOR, body_as, json_response
from fpcd.api.routes_config import CONFIGS
from fpcd.api.session import SESSION_COOKIE, session_token
from fpcd.domain.access import granted, unrestricted
from fpcd.domain.errors import Unauthenticated
from fpcd.domain.model import Caller

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

#: Every console answer: nothing from elsewhere, no inline script, never in a frame.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Asset(NamedTuple):
    body: bytes
    gzipped: bytes
    etag: str
    content_type: str


@cache
def load_assets(directory: Path = UI_DIR) -> dict[str, Asset]:
    """The console's files, read and compressed once (per process)."""
    assets: dict[str, Asset] = {}
    for name, content_type in CONTENT_TYPES.items():
        body = (directory / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        assets[name] = Asset(body, gzip.compress(body, 9, mtime=0), etag, content_type)
    return assets


ASSETS = web.AppKey("ui_assets", dict[str, Asset])


def _serve(request: web.Request, name: str) -> web.Response:
    asset = request.app[ASSETS].get(name)
    if asset is None:
        raise web.HTTPNotFound()
    headers = {
        **SECURITY_HEADERS,
        "ETag": asset.etag,
        # Revalidated each time (a 304 on loopback costs nothing): an upgraded daemon's
        # console is never mixed with the old one's script.
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
    }
    match = request.headers.get("If-None-Match")
    if match is not None and asset.etag in (m.strip() for m in match.split(",")):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = asset.content_type
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=asset.gzipped, headers=headers)
    return web.Response(body=asset.body, headers=headers)


async def index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    return _serve(request, request.match_info["asset"])


async def to_index(request: web.Request) -> web.Response:
    return web.Response(status=308, headers={"Location": "/ui/", **SECURITY_HEADERS})


class SessionCreate(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /ui/session`: the token to sign in with (it must fit in a cookie)."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=3800)]


class SessionView(msgspec.Struct, rename="camel", kw_only=True):
    """`GET /ui/session`: who the console speaks for, and what that allows."""

    subject: str
    roles: list[str]
    #: The token's limits (None: every service / environment).
    services: list[str] | None
    environments: list[str] | None
    scopes: list[str]
    #: Every action the roles and scopes grant (docs/security.md), before service limits.
    actions: list[str]
    #: Limited to no service or environment (needed for the audit log).
    unrestricted: bool
    #: Signed in with a token (a cookie), rather than anonymous or without auth.
    signed_in: bool
    auth_enabled: bool
    #: Send it as X-CSRF-Token with every change ("" when no cookie session is in use).
    csrf_token: str
    expires_at: float | None
    default_environment: str
    known_environments: list[str]


def _clear_cookie() -> str:
    return f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"


def _view(request: web.Request, caller: Caller, session: str | None) -> SessionView:
    authenticator = request.app[AUTHENTICATOR]
    configs = request.app[CONFIGS]
    return SessionView(
        subject=caller.subject,
        roles=list(caller.roles),
        services=list(caller.services) if caller.services is not None else None,
        environments=list(caller.environments) if caller.environments is not None else None,
        scopes=sorted(caller.scopes),
        actions=sorted(granted(caller)),
        unrestricted=unrestricted(caller),
        signed_in=session is not None,
        auth_enabled=authenticator.verifier is not None,
        csrf_token=authenticator.sessions.csrf_token(session) if session else "",
        expires_at=caller.expires_at,
        default_environment=configs.default_environment,
        known_environments=configs.environments.known(),
    )


async def get_session(request: web.Request) -> web.Response:
    """Who you are; 401 (and the cookie cleared, if it held a bad token) when nobody."""
    authenticator = request.app[AUTHENTICATOR]
    session = session_token(request) if bearer_token(request) is None else None
    try:
        caller = authenticator.identify(request, optional=True)
    except Unauthenticated as error:
        if session is not None:  # forget it; the console asks again (anonymous access?)
            error.headers["Set-Cookie"] = _clear_cookie()
            error.headers["X-Fpcd-Session"] = "cleared"
        raise
    if caller is None:
        raise Unauthenticated("sign in with a token")
    return json_response(_view(request, caller, session), headers={"Cache-Control": "no-store"})


async def create_session(request: web.Request) -> web.Response:
    authenticator = request.app[AUTHENTICATOR]
    authenticator.sessions.check_origin(request)
    body = await body_as(request, SessionCreate)
    token = body.token.strip()
    caller = authenticator.verify_token(token, peer=request.remote or "")
    response = json_response(
        _view(request, caller, token), status=201, headers={"Cache-Control": "no-store"}
    )
    # The cookie lives as long as the token (or the browser session, for one without exp).
    expires = caller.expires_at
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        path="/",
        secure=request.secure,
        max_age=max(0, int(expires - authenticator.clock.time())) if expires is not None else None,
    )
    return response


async def delete_session(request: web.Request) -> web.Response:
    authenticator = request.app[AUTHENTICATOR]
    session = session_token(request)
    if session is not None:
        authenticator.sessions.check(request, session)
    return web.Response(status=204, headers={"Set-Cookie": _clear_cookie()})


def add_routes(app: web.Application, assets: dict[str, Asset] | None = None) -> None:
    app[ASSETS] = assets if assets is not None else load_assets()
    app.router.add_get("/ui", to_index)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/session", get_session)
    app.router.add_post("/ui/session", create_session)
    app.router.add_delete("/ui/session", delete_session)
    app.router.add_get("/ui/{asset}", asset)
