"""The flag socket's protocol (`flags.sock`): one JSON object a line each way, answered
in order, for the daemon (`api/flag_socket.py`) and the client (`client/flagsocket.py`).

`{"id":1,"flag":"k","context":{...}}` -> `{"id":1,"result":{...}}`
`{"id":2,"flags":["a","b"],"context":{...}}` -> `{"id":2,"results":{"a":{...},"b":{...}}}`
(no `flag` and no `flags`: every active flag). A bad line gets
`{"id":..,"error":{"code":..,"message":..}}` (its id when it could be read, else null).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from fpcd.domain.flags import EvaluationContext, EvaluationResult

RequestId = int | str | None


class FlagQuery(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line from a client."""

    id: RequestId = None
    flag: str | None = None
    flags: list[str] | None = None
    context: EvaluationContext = msgspec.field(default_factory=EvaluationContext)


ErrorCode = Literal["PARSE_ERROR", "INVALID_REQUEST", "LINE_TOO_LONG", "INTERNAL"]


class FlagReplyError(msgspec.Struct):
    code: ErrorCode
    message: str


class FlagReply(msgspec.Struct, omit_defaults=True):
    """The answer to one line: its `id`, then one of `result` (a `flag` query), `results`
    (any other) or `error`."""

    id: RequestId
    result: EvaluationResult | None = None
    results: dict[str, EvaluationResult] | None = None
    error: FlagReplyError | None = None
