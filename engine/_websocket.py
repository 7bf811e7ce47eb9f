"""The server's WebSocket endpoint: wsproto's protocol state machine driven straight off a
Trio socket stream, one connection per task.

trio-websocket (which the client uses) runs a reader task and a memory channel per
connection and passes every message through both; a busy room pays for that on every frame
it fans out, and an idle connection pays for the extra task in memory. Here the session's own
reader parses what arrives and its writer frames what leaves, so a message costs one socket
call and no task switch beyond the session's own (bench/README.md has the numbers).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from plait.protocol import ABNORMAL_CLOSURE, CloseCode, TransportClosed

logger = logging.getLogger("plait.websocket")

RECEIVE_BYTES = 64 * 1024
MESSAGE_TOO_BIG = 1009


class WebSocketStream:
    """A server-side WebSocket connection over a Trio stream (the `Transport` protocol).

    Sends from several tasks (the writer, a pong from the reader, a ping) never interleave:
    the first sender writes, later ones queue their bytes for it.
    """

    __slots__ = ("path", "_stream", "_ws", "_max_message_bytes", "_events", "_parts", "_size", "_outgoing",
                 "_sending", "_closed", "_pongs", "_ping_count")

    # Thousands of idle connections each hold one of these: plain lists (a deque costs 600
    # bytes empty) and the handshake's HTTP machinery dropped once the upgrade is done.
    def __init__(self, stream: trio.abc.Stream, ws: Connection, path: str, max_message_bytes: int) -> None:
        self.path = path
        self._stream = stream
        self._ws = ws
        self._max_message_bytes = max_message_bytes
        self._events: list[Event] = []
        self._parts: list[bytes | str] = []
        self._size = 0
        self._outgoing: list[bytes] = []
        self._sending = False
        self._closed: TransportClosed | None = None
        self._pongs: dict[bytes, trio.Event] = {}
        self._ping_count = 0

    # -- receiving --------------------------------------------------------------------------

    async def receive_message(self) -> bytes | str:
        while True:
            while self._events:
                message = await self._handle(self._events.pop(0))
                if message is not None:
                    return message
            if self._closed is not None:
                raise self._closed
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._lost()
                raise self._closed_error()
            self._ws.receive_data(data)
            self._events.extend(self._ws.events())

    async def _handle(self, event: Event) -> bytes | str | None:
        if isinstance(event, (BytesMessage, TextMessage)):
            self._size += len(event.data)
            if self._size > self._max_message_bytes:
                await self._fail(MESSAGE_TOO_BIG, f"message longer than {self._max_message_bytes} bytes")
            self._parts.append(event.data)
            if not event.message_finished:
                return None
            parts, self._parts, self._size = self._parts, [], 0
            if isinstance(event, TextMessage):
                return "".join(parts)  # type: ignore[arg-type]
            return parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)  # type: ignore[arg-type]
        if isinstance(event, Ping):
            await self._write(self._ws.send(event.response()))
        elif isinstance(event, Pong):
            waiter = self._pongs.pop(bytes(event.payload), None)
            if waiter is not None:
                waiter.set()
        elif isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.OPEN:
                # wsproto reports frames it cannot parse as a close event, with the code to send.
                await self._fail(event.code, event.reason or "")
            self._finish(TransportClosed(event.code, event.reason or ""))
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                # Answer the peer's close with its code, as RFC 6455 §5.5.1 asks.
                try:
                    await self._write(self._ws.send(event.response()))
                except TransportClosed:
                    pass
            await trio.aclose_forcefully(self._stream)
            raise self._closed_error()
        return None

    async def _fail(self, code: int, reason: str) -> None:
        """Close because of what the peer sent; raises TransportClosed."""
        self._finish(TransportClosed(code, reason))
        try:
            await self._write(self._ws.send(CloseConnection(code, reason[:120])))
        except (LocalProtocolError, TransportClosed):
            pass
        await trio.aclose_forcefully(self._stream)
        raise self._closed_error()

    # -- sending ----------------------------------------------------------------------------

    async def send_message(self, data: bytes) -> None:
        if self._closed is not None or self._ws.state is not ConnectionState.OPEN:
            raise self._closed_error()
        await self._write(self._ws.send(Message(data=data)))

    async def ping(self) -> None:
        if self._closed is not None or self._ws.state is not ConnectionState.OPEN:
            raise self._closed_error()
        self._ping_count += 1
        payload = self._ping_count.to_bytes(8, "big")
        waiter = self._pongs[payload] = trio.Event()
        await self._write(self._ws.send(Ping(payload)))
        await waiter.wait()
        if self._closed is not None:
            raise self._closed

    async def _write(self, data: bytes) -> None:
        self._outgoing.append(data)
        if self._sending:
            return  # the task already sending will write it, in order
        self._sending = True
        try:
            while self._outgoing:
                chunk = self._outgoing.pop(0)
                try:
                    await self._stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._lost()
                    raise self._closed_error() from None
        finally:
            self._sending = False

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close frame, wait (as long as the caller allows) for the peer's, then close
        the socket."""
        try:
            if self._closed is None and self._ws.state is ConnectionState.OPEN:
                self._finish(TransportClosed(code, reason))
                self._outgoing.clear()
                await self._write(self._ws.send(CloseConnection(code, reason[:120])))
                while self._ws.state is not ConnectionState.CLOSED:
                    data = await self._stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        break
                    self._ws.receive_data(data)
                    for event in self._ws.events():
                        if isinstance(event, CloseConnection):
                            break
        except (trio.BrokenResourceError, trio.ClosedResourceError, TransportClosed, LocalProtocolError):
            pass
        finally:
            self._finish(TransportClosed(code, reason))
            await trio.aclose_forcefully(self._stream)

    def _lost(self) -> None:
        self._finish(TransportClosed(ABNORMAL_CLOSURE))

    def _finish(self, closed: TransportClosed) -> None:
        if self._closed is None:
            self._closed = closed
        for waiter in self._pongs.values():
            waiter.set()
        self._pongs.clear()

    def _closed_error(self) -> TransportClosed:
        closed = self._closed or TransportClosed(ABNORMAL_CLOSURE)
        return TransportClosed(closed.code, closed.reason)


