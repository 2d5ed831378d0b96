"""Wire shapes: everything that crosses a process boundary, for the daemon's doors, the
Python client and the OpenAPI document alike.

This module: REST request bodies and response documents. `fpcd.wire.live`: the
WebSocket protocol; `fpcd.wire.flagsocket`: the flag socket's lines.

Request bodies forbid unknown fields so a typo (`enviroment`) is an error with its
path rather than a silently ignored value. Responses use the seed's camelCase
names and omit nothing a client may rely on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

from fpcd.domain.flags import EvaluationContext, EvaluationResult, FlagDefinition
from fpcd.domain.model import (
    ConfigAction,
    ConfigVersion,
    DestroyReason,
    FlagRecord,
    KeyState,
    SchemaRecord,
    ServiceRegistration,
)
from fpcd.domain.names import FLAG_KEY_PATTERN

T = TypeVar("T")

#: Version numbers: positive, and small enough for SQLite and JSON numbers everywhere.
VersionNumber = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
ExpectedVersion = Annotated[int, msgspec.Meta(ge=0, le=2**53)]


class Body(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    """Base of request bodies: unknown fields are refused, names are camelCase."""


class View(msgspec.Struct, rename="camel", kw_only=True):
    """Base of response documents."""


class Page(View, Generic[T], kw_only=True):
    """Every list: `{items, total, limit, offset}`."""

    items: list[T]
    total: int
    limit: int
    offset: int


# -- configuration --------------------------------------------------------------


class ConfigPut(Body, kw_only=True):
    """`PUT /api/config/{service}`."""

    environment: str | None = None
    config: dict[str, Any]
    #: Values are checked to be strings by the service, which can name the failing key.
    secrets: dict[str, Any] = {}
    description: str = msgspec.field(default="")
    tags: list[str] = []
    #: Same as `If-Match`: refuse the write unless the head is this version (0: none yet).
    expected_version: ExpectedVersion | None = None


class ConfigRollback(Body, kw_only=True):
    environment: str | None = None
    version: VersionNumber
    description: str | None = None
    expected_version: ExpectedVersion | None = None


class ConfigReload(Body, kw_only=True):
    environment: str | None = None
    force: bool = False


class SecretPut(Body, kw_only=True):
    """`PUT /api/secrets/{service}/{name}`: the value and an optional expiry."""

    value: str
    expires_at: datetime | None = None
    #: At most ten years.
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=315_360_000)] | None = None
    description: str = ""


class SecretView(View, kw_only=True, omit_defaults=True):
    """A secret version's metadata; `value` only on a permitted decrypting read."""

    service_name: str
    environment: str
    name: str
    version: int
    description: str = ""
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    access_count: int = 0
    last_accessed_at: datetime | None = None
    #: Set once the ciphertext is gone.
    destroyed: DestroyReason | None = None
    value: str | None = None


class KeyStatus(View, kw_only=True):
    id: str
    state: KeyState
    created_at: datetime
    ciphertexts: int


class RotationStatus(View, kw_only=True):
    running: bool
    #: Ciphertexts still under an older key.
    remaining: int
    #: Ciphertexts that failed authentication and were left alone.
    failed: int


class KeyringStatus(View, kw_only=True):
    keys: list[KeyStatus]
    rotation: RotationStatus
    #: Some data key is still wrapped under `secrets.previous_encryption_key` only
    #: (a master key rotation has not finished): the previous key is still needed.
    previous_master_key_needed: bool = False


class SecretMeta(View, kw_only=True, omit_defaults=True):
    version: int
    expires_at: datetime | None = None
    value: str | None = None


class ConfigDocument(View, kw_only=True):
    """`GET /api/config/{service}`: the effective (or raw) configuration."""

    service_name: str
    environment: str
    version: int
    #: Version of the `default` layer merged underneath; absent for a raw layer.
    base_version: int | None = None
    config: dict[str, Any]
    checksum: str
    created_at: datetime | None
    created_by: str | None
    description: str
    tags: list[str]
    secrets: dict[str, SecretMeta]


