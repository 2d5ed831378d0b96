"""Who is calling: a JWT bearer token on TCP, the peer's credentials on a Unix socket.

Unix sockets are guarded by their file's owner, group and mode, like docker.sock: a
peer that can connect is trusted as an administrator, and its uid/pid (SO_PEERCRED) go
into the audit log. TCP callers present a token, checked by `TokenVerifier`
(`fpcd.services.tokens`). The web console's session cookie (api/session.py) is the last
place a token is looked for.
"""

from __future__ import annotations

import logging
import pwd
import socket
import struct
from functools import lru_cache

from aiohttp import web

from fpcd.api.session import SessionGuard, session_token
from fpcd.clock import SYSTEM_CLOCK, Clock
from fpcd.domain.errors import BadRequest, Unauthenticated
from fpcd.domain.model import SYSTEM_SCOPES, Caller
from fpcd.services.tokens import TokenVerifier

log = logging.getLogger("fpcd.auth")

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


class Authenticator:
    """The request pipeline's one question: who is this?"""

    def __init__(
        self,
        verifier: TokenVerifier | None,
        *,
        anonymous_role: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        #: None: auth is off (TCP callers are anonymous editors, never given secret values).
        self.verifier = verifier
        #: auth.anonymous_role: the role of a TCP request that carries no token at all.
        self.anonymous_role = anonymous_role
        #: The web console's cookie sessions and their CSRF tokens (api/session.py).
        self.sessions = SessionGuard()
        #: The verifier's clock: how long a console cookie lives (its token's exp, from now).
        self.clock = clock

    def _unix_caller(self, request: web.Request) -> Caller | None:
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
        peer = request.remote
        if not peer:  # no address: a Unix socket's peer, known by its credentials
            local = self._unix_caller(request)
            if local is not None:
                return local
            peer = ""
        if self.verifier is None:
            return Caller(subject="anonymous", peer=peer, roles=("editor",))
        token = bearer_token(request)
        session = None
        if token is None:  # the web console's cookie, last
            token = session = session_token(request)
        if token is None:
            if self.anonymous_role is not None:
                return Caller(subject=ANONYMOUS, peer=peer, roles=(self.anonymous_role,))
            if optional:
                return None
            raise Unauthenticated(
                "a bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="fpcd"'}
            )
        try:
            caller = self.verifier.verify(token, peer=peer)
        except Unauthenticated as error:
            error.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
            raise
        if session is not None:  # same origin, and a write carries the CSRF token
            self.sessions.check(request, session)
        return caller

    def verify_token(self, token: str, *, peer: str) -> Caller:
        if self.verifier is None:
            raise BadRequest("token auth is off")
        return self.verifier.verify(token, peer=peer)
