"""Settings: defaults < settings file (TOML) < environment < command line, in one typed struct.

Every key is declared once here with its default and a comment; `config.example.toml`
documents each one and a test keeps the two in step. Errors are one line naming
the key (or variable) and the problem.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from fpcd.domain.access import ROLES
from fpcd.domain.errors import SettingsError, validation_message
from fpcd.domain.names import valid_name

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class Duration(float):
    """Seconds; settings accept a number or a string such as "200ms", "2s", "5m", "1h"."""

    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    _PATTERN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError('expected a duration such as 2, "200ms", "2s" or "5m"')
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := cls._PATTERN.fullmatch(value)):
            seconds = float(m.group(1)) * cls._UNITS[m.group(2) or "s"]
        else:
            raise ValueError('expected a duration such as 2, "200ms", "2s" or "5m"')
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        return cls(seconds)


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A settings section: unknown keys are errors, so a typo never silently does nothing."""


class ServerSettings(Section, frozen=True, kw_only=True):
    #: Where fpcd.db (and later keyring.json, admin.token) live. Empty: $STATE_DIRECTORY
    #: under systemd, else ./fpcd-data.
    data_dir: str = ""
    #: Where the Unix sockets live. Empty: $RUNTIME_DIRECTORY under systemd, else data_dir.
    runtime_dir: str = ""
    api_host: str = "127.0.0.1"
    api_port: Port = 3001
    #: The WebSocket port (the seed's CONFIG_WS_PORT).
    ws_port: Port = 8080
    #: Octal permission bits of the Unix sockets.
    socket_mode: str = "0660"
    #: Group that owns the Unix sockets (empty: the daemon's own group).
    socket_group: str = ""
    #: Environment used when a request names none (the seed's NODE_ENV).
    default_environment: str = "development"
    #: The environments that exist (besides `default`, the base layer, and
    #: default_environment): reading any other is 404 and writing it 422, each naming the
    #: known ones. An environment that holds data (written here or replicated) stays
    #: known. A list, or a comma-separated string (FPCD_SERVER__ENVIRONMENTS); "*" allows
    #: every name.
    environments: list[str] | str = "development,staging,production"
    #: How long shutdown waits for in-flight requests.
    shutdown_timeout: Duration = Duration(10.0)
    #: TCP connections one port (API, WebSocket) holds at once; past it a connection is
    #: answered 503 and closed (counted, logged). Lowered at start to fit the descriptor
    #: limit (RLIMIT_NOFILE), a quarter of which (at least 128) stays for the Unix sockets,
    #: the database and the file watchers.
    max_connections: Positive = 10000
    #: A TCP connection that has sent no complete request head this long after it opened
    #: is closed (also the TLS handshake's limit). 0: no limit.
    header_timeout: Duration = Duration(5.0)
    #: An idle keep-alive connection (TCP or fpcd.sock) is closed after this. 0: never.
    idle_timeout: Duration = Duration(60.0)
    #: Allow a non-loopback api_host without both TLS and token auth (e.g. behind a
    #: proxy or service mesh that terminates TLS). Off: fpcd refuses to start that way.
    allow_insecure: bool = False


class LogSettings(Section, frozen=True, kw_only=True):
    #: "warn" is the same as "warning".
    level: Literal["debug", "info", "warn", "warning", "error", "critical"] = "info"
    #: "json" (one object per line) or "text" (plain lines, for a terminal or journald).
    format: Literal["json", "text"] = "json"
    #: One line per HTTP request. Off by default, as in Consul and Vault: /metrics counts
    #: every request by route and status; a line per request costs the hot path ~20 %.
    access: bool = False


class LimitSettings(Section, frozen=True, kw_only=True):
    #: Largest request body accepted, in bytes.
    max_body_bytes: Positive = 1024 * 1024
    #: Deepest nesting of objects and arrays in a stored document.
    max_json_depth: Positive = 32
    #: Most object keys in one stored document, counted over all levels.
    max_json_keys: Positive = 10_000
    #: Longest a write's JSON Schema validation may run (in a worker process) before the
    #: write is refused with 422.
    schema_validation_timeout: Duration = Duration(2.0)


