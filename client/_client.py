"""The client: one connection at a time, reconnecting with backoff, rejoining every room.

    async with plait.client.connect("ws://127.0.0.1:8765/") as client:
        async with client.join("doc:42") as room:
            await room.synced()

Concurrency: `connect` owns a nursery with one task, the connection loop. Each live connection
adds a reader and a writer. Frames to send go through one queue that the writer drains into
one message per wake-up. Errors in background tasks never escape as bare exceptions: a
connection that fails is retried; one the server refuses for good makes every waiting call
raise ConnectionClosed.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any, Protocol

import trio
import trio_websocket

from plait.protocol import (
    ABNORMAL_CLOSURE,
    Ack,
    CloseCode,
    Connection,
    Error,
    Frame,
    Hello,
    Joined,
    Ping,
    ProtocolError,
    Role,
    TransportClosed,
    Welcome,
    encode,
)

from ._backoff import Backoff
from ._errors import ConnectionClosed, error_for
from ._room import Room, Waiter

logger = logging.getLogger("plait.client")

HANDSHAKE_TIMEOUT = 10.0


class ClientState(str, Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class Transport(Protocol):
    async def send_message(self, data: bytes) -> None: ...

    async def receive_message(self) -> bytes | str: ...

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...


OpenTransport = Callable[[], Awaitable[Transport]]


class _WebSocket:
    """trio-websocket, raising TransportClosed like every Plait transport."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream) -> None:
        self.ws = ws
        self.stream = stream

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

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        try:
            await self.ws.aclose(code, reason)
        finally:
            # After an abnormal closure trio-websocket's aclose returns early and leaves the
            # socket open; we own the stream, so we close it ourselves.
            await trio.aclose_forcefully(self.stream)


def _closed(exc: trio_websocket.ConnectionClosed) -> TransportClosed:
    if exc.reason is None:
        return TransportClosed(ABNORMAL_CLOSURE)
    return TransportClosed(exc.reason.code, exc.reason.reason or "")


