"""A WebSocket client made by hand, for the workloads that must send what a well-behaved
library never would (bench/hostile.py) or open thousands of short connections cheaply
(bench/churn.py): the HTTP upgrade is written byte for byte (any path, any header), frames
can be built with any opcode, flag, length or mask, and what the server sends is parsed here.
Every wait has a deadline; 127.0.0.1 only."""

from __future__ import annotations

import base64
import os
import struct
from dataclasses import dataclass

import trio

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class Refused(Exception):
    """The server did not upgrade the connection (its status line, or why not)."""


@dataclass(frozen=True)
class Closed:
    """The connection ended: the server's close code (None if it sent no close frame, just
    dropped the socket) and reason."""

    code: int | None
    reason: str = ""


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
          length: int | None = None) -> bytes:
    """One WebSocket frame as a client sends it (RFC 6455 §5.2). `length` overrides the
    length the header declares (the payload sent is still `payload`); `rsv` is the three
    reserved bits (0..7)."""
    declared = len(payload) if length is None else length
    head = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    bit = 0x80 if mask else 0
    if declared < 126:
        head.append(bit | declared)
    elif declared < 2**16:
        head += bytes([bit | 126]) + struct.pack("!H", declared)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", declared & (2**64 - 1))
    if not mask:
        return bytes(head) + payload
    key = os.urandom(4)
    return bytes(head) + key + _mask(payload, key)


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def upgrade_request(path: str, port: int, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode("latin-1", "replace")


class RawWebSocket:
    """One client connection. `receive()` answers pings itself and returns whole messages."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._parts: list[bytes] = []
        self._text = False
        self._pongs: list[bytes] = []
        self.closed: Closed | None = None

    @classmethod
    async def connect(cls, port: int, path: str, *, timeout: float = 10.0, request: bytes | None = None) -> RawWebSocket:
        """Open a TCP connection to 127.0.0.1:`port` and upgrade it at `path` (or with
        `request`, sent as is). Raises Refused, OSError or trio.TooSlowError."""
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await stream.send_all(request if request is not None else upgrade_request(path, port))
                ws = cls(stream)
                while b"\r\n\r\n" not in ws._buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise Refused("connection closed during the upgrade")
                    ws._buffer += data
                    if len(ws._buffer) > 65536:
                        raise Refused("response headers too long")
                head, _, rest = bytes(ws._buffer).partition(b"\r\n\r\n")
                status = head.split(b"\r\n", 1)[0].decode("latin-1")
                if " 101 " not in status + " ":
                    raise Refused(status)
                ws._buffer = bytearray(rest)
                return ws
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are. Raises trio.BrokenResourceError if the server is gone."""
        await self.stream.send_all(data)

    async def send_binary(self, data: bytes) -> None:
        await self.send_raw(frame(BINARY, data))

    async def send_text(self, text: str) -> None:
        await self.send_raw(frame(TEXT, text.encode()))

    async def receive(self, timeout: float) -> bytes | str | Closed | None:
        """The next whole message, a Closed once the connection ended, or None if nothing
        came within `timeout` seconds."""
        if self.closed is not None:
            return self.closed
        with trio.move_on_after(timeout):
            while True:
                parsed = self._parse()
                if self._pongs and self.closed is None:
                    try:
                        await self._answer_pings()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                if parsed is not None:
                    return parsed
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.closed = Closed(None, "connection dropped")
                    return self.closed
                self._buffer += data
        return None

    def _parse(self) -> bytes | str | Closed | None:
        while True:
            buf = self._buffer
            if len(buf) < 2:
                return None
            opcode, fin, n, pos = buf[0] & 0xF, buf[0] & 0x80, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return None
                n, pos = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return None
                n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < pos + n:
                return None
            payload = bytes(buf[pos : pos + n])
            del buf[: pos + n]
            if opcode == PING:
                self._pongs.append(payload)  # answered by receive(), which may await
                continue
            if opcode == PONG:
                continue
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed = Closed(code, payload[2:].decode("utf-8", "replace"))
                return self.closed
            self._parts.append(payload)
            if opcode != CONT:
                self._text = opcode == TEXT
            if fin:
                data = b"".join(self._parts)
                self._parts = []
                return data.decode("utf-8", "replace") if self._text else data

    async def _answer_pings(self) -> None:
        # A y-websocket session whose server pings go unanswered is closed with 4005.
        while self._pongs:
            await self.send_raw(frame(PONG, self._pongs.pop(0)))

    async def close(self, code: int = 1000, timeout: float = 2.0) -> Closed:
        """The closing handshake, as far as `timeout` allows; the socket is closed in any case."""
        try:
            if self.closed is None:
                with trio.move_on_after(timeout):
                    await self.send_raw(frame(CLOSE, struct.pack("!H", code)))
                    while not isinstance(await self.receive(timeout), Closed):
                        pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)
        return self.closed or Closed(None, "no close frame")

    async def abort(self) -> None:
        await trio.aclose_forcefully(self.stream)
