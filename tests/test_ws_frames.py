"""RFC 6455 over a raw socket: the daemon refuses unmasked client frames (1002) and text
frames that are not UTF-8 (1007), as the RFC requires of a server."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from urllib.parse import urlsplit

import pytest

from fpcd.app import Daemon
from tests.conftest import admin_token


def frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    head = bytes([0x80 | opcode])
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (servers never mask)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", await reader.readexactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", await reader.readexactly(8))[0]
    return first & 0x0F, await reader.readexactly(length)


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, daemon: Daemon, after_upgrade: bytes = b"") -> RawClient:
        url = urlsplit(daemon.addresses["ws"])
        assert url.hostname is not None and url.port is not None
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        key = base64.b64encode(os.urandom(16)).decode()
        token = admin_token(daemon.settings.data_dir)
        request = (
            f"GET /ws HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        writer.write(request.encode() + after_upgrade)  # frames may ride with the upgrade
        await writer.drain()
        status = await reader.readuntil(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101"), status
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def close_code(self) -> tuple[int, str]:
        """Frames until the server's CLOSE: its status code and reason."""
        while True:
            opcode, payload = await asyncio.wait_for(read_frame(self.reader), 20)
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    async def text(self) -> dict[str, object]:
        opcode, payload = await asyncio.wait_for(read_frame(self.reader), 20)
        assert opcode == 0x1, (opcode, payload)
        message: dict[str, object] = json.loads(payload)
        return message

    def close(self) -> None:
        self.writer.close()


PING = json.dumps({"type": "PING"}).encode()


async def test_masked_frames_are_answered(daemon: Daemon) -> None:
    client = await RawClient.connect(daemon)
    # A masked frame, split across writes mid-header, then a 200-byte one (16-bit length).
    data = frame(0x1, PING)
    await client.send(data[:1])
    await client.send(data[1:3])
    await client.send(data[3:])
    assert (await client.text())["type"] == "PONG"
    padded = json.dumps({"type": "PING", "pad": "x" * 200}).encode()
    await client.send(frame(0x1, padded) + frame(0x1, PING))
    assert (await client.text())["type"] == "PONG"
    assert (await client.text())["type"] == "PONG"
    client.close()


@pytest.mark.parametrize("pipelined", [False, True])
async def test_an_unmasked_frame_closes_with_1002(daemon: Daemon, pipelined: bool) -> None:
    unmasked = frame(0x1, PING, masked=False)
    if pipelined:
        client = await RawClient.connect(daemon, after_upgrade=unmasked)
    else:
        client = await RawClient.connect(daemon)
        await client.send(frame(0x1, PING))
        assert (await client.text())["type"] == "PONG"
        await client.send(unmasked)
    code, _ = await client.close_code()  # aiohttp closes protocol errors without a reason
    assert code == 1002
    client.close()


async def test_invalid_utf8_text_closes_with_1007(daemon: Daemon) -> None:
    client = await RawClient.connect(daemon)
    await client.send(frame(0x1, b'{"type": "PING", "x": "\xff\xfe"}'))
    code, _ = await client.close_code()
    assert code == 1007
    client.close()
