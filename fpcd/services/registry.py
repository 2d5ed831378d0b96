"""RegistryService: service registration and discovery, heartbeats and health checks.

Registrations are changes (audited, replicated with everything else); heartbeats and
probe results are this host's own observations, kept in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import msgspec

from fpcd.clock import Clock
from fpcd.domain.access import REGISTRY_READ, REGISTRY_WRITE, authorize
from fpcd.domain.configs import BASE_ENVIRONMENT, missing_paths
from fpcd.domain.errors import FieldError, Invalid, NotFound
from fpcd.domain.model import (
    Caller,
    Change,
    ConfigVersion,
    SecretDestroyed,
    SecretVersion,
    ServiceRegistration,
)
from fpcd.domain.names import check_name
from fpcd.services.changes import ChangeMaker, Committer
from fpcd.services.configs import ConfigService
from fpcd.services.events import ChangeApplied, Event, EventBus, ServiceStatusChanged
from fpcd.store.sqlite import Store
from fpcd.wire import Page, RegisterResult, ServiceRegister, ServiceStatus, ServiceView

log = logging.getLogger("fpcd.registry")

HEALTHY: Final = "healthy"
UNHEALTHY: Final = "unhealthy"
UNKNOWN: Final = "unknown"
STALE: Final = "stale"
#: Reachable (or not probed) but missing some of its requiredConfigs.
DEGRADED: Final = "degraded"
#: A registration's metadata, encoded, at most this many bytes.
MAX_METADATA_BYTES = 16 * 1024
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(url: str) -> tuple[str, int | None] | None:
    """(host, port) of an http(s) URL, the port defaulted by the scheme; None if not one."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[parts.scheme]


def _endpoints(registration: Any) -> set[tuple[str, int | None]]:
    """Where the registration says the service itself listens: `host` and `port`, and
    any `endpoints` URLs (the original's registration body)."""
    found: set[tuple[str, int | None]] = set()
    host = getattr(registration, "host", "") or ""
    if host:
        port = getattr(registration, "port", None)
        found |= (
            {(host.lower(), port)}
            if port is not None
            else {(host.lower(), 80), (host.lower(), 443)}
        )
    for endpoint in getattr(registration, "endpoints", None) or []:
        url = endpoint if isinstance(endpoint, str) else getattr(endpoint, "url", "")
        where = _host_port(url) if url else None
        if where is not None:
            found.add(where)
    return found


def allowed_health_check(url: str, registration: Any, allowed_hosts: list[str]) -> bool:
    """Whether the daemon may probe `url` for this registration: only the service's own
    endpoint (same host and port), or a host the operator lists in
    `registry.health_check_hosts` ("host" for any port, "host:port", or "*"). Without
    this a registrant could make every daemon poll internal addresses for it."""
    if "*" in allowed_hosts:
        return True
    where = _host_port(url)
    if where is None:
        return False
    host, port = where
    if where in _endpoints(registration):
        return True
    for entry in allowed_hosts:
        allowed = _host_port(f"http://{entry}")
        if allowed is None:
            continue
        if ":" in entry.rsplit("]", 1)[-1]:  # host:port
            if allowed == (host, port):
                return True
        elif allowed[0] == host:
            return True
    return False


@dataclass
class Observed:
    """What this host has seen of a service."""

    last_heartbeat: float
    probe: ServiceStatus = UNKNOWN
    last_check: float | None = None
    last_error: str | None = None
    status: ServiceStatus = UNKNOWN
    #: How long the last probe took (milliseconds); all a probe reports besides status.
    latency_ms: float | None = None


