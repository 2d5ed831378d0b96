"""The floor for WebSocket fan-out: a minimal aiohttp app on uvloop that speaks just enough
of fpcd's protocol for benchmarks/ws_fanout.py's clients.

`SUBSCRIBE` gets `SUBSCRIBED`; `PUT /api/config/bench` answers 200 and then sends one
CONFIGURATION_UPDATE, encoded once, to every subscriber with `send_str`. No storage,
auth, limits, queues or counting: what aiohttp alone costs to deliver a change.

Run: python -m benchmarks.ws_floor_app PORT
"""

from __future__ import annotations

import asyncio
import sys

import msgspec
import uvloop
from aiohttp import WSMsgType, web

SUBSCRIBERS = web.AppKey("subscribers", set[web.WebSocketResponse])
VERSION = web.AppKey("version", list[int])


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    subscribers = request.app[SUBSCRIBERS]
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and b"SUBSCRIBE" in msg.data.encode():
                subscribers.add(ws)
                await ws.send_str(
                    '{"type":"SUBSCRIBED","serviceName":"bench","environment":"production",'
                    '"subscriptions":["config-updates"]}'
                )
    finally:
        subscribers.discard(ws)
    return ws


async def fan_out(app: web.Application, data: str) -> None:
    subscribers: set[web.WebSocketResponse] = app[SUBSCRIBERS]
    for ws in list(subscribers):
        await ws.send_str(data)


async def put_config(request: web.Request) -> web.Response:
    body = msgspec.json.decode(await request.read())
    version = request.app[VERSION]
    version[0] += 1
    data = msgspec.json.encode(
        {
            "type": "CONFIGURATION_UPDATE",
            "serviceName": "bench",
            "environment": body["environment"],
            "version": version[0],
            "config": body["config"],
        }
    ).decode()
    asyncio.get_running_loop().create_task(fan_out(request.app, data))
    return web.json_response({"version": version[0]})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app[SUBSCRIBERS] = set()
    app[VERSION] = [0]
    app.router.add_get("/", websocket)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/health/ready", health)
    app.router.add_put("/api/config/bench", put_config)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
