"""sd_notify over $NOTIFY_SOCKET (a datagram to a Unix socket; no library needed).

READY=1 once serving, RELOADING=1/READY=1 around a SIGHUP, STOPPING=1 at shutdown, and
WATCHDOG=1 every half of $WATCHDOG_USEC when systemd asks for a watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger("fpcd.systemd")


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    return "\0" + path[1:] if path.startswith("@") else path  # '@': abstract namespace


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1"); False when not run by systemd or on failure."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(states).encode())
    except OSError as error:
        log.warning("sd_notify failed", extra={"error": error.strerror})
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), if systemd wants them."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2_000_000, 0.05)
    except ValueError:
        return None


class Watchdog:
    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        interval = watchdog_interval()
        if interval is not None and _address() is not None:
            self._task = asyncio.create_task(self._ping(interval), name="sd-watchdog")

    async def _ping(self, interval: float) -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