class VersionView(View, kw_only=True, omit_defaults=True):
    """One entry of a layer's history."""

    version: int
    config: dict[str, Any]
    #: The effective configuration's checksum at this version (what GET `?version=` and
    #: WebSocket updates carry), as everywhere `checksum` appears.
    checksum: str
    #: The stored layer's content checksum (its config and secret versions).
    layer_checksum: str = ""
    created_at: datetime
    created_by: str
    description: str = ""
    tags: list[str] = []
    action: ConfigAction = "update"
    rolled_back_from: int | None = None
    secrets: list[str] = []


class WriteResult(View, kw_only=True, omit_defaults=True):
    """Result of a config write or rollback; `changed` false means no version was made."""

    service_name: str
    environment: str
    version: int
    changed: bool
    #: The effective configuration's checksum after the write (what a GET now returns).
    checksum: str
    #: The stored layer's content checksum (its config and secret versions).
    layer_checksum: str = ""
    created_at: datetime | None = None
    rolled_back_from: int | None = None


class DiffChange(View, kw_only=True, omit_defaults=True):
    op: str
    path: str
    value: Any = None
    old_value: Any = None


class DiffDocument(View, kw_only=True):
    service_name: str
    environment: str
    from_: int = msgspec.field(name="from")
    to: int
    changes: list[DiffChange]
    #: Names of secrets added, removed or changed (never their values).
    secrets_changed: list[str]


class EnvironmentSummary(View, kw_only=True):
    name: str
    version: int


class ServiceConfigSummary(View, kw_only=True):
    service_name: str
    environments: list[EnvironmentSummary]


class SchemaDocument(View, kw_only=True, omit_defaults=True):
    service_name: str
    version: int
    schema: dict[str, Any] | None
    updated_at: datetime
    updated_by: str
    #: Current configurations that the new schema rejects (the write is still accepted).
    violations: list[dict[str, Any]] = []


class ReloadResult(View, kw_only=True, omit_defaults=True):
    service_name: str
    environment: str
    version: int
    reloaded: bool
    message: str


# -- audit --------------------------------------------------------------------------


class AuditView(View, kw_only=True):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    request_id: str
    prev_hash: str
    hash: str


class AuditBreak(View, kw_only=True):
    id: int
    reason: str


class AuditVerifyResult(View, kw_only=True):
    ok: bool
    entries: int
    breaks: list[AuditBreak]


# -- health -------------------------------------------------------------------------

#: `down` in a critical component makes the daemon `down` (503); anywhere else, `degraded`.
HealthStatus = Literal["ok", "degraded", "down"]


class ComponentHealth(View, kw_only=True, omit_defaults=True):
    status: HealthStatus
    detail: str | None = None
    latency_ms: float | None = None
    #: Gauges of the component (e.g. WebSocket connections and subscriptions).
    counts: dict[str, int] | None = None


class HealthDocument(View, kw_only=True):
    status: HealthStatus
    version: str
    uptime_seconds: float
    node_id: str
    components: dict[str, ComponentHealth]


class FlagUsage(View, kw_only=True):
    key: str
    evaluations: int
    enabled: int


class StatusDocument(View, kw_only=True):
    """`GET /api/status`, what `fpcd status` prints: health plus what this host holds."""

    health: HealthDocument
    services: int
    environments: int
    #: Config layers and the highest version number among them.
    config_layers: int
    flags: int
    #: The most evaluated flags since the daemon started, most first.
    top_flags: list[FlagUsage]
    #: Performance checks breached now: name -> what is wrong.
    alerts: dict[str, str]


# -- flags --------------------------------------------------------------------------


