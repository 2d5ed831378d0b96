"""SecretService: encrypted secret versions, reads that are audited, expiry and rotation.

Plaintext exists only as a `Secret` between decryption and the response; it never
goes into a Change, the audit log, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fpcd.aio import Backoff
from fpcd.clock import Clock
from fpcd.domain.access import (
    KEYRING_ADMIN,
    SECRETS_LIST,
    SECRETS_READ,
    SECRETS_WRITE,
    authorize,
    may,
)
from fpcd.domain.configs import BASE_ENVIRONMENT
from fpcd.domain.crypto import (
    KeyMismatch,
    Keyring,
    Secret,
    TamperedError,
    secret_aad,
)
from fpcd.domain.errors import (
    Conflict,
    FieldError,
    Forbidden,
    FpcdError,
    Gone,
    Invalid,
    NotFound,
    Unavailable,
)
from fpcd.domain.instants import RANGE, checked_utc, in_range, utc_from_epoch
from fpcd.domain.model import (
    Caller,
    Change,
    DataKey,
    RewrapItem,
    SecretDestroyed,
    SecretRead,
    SecretRewrap,
    SecretVersion,
    rfc3339,
)
from fpcd.domain.names import check_name
from fpcd.services.changes import ChangeMaker, Committer
from fpcd.services.environments import ANY as ANY_ENVIRONMENT
from fpcd.services.environments import Environments
from fpcd.services.events import ChangeApplied, Event, EventBus
from fpcd.services.keyring import MasterKeys, new_data_key
from fpcd.services.scheduler import Scheduler
from fpcd.store.sqlite import PendingRead, SecretRow, Store
from fpcd.wire import (
    ComponentHealth,
    KeyringStatus,
    KeyStatus,
    Page,
    RotationStatus,
    SecretView,
)

log = logging.getLogger("fpcd.secrets")


class IntegrityError(FpcdError):
    """Stored secret data failed authentication: it was edited or moved. Never returned."""

    status = 500
    slug = "integrity"
    title = "Secret failed its integrity check"


def _iso(epoch: float | None) -> datetime | None:
    """A stored epoch for display; clamped, so an out-of-range one never breaks a read."""
    return utc_from_epoch(epoch) if epoch is not None else None


def secret_view(row: SecretRow, value: Secret | None = None) -> SecretView:
    return SecretView(
        service_name=row.service,
        environment=row.environment,
        name=row.name,
        version=row.version,
        description=row.description,
        created_at=datetime.fromisoformat(row.created_at),
        created_by=row.created_by,
        expires_at=_iso(row.expires_at),
        access_count=row.access_count,
        last_accessed_at=datetime.fromisoformat(row.last_accessed_at)
        if row.last_accessed_at
        else None,
        destroyed=row.destroyed,
        value=value.reveal() if value is not None else None,
    )


class SecretService:
    def __init__(
        self,
        store: Store,
        committer: Committer,
        bus: EventBus,
        *,
        keyring: Keyring,
        master: MasterKeys,
        scheduler: Scheduler,
        node_id: str,
        clock: Clock,
        max_value_bytes: int,
        rewrap_batch: int = 100,
        push_batch: int = 200,
        environments: Environments | None = None,
    ) -> None:
        self._store = store
        self._committer = committer
        #: Reads of an environment that does not exist are 404, writes 422.
        self._environments = environments or Environments((ANY_ENVIRONMENT,), BASE_ENVIRONMENT)
        self.keyring = keyring
        self._master = master
        self._scheduler = scheduler
        self._node_id = node_id
        self._clock = clock
        self._change = ChangeMaker(node_id, clock)
        self.max_value_bytes = max_value_bytes
        self._rewrap_batch = rewrap_batch
        self._rewrap_task: asyncio.Task[None] | None = None
        self._rekey_task: asyncio.Task[None] | None = None
        self._rewrap_failed: set[tuple[str, str, str, int]] = set()
        self._push_batch = push_batch
        self._push_lock = asyncio.Lock()
        self._push_task: asyncio.Task[None] | None = None
        self._push_again = False
        self._push_failing = False
        self._stopping = False
        #: For /metrics: values decrypted for a caller, values destroyed at expiry,
        #: ciphertexts rewrapped under a new key, integrity failures.
        self.reads = 0
        self.expired = 0
        self.rewrapped = 0
        self.tampered = 0
        bus.subscribe(self._on_event)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Destroy what expired while stopped, schedule the rest, resume a rotation, push
        reads recorded before the last stop."""
        try:
            await self.expire_due()
        except Unavailable:
            # The upstream is down: reads refuse expired values anyway, and the cleanup
            # job destroys them once it is back. Start-up never waits for it.
            log.warning("expired secrets are destroyed once the upstream is back")
        for row in await self._store.secrets_expiring():
            self._schedule_expiry(
                row.service, row.environment, row.name, row.version, row.expires_at
            )
        assert self.keyring.primary is not None
        if await self._store.secrets_to_rewrap(self.keyring.primary, 1):
            self._start_rewrap()
        if await self._store.pending_secret_reads(1):
            self._kick_push()
        if self._master.previous is not None and await self._previous_needed():
            try:
                await self.rekey_master()
            except Unavailable:
                log.warning("the upstream is down: data keys will be re-wrapped once it is back")
                self._start_rekey()

    async def stop(self) -> None:
        rekey, self._rekey_task = self._rekey_task, None
        if rekey is not None:
            rekey.cancel()
            await asyncio.gather(rekey, return_exceptions=True)
        task, self._rewrap_task = self._rewrap_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # The doors are closed by now: push what was read, unless the upstream is known to
        # be down (then the reads wait in SQLite for the next start; shutdown does not).
        self._stopping = True
        push, self._push_task = self._push_task, None
        if push is not None:
            await asyncio.gather(push, return_exceptions=True)
        if not self._push_failing:
            try:
                await self.push_reads()
            except Exception:
                log.exception("pushing secret reads at shutdown failed; they are kept")

    # -- events ----------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, ChangeApplied):
            return
        match event.change.payload:
            case DataKey() as key:
                if key.state == "retired":
                    self.keyring.keys.pop(key.id, None)
                    return
                if not key.wrapped:
                    return  # redacted while this host caught up: a newer change follows
                if key.id not in self.keyring.keys:
                    try:
                        material, under_previous = self._master.unwrap(key)
                    except KeyMismatch:
                        log.error(
                            "a data key from another host does not unwrap with this host's"
                            " master key: give every host the same CONFIG_ENCRYPTION_KEY (and"
                            " secrets.previous_encryption_key during a master key rotation)",
                            extra={"key": key.id},
                        )
                        return
                    self.keyring.keys[key.id] = AESGCM(material)
                    if under_previous:
                        self._start_rekey()
                if key.state == "primary":
                    self.keyring.primary = key.id
            case SecretVersion() as v if v.expires_at is not None:
                self._schedule_expiry(
                    v.service, v.environment, v.name, v.version, v.expires_at.timestamp()
                )
            case SecretDestroyed() as d:
                for version in d.versions:
                    self._scheduler.cancel_prefix(
                        f"secret:{d.service}/{d.environment}/{d.name}/{version}"
                    )
                    self._store.problems.clear(
                        f"secret:{d.service}/{d.environment}/{d.name} v{version}"
                    )

    # -- encryption helpers ------------------------------------------------------------

    def _decrypt(self, row: SecretRow) -> Secret:
        aad = secret_aad(row.service, row.environment, row.name, row.version)
        try:
            if row.nonce is None or row.ciphertext is None:  # half a value: edited by hand
                raise TamperedError("a ciphertext without its nonce")
            return self.keyring.decrypt(row.key_id, row.nonce, row.ciphertext, aad)
        except TamperedError:
            self.tampered += 1
            log.error(
                "secret failed its integrity check",
                extra={
                    "secret": f"{row.service}/{row.environment}/{row.name}",
                    "version": row.version,
                },
            )
            raise IntegrityError(
                f"{row.service}/{row.environment}/{row.name} version {row.version} failed"
                " authentication (edited or moved ciphertext); it is not returned"
            ) from None

    def check_value(self, name: str, value: Secret, path: str) -> None:
        if len(value.reveal().encode()) > self.max_value_bytes:
            raise Invalid(
                f"secret {name} is larger than {self.max_value_bytes} bytes",
                errors=[FieldError(path, f"longer than {self.max_value_bytes} bytes")],
            )

    def _is_expired(self, row: SecretRow) -> bool:
        return row.expires_at is not None and row.expires_at <= self._clock.time()

    async def plan_values(
        self,
        service: str,
        environment: str,
        values: dict[str, Secret],
        caller: Caller,
        *,
        expires_at: datetime | None = None,
        description: str = "",
    ) -> tuple[dict[str, int], list[Change]]:
        """Inside a commit plan: new versions for the values that differ from the current ones.

        Returns (name -> version after the write, changes to make).
        """
        versions: dict[str, int] = {}
        changes: list[Change] = []
        for name, value in values.items():
            current = await self._store.secret_version(service, environment, name)
            if (
                current is not None
                and current.ciphertext is not None
                and not self._is_expired(current)
                and current.expires_at == (expires_at.timestamp() if expires_at else None)
                and self._decrypt(current) == value
            ):
                versions[name] = current.version
                continue
            version = (current.version if current else 0) + 1
            aad = secret_aad(service, environment, name, version)
            key_id, nonce, ciphertext = self.keyring.encrypt(value, aad)
            record = SecretVersion(
                service=service,
                environment=environment,
                name=name,
                version=version,
                key_id=key_id,
                nonce=nonce,
                ciphertext=ciphertext,
                description=description,
                expires_at=expires_at,
                created_at=self._clock.now(),
                created_by=caller.subject,
            )
            changes.append(self._change(f"{service}/{environment}/{name}", "put", record, caller))
            versions[name] = version
        return versions, changes

    # -- the secrets API -----------------------------------------------------------------

    def _may(
        self, caller: Caller, action: str, service: str, environment: str, *, write: bool = False
    ) -> None:
        """`action` on (service, environment), then whether the environment exists (after
        the permission check, so a 403 reveals nothing). The environment comes from the
        query string (`?environment=`), which error paths name."""
        check_name("environment", environment)
        authorize(caller, action, service=service, environment=environment)
        if write:
            self._environments.check_write(environment, "query.environment")
        else:
            self._environments.check_read(environment)

    async def put(
        self,
        service: str,
        environment: str,
        name: str,
        value: Secret,
        caller: Caller,
        *,
        expires_at: datetime | None = None,
        ttl_seconds: int | None = None,
        description: str = "",
    ) -> tuple[SecretView, bool]:
        self._may(caller, SECRETS_WRITE, service, environment, write=True)
        for kind, given in (("service", service), ("environment", environment), ("secret", name)):
            check_name(kind, given)
        self.check_value(name, value, "$.value")
        if expires_at is not None and ttl_seconds is not None:
            raise Invalid(
                "give expiresAt or ttlSeconds, not both",
                errors=[FieldError("$.ttlSeconds", "conflicts with expiresAt")],
            )
        if ttl_seconds is not None:
            expires_at = checked_utc(
                datetime.fromtimestamp(self._clock.time() + ttl_seconds, UTC), "$.ttlSeconds"
            )
        elif expires_at is not None:
            expires_at = checked_utc(expires_at, "$.expiresAt")
        if expires_at is not None and expires_at.timestamp() <= self._clock.time():
            raise Invalid(
                "expiresAt is in the past", errors=[FieldError("$.expiresAt", "in the past")]
            )

        async def plan() -> list[Change]:
            _, changes = await self.plan_values(
                service,
                environment,
                {name: value},
                caller,
                expires_at=expires_at,
                description=description,
            )
            return changes

        applied = await self._committer.commit(plan)
        row = await self._store.secret_version(service, environment, name)
        assert row is not None
        return secret_view(row), bool(applied)

    @staticmethod
    def _require_read(caller: Caller, service: str, environment: str) -> None:
        if not may(caller, SECRETS_READ, service=service, environment=environment):
            raise Forbidden(
                "reading secret values needs the secrets:read permission for this service"
                " (the Unix socket has it; over TCP, a token that carries it)"
            )

    async def get(
        self,
        service: str,
        environment: str,
        name: str,
        caller: Caller,
        *,
        version: int | None = None,
    ) -> SecretView:
        """A decrypting read: permission checked, expiry enforced, audited and counted."""
        self._may(caller, SECRETS_LIST, service, environment)
        for kind, given in (("service", service), ("environment", environment), ("secret", name)):
            check_name(kind, given)
        self._require_read(caller, service, environment)
        row = await self._store.secret_version(service, environment, name, version)
        if (
            version is None
            and environment != BASE_ENVIRONMENT
            and (row is None or row.ciphertext is None or self._is_expired(row))
        ):
            # What the effective configuration of `environment` shows: a secret it has no
            # live value of its own for is the `default` layer's (docs/security.md).
            row = (await self.layered(service, [BASE_ENVIRONMENT])).get(name, row)
        if row is None:
            raise NotFound(f"no secret {name} in {service}/{environment}")
        if row.destroyed == "deleted":
            raise NotFound(f"secret {name} in {service}/{environment} was deleted")
        if row.destroyed == "expired" or self._is_expired(row):
            raise Gone(f"secret {name} in {service}/{environment} expired")
        if row.ciphertext is None:
            raise Gone(f"secret {name} in {service}/{environment} has no value")
        value = self._decrypt(row)
        counts = await self._record_read(service, row.environment, [name], caller)
        count, last_at = counts.get(name, (row.access_count + 1, row.last_accessed_at))
        return secret_view(
            msgspec.structs.replace(row, access_count=count, last_accessed_at=last_at), value
        )

    async def _record_read(
        self, service: str, environment: str, names: list[str], caller: Caller
    ) -> dict[str, tuple[int, str]]:
        """Record a decrypting read on this host (outbox row and access counts, one local
        transaction) and have it pushed as a `SecretRead` change in the background: a read
        never waits for, or fails with, the upstream. Returns the counts after it."""
        at = self._clock.now()
        read = PendingRead(
            id=uuid.uuid4().hex,
            at=rfc3339(at),
            actor=caller.subject,
            request_id=caller.request_id,
            peer=caller.peer,
            service=service,
            environment=environment,
            names=names,
        )
        counts = await self._store.record_secret_read(read, at)
        self.reads += len(names)
        self._kick_push()
        return counts

    # -- pushing recorded reads into the change log (the audit chain) ----------------------

    def _kick_push(self) -> None:
        """Push soon; while the upstream is failing, the periodic job retries instead."""
        if self._push_failing or self._stopping:
            return
        self._push_again = True
        if self._push_task is None or self._push_task.done():
            self._push_task = asyncio.create_task(self._push_soon(), name="secret-reads-push")

    async def _push_soon(self) -> None:
        while self._push_again:
            self._push_again = False
            try:
                await self.push_reads()
            except Exception:
                log.exception("pushing secret reads failed")
                return

    async def push_reads(self) -> int:
        """Commit reads recorded here as `SecretRead` changes (audited, replicated), oldest
        first, in batches; on an upstream failure they stay for the next try. Returns how
        many were committed."""
        pushed = 0
        async with self._push_lock:
            while await self._store.pending_secret_reads(1):
                try:
                    count = await self._push_batch_of_reads()
                except Unavailable:
                    if not self._push_failing:
                        log.warning(
                            "secret reads are kept on this host until the upstream is back",
                            extra={"pending": await self._store.pending_secret_reads_count()},
                        )
                    self._push_failing = True
                    return pushed
                if self._push_failing:
                    log.info("pushing secret reads recorded while the upstream was down")
                self._push_failing = False
                pushed += count
                if count < self._push_batch:
                    break
        return pushed

    async def _push_batch_of_reads(self) -> int:
        batch: list[PendingRead] = []

        async def plan() -> list[Change]:
            # Read inside the plan: after the catch-up, so a read already committed (and
            # applied here, which removed it from the outbox) is never committed twice.
            batch[:] = await self._store.pending_secret_reads(self._push_batch)
            return [self._read_change(r) for r in batch]

        await self._committer.commit(plan)
        return len(batch)

    async def settle_reads(self) -> None:
        """Before the audit log is listed: push this host's recorded reads, so a reader
        sees their own read, unless the upstream is known to be down (then they wait)."""
        if self._push_failing or self._stopping or not await self._store.pending_secret_reads(1):
            return
        try:
            await self.push_reads()
        except Exception:
            log.exception("pushing secret reads failed")

    def _read_change(self, read: PendingRead) -> Change:
        return Change(
            key=f"{read.service}/{read.environment}",
            op="read",
            payload=SecretRead(
                service=read.service,
                environment=read.environment,
                names=read.names,
                peer=read.peer,
                read_id=read.id,
            ),
            actor=read.actor,
            at=datetime.fromisoformat(read.at),
            origin=self._node_id,
            request_id=read.request_id,
            peer=read.peer,
        )

    async def pending_reads(self) -> int:
        """Reads recorded here and not yet in the change log (health, metrics)."""
        return await self._store.pending_secret_reads_count()

    async def reads_health(self) -> ComponentHealth:
        """/health's `secret_reads`: reads recorded here and not yet in the audited change
        log (the upstream is down, or they are on their way)."""
        pending = await self.pending_reads()
        detail = "reads wait on this host for the upstream" if pending else None
        return ComponentHealth(status="ok", detail=detail, counts={"pending": pending})

    async def keyring_health(self) -> ComponentHealth:
        """/health's `keyring`: down without a primary key, degraded after an integrity
        failure; live keys and ciphertexts still to rewrap."""
        state = await self.status(Caller.system("fpcd:health"))
        counts = {
            "keys": sum(1 for k in state.keys if k.state != "retired"),
            "rotationRemaining": state.rotation.remaining,
        }
        if self.keyring.primary is None:
            return ComponentHealth(status="down", detail="no primary key", counts=counts)
        if state.rotation.failed or self.tampered:
            problem = "ciphertexts failed their integrity check"
            return ComponentHealth(status="degraded", detail=problem, counts=counts)
        running = "rotation running" if state.rotation.running else None
        return ComponentHealth(status="ok", detail=running, counts=counts)

    async def layered(self, service: str, environments: Iterable[str]) -> dict[str, SecretRow]:
        """Live secrets of a service's layers, later environments overriding earlier ones."""
        envs = list(environments)
        rows = await self._store.secrets_latest(service, envs)
        chosen: dict[str, SecretRow] = {}
        for env in envs:
            for row in rows:
                if (
                    row.environment == env
                    and row.ciphertext is not None
                    and not self._is_expired(row)
                ):
                    chosen[row.name] = row
        return chosen

    async def reveal(
        self, service: str, environment: str, rows: dict[str, SecretRow], caller: Caller
    ) -> dict[str, Secret]:
        """Decrypt layered secrets for an includeSecrets read; one audit entry per layer.
        For ConfigService, which has checked that `caller` may read them."""
        values = {name: self._decrypt(row) for name, row in rows.items()}
        by_env: dict[str, list[str]] = {}
        for name, row in rows.items():
            by_env.setdefault(row.environment, []).append(name)
        for env, names in sorted(by_env.items()):
            await self._record_read(service, env, sorted(names), caller)
        return values

    async def list_secrets(
        self, service: str, environment: str, caller: Caller
    ) -> Page[SecretView]:
        self._may(caller, SECRETS_LIST, service, environment)
        check_name("service", service)
        check_name("environment", environment)
        rows = [
            r
            for r in await self._store.secrets_latest(service, [environment])
            if r.destroyed is None
        ]
        items = [secret_view(r) for r in rows]
        return Page(items=items, total=len(items), limit=len(items), offset=0)

    async def versions(
        self, service: str, environment: str, name: str, caller: Caller
    ) -> Page[SecretView]:
        self._may(caller, SECRETS_LIST, service, environment)
        for kind, given in (("service", service), ("environment", environment), ("secret", name)):
            check_name(kind, given)
        rows = await self._store.secret_history(service, environment, name)
        if not rows:
            raise NotFound(f"no secret {name} in {service}/{environment}")
        items = [secret_view(r) for r in rows]
        return Page(items=items, total=len(items), limit=len(items), offset=0)

    async def delete(self, service: str, environment: str, name: str, caller: Caller) -> None:
        """Destroy every version's ciphertext; the versions' metadata stays for the record."""
        self._may(caller, SECRETS_WRITE, service, environment)
        for kind, given in (("service", service), ("environment", environment), ("secret", name)):
            check_name(kind, given)

        async def plan() -> list[Change]:
            rows = await self._store.secret_history(service, environment, name)
            live = [r.version for r in rows if r.ciphertext is not None]
            if not rows or (not live and rows[0].destroyed == "deleted"):
                raise NotFound(f"no secret {name} in {service}/{environment}")
            destroyed = SecretDestroyed(
                service=service,
                environment=environment,
                name=name,
                versions=sorted(live),
                reason="deleted",
            )
            return [self._change(f"{service}/{environment}/{name}", "delete", destroyed, caller)]

        await self._committer.commit(plan)

    # -- expiry ----------------------------------------------------------------------------

    def _schedule_expiry(
        self, service: str, environment: str, name: str, version: int, at: float | None
    ) -> None:
        if at is None:
            return
        record = f"secret:{service}/{environment}/{name} v{version}"
        if not in_range(at):  # stored before the range checks, or shipped by a replica
            self._store.problems.report(
                record,
                f"expiresAt is out of range ({RANGE}), so no expiry is scheduled; write a new"
                " version of the secret or delete it",
                kind="schedule",
            )
            return
        self._scheduler.at(
            f"secret:{service}/{environment}/{name}/{version}",
            datetime.fromtimestamp(at, UTC),
            self.expire,
            service,
            environment,
            name,
            version,
        )

    async def expire(self, service: str, environment: str, name: str, version: int) -> None:
        """The expiry job: destroy the ciphertext, audit it, announce it."""
        system = Caller.system("fpcd:expiry")

        async def plan() -> list[Change]:
            row = await self._store.secret_version(service, environment, name, version)
            if row is None or row.ciphertext is None:
                return []
            destroyed = SecretDestroyed(
                service=service,
                environment=environment,
                name=name,
                versions=[version],
                reason="expired",
            )
            return [self._change(f"{service}/{environment}/{name}", "expire", destroyed, system)]

        if await self._committer.commit(plan):
            self.expired += 1  # fpcd.changes logs it, as every stored change

    async def expire_due(self) -> int:
        """Destroy everything past its expiry (start-up and the periodic cleanup job)."""
        due = await self._store.secrets_expiring(before=self._clock.time())
        for row in due:
            await self.expire(row.service, row.environment, row.name, row.version)
        return len(due)

    # -- keys and rotation -------------------------------------------------------------------

    async def rotate(self, caller: Caller) -> KeyringStatus:
        """Add a primary data key and rewrap every ciphertext in the background."""
        authorize(caller, KEYRING_ADMIN)

        async def plan() -> list[Change]:
            records = await self._store.data_keys()
            fresh = new_data_key(self._master.current, self._master.salt, self._clock.now())
            changes = [self._change(fresh.id, "rotate", fresh, caller)]
            for record in records:
                if record.state == "primary":
                    demoted = DataKey(
                        id=record.id,
                        state="decrypt",
                        nonce=record.nonce,
                        wrapped=record.wrapped,
                        salt=record.salt,
                        created_at=record.created_at,
                    )
                    changes.append(self._change(record.id, "demote", demoted, caller))
            return changes

        await self._committer.commit(plan)
        self._rewrap_failed.clear()
        self._start_rewrap()
        return await self.status(caller)

    def _start_rewrap(self) -> None:
        if self._rewrap_task is None or self._rewrap_task.done():
            self._rewrap_task = asyncio.create_task(self._rewrap_all(), name="secret-rewrap")

    async def _rewrap_all(self) -> None:
        """Batches of rewraps, each its own commit: a stop midway loses nothing."""
        system = Caller.system("fpcd:rotation")
        batch_sizes: list[int] = []

        async def plan() -> list[Change]:
            primary = self.keyring.primary
            assert primary is not None
            rows = await self._store.secrets_to_rewrap(
                primary, self._rewrap_batch + len(self._rewrap_failed)
            )
            items: list[RewrapItem] = []
            for row in rows:
                where = (row.service, row.environment, row.name, row.version)
                if where in self._rewrap_failed:
                    continue
                try:
                    value = self._decrypt(row)
                except IntegrityError:
                    self._rewrap_failed.add(where)
                    continue
                aad = secret_aad(*where)
                key_id, nonce, ciphertext = self.keyring.encrypt(value, aad)
                assert key_id == primary
                items.append(
                    RewrapItem(
                        service=row.service,
                        environment=row.environment,
                        name=row.name,
                        version=row.version,
                        nonce=nonce,
                        ciphertext=ciphertext,
                    )
                )
                if len(items) >= self._rewrap_batch:
                    break
            batch_sizes.append(len(items))
            if not items:
                return []
            rewrap = SecretRewrap(key_id=primary, items=items)
            return [self._change(primary, "rewrap", rewrap, system)]

        while True:
            await self._committer.commit(plan)
            if not batch_sizes[-1]:
                break
            self.rewrapped += batch_sizes[-1]
            await asyncio.sleep(0)  # let requests in between batches
        log.info("secret rewrap finished", extra={"failed": len(self._rewrap_failed)})

    # -- master key rotation -------------------------------------------------------------

    def _start_rekey(self) -> None:
        if self._rekey_task is None or self._rekey_task.done():
            self._rekey_task = asyncio.create_task(self._rekey_until_done(), name="master-rekey")

    async def _rekey_until_done(self) -> None:
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                await self.rekey_master()
                return
            except Unavailable:
                await asyncio.sleep(backoff.next())  # the upstream is down: writes wait for it

    async def rekey_master(self) -> int:
        """Re-wrap every data key that only the previous master key opens under the current
        one: one commit (all or nothing, so an interrupted start simply does it again),
        audited as `keyring.rekey`, replicated like every change. Returns how many."""
        system = Caller.system("fpcd:master-key")

        async def plan() -> list[Change]:
            changes: list[Change] = []
            for record in await self._store.data_keys():
                if record.state == "retired" or not record.wrapped:
                    continue
                if self._master.under_current(record):
                    continue
                try:
                    material, _ = self._master.unwrap(record)
                except KeyMismatch:
                    continue  # counted when it arrived; nothing this host can do
                rewrapped = self._master.rewrapped(record, material)
                changes.append(self._change(record.id, "rekey", rewrapped, system))
            return changes

        done = len(await self._committer.commit(plan))
        if done:
            log.info(
                "data keys re-wrapped under the new master key",
                extra={"keys": done},
            )
        if self._master.previous is not None and not await self._previous_needed():
            log.info(
                "every data key is wrapped under the new master key: the previous key"
                " (secrets.previous_encryption_key) is no longer needed"
            )
        return done

    async def _previous_needed(self) -> bool:
        return any(
            r.state != "retired" and r.wrapped and not self._master.under_current(r)
            for r in await self._store.data_keys()
        )

    async def status(self, caller: Caller) -> KeyringStatus:
        authorize(caller, KEYRING_ADMIN)
        counts = await self._store.ciphertexts_by_key()
        records = await self._store.data_keys()
        primary = self.keyring.primary
        remaining = sum(n for key_id, n in counts.items() if key_id != primary)
        return KeyringStatus(
            keys=[
                KeyStatus(
                    id=r.id, state=r.state, created_at=r.created_at, ciphertexts=counts.get(r.id, 0)
                )
                for r in sorted(records, key=lambda r: r.created_at)
            ],
            rotation=RotationStatus(
                running=self._rewrap_task is not None and not self._rewrap_task.done(),
                remaining=remaining,
                failed=len(self._rewrap_failed),
            ),
            previous_master_key_needed=await self._previous_needed(),
        )

    async def retire(self, key_id: str, caller: Caller) -> KeyringStatus:
        """Destroy an old key's material once no ciphertext uses it."""
        authorize(caller, KEYRING_ADMIN)

        async def plan() -> list[Change]:
            records = {r.id: r for r in await self._store.data_keys()}
            record = records.get(key_id)
            if record is None or record.state == "retired":
                raise NotFound(f"no live data key {key_id}")
            if record.state == "primary":
                raise Conflict(f"{key_id} is the primary key: rotate first")
            in_use = (await self._store.ciphertexts_by_key()).get(key_id, 0)
            if in_use:
                raise Conflict(f"{key_id} still encrypts {in_use} secret version(s)")
            retired = DataKey(id=key_id, state="retired", created_at=record.created_at)
            return [self._change(key_id, "retire", retired, caller)]

        await self._committer.commit(plan)
        return await self.status(caller)