class StorageSettings(Section, frozen=True, kw_only=True):
    #: SQLite `synchronous` level. "full" makes every acknowledged write survive power
    #: loss (about 180 µs a commit here); "normal" survives a crash of fpcd only.
    synchronous: Literal["normal", "full", "extra"] = "full"
    #: How often `PRAGMA quick_check` re-reads the database while running (it always runs
    #: at start); a damaged file degrades /health and stops writes. 0 turns it off.
    integrity_check_interval: Duration = Duration(3600.0)


class UpstreamSettings(Section, frozen=True, kw_only=True):
    #: Postgres URL of the shared change log (the seed's DATABASE_URL). Empty: this host only.
    postgres_url: str = ""
    #: Redis URL of the change doorbell (the seed's REDIS_URL). Empty: polling only.
    redis_url: str = ""
    #: The Redis pub/sub channel rung after every commit.
    channel: str = "fpcd:changes"
    #: How often to pull from Postgres without a doorbell ring.
    poll_interval: Duration = Duration(2.0)
    #: At start, how long to try to catch up before serving the local copy (when there
    #: is one; a daemon with no local copy keeps trying and is not ready until it has one).
    startup_timeout: Duration = Duration(10.0)
    #: Create or upgrade the upstream schema at start (else: `fpcd migrate --upstream`).
    auto_migrate: bool = True
    #: Postgres connections in the pool.
    pool_size: Positive = 4
    #: Changes pulled and applied per SQLite transaction.
    batch_size: Positive = 500


class SecretSettings(Section, frozen=True, kw_only=True):
    #: 32 bytes as base64 or hex, or a passphrase (the seed's CONFIG_ENCRYPTION_KEY).
    encryption_key: str = ""
    #: The master key before a rotation: started with it and a new `encryption_key`, fpcd
    #: re-wraps every data key under the new key; then it is no longer needed.
    previous_encryption_key: str = ""
    #: A keyring file to use instead of the key: {"key": "<32 bytes, base64>"}, mode 0600.
    keyring_file: str = ""
    #: Largest secret value, in bytes.
    max_value_bytes: Positive = 65536
    #: How often expired secrets are looked for (each also has a job at its instant).
    cleanup_interval: Duration = Duration(60.0)
    #: Ciphertexts re-encrypted per commit during a key rotation.
    rewrap_batch: Positive = 100
    #: How often secret reads recorded on this host are retried into the audited change
    #: log when pushing them right after the read failed (the upstream was down).
    read_push_interval: Duration = Duration(2.0)


class FlagSettings(Section, frozen=True, kw_only=True):
    #: Octal permission bits of flags.sock (apps in `socket_group` may look flags up).
    socket_mode: str = "0660"
    #: Group that owns flags.sock (empty: the daemon's own group).
    socket_group: str = ""
    #: Longest request line accepted on flags.sock, in bytes.
    max_line_bytes: Positive = 65536
    #: How often evaluation counts are written to SQLite (and on shutdown).
    analytics_flush_interval: Duration = Duration(5.0)


class WebSocketSettings(Section, frozen=True, kw_only=True):
    #: Server pings this often; a client that misses the pong is closed (dead connection).
    heartbeat: Duration = Duration(30.0)
    #: A connection with no subscription is closed after this long (code 4002).
    idle_timeout: Duration = Duration(60.0)
    #: Messages waiting for one client; past this it is closed as a slow consumer (4001).
    max_queue: Positive = 256
    #: Subscriptions one connection may hold.
    max_subscriptions: Positive = 64
    #: Largest frame a client may send, in bytes.
    max_message_bytes: Positive = 65536
    #: Open WebSocket connections in all; more are refused with 503.
    max_connections: Positive = 10000
    #: Versions one `lastVersion` replay may send; a client that missed more gets
    #: ERROR REPLAY_TOO_LARGE and reads the configuration over REST instead.
    max_replay: Positive = 256
    #: Replays running at once over all connections (each connection runs one at a time).
    replay_concurrency: Positive = 2
    #: Messages per second one connection may send (a token bucket of `message_burst`),
    #: and SUBSCRIBE/UNSUBSCRIBE messages per second (bucket `subscribe_burst`). Beyond
    #: them the connection is read no faster: messages wait their turn. 0: no limit.
    message_rate: Annotated[float, msgspec.Meta(ge=0)] = 100.0
    message_burst: Positive = 200
    subscribe_rate: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    subscribe_burst: Positive = 64


