"""JSON logs, one object per line on stderr (journald and log shippers read them as-is).

Only what a call passes in `extra` is added; nothing reads request bodies or
headers, so no secret value can reach a log line by way of this module.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, RequestKey, StreamResponse

#: Where the request pipeline keeps the request id; the access log reads it.
REQUEST_ID = RequestKey("request_id", str)
#: The request id of the request this task serves: every log line made while serving
#: it carries the id (aiohttp runs each request in its own task, so it cannot leak).
CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("fpcd_request_id", default=None)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_encoder = msgspec.json.Encoder(enc_hook=str)
#: Where access lines go when logs are JSON (stderr, line-buffered, as the log handler);
#: None sends them through logging.
_access_stream: Any = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if "request_id" not in doc and (request_id := CURRENT_REQUEST_ID.get()) is not None:
            doc["request_id"] = request_id
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(doc).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {
            k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        }
        if "request_id" not in extras and (request_id := CURRENT_REQUEST_ID.get()) is not None:
            extras["request_id"] = request_id
        return line + ("  " + " ".join(f"{k}={v}" for k, v in extras.items()) if extras else "")


def configure_logging(level: str, fmt: str) -> None:
    global _access_stream
    _access_stream = sys.stderr if fmt == "json" else None
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_fpcd", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._fpcd = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.setLevel("WARNING" if level.lower() == "warn" else level.upper())
    # aiohttp's own access logger is replaced by ours; its other loggers stay.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # APScheduler logs every job it adds and runs at INFO; fpcd logs what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


#: Access lines encoded but not yet written, and whether a write is scheduled.
_access_pending: list[bytes] = []


def _flush_access() -> None:
    lines = b"".join(_access_pending)
    _access_pending.clear()
    stream = _access_stream
    if stream is not None:
        stream.write(lines.decode())
        stream.flush()


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path (never the query: it may carry a token), status.

    Off by default (`log.access`), as in Consul and Vault: `/metrics` counts every request
    by route and status at no cost; a line per request is for debugging and audits of
    traffic. When on, the line is encoded straight from the request instead of going
    through a LogRecord and the formatter (90 µs -> about 10 µs a request), and the lines
    of one event-loop pass are written together once it ends (one write, not one a
    request). It goes to the same stream in the same shape as every other log line.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
            "bytes": response.body_length,
            "request_id": request.get(REQUEST_ID, ""),
            "remote": request.remote or "",
        }
        stream = _access_stream
        if stream is None:
            self.logger.info("request", extra=fields)
            return
        line = _encoder.encode(
            {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "level": "info",
                "logger": self.logger.name,
                "msg": "request",
                **fields,
            }
        )
        _access_pending.append(line + b"\n")
        if len(_access_pending) == 1:
            asyncio.get_running_loop().call_soon(_flush_access)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
