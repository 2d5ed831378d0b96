"""Health: each component reports ok, degraded or down; the worst one decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

import msgspec

from fpcd import __version__
from fpcd.observe.alerts import Alerts
from fpcd.wire import ComponentHealth, HealthDocument, HealthStatus

#: A component's health: `health()` of the component, plain or a coroutine, or a fixed
#: answer (a part this configuration does not have).
Check = Callable[[], Awaitable[ComponentHealth] | ComponentHealth] | ComponentHealth
_RANK = {"ok": 0, "degraded": 1, "down": 2}


class Health:
    def __init__(
        self,
        node_id: str,
        checks: Mapping[str, Check],
        *,
        critical: Collection[str] = (),
        gates: Sequence[Callable[[], str | None]] = (),
        alerts: Alerts | None = None,
        timeout: float = 2.0,
    ) -> None:
        """`checks` in report order; a `critical` component that is down makes the daemon
        down, the others only degrade it."""
        self._node_id = node_id
        self._timeout = timeout
        self._started = time.monotonic()
        self._checks = dict(checks)
        self._critical = frozenset(critical)
        #: Set once start-up is complete; /health/ready also waits for every gate.
        self.ready = False
        #: Conditions for readiness beyond start-up: each returns what it waits for, or None.
        self._gates = tuple(gates)
        #: Performance checks that degrade a component while breached.
        self._alerts = alerts

    async def _run(self, check: Check) -> ComponentHealth:
        started = time.perf_counter()
        try:
            answer = check if isinstance(check, ComponentHealth) else check()
            result = (
                answer
                if isinstance(answer, ComponentHealth)
                else await asyncio.wait_for(answer, self._timeout)
            )
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
        return [reason for gate in self._gates if (reason := gate()) is not None]

    async def report(self) -> HealthDocument:
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
        components = dict(zip(names, results, strict=True))
        if self._alerts is not None:
            components = {n: self._alerts.overlay(n, r) for n, r in components.items()}
        status: HealthStatus = "ok"
        for name, result in components.items():
            effective: HealthStatus = result.status
            if effective == "down" and name not in self._critical:
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
