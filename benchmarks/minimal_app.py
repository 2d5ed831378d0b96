"""The ceiling for Python here: aiohttp on uvloop returning fixed bytes, nothing else."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web


def main() -> None:
    port, body_file = int(sys.argv[1]), sys.argv[2]
    with open(body_file, "rb") as handle:
        body = handle.read()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers={"ETag": '"1"'})

    async def live(request: web.Request) -> web.Response:  # fpcd's /health/live body
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/health/live", live)
    app.router.add_get("/api/config/{service}", handler)
    app.router.add_get("/health", handler)
    app.router.add_post("/api/features/evaluate", handler)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
