"""RegistryService: service registration and discovery, heartbeats and health checks.

Registrations are changes (audited, replicated with everything else); heartbeats and
probe results are this host's own observations, kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp

from fpcd.domain.configs import BASE_ENVIRONMENT, check_name, missing_paths
from fpcd.domain.errors import FieldError, Invalid, NotFound
from fpcd.domain.model import Caller, Change, ServiceRegistration
from fpcd.services.changes import Committer
from fpcd.services.configs import ConfigService
from fpcd.services.events import ChangeApplied, Event, EventBus, ServiceStatusChanged
from fpcd.store.sqlite import Store
from fpcd.wire import Page, RegisterResult, ServiceRegister, ServiceView

log = logging.getLogger("fpcd.registry")

HEALTHY, UNHEALTHY, UNKNOWN, STALE = "healthy", "unhealthy", "unknown", "stale"


@dataclass
class Observed:
    """What this host has seen of a service."""

    last_heartbeat: float
    probe: str = UNKNOWN
    last_check: float | None = None
    last_error: str | None = None
    status: str = UNKNOWN


def _http_url(url: str) -> bool:
    """An http(s) URL with a host (and a valid port, if any) that a probe can reach."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError:  # "http://[::1" and the like
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class RegistryService:
    def __init__(
        self,
        store: Store,
        committer: Committer,
        bus: EventBus,
        configs: ConfigService,
        *,
        node_id: str,
        clock: Callable[[], datetime],
        check_interval: float,
        check_timeout: float,
        time_source: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._committer = committer
        self._bus = bus
        self._configs = configs
        self._node_id = node_id
        self._clock = clock
        self._time = time_source
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self._services: dict[str, ServiceRegistration] = {}
        self._observed: dict[str, Observed] = {}
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        bus.subscribe(self._on_event)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        for reg in await self._store.registrations():
            if not reg.deregistered:
                self._services[reg.name] = reg
                self._observed[reg.name] = Observed(last_heartbeat=self._time())
        self._configs.required_configs = self.required_configs
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.check_timeout))
        self._task = asyncio.create_task(self._check_loop(), name="health-checks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _on_event(self, event: Event) -> None:
        if isinstance(event, ChangeApplied) and isinstance(
            event.change.payload, ServiceRegistration
        ):
            reg = event.change.payload
            if reg.deregistered:
                self._services.pop(reg.name, None)
                self._observed.pop(reg.name, None)
            else:
                self._services[reg.name] = reg
                self._observed.setdefault(reg.name, Observed(last_heartbeat=self._time()))

    # -- status -------------------------------------------------------------------------

    def _status(self, reg: ServiceRegistration, seen: Observed) -> str:
        if reg.ttl_seconds is not None and self._time() - seen.last_heartbeat > reg.ttl_seconds:
            return STALE
        if reg.health_check:
            return seen.probe
        return HEALTHY if reg.ttl_seconds is not None else UNKNOWN

    def _refresh(self, name: str) -> str:
        reg, seen = self._services[name], self._observed[name]
        status = self._status(reg, seen)
        if status != seen.status:
            old, seen.status = seen.status, status
            log.info("service status changed", extra={"service": name, "from": old, "to": status})
            self._bus.publish(ServiceStatusChanged(name=name, old=old, new=status))
        return status

    async def _probe(self, name: str, url: str) -> None:
        assert self._http is not None
        seen = self._observed.get(name)
        if seen is None:
            return
        try:
            async with self._http.get(url, allow_redirects=False) as response:
                seen.probe = HEALTHY if response.status < 400 else UNHEALTHY
                seen.last_error = None if response.status < 400 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            seen.probe = UNHEALTHY
            seen.last_error = error.__class__.__name__
        seen.last_check = self._time()

    async def check_all(self) -> None:
        """Probe every health-check URL once (concurrently), then update statuses."""
        probes = [
            self._probe(name, reg.health_check)
            for name, reg in self._services.items()
            if reg.health_check
        ]
        await asyncio.gather(*probes)
        for name in list(self._services):
            if name in self._observed:
                self._refresh(name)

    async def _check_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.check_all()
            await asyncio.sleep(self.check_interval)

    def required_configs(self, service: str, environment: str) -> list[str]:
        """Paths a registered service needs in (service, environment): config writes check them."""
        reg = self._services.get(service)
        if reg is None or not reg.required_configs:
            return []
        if environment not in (reg.environment, BASE_ENVIRONMENT):
            return []
        return reg.required_configs

    # -- views ----------------------------------------------------------------------------

    def _view(self, reg: ServiceRegistration) -> ServiceView:
        seen = self._observed.get(reg.name) or Observed(last_heartbeat=self._time())

        def moment(epoch: float | None) -> datetime | None:
            return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None

        return ServiceView(
            name=reg.name,
            version=reg.version,
            host=reg.host,
            port=reg.port,
            health_check=reg.health_check,
            tags=reg.tags,
            environment=reg.environment,
            required_configs=reg.required_configs,
            metadata=reg.metadata,
            ttl_seconds=reg.ttl_seconds,
            registered_at=reg.registered_at,
            registered_by=reg.registered_by,
            status=self._refresh(reg.name) if reg.name in self._observed else UNKNOWN,
            last_heartbeat=moment(seen.last_heartbeat),
            last_check=moment(seen.last_check),
            last_error=seen.last_error,
        )

    def list_services(
        self, *, tag: str | None, environment: str | None, status: str | None
    ) -> Page[ServiceView]:
        items = []
        for name in sorted(self._services):
            reg = self._services[name]
            if tag and tag not in reg.tags:
                continue
            if environment and reg.environment != environment:
                continue
            view = self._view(reg)
            if status and view.status != status:
                continue
            items.append(view)
        return Page(items=items, total=len(items), limit=len(items), offset=0)

    def get(self, name: str) -> ServiceView:
        reg = self._services.get(name)
        if reg is None:
            raise NotFound(f"no registered service {name!r}")
        return self._view(reg)

    async def missing_configs(self, reg: ServiceRegistration) -> list[str]:
        if not reg.required_configs:
            return []
        try:
            doc = await self._configs.document(reg.name, reg.environment)
        except NotFound:
            return list(reg.required_configs)
        return missing_paths(doc.config, reg.required_configs)

    # -- writes ---------------------------------------------------------------------------

    def _change(self, name: str, op: str, reg: ServiceRegistration, caller: Caller) -> Change:
        return Change.by(
            caller, key=name, op=op, payload=reg, at=self._clock(), origin=self._node_id
        )

    async def register(self, body: ServiceRegister, caller: Caller) -> tuple[RegisterResult, bool]:
        check_name("service", body.name)
        environment = check_name(
            "environment", body.environment or self._configs.default_environment
        )
        url = (
            body.health_check.url
            if not isinstance(body.health_check, str | None)
            else (body.health_check or "")
        )
        if url and not _http_url(url):
            raise Invalid(
                "healthCheck must be an http(s) URL",
                errors=[FieldError("$.healthCheck", "expected http:// or https://")],
            )
        for i, path in enumerate(body.required_configs):
            if not path or any(not part for part in path.split(".")):
                raise Invalid(
                    "requiredConfigs are dotted paths such as database.host",
                    errors=[FieldError(f"$.requiredConfigs[{i}]", "empty segment")],
                )
        reg = ServiceRegistration(
            name=body.name,
            version=body.version,
            host=body.host,
            port=body.port,
            health_check=url,
            tags=body.tags,
            environment=environment,
            required_configs=body.required_configs,
            metadata=body.metadata,
            ttl_seconds=body.ttl_seconds,
            registered_at=self._clock(),
            registered_by=caller.subject,
        )
        created = body.name not in self._services

        async def plan() -> list[Change]:
            return [self._change(body.name, "register", reg, caller)]

        await self._committer.commit(plan)
        self._observed[reg.name] = Observed(last_heartbeat=self._time())
        if url:
            await self._probe(reg.name, url)
        result = RegisterResult(
            service=self._view(reg), missing_configs=await self.missing_configs(reg)
        )
        return result, created

    async def deregister(self, name: str, caller: Caller) -> None:
        async def plan() -> list[Change]:
            reg = self._services.get(name)
            if reg is None:
                raise NotFound(f"no registered service {name!r}")
            gone = ServiceRegistration(
                name=name,
                environment=reg.environment,
                registered_at=self._clock(),
                registered_by=caller.subject,
                deregistered=True,
            )
            return [self._change(name, "deregister", gone, caller)]

        await self._committer.commit(plan)

    def heartbeat(self, name: str) -> ServiceView:
        reg = self._services.get(name)
        if reg is None:
            raise NotFound(f"no registered service {name!r}")
        self._observed.setdefault(name, Observed(last_heartbeat=self._time()))
        self._observed[name].last_heartbeat = self._time()
        return self._view(reg)