class RegistrySettings(Section, frozen=True, kw_only=True):
    #: How often each registered healthCheck URL is polled (and staleness re-evaluated).
    check_interval: Duration = Duration(10.0)
    #: How long one health probe may take before it counts as unhealthy.
    check_timeout: Duration = Duration(2.0)
    #: Hosts health checks may reach besides a registration's own endpoint: `host`
    #: (any port) or `host:port`; "*" allows any URL (registrants are then trusted).
    health_check_hosts: list[str] = []
    #: true: a config write that leaves out a registered service's requiredConfigs (found
    #: neither in the config nor among its secrets) is refused with 422. false: it is
    #: stored, and the registry reports missingConfigs (view, status, /metrics).
    enforce_required_configs: bool = False


class WaitSettings(Section, frozen=True, kw_only=True):
    """Quiescence, as consul-template's `wait`: write once changes stop for `min`, but
    never later than `max` after the first change of a burst."""

    min: Duration = Duration(0.0)
    max: Duration = Duration(0.0)


class FileSettings(Section, frozen=True, kw_only=True):
    """One `[[files]]` entry: a service's configuration materialized to a file."""

    service: str
    environment: str
    #: Absolute path of the file to write.
    path: str
    #: json, toml, yaml, env (KEY=VALUE, nested keys as A__B) or template.
    format: Literal["json", "toml", "yaml", "env", "template"] = "json"
    #: For format "template": a file in Python string.Template syntax over the flattened keys.
    template: str = ""
    #: Octal permission bits of the written file.
    mode: str = "0640"
    #: Owner and group of the file (only when fpcd runs as root).
    owner: str = ""
    group: str = ""
    #: Put secret values into the file; refused unless `mode` gives others no access.
    include_secrets: bool = False
    #: Run after the file changed: an argv list, or a string split as a shell would.
    command: list[str] | str = ""
    #: Run `command` through /bin/sh instead (only when you need pipes or variables).
    shell: bool = False
    command_timeout: Duration = Duration(30.0)
    wait: WaitSettings = WaitSettings()
    #: "restore" an edited or deleted file, or only "report" it.
    on_drift: Literal["restore", "report"] = "restore"
    #: Write an empty document (e.g. `{}`) instead of refusing to.
    allow_empty: bool = False


class SyncSettings(Section, frozen=True, kw_only=True):
    #: A directory of declarative sources, watched: services/<service>/<environment>.toml,
    #: .json or .yaml and flags/<key>.toml or .json are imported when they change.
    source_dir: str = ""


class AuthSettings(Section, frozen=True, kw_only=True):
    """JWT bearer tokens for TCP callers (the Unix sockets go by their file mode)."""

    #: false: TCP callers are not asked for a token (only for a trusted network; see
    #: server.allow_insecure). Secret values are then never served over TCP.
    enabled: bool = True
    #: HS256 shared secret. Empty, with no key file either: a secret is generated into
    #: <data_dir>/auth.key and an admin token into <data_dir>/admin.token (both 0600).
    jwt_secret: str = ""
    #: RS256/ES256 public key (PEM) of the token issuer.
    jwt_public_key_file: str = ""
    #: A JWKS file of the issuer's keys (chosen by the token's `kid`).
    jwks_file: str = ""
    #: Required `iss` and `aud` claims (empty: not checked).
    issuer: str = ""
    audience: str = ""
    #: Clock skew allowed for exp, nbf and iat.
    leeway: Duration = Duration(30.0)
    #: A role (viewer, editor, service, admin) given to requests that carry no token, on
    #: every door (REST, both WebSocket ports): for the original service's clients, which
    #: send no credentials. Empty: such requests get 401 (WebSocket: UNAUTHENTICATED). A
    #: token that is given but invalid is refused either way.
    anonymous_role: str = ""


class RateLimitSettings(Section, frozen=True, kw_only=True):
    """Token buckets; 0 turns one off. The flag socket and /health are not limited."""

    per_subject_rps: Annotated[float, msgspec.Meta(ge=0)] = 20000.0
    per_subject_burst: Annotated[float, msgspec.Meta(ge=0)] = 40000.0
    per_service_rps: Annotated[float, msgspec.Meta(ge=0)] = 40000.0
    global_rps: Annotated[float, msgspec.Meta(ge=0)] = 100000.0


