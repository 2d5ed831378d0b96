"""Who may do what: roles, actions, and the service/environment limits a token carries.

The permission table in docs/security.md is this module; tests walk every row.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from fpcd.domain.errors import Forbidden
from fpcd.domain.model import Caller

# Actions a route or a door needs.
CONFIG_READ = "config:read"
CONFIG_WRITE = "config:write"
SCHEMA_WRITE = "schema:write"
CONFIG_RELOAD = "config:reload"
FLAGS_READ = "flags:read"
FLAGS_WRITE = "flags:write"
FLAGS_EVALUATE = "flags:evaluate"
SECRETS_LIST = "secrets:list"
SECRETS_WRITE = "secrets:write"
SECRETS_READ = "secrets:read"
KEYRING_ADMIN = "keyring:admin"
AUDIT_READ = "audit:read"
REGISTRY_READ = "registry:read"
REGISTRY_WRITE = "registry:write"
#: Operational views: /metrics and /api/status.
METRICS_READ = "metrics:read"
#: Whole-database operations: export, import, backup (admin only).
DATA_ADMIN = "data:admin"

ACTIONS = (
    CONFIG_READ, CONFIG_WRITE, SCHEMA_WRITE, CONFIG_RELOAD, FLAGS_READ, FLAGS_WRITE,
    FLAGS_EVALUATE, SECRETS_LIST, SECRETS_WRITE, SECRETS_READ, KEYRING_ADMIN, AUDIT_READ,
    REGISTRY_READ, REGISTRY_WRITE, METRICS_READ, DATA_ADMIN,
)  # fmt: skip

#: Actions scoped to one service: a token's `services` claim limits them.
SERVICE_SCOPED = {
    CONFIG_READ,
    CONFIG_WRITE,
    SCHEMA_WRITE,
    CONFIG_RELOAD,
    SECRETS_LIST,
    SECRETS_WRITE,
    SECRETS_READ,
    REGISTRY_WRITE,
}

ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset(ACTIONS),
    "editor": frozenset({
        CONFIG_READ, CONFIG_WRITE, SCHEMA_WRITE, CONFIG_RELOAD, FLAGS_READ, FLAGS_WRITE,
        FLAGS_EVALUATE, SECRETS_LIST, SECRETS_WRITE, AUDIT_READ, REGISTRY_READ,
        REGISTRY_WRITE, METRICS_READ,
    }),
    "viewer": frozenset({CONFIG_READ, FLAGS_READ, FLAGS_EVALUATE, SECRETS_LIST, AUDIT_READ,
                         REGISTRY_READ, METRICS_READ}),
    "service": frozenset({CONFIG_READ, FLAGS_READ, FLAGS_EVALUATE, SECRETS_LIST,
                          REGISTRY_READ, REGISTRY_WRITE}),
}  # fmt: skip

#: Scopes a token may add to its role(s); anything else in `scopes` is ignored.
GRANTABLE_SCOPES = {SECRETS_READ, METRICS_READ}


#: roles -> scopes -> granted actions. Two dict lookups on hashes Python keeps (the
#: strings' and the frozenset's), no key tuple built: services check every call, the
#: cached config GET and flag evaluation included.
_GRANTED: dict[tuple[str, ...], dict[frozenset[str], frozenset[str]]] = {}


def granted(caller: Caller) -> frozenset[str]:
    """Every action the caller's roles and scopes allow."""
    by_scopes = _GRANTED.get(caller.roles)
    if by_scopes is not None:
        found = by_scopes.get(caller.scopes)
        if found is not None:
            return found
    if len(_GRANTED) >= 1024:  # roles come from tokens: never grow without bound
        _GRANTED.clear()
    actions = _grant(caller.roles, caller.scopes)
    by_scopes = _GRANTED.setdefault(caller.roles, {})
    if len(by_scopes) >= 1024:
        by_scopes.clear()
    by_scopes[caller.scopes] = actions
    return actions


def _grant(roles: tuple[str, ...], scopes: frozenset[str]) -> frozenset[str]:
    if "*" in scopes:
        return frozenset(ACTIONS)
    actions: set[str] = set()
    for role in roles:
        actions |= ROLES.get(role, frozenset())
    actions |= scopes & GRANTABLE_SCOPES
    return frozenset(actions)


def matches(patterns: tuple[str, ...] | None, name: str) -> bool:
    """None means unrestricted; otherwise a name or glob (`web-*`) must match."""
    return patterns is None or any(fnmatchcase(name, p) for p in patterns)


def service_patterns(caller: Caller) -> tuple[str, ...] | None:
    # A workload identity reaches only the services it names; people default to all.
    if (
        caller.services is None
        and "service" in caller.roles
        and "*" not in caller.scopes
        and (not set(caller.roles) - {"service"})
    ):
        return ()
    return caller.services


def may(
    caller: Caller, action: str, *, service: str | None = None, environment: str | None = None
) -> bool:
    if action not in granted(caller):
        return False
    if (
        service is not None
        and action in SERVICE_SCOPED
        and not matches(service_patterns(caller), service)
    ):
        return False
    return environment is None or matches(caller.environments, environment)


def authorize(
    caller: Caller, action: str, *, service: str | None = None, environment: str | None = None
) -> None:
    """Raise 403 unless allowed; the message never says whether the thing exists.

    Services call this first thing in every method a door reaches (the route table's check
    in the request pipeline is only an early refusal of the same rule)."""
    if not may(caller, action, service=service, environment=environment):
        where = f" on {service}" if service else ""
        where += f" in {environment}" if environment else ""
        raise Forbidden(f"this token does not allow {action}{where}")


def unrestricted(caller: Caller) -> bool:
    """Sees every service and environment (needed for cross-service views like audit)."""
    return service_patterns(caller) is None and caller.environments is None


def authorize_everywhere(caller: Caller, action: str) -> None:
    """`authorize` for a view that spans every service (the audit log, export, backup):
    a token limited to some services or environments may not have it."""
    authorize(caller, action)
    if not unrestricted(caller):
        raise Forbidden("this view spans every service: it needs a token limited to none")