def _http_url(url: str) -> bool:
    """An http(s) URL with a host (and a valid port, if any) that a probe can reach."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a port that is not a number in 0..65535
    except ValueError:  # "http://[::1" and the like
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class Registered:
    """The registered services, kept current by RegistryService and read by ConfigService
    (a write must keep a registered service's requiredConfigs): built before both, so
    each gets it when it is constructed."""

    def __init__(self, *, enforce_required_configs: bool = False) -> None:
        #: name -> its live registration.
        self.services: dict[str, ServiceRegistration] = {}
        #: Refuse config writes that lack a requiredConfig (off: only reported).
        self.enforce_required_configs = enforce_required_configs

    def required_configs(self, service: str, environment: str) -> list[str]:
        """Paths a registered service needs in (service, environment) that config writes
        must keep: only with registry.enforce_required_configs (else they are reported)."""
        reg = self.services.get(service)
        if not self.enforce_required_configs or reg is None or not reg.required_configs:
            return []
        if environment not in (reg.environment, BASE_ENVIRONMENT):
            return []
        return reg.required_configs


class RegistryService:
    def __init__(
        self,
        store: Store,
        committer: Committer,
        bus: EventBus,
        configs: ConfigService,
        *,
        node_id: str,
        clock: Clock,
        check_interval: float,
        check_timeout: float,
        health_check_hosts: list[str] | None = None,
        registered: Registered,
    ) -> None:
        self._store = store
        self._committer = committer
        self._bus = bus
        self._configs = configs
        self._clock = clock
        self._change = ChangeMaker(node_id, clock)
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        #: registry.health_check_hosts (see allowed_health_check).
        self.health_check_hosts = list(health_check_hosts or [])
        self._registered = registered
        self._services = registered.services
        #: service -> (missing requiredConfigs, missing optionalConfigs), kept current by
        #: config and secret changes.
        self._missing: dict[str, tuple[list[str], list[str]]] = {}
        self._recheck: dict[str, asyncio.Task[None]] = {}
        #: Services changed since their last recheck started.
        self._stale: set[str] = set()
        self._observed: dict[str, Observed] = {}
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        bus.subscribe(self._on_event)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        for reg in await self._store.registrations():
            if not reg.deregistered:
                self._services[reg.name] = reg
                self._observed[reg.name] = Observed(last_heartbeat=self._clock.time())
        for reg in list(self._services.values()):
            self._missing[reg.name] = await self.missing(reg)
        self._configs.known_services.update(self._services)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.check_timeout))
        self._task = asyncio.create_task(self._check_loop(), name="health-checks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        rechecks = list(self._recheck.values())
        self._recheck.clear()
        for pending in rechecks:
            pending.cancel()
        await asyncio.gather(*rechecks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, ChangeApplied):
            return
        payload = event.change.payload
        if isinstance(payload, ServiceRegistration):
            reg = payload
            if reg.deregistered:
                self._services.pop(reg.name, None)
                self._observed.pop(reg.name, None)
                self._missing.pop(reg.name, None)
            else:
                self._services[reg.name] = reg
                self._observed.setdefault(reg.name, Observed(last_heartbeat=self._clock.time()))
                self._schedule_recheck(reg.name)
        elif (
            isinstance(payload, ConfigVersion | SecretVersion | SecretDestroyed)
            and payload.service in self._services
        ):
            self._schedule_recheck(payload.service)

    def _schedule_recheck(self, name: str) -> None:
        """Recompute a service's missing configs after a change: one pass at a time per
        service, and one more after it when a change arrived during the pass."""
        if self._task is None:
            return
        self._stale.add(name)
        if name not in self._recheck:
            self._recheck[name] = asyncio.get_running_loop().create_task(
                self._run_recheck(name), name=f"registry-recheck:{name}"
            )

    async def _run_recheck(self, name: str) -> None:
        try:
            while name in self._stale:
                await asyncio.sleep(0)  # let the rest of the commit's events land first
                self._stale.discard(name)
                reg = self._services.get(name)
                if reg is None:
                    break
                self._missing[name] = await self.missing(reg)
                if name in self._observed:
                    self._refresh(name)
        except Exception:  # reported; the next change of the service tries again
            log.exception("missing-config check failed", extra={"service": name})
        finally:
            self._recheck.pop(name, None)

    # -- status -------------------------------------------------------------------------

    def _status(self, reg: ServiceRegistration, seen: Observed) -> ServiceStatus:
        if (
            reg.ttl_seconds is not None
            and self._clock.time() - seen.last_heartbeat > reg.ttl_seconds
        ):
            return STALE
        if reg.health_check and seen.probe == UNHEALTHY:
            return UNHEALTHY
        if self._missing.get(reg.name, ([], []))[0]:
            return DEGRADED
        if reg.health_check:
            return seen.probe
        return HEALTHY if reg.ttl_seconds is not None else UNKNOWN

    def _refresh(self, name: str) -> ServiceStatus:
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
        reg = self._services.get(name)
        if seen is None or reg is None:
            return
        if not allowed_health_check(url, reg, self.health_check_hosts):
            # Registered elsewhere, or allowed before a settings change: never probed.
            seen.probe, seen.last_error, seen.latency_ms = UNKNOWN, "health check not allowed", None
            return
        started = time.monotonic()
        try:
            # No redirects: a 3xx is the answer, never a hop to another address. Only the
            # status line is read; nothing of the body or headers is kept or shown.
            async with self._http.get(url, allow_redirects=False) as response:
                seen.probe = HEALTHY if response.status < 400 else UNHEALTHY
                seen.last_error = None if response.status < 400 else f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError):
            seen.probe = UNHEALTHY
            seen.last_error = "unreachable"
        seen.latency_ms = round((time.monotonic() - started) * 1000, 1)
        seen.last_check = self._clock.time()

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

    @property
    def default_environment(self) -> str:
        return self._configs.default_environment

    def registered_environment(self, name: str) -> str | None:
        """The environment `name` is registered in; None when it is not registered."""
        reg = self._services.get(name)
        return reg.environment if reg is not None else None

    def required_configs(self, service: str, environment: str) -> list[str]:
        """Paths a registered service needs in (service, environment): see `Registered`."""
        return self._registered.required_configs(service, environment)

    # -- views ----------------------------------------------------------------------------

    def _view(self, reg: ServiceRegistration) -> ServiceView:
        seen = self._observed.get(reg.name) or Observed(last_heartbeat=self._clock.time())

        def moment(epoch: float | None) -> datetime | None:
            return datetime.fromtimestamp(epoch, UTC) if epoch is not None else None

        missing, missing_optional = self._missing.get(reg.name, ([], []))
        return ServiceView(
            service_name=reg.name,
            display_name=reg.display_name,
            description=reg.description,
            version=reg.version,
            endpoints=reg.endpoints,
            host=reg.host,
            port=reg.port,
            health_check=reg.health_check,
            tags=reg.tags,
            environment=reg.environment,
            is_active=True,
            required_configs=reg.required_configs,
            optional_configs=reg.optional_configs,
            missing_configs=missing,
            missing_optional_configs=missing_optional,
            metadata=reg.metadata,
            ttl_seconds=reg.ttl_seconds,
            registered_at=reg.registered_at,
            registered_by=reg.registered_by,
            status=self._refresh(reg.name) if reg.name in self._observed else UNKNOWN,
            last_heartbeat=moment(seen.last_heartbeat),
            last_check=moment(seen.last_check),
            last_error=seen.last_error,
            latency_ms=seen.latency_ms,
        )

    def list_services(
        self, caller: Caller, *, tag: str | None, environment: str | None, status: str | None
    ) -> Page[ServiceView]:
        authorize(caller, REGISTRY_READ)
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

    def get(self, name: str, caller: Caller) -> ServiceView:
        authorize(caller, REGISTRY_READ)
        reg = self._services.get(name)
        if reg is None:
            raise NotFound(f"no registered service {name!r}")
        return self._view(reg)

    async def missing(self, reg: ServiceRegistration) -> tuple[list[str], list[str]]:
        """(requiredConfigs, optionalConfigs) found neither as a path of the effective
        config of the service's environment nor as the name of one of its live secrets."""
        if not reg.required_configs and not reg.optional_configs:
            return [], []
        config, secrets = await self._configs.present(reg.name, reg.environment)

        def absent(keys: list[str]) -> list[str]:
            return [key for key in missing_paths(config, keys) if key not in secrets]

        return absent(reg.required_configs), absent(reg.optional_configs)

    def missing_counts(self) -> dict[str, tuple[int, int]]:
        """service -> (missing required, missing optional), for /metrics."""
        return {
            name: (len(required), len(optional))
            for name, (required, optional) in self._missing.items()
            if name in self._services and (required or optional)
        }

    # -- writes ---------------------------------------------------------------------------

    def _may_change(self, caller: Caller, name: str) -> None:
        """A registration belongs to its environment: a token limited to some environments
        may change (re-register, deregister, heartbeat) only those in its scope."""
        authorize(
            caller, REGISTRY_WRITE, service=name, environment=self.registered_environment(name)
        )

    async def register(self, body: ServiceRegister, caller: Caller) -> tuple[RegisterResult, bool]:
        name = registration_name(body)
        environment = body.environment or self._configs.default_environment
        authorize(caller, REGISTRY_WRITE, service=name, environment=environment)
        self._may_change(caller, name)
        check_name("environment", environment)
        self._configs.environments.check_write(environment)
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
        if url and not allowed_health_check(url, body, self.health_check_hosts):
            raise Invalid(
                "healthCheck must point at the service's own host and port, or at a host"
                " listed in registry.health_check_hosts",
                errors=[FieldError("$.healthCheck", "host not allowed for health checks")],
            )
        check_registration(body)
        reg = ServiceRegistration(
            name=name,
            display_name=body.display_name,
            description=body.description,
            version=body.version,
            endpoints=body.endpoints,
            host=body.host,
            port=body.port,
            health_check=url,
            tags=body.tags,
            environment=environment,
            required_configs=body.required_configs,
            optional_configs=body.optional_configs,
            metadata=body.metadata,
            ttl_seconds=body.ttl_seconds,
            registered_at=self._clock.now(),
            registered_by=caller.subject,
        )
        created = name not in self._services

        async def plan() -> list[Change]:
            return [self._change(name, "register", reg, caller)]

        await self._committer.commit(plan)
        self._observed[reg.name] = Observed(last_heartbeat=self._clock.time())
        missing, missing_optional = self._missing[reg.name] = await self.missing(reg)
        if url:
            await self._probe(reg.name, url)
        result = RegisterResult(
            service=self._view(reg),
            missing_configs=missing,
            missing_optional_configs=missing_optional,
        )
        return result, created

    async def deregister(self, name: str, caller: Caller) -> None:
        self._may_change(caller, name)

        async def plan() -> list[Change]:
            reg = self._services.get(name)
            if reg is None:
                raise NotFound(f"no registered service {name!r}")
            gone = ServiceRegistration(
                name=name,
                environment=reg.environment,
                registered_at=self._clock.now(),
                registered_by=caller.subject,
                deregistered=True,
            )
            return [self._change(name, "deregister", gone, caller)]

        await self._committer.commit(plan)

    def heartbeat(self, name: str, caller: Caller) -> ServiceView:
        self._may_change(caller, name)
        reg = self._services.get(name)
        if reg is None:
            raise NotFound(f"no registered service {name!r}")
        self._observed.setdefault(name, Observed(last_heartbeat=self._clock.time()))
        self._observed[name].last_heartbeat = self._clock.time()
        return self._view(reg)


def registration_name(body: ServiceRegister) -> str:
    """`serviceName` (the original's) or `name` (fpcd's earlier body): one of them."""
    if body.service_name is not None and body.name is not None and body.service_name != body.name:
        raise Invalid(
            "give serviceName or name, not two different names",
            errors=[FieldError("$.name", "differs from serviceName")],
        )
    name = body.service_name if body.service_name is not None else body.name
    if name is None:
        raise Invalid(
            "serviceName is required",
            errors=[FieldError("$.serviceName", "missing required field")],
        )
    return check_name("service", name)


def _check_url(url: str, path: str, errors: list[FieldError]) -> None:
    parts = urlsplit(url)
    if (
        not _SCHEME.fullmatch(parts.scheme)
        or not parts.netloc
        or any(c.isspace() or ord(c) < 0x20 for c in url)
    ):
        errors.append(FieldError(path, "expected an absolute URL such as http://host:3000"))


def check_registration(body: ServiceRegister) -> None:
    """Bounds and shapes msgspec's field types cannot state (sizes are in the types)."""
    errors: list[FieldError] = []
    for i, url in enumerate(body.endpoints):
        _check_url(url, f"$.endpoints[{i}]", errors)
    for field, keys in (
        ("requiredConfigs", body.required_configs),
        ("optionalConfigs", body.optional_configs),
    ):
        for i, path in enumerate(keys):
            if any(not part for part in path.split(".")):
                errors.append(FieldError(f"$.{field}[{i}]", "empty segment"))
    if len(msgspec.json.encode(body.metadata)) > MAX_METADATA_BYTES:
        errors.append(FieldError("$.metadata", f"larger than {MAX_METADATA_BYTES} bytes"))
    if errors:
        raise Invalid("the registration breaks a size or shape rule", errors=errors)