class Client:
    """Use through `connect()`."""

    def __init__(
        self,
        open_transport: OpenTransport,
        token: str | None,
        backoff: Backoff,
        heartbeat_timeout: float | None,
        offline_queue: int,
        client_info: dict[str, Any],
    ) -> None:
        self._open_transport = open_transport
        self._token = token
        self._backoff = backoff
        self._heartbeat_timeout = heartbeat_timeout
        self._offline_queue = offline_queue
        self._client_info = client_info
        self.state = ClientState.CONNECTING
        self.session_id: str | None = None
        self.welcome: Welcome | None = None
        self.closed_error: ConnectionClosed | None = None
        self.attempts = 0
        """Connection attempts since the last successful handshake."""
        self.delays: list[float] = []
        """Every backoff delay slept so far (for tests and diagnostics)."""
        self._rooms: dict[str, Room] = {}
        self._conn: Connection | None = None
        self._outgoing: list[bytes] = []
        self._wakeup = trio.Event()
        self._waiters: dict[int, Waiter[Any]] = {}
        self._joins: dict[int, Room] = {}
        self._ref = 0
        self._state_changed = trio.Event()

    # -- public -----------------------------------------------------------------------------

    @asynccontextmanager
    async def join(self, name: str) -> AsyncIterator[Room]:
        """Join a room for the block's duration (rejoined after every reconnect)."""
        if name in self._rooms:
            raise ValueError(f"already joined {name!r} on this client")
        room = Room(self, name, self._offline_queue)
        self._rooms[name] = room
        if self.state is ClientState.OPEN:
            self.send(room.join_frame())
        try:
            yield room
        finally:
            room.close()
            del self._rooms[name]

    async def wait_state(self, state: ClientState) -> None:
        """Wait until the client is in `state`."""
        while self.state is not state:
            event = self._state_changed
            await event.wait()

    # -- used by rooms ----------------------------------------------------------------------

    def next_ref(self) -> int:
        self._ref = (self._ref + 1) % 2**32
        return self._ref

    def send(self, frame: Frame, waiter: Waiter[Any] | None = None) -> None:
        """Queue a frame on the live connection. Without one, it is dropped: rooms re-send what
        matters when they rejoin, and the waiter fails with a retryable ConnectionClosed."""
        conn = self._conn
        if conn is None or self.state is not ClientState.OPEN:
            if waiter is not None:
                waiter.fail(ConnectionClosed("not connected", ABNORMAL_CLOSURE))
            return
        try:
            conn.send(frame)
        except ProtocolError as exc:  # e.g. a channel the server just closed
            if waiter is not None:
                waiter.fail(error_for(exc.code, exc.message))
            return
        ref = getattr(frame, "ref", None)
        if waiter is not None and ref is not None:
            self._waiters[ref] = waiter
        self._outgoing.append(encode(frame))
        self._wakeup.set()

    def expect_join(self, ref: int, room: Room) -> None:
        self._joins[ref] = room

    # -- the connection loop ----------------------------------------------------------------

    def _set_state(self, state: ClientState) -> None:
        self.state = state
        self._state_changed.set()
        self._state_changed = trio.Event()
        for room in self._rooms.values():
            room.on_connection_state(state.value)

    async def run(self) -> None:
        while True:
            code = await self._connect_once()
            ended = ConnectionClosed(f"server closed the connection ({code})", code)
            if code is not None and not ended.retryable:
                self._stop(ended)
                return
            self._set_state(ClientState.RECONNECTING)
            delay = self._backoff.delay(self.attempts)
            self.delays.append(delay)
            self.attempts += 1
            await trio.sleep(delay)

    async def _connect_once(self) -> int | None:
        """One connection, from opening the transport to its end; returns its close code."""
        try:
            transport = await self._open_transport()
        except (OSError, trio_websocket.HandshakeError, TransportClosed) as exc:
            logger.info("connect failed: %s", exc)
            return None
        try:
            return await self._serve(transport)
        except TransportClosed as exc:
            return exc.code
        except ProtocolError as exc:
            logger.warning("server broke the protocol: %s", exc)
            with trio.move_on_after(1, shield=True):
                await transport.aclose(CloseCode.PROTOCOL_ERROR, exc.message[:120])
            return None
        finally:
            self._lost_connection()
            with trio.move_on_after(1, shield=True):
                try:
                    await transport.aclose()
                except TransportClosed:
                    pass

    async def _serve(self, transport: Transport) -> int | None:
        conn = Connection(Role.CLIENT)
        hello = Hello((1,), self._token, self._client_info)
        conn.send(hello)
        await transport.send_message(encode(hello))
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            first = await transport.receive_message()
        frames = conn.receive_data(first) if isinstance(first, bytes) else []
        if not frames or not isinstance(frames[0], Welcome):
            if frames and isinstance(frames[0], Error):
                logger.warning("server refused: %s", frames[0].message)
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                while True:
                    await transport.receive_message()
            return None
        self.welcome = frames[0]
        self.session_id = self.welcome.session
        self._conn = conn
        self.attempts = 0
        self._set_state(ClientState.OPEN)
        for room in self._rooms.values():
            self.send(room.join_frame())
        for frame in frames[1:]:
            self._dispatch(frame)
        heartbeat = self.welcome.heartbeat_ms / 1000
        silence = self._heartbeat_timeout or 2 * heartbeat
        ended: list[Exception] = []

        async def until_ended(work: Awaitable[None], nursery: trio.Nursery) -> None:
            # Either task ending (or failing) ends the connection; the cause is re-raised
            # below, unwrapped, so nothing leaks as an ExceptionGroup.
            try:
                await work
            except (TransportClosed, ProtocolError) as exc:
                ended.append(exc)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(until_ended, self._writer(transport, heartbeat), nursery)
            await until_ended(self._reader(transport, conn, silence), nursery)
        if ended:
            raise ended[0]
        return None

    async def _reader(self, transport: Transport, conn: Connection, silence: float) -> None:
        while True:
            with trio.move_on_after(silence) as idle:
                data = await transport.receive_message()
            if idle.cancelled_caught:
                logger.info("no frame for %.1f s: connection presumed dead", silence)
                raise TransportClosed(ABNORMAL_CLOSURE, "heartbeat timeout")
            if not isinstance(data, bytes):
                continue
            for frame in conn.receive_data(data):
                self._dispatch(frame)

    async def _writer(self, transport: Transport, heartbeat: float) -> None:
        nonce = 0
        while True:
            with trio.move_on_after(heartbeat):
                while not self._outgoing:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
            if not self._outgoing:
                nonce += 1
                self._outgoing.append(encode(Ping(nonce % 2**32)))
            batch, self._outgoing = self._outgoing, []
            await transport.send_message(b"".join(batch))

    def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Joined):
            room = self._joins.pop(frame.ref, None)
            if room is not None and self._rooms.get(room.name) is room:
                room.on_joined(frame)
            return
        if isinstance(frame, Ack):
            waiter = self._waiters.pop(frame.ref, None)
            if waiter is not None:
                waiter.set(frame.value)
            return
        if isinstance(frame, Error):
            error = error_for(frame.code, frame.message)
            if frame.ref is not None:
                joining = self._joins.pop(frame.ref, None)
                if joining is not None:
                    joining.on_join_failed(error)
                waiter = self._waiters.pop(frame.ref, None)
                if waiter is not None:
                    waiter.fail(error)
            else:
                logger.warning("server error: %s (%d)", frame.message, frame.code)
            return
        channel = getattr(frame, "channel", None)
        if channel is not None:
            for room in self._rooms.values():
                if room.channel == channel:
                    room.on_frame(frame)
                    return

    def _lost_connection(self) -> None:
        self._conn = None
        self._outgoing = []
        waiters, self._waiters = self._waiters, {}
        self._joins.clear()
        for waiter in waiters.values():
            waiter.fail(ConnectionClosed("connection lost", ABNORMAL_CLOSURE))
        for room in self._rooms.values():
            room.on_disconnected()

    def _stop(self, error: ConnectionClosed) -> None:
        self.closed_error = error
        self._set_state(ClientState.CLOSED)
        for room in self._rooms.values():
            room.on_disconnected()