Handler = Callable[[WebSocketStream], Awaitable[None]]


async def serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    accepting: Callable[[], bool],
    handshake_timeout: float,
    max_message_bytes: int,
) -> None:
    """Run one TCP connection: the HTTP upgrade, then `handler` with the WebSocket. The
    socket is closed when this returns, whatever happened."""
    try:
        upgraded = None
        with trio.move_on_after(handshake_timeout):
            upgraded = await _upgrade(stream, accepting)
        if upgraded is not None:
            connection, target = upgraded
            await handler(WebSocketStream(stream, connection, target, max_message_bytes))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _upgrade(stream: trio.abc.Stream, accepting: Callable[[], bool]) -> tuple[Connection, str] | None:
    """The opening handshake: the WebSocket connection and the request's target, or None
    (the request was refused, answered with its HTTP status)."""
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        while True:
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                return None
            handshake.receive_data(data)
            for event in handshake.events():
                if not isinstance(event, Request):
                    continue
                if not accepting():
                    await _refuse(stream, handshake, 503, b"shutting down")
                    return None
                await stream.send_all(handshake.send(AcceptConnection()))
                assert handshake.connection is not None
                return handshake.connection, event.target
    except RemoteProtocolError as exc:  # not a WebSocket upgrade request
        logger.info("refused a connection: %s", exc)
        status = exc.event_hint.status_code if isinstance(exc.event_hint, RejectConnection) else 400
        await _refuse(stream, handshake, status, str(exc).encode()[:200])
        return None


async def _refuse(stream: trio.abc.Stream, handshake: H11Handshake, status: int, body: bytes) -> None:
    try:
        await stream.send_all(handshake.send(RejectConnection(
            status_code=status, has_body=True, headers=[(b"content-length", str(len(body)).encode())])))
        await stream.send_all(handshake.send(RejectData(body)))
    except LocalProtocolError:
        pass
