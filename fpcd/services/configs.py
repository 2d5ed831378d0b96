"""ConfigService: versioned configuration per service and environment.

Reads are served from pre-encoded documents kept until a change to the service
arrives, so a cached GET neither touches SQLite nor encodes JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import msgspec

from fpcd.clock import Clock
from fpcd.domain.access import (
    CONFIG_READ,
    CONFIG_RELOAD,
    CONFIG_WRITE,
    METRICS_READ,
    SCHEMA_WRITE,
    SECRETS_READ,
    authorize,
    may,
)
from fpcd.domain.configs import (
    ANY_VERSION,
    BASE_ENVIRONMENT,
    canonical_json,
    check_limits,
    check_name,
    checksum,
    content_checksum,
    deep_merge,
    diff,
    effective_configs,
    missing_paths,
    valid_name,
)
from fpcd.domain.crypto import Secret
from fpcd.domain.errors import FieldError, Invalid, NotFound, PreconditionFailed
from fpcd.domain.instants import utc_from_epoch
from fpcd.domain.model import (
    Caller,
    Change,
    ConfigAction,
    ConfigVersion,
    ReloadRequest,
    SchemaRecord,
    SecretDestroyed,
    SecretVersion,
    ServiceRegistration,
)
from fpcd.services.changes import ChangeMaker, Committer
from fpcd.services.environments import ANY as ANY_ENVIRONMENT
from fpcd.services.environments import Environments
from fpcd.services.events import ChangeApplied, Event, EventBus
from fpcd.services.schema_worker import SchemaRunner
from fpcd.services.secrets import SecretService
from fpcd.store.sqlite import Store
from fpcd.wire import (
    ComponentHealth,
    ConfigDocument,
    DiffChange,
    DiffDocument,
    EnvironmentSummary,
    Page,
    ReloadResult,
    SchemaDocument,
    SecretMeta,
    ServiceConfigSummary,
    VersionView,
    WriteResult,
)

_encoder = msgspec.json.Encoder()
#: The label of config reads of services beyond the cap (or unknown): service names
#: start with a letter or digit, so it never names one.
OTHER_SERVICE = "_other"


class ConfigLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Size rules for one stored document; checked on every door, not just HTTP."""

    max_depth: int = 32
    max_keys: int = 10_000
    max_tags: int = 32
    max_text: int = 1024
    #: Seconds one write's schema validation may take (in the worker process).
    validation_timeout: float = 2.0


#: Checking a schema when it is stored (the meta-schema check is slow on large schemas)
#: may take this many times the budget of one write's validation.
SCHEMA_CHECK_BUDGET = 5


class SchemaCheck(NamedTuple):
    """A schema validation of one write, and what it was run against: the schema version
    and every layer of the service (a check made before the commit lock is reused inside
    it when nothing changed in between)."""

    basis: tuple[Any, ...]
    errors: dict[str, list[FieldError]]


class EncodedDocument(NamedTuple):
    etag: str
    body: bytes


def _etag(version: int, base_version: int | None) -> str:
    """`"<version>"` for a layer, `"<version>+<default version>"` for a merged view.

    `If-Match` compares the leading version only: a write replaces one layer.
    """
    return f'"{version}"' if base_version is None else f'"{version}+{base_version}"'


def _effective_checksum(base: ConfigVersion | None, config: dict[str, Any]) -> str:
    """`checksum` wherever it appears: the effective configuration's, merged over `base`."""
    return checksum(deep_merge(base.config, config) if base is not None else config)


def _version_view(v: ConfigVersion, base: ConfigVersion | None = None) -> VersionView:
    return VersionView(
        version=v.version,
        config=v.config,
        checksum=_effective_checksum(base, v.config),
        layer_checksum=v.checksum,
        created_at=v.created_at,
        created_by=v.created_by,
        description=v.description,
        tags=v.tags,
        action=v.action,
        rolled_back_from=v.rolled_back_from,
        secrets=sorted(v.secret_versions),
    )