class FlagView(FlagDefinition, kw_only=True, forbid_unknown_fields=False):
    """A flag version as every door shows it (`/api/features` answers, FEATURE_FLAG_UPDATE,
    the client's cache file): its definition with `key` set, then the version's metadata.
    Being a definition, it compiles as one (`compile_flag`)."""

    key: str
    version: int
    archived: bool
    created_at: datetime
    updated_at: datetime
    updated_by: str
    #: Only in answers to PUT and PATCH: false when the write made no new version.
    changed: bool | msgspec.UnsetType = msgspec.UNSET

    @classmethod
    def of(
        cls, record: FlagRecord, *, changed: bool | msgspec.UnsetType = msgspec.UNSET
    ) -> FlagView:
        fields = msgspec.structs.asdict(record.definition)
        fields["key"] = record.key
        return cls(
            **fields,
            version=record.version,
            archived=record.archived,
            created_at=record.created_at,
            updated_at=record.updated_at,
            updated_by=record.updated_by,
            changed=changed,
        )

    def definition(self) -> FlagDefinition:
        """The definition alone (what PUT takes), without the version's metadata."""
        return FlagDefinition(**{f: getattr(self, f) for f in FlagDefinition.__struct_fields__})


class AnalyticsDay(View, kw_only=True):
    date: str
    total: int
    enabled: int
    #: That day's evaluations per served variant (the web console's chart).
    variants: dict[str, int] = {}


class FlagAnalyticsDocument(View, kw_only=True):
    flag_key: str
    start_date: datetime
    end_date: datetime
    total: int
    enabled: int
    disabled: int
    variants: dict[str, int]
    reasons: dict[str, int]
    daily: list[AnalyticsDay]


class EvaluateRequest(Body, kw_only=True):
    """`POST /api/features/evaluate`: `flags` omitted means every active flag."""

    flags: list[str] | None = None
    context: EvaluationContext = msgspec.field(default_factory=EvaluationContext)


class EvaluateResponse(View, kw_only=True):
    results: dict[str, EvaluationResult]


#: Flag keys as stored (the same rule as the `/api/features/{key}` path).
FlagKey = Annotated[str, msgspec.Meta(pattern=f"^{FLAG_KEY_PATTERN}$")]
#: The reasons of evaluations that count (an evaluation that failed is not counted).
Reason = Literal["STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "DEFAULT"]


class EvaluationCount(Body, kw_only=True):
    """Evaluations a client made locally: one (flag, hour, variant, enabled, reason) cell."""

    flag: FlagKey
    #: The variant served; None (or absent) when none was.
    variant: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    enabled: bool
    reason: Reason
    #: Hours since the Unix epoch (UTC) in which the evaluations happened.
    hour: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    count: Annotated[int, msgspec.Meta(ge=1, le=2**31)]


class EvaluationCounts(Body, kw_only=True):
    """`POST /api/features/evaluations`: counts from clients that evaluate locally."""

    counts: Annotated[list[EvaluationCount], msgspec.Meta(max_length=10_000)]


class EvaluationCountsResult(View, kw_only=True):
    #: Evaluations added to the flags' analytics.
    accepted: int
    #: Evaluations dropped: unknown flags, or hours more than 30 days old or in the future.
    ignored: int


# -- service registry ---------------------------------------------------------------


class HealthCheckSpec(Body, kw_only=True):
    url: str


#: Bounds of a registration's fields (docs/limits.md, "Service registry").
_Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
_ConfigKey = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_ConfigKeys = Annotated[list[_ConfigKey], msgspec.Meta(max_length=256)]


class ServiceRegister(Body, kw_only=True):
    """`POST /api/services/register`: the original's body (`serviceName`, `displayName`,
    `description`, `version`, `endpoints`, `healthCheck`, `requiredConfigs`,
    `optionalConfigs`, `environment`, `tags`), or fpcd's earlier one (`name`, `host`,
    `port`), plus `metadata` and `ttlSeconds`."""

    service_name: str | None = None
    #: fpcd's earlier name for `serviceName` (give one of the two).
    name: str | None = None
    display_name: Annotated[str, msgspec.Meta(max_length=256)] = ""
    description: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    version: Annotated[str, msgspec.Meta(max_length=128)] = ""
    endpoints: Annotated[list[_Url], msgspec.Meta(max_length=32)] = []
    host: Annotated[str, msgspec.Meta(max_length=253)] = ""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    #: A URL, or `{"url": ...}`.
    health_check: Annotated[str, msgspec.Meta(max_length=2048)] | HealthCheckSpec | None = None
    tags: Annotated[list[_Label], msgspec.Meta(max_length=32)] = []
    environment: str | None = None
    required_configs: _ConfigKeys = []
    optional_configs: _ConfigKeys = []
    metadata: Annotated[dict[str, Any], msgspec.Meta(max_length=64)] = {}
    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=315_360_000)] | None = None


