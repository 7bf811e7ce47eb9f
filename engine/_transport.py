"""Transports: how a session's messages move. WebSocket for real; memory streams for tests.

A transport carries whole messages. It raises `TransportClosed` (with the close code) once the
connection is gone, whoever closed it; nothing else escapes for a closed connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import trio
import trio_websocket

from plait.protocol import ABNORMAL_CLOSURE, CloseCode, TransportClosed


class Transport(Protocol):
    path: str

    async def send_message(self, data: bytes) -> None: ...

    async def receive_message(self) -> bytes | str: ...

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...

    async def ping(self) -> None:
        """Return once the peer answered a transport-level ping (WebSocket ping/pong)."""
        ...


@runtime_checkable
class NowaitTransport(Transport, Protocol):
    """A transport that can also send without waiting (the server's WebSocket endpoint). A
    busy room's fan-out then writes to every socket from one task instead of waking a writer
    task per connection (Flusher.flush_soon)."""

    def send_message_nowait(self, data: bytes) -> bool:
        """Send `data` in order, now as far as the peer takes it; False when part of it waits
        for `flush()`. Raises TransportClosed like send_message."""
        ...

    async def flush(self) -> None:
        """Write what send_message_nowait left waiting."""
        ...


class WebSocketTransport:
    """A trio-websocket connection, either side."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, path: str = "/") -> None:
        self.ws = ws
        self.path = path

    async def send_message(self, data: bytes) -> None:
        try:
            await self.ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def receive_message(self) -> bytes | str:
        try:
            return await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def ping(self) -> None:
        try:
            await self.ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        try:
            await self.ws.aclose(code, reason)
        finally:
            # After an abnormal closure trio-websocket's aclose returns early without closing
            # the socket; close it so a dropped client never leaks a file descriptor.
            stream = getattr(self.ws, "_stream", None)
            if stream is not None:
                await trio.aclose_forcefully(stream)


def _closed(exc: trio_websocket.ConnectionClosed) -> TransportClosed:
    reason = exc.reason
    if reason is None:
        return TransportClosed(ABNORMAL_CLOSURE)
    return TransportClosed(reason.code, reason.reason or "")


@dataclass
class _Direction:
    close_code: int | None = None
    close_reason: str = ""


class MemoryTransport:
    """One end of an in-memory connection, with a bounded buffer each way like a socket's."""

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes | str],
        receive: trio.MemoryReceiveChannel[bytes | str],
        outgoing: _Direction,
        incoming: _Direction,
        path: str,
    ) -> None:
        self._send, self._receive = send, receive
        self._outgoing, self._incoming = outgoing, incoming
        self.path = path

    async def send_message(self, data: bytes | str) -> None:
        if self._outgoing.close_code is not None:
            raise TransportClosed(self._outgoing.close_code, self._outgoing.close_reason)
        try:
            await self._send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._closed_by_peer() from None

    async def receive_message(self) -> bytes | str:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed_by_peer() from None

    async def ping(self) -> None:
        if self._outgoing.close_code is not None:
            raise TransportClosed(self._outgoing.close_code, self._outgoing.close_reason)
        await trio.lowlevel.checkpoint()

    def _closed_by_peer(self) -> TransportClosed:
        for side in (self._incoming, self._outgoing):
            if side.close_code is not None:
                return TransportClosed(side.close_code, side.close_reason)
        return TransportClosed(ABNORMAL_CLOSURE)

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self._outgoing.close_code is None:
            self._outgoing.close_code, self._outgoing.close_reason = code, reason
        # The peer drains what was sent, then sees the close, as with a WebSocket close frame.
        await self._send.aclose()
        await self._receive.aclose()
        await trio.lowlevel.checkpoint()


def memory_transport_pair(path: str = "/", buffer: int = 16) -> tuple[MemoryTransport, MemoryTransport]:
    """(client end, server end) of one in-memory connection."""
    c2s_send, c2s_receive = trio.open_memory_channel[bytes | str](buffer)
    s2c_send, s2c_receive = trio.open_memory_channel[bytes | str](buffer)
    c2s, s2c = _Direction(), _Direction()
    client = MemoryTransport(c2s_send, s2c_receive, outgoing=c2s, incoming=s2c, path=path)
    server = MemoryTransport(s2c_send, c2s_receive, outgoing=s2c, incoming=c2s, path=path)
    return client, server
