"""The ceiling for `POST /api/features/evaluate`: aiohttp on uvloop that decodes the body
into typed structs (msgspec), hashes each flag's bucket (murmur3, as fpcd does) and
encodes a result per flag. No auth, no rules, no counting: what any Python server doing
this request's essential work pays.

Run: python -m benchmarks.minimal_evaluate_app PORT
"""

from __future__ import annotations

import sys

import mmh3
import msgspec
import uvloop
from aiohttp import web


class Context(msgspec.Struct, rename="camel", omit_defaults=True):
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    user_group: str | None = None
    region: str | None = None
    environment: str | None = None
    custom_attributes: dict[str, object] = {}


class Request(msgspec.Struct, forbid_unknown_fields=True):
    flags: list[str] | None = None
    context: Context = msgspec.field(default_factory=Context)


class Result(msgspec.Struct, rename="camel", omit_defaults=True):
    flag_key: str
    enabled: bool
    variant: str | None
    configuration: object
    reason: str
    flag_version: int = 0


class Response(msgspec.Struct):
    results: dict[str, Result]


def main() -> None:
    port = int(sys.argv[1])
    decoder = msgspec.json.Decoder(Request)
    encoder = msgspec.json.Encoder()

    async def evaluate(request: web.Request) -> web.Response:
        body = decoder.decode(await request.read())
        stickiness = body.context.user_id or body.context.agent_id or ""
        results = {}
        for key in body.flags or ():
            on = mmh3.hash(f"{key}:{stickiness}", 0, signed=False) % 100_000 < 50_000
            results[key] = Result(
                flag_key=key, enabled=on, variant=None, configuration=None, reason="SPLIT"
            )
        return web.Response(body=encoder.encode(Response(results)), content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/features/evaluate", evaluate)
    app.router.add_get("/health", health)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
