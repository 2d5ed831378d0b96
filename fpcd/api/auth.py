"""Who is calling. Until token auth exists every caller is allowed; the peer is still named.

For the Unix socket the peer's uid and pid come from SO_PEERCRED, so the audit
log says which local user made a change.
"""

from __future__ import annotations

import pwd
import socket
import struct
from functools import lru_cache

from aiohttp import web

from fpcd.domain.model import Caller


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


class OpenAccess:
    """The embedded default before token auth: reads and writes for everyone, but secret
    values only for Unix-socket peers, whom the socket file's mode already vouches for.

    Over TCP any local user could connect, so decrypted secrets are not served there.
    """

    async def authenticate(self, request: web.Request) -> Caller:
        peer = unix_peer(request)
        if peer is not None:
            uid, pid = peer
            return Caller(
                subject=f"unix:{_user_name(uid)}", peer=f"uid={uid} pid={pid}", scopes=_ALL
            )
        return Caller(subject="anonymous", peer=request.remote or "")


_ALL = frozenset({"*"})