class TlsSettings(Section, frozen=True, kw_only=True):
    """Serve the API and WebSocket ports over TLS when both are set."""

    cert: str = ""
    key: str = ""


Threshold = Annotated[float, msgspec.Meta(ge=0)]


class AlertSettings(Section, frozen=True, kw_only=True):
    """Performance checks run every `interval` over the window since the last run; a
    breach logs a warning, degrades the component in /health and counts in
    fpcd_alerts_total. 0 turns a check off."""

    interval: Duration = Duration(30.0)
    #: p99 of config GETs (request received to response ready).
    config_read_p99_ms: Threshold = 50.0
    #: p99 of one flag evaluation call (a socket lookup or an evaluate request's batch).
    flag_eval_p99_ms: Threshold = 5.0
    #: Lowest acceptable share of config reads served from the encoded cache, checked
    #: once the window holds at least `cache_min_reads` reads.
    cache_hit_ratio_min: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.5
    cache_min_reads: Annotated[int, msgspec.Meta(ge=1)] = 100
    #: Seconds since this host last confirmed it holds every upstream change.
    replication_lag_seconds: Threshold = 60.0
    #: p99 from a message queued for a WebSocket client to its frame written.
    ws_delivery_p99_ms: Threshold = 1000.0


class MetricsSettings(Section, frozen=True, kw_only=True):
    """/metrics (Prometheus)."""

    #: true: /metrics answers without a token (a plain Prometheus scrape); /api/status
    #: still needs one.
    public: bool = False
    #: Config reads are counted per service for at most this many known services; reads
    #: of the others (and of unknown names) count under service="_other".
    max_service_labels: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 100


class Settings(Section, frozen=True, kw_only=True):
    server: ServerSettings = ServerSettings()
    log: LogSettings = LogSettings()
    limits: LimitSettings = LimitSettings()
    storage: StorageSettings = StorageSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    secrets: SecretSettings = SecretSettings()
    flags: FlagSettings = FlagSettings()
    websocket: WebSocketSettings = WebSocketSettings()
    registry: RegistrySettings = RegistrySettings()
    sync: SyncSettings = SyncSettings()
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    tls: TlsSettings = TlsSettings()
    alerts: AlertSettings = AlertSettings()
    metrics: MetricsSettings = MetricsSettings()
    files: list[FileSettings] = []

    @property
    def data_dir(self) -> Path:
        chosen = self.server.data_dir or os.environ.get("STATE_DIRECTORY", "") or "./fpcd-data"
        return Path(chosen.split(":")[0]).absolute()

    @property
    def environments(self) -> list[str]:
        """server.environments as a list (it may be given as a comma-separated string)."""
        given = self.server.environments
        names = given.split(",") if isinstance(given, str) else given
        return [name.strip() for name in names if name.strip()]

    @property
    def runtime_dir(self) -> Path:
        chosen = self.server.runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "")
        return Path(chosen.split(":")[0]).absolute() if chosen else self.data_dir

    @property
    def api_socket(self) -> Path:
        return self.runtime_dir / "fpcd.sock"

    @property
    def flags_socket(self) -> Path:
        return self.runtime_dir / "flags.sock"

    @property
    def database(self) -> Path:
        return self.data_dir / "fpcd.db"

    @property
    def socket_mode(self) -> int:
        """server.socket_mode's permission bits (fpcd.sock)."""
        return file_mode(self.server.socket_mode, "server.socket_mode")

    @property
    def flags_socket_mode(self) -> int:
        """flags.socket_mode's permission bits (flags.sock)."""
        return file_mode(self.flags.socket_mode, "flags.socket_mode")