def websocket_opener(url: str, nursery: trio.Nursery) -> OpenTransport:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    host, port = parts.hostname, parts.port or (443 if secure else 80)
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query

    async def open_websocket() -> Transport:
        # We open the TCP stream ourselves so that a connect cancelled mid-handshake (the app
        # leaving while a reconnect is under way) closes the socket instead of leaking it.
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        try:
            if secure:
                stream = trio.SSLStream(stream, ssl.create_default_context(), server_hostname=host)
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, host, resource, max_message_size=64 * 1024 * 1024
            )
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return _WebSocket(ws, stream)

    return open_websocket


@asynccontextmanager
async def connect(
    url: str | None = None,
    token: str | None = None,
    *,
    backoff: Backoff | None = None,
    heartbeat_timeout: float | None = None,
    offline_queue: int = 1000,
    client_info: dict[str, Any] | None = None,
    open_transport: OpenTransport | None = None,
) -> AsyncIterator[Client]:
    """Connect to a Plait server and stay connected until the block ends.

    Args:
        url: the server's WebSocket URL, e.g. "ws://127.0.0.1:8765/".
        token: passed to the server's authenticate hook.
        backoff: reconnect delays (exponential, full jitter; default 0.5 s doubling to 30 s).
        heartbeat_timeout: declare the connection dead after this long without a frame
            (default: twice the server's heartbeat interval).
        offline_queue: how many publishes may wait for a connection.
        open_transport: instead of `url`, a coroutine function that opens a transport (tests
            use an engine's in-memory transport).

    The block is entered at once (state CONNECTING); `room.synced()` waits for the server.
    Escapes: exceptions from the block itself; background failures never escape.
    """
    if (url is None) == (open_transport is None):
        raise ValueError("give exactly one of url and open_transport")
    async with trio.open_nursery() as nursery:
        opener = open_transport or websocket_opener(url, nursery)  # type: ignore[arg-type]
        client = Client(opener, token, backoff or Backoff(), heartbeat_timeout, offline_queue, client_info or {"name": "plait-py"})
        nursery.start_soon(client.run)
        try:
            yield client
        finally:
            # Let queued frames (a final edit, a leave) go out before closing.
            with trio.move_on_after(1, shield=True):
                while client._outgoing and client.state is ClientState.OPEN:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
            if client.closed_error is None:
                client._stop(ConnectionClosed("client closed", CloseCode.NORMAL))
