"""The WebSocket protocol: every message both ways, for the daemon (`api/ws.py`,
`services/live.py`), the Python client (`client/live.py`) and the docs alike.

The original service's messages, verbatim, plus fpcd's additions (`lastVersion`, AUTH,
AUTHENTICATED, CONFIGURATION_RELOAD, REPLAY_TOO_LARGE). `type` carries each message's
name, so each direction is a tagged union (`ClientMessage`, `ServerMessage`) that one
decoder reads and a `match` over it can be checked for exhaustiveness. Neither side
refuses fields it does not know: any seed client works, and a newer peer's additions
are ignored. A server message is encoded once, whatever the number of subscribers.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeAlias, get_args

import msgspec

from fpcd.wire import FlagView

Topic = Literal["config-updates", "feature-flags"]
CONFIG_UPDATES: Final = "config-updates"
FEATURE_FLAGS: Final = "feature-flags"
TOPICS: tuple[Topic, ...] = get_args(Topic)

# -- client to server -------------------------------------------------------------------


class _FromClient(msgspec.Struct, tag_field="type", rename="camel", kw_only=True):
    pass


class Subscribe(_FromClient, tag="SUBSCRIBE", kw_only=True):
    service_name: str
    #: The connection's default environment when absent.
    environment: str | None = None
    subscriptions: list[Topic] = msgspec.field(default_factory=lambda: list(TOPICS))
    #: The version the client has: every version after it is replayed first.
    last_version: Annotated[int, msgspec.Meta(ge=0, le=2**53)] | None = None


class Unsubscribe(_FromClient, tag="UNSUBSCRIBE", kw_only=True):
    service_name: str
    environment: str | None = None


class Ping(_FromClient, tag="PING", kw_only=True):
    pass


class Auth(_FromClient, tag="AUTH", kw_only=True):
    """For clients that cannot send a header: the token as the first message."""

    token: str


ClientMessage: TypeAlias = Subscribe | Unsubscribe | Ping | Auth

# -- server to client -------------------------------------------------------------------


class _FromServer(
    msgspec.Struct, tag_field="type", rename="camel", omit_defaults=True, kw_only=True
):
    pass


class Subscribed(_FromServer, tag="SUBSCRIBED", kw_only=True):
    service_name: str
    environment: str
    subscriptions: list[Topic]


class Unsubscribed(_FromServer, tag="UNSUBSCRIBED", kw_only=True):
    service_name: str
    environment: str


class ConfigurationUpdate(_FromServer, tag="CONFIGURATION_UPDATE", kw_only=True):
    service_name: str
    environment: str
    version: int
    #: The effective configuration (the layer merged over `default`).
    config: dict[str, Any]
    #: The `default` layer's version merged underneath (absent for `default` itself).
    base_version: int | None = None
    checksum: str


class ConfigurationReload(_FromServer, tag="CONFIGURATION_RELOAD", kw_only=True):
    service_name: str
    environment: str
    version: int
    force: bool = False


#: Why a FEATURE_FLAG_UPDATE was sent: a new version, an archived flag, or a date reached.
FlagUpdateReason = Literal["changed", "archived", "schedule_start", "schedule_end"]


class FeatureFlagUpdate(_FromServer, tag="FEATURE_FLAG_UPDATE", kw_only=True):
    flag_key: str
    #: On in `environment` at this moment: enabled, dependencies active, inside its dates.
    enabled: bool
    environment: str
    #: The flag's current version; null once there is none.
    flag: FlagView | None
    reason: FlagUpdateReason


class Pong(_FromServer, tag="PONG", kw_only=True):
    #: The server's clock, in milliseconds since the epoch.
    timestamp: int = 0


class Authenticated(_FromServer, tag="AUTHENTICATED", kw_only=True):
    subject: str


ErrorCode = Literal[
    "BAD_JSON",
    "UNKNOWN_TYPE",
    "BAD_MESSAGE",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "UNKNOWN_ENVIRONMENT",
    "TOO_MANY_SUBSCRIPTIONS",
    #: A replay would send more versions than `websocket.max_replay`: read over REST.
    "REPLAY_TOO_LARGE",
]


class ErrorMessage(_FromServer, tag="ERROR", kw_only=True):
    """A message refused (the connection stays open)."""

    code: ErrorCode
    message: str
    #: The subscription an error is about, when it is about one (REPLAY_TOO_LARGE).
    service_name: str | None = None
    environment: str | None = None


ServerMessage: TypeAlias = (
    Subscribed
    | Unsubscribed
    | ConfigurationUpdate
    | ConfigurationReload
    | FeatureFlagUpdate
    | Pong
    | Authenticated
    | ErrorMessage
)

encode = msgspec.json.Encoder().encode
#: The server's reader of client frames, and the client's of server frames.
decode_client_message = msgspec.json.Decoder(ClientMessage).decode
decode_server_message = msgspec.json.Decoder(ServerMessage).decode