#: The seed's variables and fpcd's short names -> (section, key).
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "FPCD_DATA_DIR": ("server", "data_dir"),
    "FPCD_RUNTIME_DIR": ("server", "runtime_dir"),
    "FPCD_API_HOST": ("server", "api_host"),
    "CONFIG_API_PORT": ("server", "api_port"),
    "CONFIG_WS_PORT": ("server", "ws_port"),
    "NODE_ENV": ("server", "default_environment"),
    "LOG_LEVEL": ("log", "level"),
    "LOG_FORMAT": ("log", "format"),
    "DATABASE_URL": ("upstream", "postgres_url"),
    "REDIS_URL": ("upstream", "redis_url"),
    "CONFIG_ENCRYPTION_KEY": ("secrets", "encryption_key"),
}

#: Keys a SIGHUP can change in a running daemon; the rest need a restart.
RELOADABLE = {
    ("log", "level"),
    ("log", "format"),
    ("limits", "*"),
    ("rate_limit", "*"),
    ("alerts", "*"),
}


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Duration:
        return Duration.parse(value)
    raise NotImplementedError


def _describe(error: msgspec.ValidationError) -> tuple[str, str]:
    """(dotted key, problem) from msgspec's message, e.g. ("server.api_port", "expected int")."""
    message = validation_message(error)
    what, path = message.what, message.path[1:].lstrip(".")
    if message.unknown and message.field is not None:
        return (f"{path}.{message.field}" if path else message.field), "unknown key"
    what = re.sub(r"`([^`]*)`", r"\1", what)
    if what.startswith("Invalid enum value") and (choices := _choices(path)):
        what += f" (one of: {', '.join(choices)})"
    return path, what[0].lower() + what[1:]


