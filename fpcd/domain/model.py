"""The change model: every mutation is a `Change`, applied through one path.

Payloads form a tagged union so the store and the replicator dispatch with
`match` and the upstream log can carry them as JSON without a side table.
Fields are append-only across releases (hosts run mixed versions): new fields
get defaults and existing types never change. A `Literal` field is a closed set: a
release that adds a value must be running on every host before any host writes it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from fpcd.domain.flags import FlagDefinition

#: How a config version came to be.
ConfigAction = Literal["update", "rollback", "import"]
#: A data key's state: `primary` encrypts new values, `decrypt` only opens old ones,
#: `retired` has had its material destroyed.
KeyState = Literal["primary", "decrypt", "retired"]
#: Why a secret's ciphertexts were destroyed.
DestroyReason = Literal["deleted", "expired"]


def rfc3339(moment: datetime) -> str:
    """The one text form of a timestamp (as msgspec writes it), for columns and hashes."""
    return msgspec.json.encode(moment).decode()[1:-1]


class Record(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Internal value: immutable, keyword-only, compact when encoded."""


class ConfigVersion(Record, frozen=True, kw_only=True, tag="config"):
    """One immutable version of one layer (service, environment)."""

    service: str
    environment: str
    version: int
    config: dict[str, Any]
    checksum: str
    #: Secret name -> the secret version this config version was written with
    #: (values live encrypted in their own versions, never here).
    secret_versions: dict[str, int] = {}
    description: str = ""
    tags: list[str] = []
    action: ConfigAction = "update"
    #: For a rollback, the version whose content was restored.
    rolled_back_from: int | None = None
    created_at: datetime
    created_by: str


class SchemaRecord(Record, frozen=True, kw_only=True, tag="schema"):
    """A service's JSON Schema; `schema` None means the schema was removed."""

    service: str
    schema: dict[str, Any] | None
    version: int
    updated_at: datetime
    updated_by: str


class AuditNote(Record, frozen=True, kw_only=True, tag="audit"):
    """An audited action that changes no other entity (a reload, a secret read)."""

    action: str
    target: str
    details: dict[str, Any] = {}


class ReloadRequest(Record, frozen=True, kw_only=True, tag="reload"):
    """Someone asked subscribers of (service, environment) to reload what they hold."""

    service: str
    environment: str
    version: int
    checksum: str
    force: bool = False


class FlagRecord(Record, frozen=True, kw_only=True, tag="flag"):
    """One immutable version of a flag; archiving writes a version with `archived` set."""

    key: str
    version: int
    definition: FlagDefinition
    archived: bool = False
    created_at: datetime
    updated_at: datetime
    updated_by: str


class DataKey(Record, frozen=True, kw_only=True, tag="data_key"):
    """A data key wrapped by the master key; `primary` encrypts new values."""

    id: str
    state: KeyState
    nonce: bytes = b""
    wrapped: bytes = b""
    #: scrypt salt, when the master key is derived from a passphrase.
    salt: bytes = b""
    created_at: datetime


class SecretVersion(Record, frozen=True, kw_only=True, tag="secret"):
    """One encrypted version of a secret; AAD = service, environment, name, version."""

    service: str
    environment: str
    name: str
    version: int
    key_id: str
    nonce: bytes
    ciphertext: bytes
    description: str = ""
    expires_at: datetime | None = None
    created_at: datetime
    created_by: str


class SecretDestroyed(Record, frozen=True, kw_only=True, tag="secret_destroyed"):
    """Ciphertexts destroyed (deleted, or expired): the versions stay, without values."""

    service: str
    environment: str
    name: str
    versions: list[int]
    reason: DestroyReason


class RewrapItem(Record, frozen=True, kw_only=True):
    service: str
    environment: str
    name: str
    version: int
    nonce: bytes
    ciphertext: bytes


class SecretRewrap(Record, frozen=True, kw_only=True, tag="secret_rewrap"):
    """A batch of ciphertexts re-encrypted under data key `key_id` (same plaintexts)."""

    key_id: str
    items: list[RewrapItem]


