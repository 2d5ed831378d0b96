"""The one in-process change event that caches, WebSocket, file sync and metrics follow."""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from fpcd.domain.model import Change

log = logging.getLogger("fpcd.events")


class ChangeApplied(msgspec.Struct, frozen=True):
    """A change is durable in the local store (and upstream, when there is one)."""

    change: Change


class FlagSwitched(msgspec.Struct, frozen=True):
    """A flag's start or end date arrived: its answer changes with no change written."""

    key: str
    #: The environment whose override has this boundary; None for the flag's base rollout.
    environment: str | None
    boundary: str  # "start" or "end"


class ServiceStatusChanged(msgspec.Struct, frozen=True):
    """A registered service's health moved (healthy, unhealthy, unknown, stale)."""

    name: str
    old: str
    new: str


Event = ChangeApplied | FlagSwitched | ServiceStatusChanged
Listener = Callable[[Event], None]


class EventBus:
    """Synchronous fan-out in commit order; listeners must not block (queue work instead).

    Delivery happens while the committer still holds its lock, so every listener
    sees changes exactly once and in sequence order.
    """

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed", extra={"listener": repr(listener)})