def _choices(path: str) -> tuple[str, ...]:
    """The allowed values of a Literal-typed key such as "log.level"."""
    kind: Any = Settings
    for part in path.split("."):
        hints = typing.get_type_hints(kind) if isinstance(kind, type) else {}
        if part not in hints:
            return ()
        kind = hints[part]
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else ()


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Settings from the environment, and which variable set each key."""
    layer: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for variable, (section, key) in ENV_ALIASES.items():
        if environ.get(variable):
            layer.setdefault(section, {})[key] = environ[variable]
            origin[f"{section}.{key}"] = variable
    for variable, value in environ.items():
        if variable.startswith("FPCD_") and "__" in variable:
            section, _, key = variable[5:].lower().partition("__")
            layer.setdefault(section, {})[key] = value
            origin[f"{section}.{key}"] = variable
    return layer, origin


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Build Settings from the file at `path`, the environment and command-line overrides."""
    environ = os.environ if environ is None else environ
    label = str(path) if path else "settings"
    file_layer: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as handle:
                file_layer = tomllib.load(handle)
        except FileNotFoundError:
            raise SettingsError(f"{label}: file not found") from None
        except OSError as error:
            raise SettingsError(f"{label}: cannot read: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"{label}: not valid TOML: {error}") from None
    env_layer, env_origin = _env_layer(environ)
    merged = _merge(_merge(file_layer, env_layer), overrides or {})
    try:
        settings = msgspec.convert(merged, Settings, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as error:
        key, problem = _describe(error)
        section, _, name = key.partition(".")
        if name in (overrides or {}).get(section, {}):
            raise SettingsError(f"--{name.replace('_', '-')}: {problem}") from None
        if key in env_origin:
            raise SettingsError(f"{env_origin[key]}: {problem}") from None
        raise SettingsError(f"{label}: {key}: {problem}") from None
    _check(settings, label)
    return settings


def file_mode(text: str, where: str) -> int:
    """An octal file mode as written in settings ("0640") -> its permission bits; the one
    parser of server.socket_mode, flags.socket_mode and [[files]] mode."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise SettingsError(f"{where}: expected octal digits like 0640") from None
    if mode & ~0o777:
        raise SettingsError(f"{where}: only permission bits (0-0777)")
    return mode


def _check(settings: Settings, label: str) -> None:
    """Rules that types alone cannot state."""
    for key, raw in (
        ("server.socket_mode", settings.server.socket_mode),
        ("flags.socket_mode", settings.flags.socket_mode),
    ):
        file_mode(raw, f"{label}: {key}")
    if settings.websocket.heartbeat < 1:
        raise SettingsError(f"{label}: websocket.heartbeat: at least 1s")
    if settings.alerts.interval < 0.1:
        raise SettingsError(f"{label}: alerts.interval: at least 100ms")
    if not valid_name(settings.server.default_environment):
        raise SettingsError(f"{label}: server.default_environment: not a valid environment name")
    for name in settings.environments:
        if name != "*" and not valid_name(name):
            raise SettingsError(f"{label}: server.environments: {name!r} is not a valid name")
    if settings.auth.anonymous_role and settings.auth.anonymous_role not in ROLES:
        raise SettingsError(
            f"{label}: auth.anonymous_role: one of {', '.join(sorted(ROLES))}, or empty"
        )
    for i, entry in enumerate(settings.files):
        _check_file(entry, f"{label}: files[{i}]")
    if bool(settings.tls.cert) != bool(settings.tls.key):
        raise SettingsError(f"{label}: tls: give both cert and key, or neither")
    for key, path in (
        ("tls.cert", settings.tls.cert),
        ("tls.key", settings.tls.key),
        ("auth.jwt_public_key_file", settings.auth.jwt_public_key_file),
        ("auth.jwks_file", settings.auth.jwks_file),
    ):
        if path and not os.path.isfile(path):
            raise SettingsError(f"{label}: {key}: {path} is not a readable file")
    given = [
        k
        for k, v in (
            ("jwt_secret", settings.auth.jwt_secret),
            ("jwt_public_key_file", settings.auth.jwt_public_key_file),
            ("jwks_file", settings.auth.jwks_file),
        )
        if v
    ]
    if len(given) > 1:
        raise SettingsError(f"{label}: auth: choose one of {', '.join(given)}")
    if settings.auth.jwt_secret and len(settings.auth.jwt_secret) < 32:
        raise SettingsError(f"{label}: auth.jwt_secret: use at least 32 characters")
    host = settings.server.api_host
    loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
    secure = bool(settings.tls.cert) and settings.auth.enabled
    if not loopback and not secure and not settings.server.allow_insecure:
        raise SettingsError(
            f"{label}: server.api_host: {host} is not loopback, and fpcd serves it only with"
            " TLS (tls.cert, tls.key) and token auth; set server.allow_insecure = true if a"
            " proxy terminates TLS in front of it"
        )


def _check_file(entry: FileSettings, where: str) -> None:
    for kind, value in (("service", entry.service), ("environment", entry.environment)):
        if not valid_name(value):
            raise SettingsError(f"{where}.{kind}: not a valid {kind} name")
    if not os.path.isabs(entry.path):
        raise SettingsError(f"{where}.path: must be an absolute path")
    mode = file_mode(entry.mode, f"{where}.mode")
    if entry.include_secrets and mode & 0o007:
        raise SettingsError(
            f"{where}.include_secrets: the file would hold secrets but mode {entry.mode} lets"
            " others read it; use a mode such as 0600 or 0640"
        )
    if entry.format == "template" and not entry.template:
        raise SettingsError(f"{where}.template: format 'template' needs a template file")
    if entry.template and not os.path.isfile(entry.template):
        raise SettingsError(f"{where}.template: {entry.template} is not a readable file")
    if (entry.owner or entry.group) and os.geteuid() != 0:
        raise SettingsError(f"{where}.owner/group: only when fpcd runs as root")
    try:
        import grp
        import pwd

        if entry.owner:
            pwd.getpwnam(entry.owner)
        if entry.group:
            grp.getgrnam(entry.group)
    except KeyError as error:
        raise SettingsError(f"{where}.owner/group: no such user or group ({error})") from None
    if isinstance(entry.command, str) and entry.command:
        try:
            shlex.split(entry.command)
        except ValueError as error:
            raise SettingsError(f"{where}.command: {error}") from None
    if entry.wait.max and entry.wait.max < entry.wait.min:
        raise SettingsError(f"{where}.wait.max: must not be less than wait.min")


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Dotted keys whose values differ, for the SIGHUP log line."""
    out: list[str] = []
    old_map = msgspec.to_builtins(old, enc_hook=float)
    new_map = msgspec.to_builtins(new, enc_hook=float)
    for section, values in new_map.items():
        if not isinstance(values, dict):  # [[files]]: compared as a whole
            if old_map.get(section) != values:
                out.append(section)
            continue
        for key, value in values.items():
            if old_map.get(section, {}).get(key) != value:
                out.append(f"{section}.{key}")
    return out