class SecretRead(Record, frozen=True, kw_only=True, tag="secret_read"):
    """Secret values were decrypted for someone: audited and counted."""

    service: str
    environment: str
    names: list[str]
    peer: str = ""
    #: Id of the read in its host's outbox (`secret_reads`): the host that counted the
    #: read when it happened does not count it again when the change comes back.
    #: Empty in reads committed before the outbox existed.
    read_id: str = ""


class ServiceRegistration(Record, frozen=True, kw_only=True, tag="service"):
    """A service in the registry; `deregistered` marks its removal (history is kept)."""

    name: str
    #: The original service's descriptive fields.
    display_name: str = ""
    description: str = ""
    version: str = ""
    #: URLs the service answers on (the original's `endpoints`).
    endpoints: list[str] = []
    host: str = ""
    port: int | None = None
    #: URL polled for health (2xx/3xx: healthy); empty: no polling.
    health_check: str = ""
    tags: list[str] = []
    environment: str
    #: Dotted config paths (or secret names) the service needs in its environment: reported
    #: when missing, and refused on writes only with registry.enforce_required_configs.
    required_configs: list[str] = []
    #: Paths or secret names the service can use: reported as missing-but-optional.
    optional_configs: list[str] = []
    metadata: dict[str, Any] = {}
    #: Heartbeats must arrive at least this often, or the service turns stale.
    ttl_seconds: int | None = None
    registered_at: datetime
    registered_by: str
    deregistered: bool = False


Payload = (
    ConfigVersion
    | SchemaRecord
    | AuditNote
    | ReloadRequest
    | FlagRecord
    | DataKey
    | SecretVersion
    | SecretDestroyed
    | SecretRewrap
    | SecretRead
    | ServiceRegistration
)


class Change(Record, frozen=True, kw_only=True):
    """`{seq, entity, key, op, payload, actor, at, origin}` of the design brief.

    `seq` is 0 until the change is stored; locally it is the SQLite sequence,
    upstream Postgres' global order.
    """

    seq: int = 0
    key: str
    op: str
    payload: Payload
    actor: str
    at: datetime
    #: Node id of the daemon where the change was made.
    origin: str
    request_id: str = ""
    #: Where the request came from: remote address, or a Unix socket peer's uid and pid.
    peer: str = ""

    @classmethod
    def by(
        cls, caller: Caller, *, key: str, op: str, payload: Payload, at: datetime, origin: str
    ) -> Change:
        """A change made by `caller`: actor, request id and peer all come from it."""
        return cls(
            key=key,
            op=op,
            payload=payload,
            actor=caller.subject,
            at=at,
            origin=origin,
            request_id=caller.request_id,
            peer=caller.peer,
        )

    @property
    def entity(self) -> str:
        tag = self.payload.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class AuditEntry(Record, frozen=True, kw_only=True):
    """One row of the hash-chained audit log."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any] = {}
    request_id: str = ""
    prev_hash: str
    hash: str


class Caller(Record, frozen=True, kw_only=True):
    """Who is asking, as every door reports it; `subject` is what the audit log records."""

    subject: str
    request_id: str = ""
    #: Remote address, or for a Unix socket the peer's uid/pid.
    peer: str = ""
    #: Extra permissions (e.g. "secrets:read"); "*" means everything.
    scopes: frozenset[str] = frozenset()
    #: admin, editor, viewer, service (see fpcd.domain.access).
    roles: tuple[str, ...] = ()
    #: Service names or globs the caller may touch; None: all.
    services: tuple[str, ...] | None = None
    #: Environments the caller may touch; None: all.
    environments: tuple[str, ...] | None = None
    #: When the credential stops being valid (epoch seconds: the token's `exp` plus the
    #: leeway); None: it does not expire. WebSocket sessions close at this instant.
    expires_at: float | None = None

    @classmethod
    def system(cls, subject: str) -> Caller:
        """The daemon acting on its own (file sync, the source directory, expiry jobs, the
        flag socket, the local CLI): every permission. The `*` scope is what no token can
        carry (the authenticator strips it), so only the daemon's own code makes one;
        `subject` is what the audit log records (`fpcd:files`, `file:<path>`)."""
        return cls(subject=subject, scopes=SYSTEM_SCOPES)


#: The scopes of `Caller.system` (and of the Unix socket's peer): everything.
SYSTEM_SCOPES = frozenset({"*"})
