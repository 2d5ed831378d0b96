"""What each route needs: one table, checked by the request pipeline before the handler.

A route that is not in the table is refused (a test checks every registered route has a
row). Service-scoped rows name the path parameter that holds the service, so the check
happens before anything is looked up: a 403 never says whether the thing exists.

The table is an early, cheap refusal. The services decide: every service method a door
reaches takes the `Caller` and checks the same rule (`domain.access.authorize`) with
what only it knows (the environment, a service named in a body).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from time import monotonic

from fpcd.domain import access as a
from fpcd.domain.configs import BASE_ENVIRONMENT
from fpcd.settings import RateLimitSettings


@dataclass(frozen=True)
class Rule:
    #: None: public (health probes, the OpenAPI document).
    action: str | None
    #: The path parameter holding the service the action is scoped to.
    service: str | None = None
    #: WebSocket upgrade: the token may also come in the first message.
    websocket: bool = False
    #: Cross-service views (the audit log) need a token limited to no service.
    unrestricted: bool = False
    #: The environment the action always concerns (a schema binds every environment, as
    #: the `default` layer does), so the early check can include it.
    environment: str | None = None


PUBLIC = Rule(None)
#: /metrics: public with metrics.public (a plain Prometheus scrape), else a viewer's.
METRICS_SCRAPE = Rule(a.METRICS_READ)
S = "service"
DEFAULT = BASE_ENVIRONMENT

RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/health/live"): PUBLIC,
    ("GET", "/health/ready"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/metrics"): METRICS_SCRAPE,
    ("GET", "/api/status"): Rule(a.METRICS_READ),
    ("GET", "/"): Rule(None, websocket=True),
    ("GET", "/ws"): Rule(None, websocket=True),
    ("GET", "/api/config"): Rule(a.CONFIG_READ),
    ("GET", "/api/config/{service}"): Rule(a.CONFIG_READ, S),
    ("PUT", "/api/config/{service}"): Rule(a.CONFIG_WRITE, S),
    ("POST", "/api/config/{service}/rollback"): Rule(a.CONFIG_WRITE, S),
    ("POST", "/api/config/{service}/reload"): Rule(a.CONFIG_RELOAD, S),
    ("GET", "/api/config/{service}/history"): Rule(a.CONFIG_READ, S),
    ("GET", "/api/config/{service}/diff"): Rule(a.CONFIG_READ, S),
    ("GET", "/api/config/{service}/schema"): Rule(a.CONFIG_READ, S),
    ("PUT", "/api/config/{service}/schema"): Rule(a.SCHEMA_WRITE, S, environment=DEFAULT),
    ("DELETE", "/api/config/{service}/schema"): Rule(a.SCHEMA_WRITE, S, environment=DEFAULT),
    ("GET", "/api/features"): Rule(a.FLAGS_READ),
    ("POST", "/api/features"): Rule(a.FLAGS_WRITE),
    ("POST", "/api/features/evaluate"): Rule(a.FLAGS_EVALUATE),
    ("POST", "/api/features/evaluations"): Rule(a.FLAGS_EVALUATE),
    ("GET", "/api/features/{key}"): Rule(a.FLAGS_READ),
    ("PUT", "/api/features/{key}"): Rule(a.FLAGS_WRITE),
    ("PATCH", "/api/features/{key}"): Rule(a.FLAGS_WRITE),
    ("DELETE", "/api/features/{key}"): Rule(a.FLAGS_WRITE),
    ("GET", "/api/features/{key}/history"): Rule(a.FLAGS_READ),
    ("GET", "/api/features/{key}/analytics"): Rule(a.FLAGS_READ),
    ("POST", "/api/secrets/rotate-key"): Rule(a.KEYRING_ADMIN),
    ("GET", "/api/keyring"): Rule(a.KEYRING_ADMIN),
    ("POST", "/api/keyring/rotate"): Rule(a.KEYRING_ADMIN),
    ("POST", "/api/keyring/{key_id}/retire"): Rule(a.KEYRING_ADMIN),
    ("GET", "/api/secrets/{service}"): Rule(a.SECRETS_LIST, S),
    ("PUT", "/api/secrets/{service}/{name}"): Rule(a.SECRETS_WRITE, S),
    # Metadata is enough to reach the handler; the value needs secrets:read there.
    ("GET", "/api/secrets/{service}/{name}"): Rule(a.SECRETS_LIST, S),
    ("DELETE", "/api/secrets/{service}/{name}"): Rule(a.SECRETS_WRITE, S),
    ("GET", "/api/secrets/{service}/{name}/versions"): Rule(a.SECRETS_LIST, S),
    ("GET", "/api/audit"): Rule(a.AUDIT_READ, unrestricted=True),
    ("GET", "/api/audit/verify"): Rule(a.AUDIT_READ, unrestricted=True),
    # The registering service is named in the body: the handler checks it.
    ("POST", "/api/services/register"): Rule(a.REGISTRY_WRITE),
    ("GET", "/api/services"): Rule(a.REGISTRY_READ),
    ("GET", "/api/services/{name}"): Rule(a.REGISTRY_READ),
    ("DELETE", "/api/services/{name}"): Rule(a.REGISTRY_WRITE, "name"),
    ("POST", "/api/services/{name}/heartbeat"): Rule(a.REGISTRY_WRITE, "name"),
    # Whole-database operations (routes_portability): every service at once.
    ("GET", "/api/export/{kind}"): Rule(a.DATA_ADMIN, unrestricted=True),
    ("POST", "/api/import/{kind}"): Rule(a.DATA_ADMIN, unrestricted=True),
    ("GET", "/api/backup"): Rule(a.DATA_ADMIN, unrestricted=True),
    # The OpenFeature Remote Evaluation Protocol (routes_ofrep).
    ("GET", "/ofrep/v1/configuration"): Rule(a.FLAGS_EVALUATE),
    ("POST", "/ofrep/v1/evaluate/flags"): Rule(a.FLAGS_EVALUATE),
    ("POST", "/ofrep/v1/evaluate/flags/{key}"): Rule(a.FLAGS_EVALUATE),
    # The web console (routes_ui): its files and its sign-in need no role; what it shows
    # comes from the routes above, authorized for the session's token like any client.
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/{asset}"): PUBLIC,
    ("GET", "/ui/session"): PUBLIC,
    ("POST", "/ui/session"): PUBLIC,
    ("DELETE", "/ui/session"): PUBLIC,
}


def rule_for(method: str, route: str) -> Rule | None:
    """The row for a route template (the resource's canonical path); None for no route
    (404/405 follow) or no row."""
    return RULES.get(("GET" if method == "HEAD" else method, route))


class Bucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate, self.burst = rate, max(burst, rate, 1.0)
        self.tokens, self.last = self.burst, time.monotonic() if now is None else now

    def take(self, now: float) -> float:
        """0 when a request may go; else the seconds until one may."""
        # A `now` read before the bucket was made must not count as negative time: with
        # a burst of 1 that took the first request's token away.
        # (The arithmetic of min(burst, tokens + max(0, now - last) * rate) without the calls:
        # this runs up to three times a request.)
        tokens = self.tokens
        elapsed = now - self.last
        if elapsed > 0:
            tokens += elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self.last = now
        if tokens >= 1:
            self.tokens = tokens - 1
            return 0.0
        self.tokens = tokens
        return (1 - tokens) / self.rate


class RateLimiter:
    """Token buckets per subject, per service and for everyone; 0 turns one off."""

    def __init__(self, settings: RateLimitSettings) -> None:
        self.configure(settings)

    def configure(self, settings: RateLimitSettings) -> None:
        self.settings = settings
        self._subjects: dict[str, Bucket] = {}
        self._services: dict[str, Bucket] = {}
        self._global = (
            Bucket(settings.global_rps, settings.global_rps) if settings.global_rps else None
        )
        # Read once here rather than through `settings` on every request.
        self._per_subject = settings.per_subject_rps
        self._per_service = settings.per_service_rps

    @staticmethod
    def _bucket(
        table: dict[str, Bucket], key: str, rate: float, burst: float, now: float
    ) -> Bucket:
        bucket = table.get(key)
        if bucket is None:
            if len(table) >= 10_000:  # forget idle subjects rather than grow without bound
                table.clear()
            bucket = table[key] = Bucket(rate, burst, now)
        return bucket

    def check(self, subject: str, service: str | None) -> int | None:
        """None when allowed; else a Retry-After in whole seconds."""
        now = monotonic()
        wait = 0.0  # the longest of the buckets' waits (each takes its token regardless)
        if self._per_subject:
            bucket = self._subjects.get(subject) or self._bucket(
                self._subjects,
                subject,
                self._per_subject,
                self.settings.per_subject_burst,
                now,
            )
            wait = bucket.take(now)
        if service is not None and self._per_service:
            bucket = self._services.get(service) or self._bucket(
                self._services, service, self._per_service, self._per_service, now
            )
            waited = bucket.take(now)
            if waited > wait:
                wait = waited
        if self._global is not None:
            waited = self._global.take(now)
            if waited > wait:
                wait = waited
        return None if wait <= 0 else max(1, math.ceil(wait))