ServiceStatus = Literal["healthy", "degraded", "unhealthy", "unknown", "stale"]


class ServiceView(View, kw_only=True, omit_defaults=True):
    """A registered service: the original's field names, then fpcd's extras."""

    service_name: str
    display_name: str = ""
    description: str = ""
    version: str = ""
    endpoints: list[str] = []
    health_check: str = ""
    required_configs: list[str] = []
    optional_configs: list[str] = []
    environment: str
    tags: list[str] = []
    is_active: bool
    host: str = ""
    port: int | None = None
    metadata: dict[str, Any] = {}
    ttl_seconds: int | None = None
    registered_at: datetime
    registered_by: str
    #: degraded: requiredConfigs missing.
    status: ServiceStatus
    last_heartbeat: datetime | None = None
    last_check: datetime | None = None
    last_error: str | None = None
    #: How long the last health probe took, in milliseconds.
    latency_ms: float | None = None
    #: requiredConfigs found neither in the effective config nor among the secrets.
    missing_configs: list[str]
    #: optionalConfigs found in neither: reported, never a problem.
    missing_optional_configs: list[str]


class RegisterResult(View, kw_only=True):
    service: ServiceView
    #: requiredConfigs absent from the service's current config and secrets.
    missing_configs: list[str]
    #: optionalConfigs absent likewise (missing but optional).
    missing_optional_configs: list[str]


# -- export and import (fpcd export / import / import-fineprint) ---------------------
# Records travel as fpcd's own change payloads (fpcd.domain.model, snake_case), the form
# the upstream change log carries: new fields added by later releases come along.

#: At most this many records per import request (the CLI sends batches).
IMPORT_BATCH = 500
ImportSource = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]


class ImportConfigVersions(Body, kw_only=True):
    """`POST /api/import/configs`: versions with their numbers, authors and times."""

    items: Annotated[list[ConfigVersion], msgspec.Meta(max_length=IMPORT_BATCH)]


class ImportSchemas(Body, kw_only=True):
    items: Annotated[list[SchemaRecord], msgspec.Meta(max_length=IMPORT_BATCH)]


class ImportFlagVersions(Body, kw_only=True):
    items: Annotated[list[FlagRecord], msgspec.Meta(max_length=IMPORT_BATCH)]


class ImportServices(Body, kw_only=True):
    items: Annotated[list[ServiceRegistration], msgspec.Meta(max_length=IMPORT_BATCH)]


class ImportedCount(Body, kw_only=True):
    """Evaluations counted elsewhere (another fpcd, the original service) in one cell."""

    flag: FlagKey
    variant: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    enabled: bool
    #: An OpenFeature reason; `UNKNOWN` when the source did not record one.
    reason: Annotated[str, msgspec.Meta(pattern=r"^[A-Z_]{1,32}$")]
    hour: Annotated[int, msgspec.Meta(ge=0, le=2**31)]
    count: Annotated[int, msgspec.Meta(ge=0, le=2**53)]


class ImportAnalytics(Body, kw_only=True):
    """`POST /api/import/analytics`: each cell's total in `source`; a second import of the
    same source adds only what grew since the first."""

    source: ImportSource
    counts: Annotated[list[ImportedCount], msgspec.Meta(max_length=10_000)]


class ImportedNote(Body, kw_only=True):
    """A history entry from elsewhere, kept as an audit note (its own time in details)."""

    action: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    #: Unique per note: a note whose target is already in the audit log is skipped.
    target: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    details: dict[str, Any] = {}


class ImportNotes(Body, kw_only=True):
    items: Annotated[list[ImportedNote], msgspec.Meta(max_length=IMPORT_BATCH)]


class ImportSkip(View, kw_only=True):
    key: str
    reason: str


class ImportResult(View, kw_only=True):
    """What an import request did: records written, and the others with the reason."""

    imported: int
    skipped: list[ImportSkip]
