"""RFC 6455 rules aiohttp's frame reader does not enforce on a server: every frame a
client sends must be masked (section 5.1: "a server MUST close the connection upon
receiving a frame that is not masked", status 1002).

Invalid UTF-8 in text messages (1007) is aiohttp's own check, on as long as the
response decodes text (`decode_text=True`, the default).

`StrictWebSocketResponse` puts a `MaskGuard` between the connection and aiohttp's
parser. The guard reads only frame headers (2 to 14 bytes) and skips payloads, so it
costs next to nothing; on an unmasked frame it fails the reader the way aiohttp's own
protocol errors do, and the handler's `receive()` then closes with 1002.
"""

from __future__ import annotations

from typing import Any

from aiohttp import WSCloseCode, web
from aiohttp.http_websocket import WebSocketError

UNMASKED = "client frames must be masked (RFC 6455, 5.1)"


def _header_size(head: bytes) -> int | None:
    if len(head) < 2:
        return None
    size = 2 + (4 if head[1] & 0x80 else 0)
    length = head[1] & 0x7F
    return size + (2 if length == 126 else 8 if length == 127 else 0)


def _payload_length(head: bytes) -> int:
    length = head[1] & 0x7F
    if length == 126:
        return int.from_bytes(head[2:4], "big")
    if length == 127:
        return int.from_bytes(head[2:10], "big")
    return length


class MaskGuard:
    """Stands in for aiohttp's WebSocketReader on the connection (same two methods)."""

    def __init__(self, parser: Any, queue: Any) -> None:
        self._parser = parser
        self._queue = queue
        self._head = b""
        #: Payload bytes of the current frame still to pass.
        self._skip = 0
        self._failed = False

    def _scan(self, data: bytes) -> bool:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            take = min(n - i, 14 - len(self._head))
            head = self._head + data[i : i + take]
            need = _header_size(head)
            if need is None or len(head) < need:
                self._head = head
                i += take
                continue
            if not head[1] & 0x80:
                return False
            self._skip = _payload_length(head)
            self._head = b""
            i += take - (len(head) - need)  # bytes past the header are payload
        return True

    def feed_data(self, data: bytes | bytearray | memoryview) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        chunk = bytes(data)
        if not self._scan(chunk):
            self._failed = True
            self._queue.set_exception(WebSocketError(WSCloseCode.PROTOCOL_ERROR, UNMASKED))
            return True, b""
        result: tuple[bool, bytes] = self._parser.feed_data(chunk)
        return result

    def feed_eof(self) -> None:
        self._parser.feed_eof()


class StrictWebSocketResponse(web.WebSocketResponse):
    """A WebSocketResponse whose client frames go through a MaskGuard.

    This reaches into aiohttp's request handler (`_payload_parser`, `_message_tail`):
    tests/test_ws_frames.py sends unmasked frames over a raw socket, also pipelined
    with the upgrade request, so an aiohttp upgrade that moves these names fails there.
    """

    def _post_start(self, request: Any, protocol: str | None, writer: Any) -> None:
        handler = request.protocol
        # Frames that arrived with the upgrade request go through the guard too.
        tail, handler._message_tail = handler._message_tail, b""
        super()._post_start(request, protocol, writer)
        guard = MaskGuard(handler._payload_parser, self._reader)
        handler._payload_parser = guard
        if tail:
            eof, _ = guard.feed_data(tail)
            if eof:
                handler.close()