class ConfigService:
    def __init__(
        self,
        store: Store,
        committer: Committer,
        bus: EventBus,
        *,
        node_id: str,
        clock: Clock,
        default_environment: str,
        limits: ConfigLimits,
        secrets: SecretService | None = None,
        environments: Environments | None = None,
        max_service_labels: int = 100,
        required_configs: Callable[[str, str], list[str]],
    ) -> None:
        self._store = store
        self._secrets = secrets
        self._committer = committer
        self._clock = clock
        self._change = ChangeMaker(node_id, clock)
        self.default_environment = default_environment
        self.limits = limits
        # service -> (environment, raw, version) -> document; dropped on any change to it.
        self._cache: dict[str, dict[tuple[str, bool, int | None], EncodedDocument]] = {}
        self._generation: dict[str, int] = {}
        #: service -> (its schema record or None, the schema's content hash)
        self._schemas: dict[str, tuple[SchemaRecord | None, str]] = {}
        self.schema_runner = SchemaRunner()
        self._last_reload: dict[tuple[str, str], str] = {}
        #: (service, environment) -> dotted paths a registered service requires there
        #: (`fpcd.services.registry.Registered`).
        self.required_configs = required_configs
        #: Encoded reads served from the cache and built afresh (the /metrics hit ratio).
        self.cache_hits = 0
        self.cache_misses = 0
        #: Declared and written environments: reads and writes of others are refused.
        self.environments = environments or Environments((ANY_ENVIRONMENT,), default_environment)
        #: Services with stored configuration, secrets or a registration.
        self.known_services: set[str] = set()
        #: GETs per service label (a known service, while there are fewer than
        #: `max_service_labels` of them; every other read counts under OTHER_SERVICE).
        self.reads_by_service: dict[str, int] = {}
        self.max_service_labels = max_service_labels
        bus.subscribe(self._on_event)

    async def load(self) -> None:
        """What exists already: services and environments with stored data."""
        layers = [(row.service, row.environment) for row in await self._store.services()]
        layers += await self._store.secret_layers()
        self.known_services.update(service for service, _ in layers)
        self.environments.add_written(environment for _, environment in layers)

    def health(self) -> ComponentHealth:
        """/health's `config`: the encoded-read cache's hits and misses."""
        counts = {"cacheHits": self.cache_hits, "cacheMisses": self.cache_misses}
        return ComponentHealth(status="ok", counts=counts)

    def _count_read(self, service: str) -> None:
        counts = self.reads_by_service
        if service in counts:
            counts[service] += 1
        elif service in self.known_services and len(counts) < self.max_service_labels:
            counts[service] = 1
        else:
            counts[OTHER_SERVICE] = counts.get(OTHER_SERVICE, 0) + 1

    # -- events ------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, ChangeApplied):
            return
        payload = event.change.payload
        if isinstance(payload, ConfigVersion | SecretVersion):
            self.environments.written.add(payload.environment)
            self.known_services.add(payload.service)
        elif isinstance(payload, ServiceRegistration) and not payload.deregistered:
            self.known_services.add(payload.name)
        match payload:
            case (
                ConfigVersion(service=service)
                | SecretVersion(service=service)
                | SecretDestroyed(service=service)
            ):
                self._cache.pop(service, None)
                self._generation[service] = self._generation.get(service, 0) + 1
            case SchemaRecord(service=service):
                self._schemas.pop(service, None)
                self._generation[service] = self._generation.get(service, 0) + 1
            case ReloadRequest() as reload:
                self._last_reload[(reload.service, reload.environment)] = reload.checksum

    def environment(self, environment: str | None) -> str:
        return check_name("environment", environment or self.default_environment)

    # -- reads -------------------------------------------------------------------

    def _may_read(self, caller: Caller, service: str, environment: str) -> None:
        """config:read of (service, environment), then 404 for an environment that does not
        exist (after the permission check, so a 403 reveals nothing)."""
        authorize(caller, CONFIG_READ, service=service, environment=environment)
        self.environments.check_read(environment)

    async def document(
        self,
        service: str,
        environment: str,
        *,
        caller: Caller,
        version: int | None = None,
        raw: bool = False,
        include_secrets: bool = False,
    ) -> ConfigDocument:
        """The effective (or raw) document; secret values only if asked for and permitted."""
        self._may_read(caller, service, environment)
        return await self._document(
            service,
            environment,
            version=version,
            raw=raw,
            reveal_to=caller if include_secrets else None,
        )

    async def _document(
        self,
        service: str,
        environment: str,
        *,
        version: int | None = None,
        raw: bool = False,
        reveal_to: Caller | None = None,
    ) -> ConfigDocument:
        check_name("service", service)
        layer_seq: int | None = None
        if version is None:
            layer = await self._store.config_head(service, environment)
        else:
            found = await self._store.config_version(service, environment, version)
            if found is None:
                raise NotFound(f"{service}/{environment} has no version {version}")
            layer, layer_seq = found
        base: ConfigVersion | None = None
        merged = not raw and environment != BASE_ENVIRONMENT
        if merged:
            if layer_seq is None:
                base = await self._store.config_head(service, BASE_ENVIRONMENT)
            else:  # a historic version merges with `default` as it was at that moment
                base = await self._store.config_version_at(service, BASE_ENVIRONMENT, layer_seq)
        if layer is None and base is None:
            raise NotFound(f"no configuration for {service}/{environment}")
        config: dict[str, Any] = {}
        for part in (base, layer):
            if part is not None:
                config = deep_merge(config, part.config) if config else part.config
        secrets: dict[str, SecretMeta] = {}
        if self._secrets is not None:
            layers = [BASE_ENVIRONMENT, environment] if merged else [environment]
            rows = await self._secrets.layered(service, layers)
            values: dict[str, Secret] = {}
            if (
                reveal_to is not None
                and rows
                and may(reveal_to, SECRETS_READ, service=service, environment=environment)
            ):
                values = await self._secrets.reveal(service, environment, rows, reveal_to)
            secrets = {
                name: SecretMeta(
                    version=row.version,
                    expires_at=utc_from_epoch(row.expires_at)
                    if row.expires_at is not None
                    else None,
                    value=values[name].reveal() if name in values else None,
                )
                for name, row in sorted(rows.items())
            }
        described = layer or base
        assert described is not None
        return ConfigDocument(
            service_name=service,
            environment=environment,
            version=layer.version if layer else 0,
            base_version=base.version if base else None,
            config=config,
            checksum=checksum(config),
            created_at=described.created_at,
            created_by=described.created_by,
            description=described.description,
            tags=described.tags,
            secrets=secrets,
        )

    def cached_document_bytes(
        self,
        service: str,
        environment: str,
        *,
        caller: Caller,
        version: int | None = None,
        raw: bool = False,
    ) -> EncodedDocument | None:
        """`document_bytes` when it is cached (counted as a hit), else None: the REST
        route's hot path, with no coroutine to run (the permission check is dict and set
        lookups)."""
        self._may_read(caller, service, environment)
        return self._cached(service, environment, version, raw)

    def _cached(
        self, service: str, environment: str, version: int | None, raw: bool
    ) -> EncodedDocument | None:
        bucket = self._cache.get(service)
        if bucket is not None and (hit := bucket.get((environment, raw, version))) is not None:
            self._count_read(service)
            self.cache_hits += 1
            return hit
        return None

    async def present(self, service: str, environment: str) -> tuple[dict[str, Any], set[str]]:
        """The effective config of (service, environment) (empty when there is none) and
        the names of its live secrets (its own and the `default` layer's): what a
        registration's requiredConfigs are checked against (for RegistryService, which
        decided who may ask)."""
        try:
            doc = await self._document(service, environment)
        except NotFound:
            if self._secrets is None:
                return {}, set()
            layers = [BASE_ENVIRONMENT, environment] if environment != BASE_ENVIRONMENT else []
            rows = await self._secrets.layered(service, layers or [environment])
            return {}, set(rows)
        return doc.config, set(doc.secrets)

    async def document_bytes(
        self,
        service: str,
        environment: str,
        *,
        caller: Caller,
        version: int | None = None,
        raw: bool = False,
    ) -> EncodedDocument:
        """The encoded GET response and its ETag, from cache when nothing has changed."""
        self._may_read(caller, service, environment)
        hit = self._cached(service, environment, version, raw)
        if hit is not None:
            return hit
        self._count_read(service)
        key = (environment, raw, version)
        self.cache_misses += 1
        generation = self._generation.get(service, 0)
        doc = await self._document(service, environment, version=version, raw=raw)
        encoded = EncodedDocument(_etag(doc.version, doc.base_version), _encoder.encode(doc))
        # A change that landed while we read makes this document stale: don't keep it.
        if self._generation.get(service, 0) == generation:
            bucket = self._cache.setdefault(service, {})
            if len(bucket) >= 256:  # historic reads must not grow the cache without bound
                bucket.clear()
            bucket[key] = encoded
        return encoded

    async def versions_after(
        self, service: str, environment: str, version: int, *, caller: Caller
    ) -> list[int]:
        """Version numbers of a layer after `version`, oldest first (a WebSocket replay)."""
        authorize(caller, CONFIG_READ, service=service, environment=environment)
        head = await self._store.config_head(service, environment, verify=False)
        return list(range(version + 1, head.version + 1)) if head else []

    async def history(
        self, service: str, environment: str, *, caller: Caller, limit: int, offset: int
    ) -> Page[VersionView]:
        self._may_read(caller, service, environment)
        check_name("service", service)
        versions, total = await self._store.config_history(
            service, environment, limit=limit, offset=offset
        )
        if total == 0:
            raise NotFound(f"no configuration for {service}/{environment}")
        bases: dict[int, ConfigVersion] = {}
        if environment != BASE_ENVIRONMENT:
            bases = await self._store.config_bases(
                service, environment, [v.version for v in versions], BASE_ENVIRONMENT
            )
        items = [_version_view(v, bases.get(v.version)) for v in versions]
        return Page(items=items, total=total, limit=limit, offset=offset)

    async def _base(self, service: str, environment: str) -> ConfigVersion | None:
        """The `default` layer a write to `environment` is merged over (None for itself)."""
        if environment == BASE_ENVIRONMENT:
            return None
        return await self._store.config_head(service, BASE_ENVIRONMENT)

    async def _layer(self, service: str, environment: str, version: int) -> ConfigVersion:
        found = await self._store.config_version(service, environment, version)
        if found is None:
            raise NotFound(f"{service}/{environment} has no version {version}")
        return found[0]

    async def diff(
        self,
        service: str,
        environment: str,
        *,
        caller: Caller,
        from_: int | None,
        to: int | None,
    ) -> DiffDocument:
        """Difference between two versions of one layer (default: head and the one before)."""
        self._may_read(caller, service, environment)
        check_name("service", service)
        if to is None:
            head = await self._store.config_head(service, environment, verify=False)
            if head is None:
                raise NotFound(f"no configuration for {service}/{environment}")
            to = head.version
        if from_ is None:
            from_ = max(to - 1, 0)
        old = await self._layer(service, environment, from_) if from_ > 0 else None
        new = await self._layer(service, environment, to)
        old_config = old.config if old else {}
        old_secrets = old.secret_versions if old else {}
        secrets_changed = sorted(
            name
            for name in old_secrets.keys() | new.secret_versions.keys()
            if old_secrets.get(name) != new.secret_versions.get(name)
        )
        return DiffDocument(
            service_name=service,
            environment=environment,
            from_=from_,
            to=to,
            changes=[
                DiffChange(op=op.op, path=op.path, value=op.value, old_value=op.old_value)
                for op in diff(old_config, new.config)
            ],
            secrets_changed=secrets_changed,
        )

    async def services(self, *, caller: Caller) -> Page[ServiceConfigSummary]:
        """The services and environments with configuration that the caller may read."""
        authorize(caller, CONFIG_READ)
        summaries: dict[str, list[EnvironmentSummary]] = {}
        for row in await self._store.services():
            if may(caller, CONFIG_READ, service=row.service, environment=row.environment):
                summaries.setdefault(row.service, []).append(
                    EnvironmentSummary(name=row.environment, version=row.version)
                )
        items = [
            ServiceConfigSummary(service_name=name, environments=envs)
            for name, envs in summaries.items()
        ]
        return Page(items=items, total=len(items), limit=len(items), offset=0)

    async def layer_counts(self, *, caller: Caller) -> tuple[int, int, int]:
        """(services, environments, layers) with configuration, all of them: the status
        view's figures (metrics:read; no names)."""
        authorize(caller, METRICS_READ)
        rows = await self._store.services()
        return (
            len({row.service for row in rows}),
            len({row.environment for row in rows}),
            len(rows),
        )

    # -- writes ------------------------------------------------------------------

    def _check_document(
        self, config: dict[str, Any], secrets: dict[str, Any], description: str, tags: list[str]
    ) -> None:
        limits = self.limits
        errors = check_limits(
            config, max_depth=limits.max_depth, max_keys=limits.max_keys, path="$.config"
        )
        for name, value in secrets.items():
            where = (
                f"$.secrets.{name}"
                if name.isidentifier()
                else (f"$.secrets[{_encoder.encode(name).decode()}]")
            )
            if not valid_name(name):
                errors.append(FieldError(where, "secret names use letters, digits, '.', '_', '-'"))
            elif not isinstance(value, str):
                errors.append(FieldError(where, "a secret value must be a string"))
        if len(description) > limits.max_text:
            errors.append(FieldError("$.description", f"longer than {limits.max_text} characters"))
        if len(tags) > limits.max_tags:
            errors.append(FieldError("$.tags", f"more than {limits.max_tags} tags"))
        for i, tag in enumerate(tags):
            if not tag or len(tag) > 64:
                errors.append(FieldError(f"$.tags[{i}]", "tags are 1-64 characters"))
        if errors:
            raise Invalid("the configuration breaks a size or naming rule", errors=errors)

    async def close(self) -> None:
        await self.schema_runner.close()

    async def _schema(self, service: str) -> tuple[SchemaRecord | None, str]:
        """The service's schema record and its content hash (cached until it changes)."""
        if (cached := self._schemas.get(service)) is not None:
            return cached
        generation = self._generation.get(service, 0)
        record = await self._store.schema(service)
        if record is None or record.schema is None:
            entry: tuple[SchemaRecord | None, str] = (None, "")
        else:
            entry = (record, hashlib.sha256(canonical_json(record.schema)).hexdigest())
        if self._generation.get(service, 0) == generation:  # no change raced with the read
            self._schemas[service] = entry
        return entry

    @staticmethod
    def _basis(
        record: SchemaRecord | None, key: str, layers: dict[str, ConfigVersion]
    ) -> tuple[Any, ...]:
        layer_ids = tuple(sorted((env, v.version, v.checksum) for env, v in layers.items()))
        return (record.version if record else 0, key, layer_ids)

    async def _schema_check(
        self,
        service: str,
        environment: str,
        config: dict[str, Any],
        layers: dict[str, ConfigVersion] | None = None,
    ) -> SchemaCheck:
        """Validate every document the write produces against the service's schema, in the
        worker process under `limits.validation_timeout` (ValidationFailed past it)."""
        record, key = await self._schema(service)
        if record is None or record.schema is None:
            return SchemaCheck((), {})  # nothing to check (and no layers to read)
        if layers is None:
            layers = await self._store.config_layers(service, verify=False)
        basis = self._basis(record, key, layers)
        docs = list(
            effective_configs(environment, config, {e: v.config for e, v in layers.items()})
        )
        found = await self.schema_runner.errors(
            key,
            record.schema,
            [doc for _, doc in docs],
            prefix="$.config",
            budget=self.limits.validation_timeout,
        )
        return SchemaCheck(
            basis, {env: errors for (env, _), errors in zip(docs, found, strict=True)}
        )

    async def _validate(
        self,
        service: str,
        environment: str,
        config: dict[str, Any],
        checked: SchemaCheck | None = None,
        secret_names: Iterable[str] = (),
    ) -> None:
        """The service's schema and (with registry.enforce_required_configs) its registered
        requiredConfigs, on every document the write produces (all environments over
        `default` when `default` is written); a secret of a required name satisfies it.

        `checked` is a schema check made before the commit lock was taken; it stands when
        neither the schema nor any layer changed since, so the slow part of validation
        does not hold up other writers."""
        record, key = await self._schema(service)
        if record is None and not self.required_configs(service, environment):
            return
        layers = await self._store.config_layers(service, verify=False)
        schema_errors: dict[str, list[FieldError]] = {}
        if record is not None:
            if checked is not None and checked.basis == self._basis(record, key, layers):
                schema_errors = checked.errors
            else:
                check = await self._schema_check(service, environment, config, layers)
                schema_errors = check.errors
        secrets = {env: set(v.secret_versions) for env, v in layers.items()}
        secrets[environment] = set(secret_names)
        errors: list[FieldError] = []
        docs = {env: v.config for env, v in layers.items()}
        for env, document in effective_configs(environment, config, docs):
            found = list(schema_errors.get(env, []))
            present = secrets.get(BASE_ENVIRONMENT, set()) | secrets.get(env, set())
            found += [
                FieldError(f"$.config.{path}", "required by the registered service")
                for path in missing_paths(document, self.required_configs(service, env))
                if path not in present
            ]
            for error in found:
                if env != environment:
                    error = FieldError(error.path, f"{error.message} (in '{env}' over default)")
                errors.append(error)
        if errors:
            raise Invalid(
                f"the configuration does not match what {service} requires", errors=errors
            )

    @staticmethod
    def _check_expected(
        service: str, environment: str, head: ConfigVersion | None, expected: int | None
    ) -> None:
        current = head.version if head else 0
        if expected is None or (expected == ANY_VERSION and current > 0) or expected == current:
            return
        raise PreconditionFailed(
            f"{service}/{environment} is at version {current}, not {expected}:"
            " read it again and retry",
            headers={"ETag": _etag(current, None)},
        )

    async def put(
        self,
        service: str,
        environment: str,
        config: dict[str, Any],
        *,
        caller: Caller,
        secrets: dict[str, Any] | None = None,
        description: str = "",
        tags: list[str] | None = None,
        expected_version: int | None = None,
        action: ConfigAction = "update",
    ) -> WriteResult:
        authorize(caller, CONFIG_WRITE, service=service, environment=environment)
        check_name("service", service)
        self.environments.check_write(environment)
        secrets = secrets or {}
        tags = tags or []
        self._check_document(config, secrets, description, tags)
        if secrets and self._secrets is None:
            raise Invalid("secrets are not available on this daemon", errors=[])
        values = {name: Secret(value) for name, value in secrets.items()}
        if self._secrets is not None:
            for name, value in values.items():
                self._secrets.check_value(name, value, f"$.secrets.{name}")
        unchanged: list[ConfigVersion] = []
        bases: list[ConfigVersion | None] = []
        # The schema part of validation runs before the commit lock (it may take up to its
        # budget); inside the lock it is reused unless the schema or a layer changed.
        checked = await self._schema_check(service, environment, config)

        async def plan() -> list[Change]:
            head = await self._store.config_head(service, environment, verify=False)
            self._check_expected(service, environment, head, expected_version)
            secret_changes: list[Change] = []
            refs = dict(head.secret_versions) if head else {}
            if values:
                assert self._secrets is not None
                written, secret_changes = await self._secrets.plan_values(
                    service, environment, values, caller
                )
                refs.update(written)
            content = content_checksum(config, refs)
            bases.append(await self._base(service, environment))
            if head is not None and head.checksum == content:
                unchanged.append(head)
                return []
            await self._validate(service, environment, config, checked, refs)
            version = ConfigVersion(
                service=service,
                environment=environment,
                version=(head.version if head else 0) + 1,
                config=config,
                checksum=content,
                secret_versions=refs,
                description=description,
                tags=tags,
                action=action,
                created_at=self._clock.now(),
                created_by=caller.subject,
            )
            return [
                *secret_changes,
                self._change(f"{service}/{environment}", "put", version, caller),
            ]

        applied = await self._committer.commit(plan)
        if unchanged:
            head = unchanged[0]
            return WriteResult(
                service_name=service,
                environment=environment,
                version=head.version,
                changed=False,
                checksum=_effective_checksum(bases[-1], head.config),
                layer_checksum=head.checksum,
            )
        stored = applied[-1].payload
        assert isinstance(stored, ConfigVersion)
        return WriteResult(
            service_name=service,
            environment=environment,
            version=stored.version,
            changed=True,
            checksum=_effective_checksum(bases[-1], stored.config),
            layer_checksum=stored.checksum,
            created_at=stored.created_at,
        )

    async def rollback(
        self,
        service: str,
        environment: str,
        version: int,
        *,
        caller: Caller,
        description: str | None = None,
        expected_version: int | None = None,
    ) -> WriteResult:
        """Write version k's content as a new head; history never rewinds."""
        authorize(caller, CONFIG_WRITE, service=service, environment=environment)
        check_name("service", service)
        unchanged: list[ConfigVersion] = []
        bases: list[ConfigVersion | None] = []
        checked: SchemaCheck | None = None
        try:
            old_layer = await self._layer(service, environment, version)
        except NotFound:
            pass  # the plan says so, after the If-Match check
        else:
            checked = await self._schema_check(service, environment, old_layer.config)

        async def plan() -> list[Change]:
            head = await self._store.config_head(service, environment, verify=False)
            self._check_expected(service, environment, head, expected_version)
            target = await self._layer(service, environment, version)
            assert head is not None
            bases.append(await self._base(service, environment))
            # Content only: secrets are versioned on their own and stay as they are.
            content = content_checksum(target.config, head.secret_versions)
            if head.checksum == content:
                unchanged.append(head)
                return []
            await self._validate(service, environment, target.config, checked, head.secret_versions)
            restored = ConfigVersion(
                service=service,
                environment=environment,
                version=head.version + 1,
                config=target.config,
                checksum=content,
                secret_versions=head.secret_versions,
                description=description or f"rollback to version {version}",
                tags=target.tags,
                action="rollback",
                rolled_back_from=version,
                created_at=self._clock.now(),
                created_by=caller.subject,
            )
            return [self._change(f"{service}/{environment}", "put", restored, caller)]

        applied = await self._committer.commit(plan)
        if unchanged:
            head = unchanged[0]
            return WriteResult(
                service_name=service,
                environment=environment,
                version=head.version,
                changed=False,
                checksum=_effective_checksum(bases[-1], head.config),
                layer_checksum=head.checksum,
            )
        stored = applied[0].payload
        assert isinstance(stored, ConfigVersion)
        return WriteResult(
            service_name=service,
            environment=environment,
            version=stored.version,
            changed=True,
            checksum=_effective_checksum(bases[-1], stored.config),
            layer_checksum=stored.checksum,
            created_at=stored.created_at,
            rolled_back_from=version,
        )

    # -- schema --------------------------------------------------------------------

    @staticmethod
    def _schema_document(record: SchemaRecord, violations: list[dict[str, Any]]) -> SchemaDocument:
        return SchemaDocument(
            service_name=record.service,
            version=record.version,
            schema=record.schema,
            updated_at=record.updated_at,
            updated_by=record.updated_by,
            violations=violations,
        )

    async def schema(self, service: str, *, caller: Caller) -> SchemaDocument:
        authorize(caller, CONFIG_READ, service=service)
        check_name("service", service)
        record = await self._store.schema(service)
        if record is None or record.schema is None:
            raise NotFound(f"{service} has no schema")
        return self._schema_document(record, [])

    async def put_schema(
        self, service: str, schema: dict[str, Any] | None, *, caller: Caller
    ) -> SchemaDocument:
        """Store (or with None, remove) a schema; current configs that break it are reported.

        A schema binds every environment of the service, as the `default` layer does: a
        token limited to some environments may not change it unless `default` is one."""
        authorize(caller, SCHEMA_WRITE, service=service, environment=BASE_ENVIRONMENT)
        check_name("service", service)
        if schema is not None:
            errors = check_limits(
                schema,
                max_depth=self.limits.max_depth,
                max_keys=self.limits.max_keys,
                path="$.schema",
            )
            if errors:
                raise Invalid("the schema breaks a size rule", errors=errors)
            key = hashlib.sha256(canonical_json(schema)).hexdigest()
            problems = await self.schema_runner.check(
                key, schema, budget=SCHEMA_CHECK_BUDGET * self.limits.validation_timeout
            )
            if problems:
                raise Invalid(
                    "the schema is not a valid JSON Schema (2020-12) fpcd can apply",
                    errors=problems,
                )
        violations = await self._violations(service, schema) if schema is not None else []

        async def plan() -> list[Change]:
            old = await self._store.schema(service)
            if schema is None and (old is None or old.schema is None):
                raise NotFound(f"{service} has no schema")
            record = SchemaRecord(
                service=service,
                schema=schema,
                version=(old.version if old else 0) + 1,
                updated_at=self._clock.now(),
                updated_by=caller.subject,
            )
            return [self._change(service, "put" if schema else "delete", record, caller)]

        applied = await self._committer.commit(plan)
        record = applied[0].payload
        assert isinstance(record, SchemaRecord)
        return self._schema_document(record, violations)

    async def _violations(self, service: str, schema: dict[str, Any]) -> list[dict[str, Any]]:
        """Where the service's current configurations break a new schema (reported, not
        refused); validation past its budget refuses the schema, as it would every write."""
        layers = await self._store.config_layers(service, verify=False)
        docs = {env: v.config for env, v in layers.items()}
        effective = {
            env: deep_merge(docs.get(BASE_ENVIRONMENT, {}), docs[env])
            if env != BASE_ENVIRONMENT
            else docs[env]
            for env in sorted(docs)
        }
        if not effective:
            return []
        key = hashlib.sha256(canonical_json(schema)).hexdigest()
        found = await self.schema_runner.errors(
            key,
            schema,
            list(effective.values()),
            prefix="$.config",
            budget=self.limits.validation_timeout,
        )
        return [
            {"environment": env, "errors": [{"path": e.path, "message": e.message} for e in errors]}
            for env, errors in zip(effective, found, strict=True)
            if errors
        ]

    # -- reload --------------------------------------------------------------------

    async def reload(
        self, service: str, environment: str, *, force: bool, caller: Caller
    ) -> ReloadResult:
        """Ask holders of (service, environment) to reload; a no-op when nothing changed.

        Without `force`, a reload is skipped when the effective configuration is
        the one the previous reload of the same service and environment sent.
        """
        authorize(caller, CONFIG_RELOAD, service=service, environment=environment)
        doc = await self._document(service, environment)
        if not force and self._last_reload.get((service, environment)) == doc.checksum:
            return ReloadResult(
                service_name=service,
                environment=environment,
                version=doc.version,
                reloaded=False,
                message="configuration unchanged since the last reload; use force to reload",
            )
        request = ReloadRequest(
            service=service,
            environment=environment,
            version=doc.version,
            checksum=doc.checksum,
            force=force,
        )

        async def plan() -> list[Change]:
            return [self._change(f"{service}/{environment}", "reload", request, caller)]

        await self._committer.commit(plan)
        self._cache.pop(service, None)
        return ReloadResult(
            service_name=service,
            environment=environment,
            version=doc.version,
            reloaded=True,
            message="reload sent to subscribers",
        )
