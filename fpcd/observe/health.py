"""Health: each component reports ok, degraded or down; the worst one decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec

from fpcd import __version__
from fpcd.observe.alerts import Alerts
from fpcd.wire import ComponentHealth, HealthDocument, HealthStatus

Check = Callable[[], Awaitable[ComponentHealth]]
_RANK = {"ok": 0, "degraded": 1, "down": 2}


class Health:
    def __init__(self, node_id: str, *, timeout: float = 2.0) -> None:
        self._node_id = node_id
        self._timeout = timeout
        self._started = time.monotonic()
        self._checks: dict[str, tuple[Check, bool]] = {}
        #: Set once start-up is complete; /health/ready also waits for every gate.
        self.ready = False
        #: Conditions for readiness beyond start-up: each returns what it waits for, or None.
        self.gates: list[Callable[[], str | None]] = []
        #: Performance checks that degrade a component while breached.
        self.alerts: Alerts | None = None

    def add(self, name: str, check: Check, *, critical: bool = True) -> None:
        """A critical component that is down makes the daemon down; others only degrade it."""
        self._checks[name] = (check, critical)

    async def _run(self, check: Check) -> ComponentHealth:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(check(), self._timeout)
        except TimeoutError:
            return ComponentHealth(status="down", detail=f"no answer within {self._timeout}s")
        except Exception as error:
            return ComponentHealth(status="down", detail=error.__class__.__name__)
        if result.latency_ms is None:
            elapsed = round((time.perf_counter() - started) * 1000, 3)
            result = msgspec.structs.replace(result, latency_ms=elapsed)
        return result

    def waiting_for(self) -> list[str]:
        """What readiness still waits for; empty when ready."""
        if not self.ready:
            return ["start-up"]
        return [reason for gate in self.gates if (reason := gate()) is not None]

    async def report(self) -> HealthDocument:
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n][0]) for n in names))
        components = dict(zip(names, results, strict=True))
        if self.alerts is not None:
            components = {n: self.alerts.overlay(n, r) for n, r in components.items()}
        status: HealthStatus = "ok"
        for name, result in components.items():
            effective: HealthStatus = result.status
            if effective == "down" and not self._checks[name][1]:
                effective = "degraded"
            if _RANK[effective] > _RANK[status]:
                status = effective
        return HealthDocument(
            status=status,
            version=__version__,
            uptime_seconds=round(time.monotonic() - self._started, 3),
            node_id=self._node_id,
            components=components,
        )
