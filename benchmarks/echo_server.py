"""Floors for the flag socket: asyncio Protocols on uvloop.

`echo` writes each chunk back as it came. `ndjson` (issue 18's yardstick, "an asyncio
Protocol + msgspec NDJSON server") splits each chunk into lines, decodes every line with
msgspec and writes each decoded document back encoded, one line each, in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

import msgspec
import uvloop


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class NdjsonEcho(asyncio.Protocol):
    def __init__(self) -> None:
        self.tail = b""
        self.decode = msgspec.json.Decoder().decode
        self.encode_into = msgspec.json.Encoder().encode_into

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        lines = (self.tail + data).split(b"\n")
        self.tail = lines.pop()
        out = bytearray()
        for line in lines:
            self.encode_into(self.decode(line), out, -1)
            out += b"\n"
        self.transport.write(out)  # type: ignore[attr-defined]


async def serve(path: str, protocol: type[asyncio.Protocol]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.get_running_loop().create_unix_server(protocol, path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    kind = sys.argv[2] if len(sys.argv) > 2 else "echo"
    uvloop.run(serve(sys.argv[1], NdjsonEcho if kind == "ndjson" else Echo))
