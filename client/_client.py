"""The client: one connection at a time, reconnecting with backoff, rejoining every room.

    async with plait.client.connect("ws://127.0.0.1:8765/") as client:
        async with client.join("doc:42") as room:
            await room.synced()

Concurrency: `connect` owns a nursery with one task, the connection loop. Each live connection
adds a reader and a writer. Frames to send go through one queue that the writer drains, as few
messages as the server's limits allow, per wake-up. Document updates wait for the pacer
(client/_pacing.py) and go out merged. Errors in background tasks never escape as bare
exceptions: a connection that fails is retried with backoff; one the server refuses for good
(spec §9) makes every waiting call raise ConnectionClosed.

Leaving: a room's block waits until the room's edits are acknowledged, then queues `leave`;
the client's block has the writer write everything queued, then closes the WebSocket normally.
Both waits are bounded by `close_timeout`.
"""

from __future__ import annotations

import inspect
import logging
import math
import secrets
import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from enum import Enum
from typing import Any

import trio
import trio_websocket

from plait.protocol import (
    ABNORMAL_CLOSURE,
    FRAME_OVERHEAD,
    MAX_HELLO_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_PRESENCE_BYTES,
    MAX_VALUES_PER_MESSAGE,
    STALE,
    Ack,
    CloseCode,
    CodecLimits,
    Connection,
    CursorMove,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Joined,
    Leave,
    Limits,
    LocalProtocolError,
    Ping,
    ProtocolError,
    Publish,
    Refresh,
    RemoteProtocolError,
    Role,
    SyncStep2,
    TokenExpiring,
    Transport,
    TransportClosed,
    Update,
    Welcome,
    check_room_name,
    decode,
    decode_counted,
    encode,
    encode_frame,
    wire_size,
)

from ._backoff import Backoff
from ._errors import (
    AlreadyJoined,
    ConnectionClosed,
    EditsNotAcknowledged,
    FrameTooLarge,
    InvalidRoomName,
    PresenceTooLarge,
    RequestFailed,
    error_for,
)
from ._pacing import Pacer
from ._room import ConnectionChanged, Feed, Room, Subscription, Waiter

logger = logging.getLogger("plait.client")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds to wait for `welcome` after `hello`."""
CLOSE_TIMEOUT = 2.0
"""Default seconds a leaving block waits for acks and for the close handshake."""
_PACE_EPSILON = 1e-4
PUBLISH_BACKOFF = Backoff(base=0.1, cap=2.0)
"""The pause, past 0.1 s, before a publish refused RATE_LIMITED goes again (its n-th time)."""


class ClientState(str, Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


OpenTransport = Callable[[], Awaitable[Transport]]
TokenSource = Callable[[], "str | Awaitable[str | None] | None"]
"""A function (sync or async) returning a fresh token: `connect(token=...)`."""

REFRESH_RETRY = 5.0
"""Seconds between attempts to refresh a token the server refused, while it has not expired
(spec §5.9)."""


class _WebSocket:
    """trio-websocket, raising TransportClosed like every Plait transport."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream) -> None:
        self.ws = ws
        self.stream = stream

    async def send_message(self, data: bytes | str) -> None:
        try:
            await self.ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def receive_message(self) -> bytes | str:
        try:
            return await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    def set_max_message_bytes(self, limit: int) -> None:
        """Accept messages up to `limit` bytes from now on (the server's welcome says how
        large its messages may be). trio-websocket checks the attribute for every message
        and offers no setter for it."""
        if not hasattr(self.ws, "_max_message_size"):
            logger.warning("trio-websocket has no _max_message_size: messages stay limited to 64 MiB")
            return
        self.ws._max_message_size = limit

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
    reason = exc.reason.reason or ""
    if exc.reason.code == CloseCode.MESSAGE_TOO_BIG and reason.startswith("Exceeded maximum message size"):
        # trio-websocket's own close: the server sent more than its welcome announced.
        return TransportClosed(exc.reason.code, reason, local=True)
    return TransportClosed(exc.reason.code, reason)


def _open_failure(exc: BaseException) -> BaseException:
    """Why opening a connection failed, and whether to try again: a refusal that will not go
    away (an HTTP 4xx answer to the upgrade, a certificate the client does not trust) stops
    the client; anything else (refused, unreachable, timed out, 5xx) is retried."""
    if isinstance(exc, trio_websocket.ConnectionRejected):
        status = exc.status_code
        final = 400 <= status < 500 and status not in (408, 429)
        return ConnectionClosed(f"the server refused the WebSocket upgrade: HTTP {status}", None, retryable=not final)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionClosed(f"the server's certificate is not trusted: {exc.verify_message}", None, retryable=False)
    if isinstance(exc, TransportClosed):
        return ConnectionClosed.from_close(exc.code, exc.reason)
    return exc


class Client:
    """Use through `connect()`.

    Attributes:
        state: the connection's state.
        session_id, welcome: the current (or last) connection's session and welcome frame.
        closed_error: why the client stopped for good, once it has.
        attempts: failed connection attempts in a row. A connection that stays open for
            `backoff.reset_after` seconds resets it; one that fails sooner does not, so a
            server that accepts and drops at once is retried ever more slowly.
        delays: every backoff delay slept so far (for tests and diagnostics).
    """

    def __init__(
        self,
        open_transport: OpenTransport,
        token: str | TokenSource | None,
        backoff: Backoff,
        heartbeat_timeout: float | None,
        offline_queue: int,
        client_info: dict[str, Any],
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self._open_transport = open_transport
        self._token = token
        self._backoff = backoff
        self._heartbeat_timeout = heartbeat_timeout
        self._offline_queue = offline_queue
        # spec §4.2: the same anonymous user on every connection of this client (a reconnect
        # is not a second person); a secret, which the server only hashes.
        self._client_info = {"anonymous_key": secrets.token_urlsafe(24), **client_info}
        self._close_timeout = close_timeout
        self.state = ClientState.CONNECTING
        self.session_id: str | None = None
        self.welcome: Welcome | None = None
        self.closed_error: ConnectionClosed | None = None
        self.attempts = 0
        self.delays: list[float] = []
        self._rooms: dict[str, Room] = {}
        self._conn: Connection | None = None
        self._limits: Limits | None = None
        self._opened_at: float | None = None
        self._refusal: Error | None = None
        self._outgoing: list[bytes] = []
        self._wakeup = trio.Event()
        self._waiters: dict[int, Waiter[Any]] = {}
        self._joins: dict[int, Room] = {}
        self._deferred: dict[str, Room] = {}
        """Rooms whose join waits for the server to answer those left behind (their blocks
        ended before `joined` came, so the server still counts them: ALREADY_JOINED for the
        same name, TOO_MANY_ROOMS at the limit): sent once all are, after their `leave`."""
        self._ref = 0
        self._state_changed = trio.Event()
        self._changes: Feed[ConnectionChanged] = Feed()
        self._pacer: Pacer | None = None
        self._event_pacer: Pacer | None = None
        self._frame_pacer: Pacer | None = None
        self._paced: deque[tuple[Frame, Waiter[Any] | None]] = deque()
        """Frames waiting for a token (spec §5.8): publishes for the event rate, every other
        frame but document updates for the frame rate; in order, cursor moves latest-wins."""
        self._doc_rooms: dict[Room, None] = {}
        """Rooms with document changes waiting for the pacer, in turn."""
        self._rate_limited_in_a_row = 0
        self._events_limited_since_ack = False
        self._closing = False
        self._run_done = trio.Event()
        self._connection_nursery: trio.Nursery | None = None
        """The live connection's tasks (reader, writer, a token refresh): cancelled with it."""
        self._refreshing = False

    # -- public -----------------------------------------------------------------------------

    @asynccontextmanager
    async def join(self, name: str) -> AsyncIterator[Room]:
        """Join a room for the block's duration (rejoined after every reconnect).

        The block is entered at once; `room.synced()` waits for the server. On leaving, it
        waits (at most `close_timeout`) until the server has acknowledged the room's edits,
        then sends `leave`.

        Raises:
            InvalidRoomName: `name` is not a room name (spec §5.2: 1..256 characters of
                Unicode text, no control character, no lone surrogate); raised here, before
                anything is sent, as the server would refuse it with INVALID_ROOM_NAME.
            AlreadyJoined: this client already has the room joined (in another block).
            EditsNotAcknowledged: on leaving, the room's local edits were not acknowledged
                within `close_timeout` (offline, say): they may be lost. Not raised for a room
                the server ended (RoomEnded: its error is what `flushed()` raises).
            ConnectionClosed: the client has stopped for good (its `connect` block ended, or
                the server refused it): no room can be joined through it.

        Escapes: exceptions from the block, unchanged.
        """
        if type(name) is not str:
            raise InvalidRoomName(f"room names are strings, got {type(name).__name__}")
        try:
            check_room_name(name)
        except RemoteProtocolError as exc:
            raise InvalidRoomName(exc.message) from None
        if self.closed_error is not None:
            raise self.closed_error
        if name in self._rooms:
            raise AlreadyJoined(f"already joined {name!r} on this client; leave its block first")
        room = Room(self, name, self._offline_queue)
        self._rooms[name] = room
        if self.state is ClientState.OPEN:
            if self._left_behind():
                self._deferred[name] = room
            else:
                self.send(room.join_frame())
        failed = False
        try:
            yield room
        except BaseException:
            failed = True
            raise
        finally:
            with trio.move_on_after(self._close_timeout, shield=True):
                await room.settled()
            unsaved = room.unacknowledged.edits
            ended = room.ended  # by the server: its edits went with it, as its error said
            room.close()
            del self._rooms[name]
            self._doc_rooms.pop(room, None)
            if unsaved and not failed and not ended:
                raise EditsNotAcknowledged(
                    f"left room {name!r} with {unsaved} local edit(s) the server had not acknowledged within "
                    f"{self._close_timeout:g} s (close_timeout): they may be lost, or only partly stored",
                    unsaved,
                )

    async def wait_state(self, state: ClientState | str) -> None:
        """Wait until the client is in `state` (a ClientState, or its name: "open", ...).

        Raises:
            ValueError: `state` is not one of ClientState's; raised at once.
            ConnectionClosed: the client stopped for good before reaching `state` (it never
                will).
        """
        try:
            state = ClientState(state)
        except ValueError:
            raise ValueError(f"not a client state: {state!r} (one of {[s.value for s in ClientState]})") from None
        while self.state is not state:
            if self.closed_error is not None:
                raise self.closed_error
            event = self._state_changed
            await event.wait()

    def changes(self) -> Subscription[ConnectionChanged]:
        """Every change of the connection's state from now on: each failed attempt with its
        error and the delay before the next one, the connection opening, the client stopping
        (with the ConnectionClosed that says why)."""
        return self._changes.subscribe()

    @property
    def is_open(self) -> bool:
        return self.state is ClientState.OPEN

    # -- used by rooms ----------------------------------------------------------------------

    def next_ref(self) -> int:
        self._ref = (self._ref + 1) % 2**32
        return self._ref

    @property
    def max_message_bytes(self) -> int:
        """The largest message the server accepts: its welcome's limit, or the default one
        before the first welcome (spec §3.2)."""
        return self._limits.max_message_bytes if self._limits is not None else MAX_MESSAGE_BYTES

    def check_request(self, frame: Frame) -> None:
        """Raise unless `frame` is one the server could take: spec §3.2, "a sender MUST NOT
        send" a message over the limit its peer announced. Rooms call it before they queue a
        request, so that the caller hears of it at once (the frame may carry placeholder
        channel and ref numbers: any real ones encode no longer).

        Raises:
            FrameTooLarge: the frame alone is longer than the server's `max_message_bytes`,
                or holds more values than the reference server reads in one message (spec
                §3.4: servers do not announce that bound, and going over it is fatal).
            InvalidField, TooDeep: a field the protocol forbids (spec §3.3: NaN, a lone
                surrogate, a non-string map key, nesting deeper than 32, ...).
        """
        try:
            data = encode_frame(frame)
        except LocalProtocolError as exc:
            raise error_for(exc.code, exc.message) from None
        size = len(data)
        if size > MAX_VALUES_PER_MESSAGE:  # a value takes a byte at least: shorter ones hold fewer
            try:
                decode_counted(data, VALUE_LIMITS)
            except RemoteProtocolError as exc:
                raise FrameTooLarge(f"{type(frame).__name__}: {exc.message} (spec §3.4); not sent") from None
        if isinstance(frame, Publish):
            # The event it becomes carries its seq, session and user too (spec §4): a publish
            # that fits only without them would come back refused after a round trip.
            size += EVENT_GROWTH
        if size > self.max_message_bytes:
            raise _too_large(frame, size, self.max_message_bytes)

    def check_presence(self, what: str, value: Any) -> None:
        """Raise PresenceTooLarge if `value` (a presence state or a cursor position, already
        checked by `check_request`) is over the server's `limits.max_presence_bytes`, or the
        default before the first welcome (spec §5.4)."""
        limit = self._limits.max_presence_bytes if self._limits is not None else MAX_PRESENCE_BYTES
        size = wire_size(value)  # as the server counts it: the longer of msgpack and JSON
        if size > limit:
            raise PresenceTooLarge(f"a {what} of {size} bytes is over the server's max_presence_bytes ({limit}); not sent")

    def send(self, frame: Frame, waiter: Waiter[Any] | None = None, *, first: bool = False) -> None:
        """Queue a frame on the live connection. Without one, it is dropped: rooms re-send what
        matters when they rejoin, and the waiter fails with a retryable ConnectionClosed.

        Below the rates the server announced (spec §5.8): a publish waits for the event rate,
        any other frame but a document update (which the update pacer sends) for the frame
        rate, in order; a cursor move waiting replaces the one before it (latest wins). So a
        loop of publishes, or an app moving the cursor on every mouse event, waits instead of
        hearing RATE_LIMITED and being closed for it.

        Never raises: a frame the server could not take (see `check_request`; a request
        checked against a larger limit than the current server's, say) is not sent, and its
        waiter fails with FrameTooLarge or the error for the broken rule. `first`: ahead of
        the frames waiting for the pace (one sent again after RATE_LIMITED)."""
        if isinstance(frame, (Update, SyncStep2)) or self._conn is None or self.state is not ClientState.OPEN:
            self._send_now(frame, waiter)
            return
        if isinstance(frame, CursorMove):
            for i, (queued, queued_waiter) in enumerate(self._paced):
                if isinstance(queued, CursorMove) and queued.channel == frame.channel:
                    self._paced[i] = (frame, queued_waiter)
                    return
        if first:
            self._paced.appendleft((frame, waiter))
        else:
            self._paced.append((frame, waiter))
        self._send_paced()
        if self._paced:
            self._wakeup.set()

    def _send_now(self, frame: Frame, waiter: Waiter[Any] | None) -> None:
        conn = self._conn
        if conn is None or self.state is not ClientState.OPEN:
            if waiter is not None:
                waiter.fail(ConnectionClosed("not connected", ABNORMAL_CLOSURE))
            return
        try:
            data = encode_frame(frame)
        except LocalProtocolError as exc:
            self._refuse(frame, waiter, error_for(exc.code, exc.message))
            return
        if len(data) > self.max_message_bytes:
            # spec §3.2: never sent; a server would close the connection (1009), and a
            # reconnect would send it again, forever.
            self._refuse(frame, waiter, _too_large(frame, len(data), self.max_message_bytes))
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
        # _messages batches frames into messages that keep the server's limits; no frame is
        # larger (checked above; updates go in parts).
        self._outgoing.append(data)
        self._wakeup.set()

    def _refuse(self, frame: Frame, waiter: Waiter[Any] | None, error: RequestFailed) -> None:
        if waiter is not None:
            waiter.fail(error)
        else:
            logger.warning("not sending %s: %s", type(frame).__name__, error)

    def expect_join(self, ref: int, room: Room) -> None:
        self._joins[ref] = room

    def doc_ready(self, room: Room) -> None:
        """`room` has document changes to send: send them now if the pacer allows, else as
        soon as it does (the writer wakes for it)."""
        self._doc_rooms[room] = None
        self._send_doc_frames()
        self._wakeup.set()

    @property
    def max_document_bytes(self) -> int | None:
        """The server's largest document (its welcome), None before the first."""
        return self._limits.max_document_bytes if self._limits is not None else None

    @property
    def max_update_bytes(self) -> int:
        """The largest update that goes in one frame: what the server's welcome allows in a
        message, less the frame around it (spec §3.2). Larger ones go in parts."""
        limit = self._limits.max_message_bytes if self._limits is not None else MAX_MESSAGE_BYTES
        return limit - FRAME_OVERHEAD

    def doc_acked(self) -> None:
        self._rate_limited_in_a_row = 0

    def doc_rate_limited(self, room: Room) -> None:
        """The server refused an update for its rate (spec §5.8). It counts differently than
        announced (or jitter bunched our frames): halve our pace, pause a jittered backoff
        delay, then send again."""
        self._rate_limited_in_a_row += 1
        if self._pacer is not None:
            if self._rate_limited_in_a_row == 1:  # later ones, before an ack, are the same burst
                self._pacer.slow_down()
            self._pacer.hold(trio.current_time(), self._backoff.delay(self._rate_limited_in_a_row - 1))
        self.doc_ready(room)

    def publish_acked(self) -> None:
        self._events_limited_since_ack = False

    def publish_rate_limited(self, refusals: int) -> None:
        """The server refused a publish for its event rate (spec §5.8), the `refusals`-th time
        for that publish: a slower pace (once per burst of refusals, until a publish is acked)
        and a jittered pause before the next publish goes (PUBLISH_BACKOFF)."""
        if self._event_pacer is not None:
            if not self._events_limited_since_ack:
                self._events_limited_since_ack = True
                self._event_pacer.slow_down()
            self._event_pacer.hold(trio.current_time(), 0.1 + PUBLISH_BACKOFF.delay(refusals - 1))

    def _pacer_for(self, frame: Frame) -> Pacer | None:
        return self._event_pacer if isinstance(frame, Publish) else self._frame_pacer

    def _send_paced(self) -> None:
        """Send what waits for a token, in order, as far as the tokens go."""
        if self._conn is None or self.state is not ClientState.OPEN:
            return
        now = trio.current_time()
        while self._paced:
            pacer = self._pacer_for(self._paced[0][0])
            if pacer is not None and not pacer.take(now):
                return
            frame, waiter = self._paced.popleft()
            self._send_now(frame, waiter)

    def _send_doc_frames(self) -> None:
        if self._pacer is None or self._conn is None or self.state is not ClientState.OPEN:
            return
        now = trio.current_time()
        for room in list(self._doc_rooms):
            if not room.has_doc_frame():
                del self._doc_rooms[room]
                continue
            if not self._pacer.take(now):
                return
            del self._doc_rooms[room]  # back in line (at the end) with its next change
            taken = room.take_doc_frame()
            if taken is not None:
                self.send(*taken)
            if room.has_doc_frame():  # the next part of an update larger than a message
                self._doc_rooms[room] = None

    # -- the connection loop ----------------------------------------------------------------

    def _set_state(
        self, state: ClientState, *, error: BaseException | None = None, delay: float | None = None
    ) -> None:
        self.state = state
        self._state_changed.set()
        self._state_changed = trio.Event()
        attempt = self.attempts if state is ClientState.RECONNECTING else 0
        change = ConnectionChanged(state.value, attempt, error, delay)
        self._changes.publish(change)
        for room in self._rooms.values():
            room.on_connection_state(change)

    async def run(self) -> None:
        try:
            while not self._closing:
                failure = await self._connect_once()
                if self._closing:
                    break
                if isinstance(failure, ConnectionClosed) and not failure.retryable:
                    logger.info("stopping: %s", failure)
                    self._stop(failure)
                    return
                opened_at, self._opened_at = self._opened_at, None
                if opened_at is not None and trio.current_time() - opened_at >= self._backoff.reset_after:
                    self.attempts = 0
                self.attempts += 1
                delay = self._backoff.delay(self.attempts - 1)
                self.delays.append(delay)
                logger.info("connection attempt %d failed (%s); retrying in %.2f s", self.attempts, failure, delay)
                self._set_state(ClientState.RECONNECTING, error=failure, delay=delay)
                await trio.sleep(delay)
            self._stop(ConnectionClosed("the client closed the connection", CloseCode.NORMAL, retryable=False))
        finally:
            self._run_done.set()

    async def aclose(self) -> None:
        """Have the writer write everything queued, then close the WebSocket normally. The
        caller bounds the wait (`connect` uses `close_timeout`)."""
        self._closing = True
        self._wakeup.set()
        if self.state is ClientState.OPEN:
            await self._run_done.wait()

    async def _connect_once(self) -> BaseException | None:
        """One connection, from opening the transport to its end; returns why it ended
        (None when the client closed it)."""
        self._refusal = None
        try:
            token = await self._fresh_token()
        except Exception as exc:  # the application's token function: retried like a network failure
            logger.warning("the token function failed: %r", exc)
            return ConnectionClosed(f"the token function failed: {exc!r}", None, retryable=True)
        try:
            transport = await self._open_transport()
        except (OSError, trio_websocket.HandshakeError, TransportClosed) as exc:
            return _open_failure(exc)
        try:
            return await self._serve(transport, token)
        except TransportClosed as exc:
            refusal = self._refusal.message if self._refusal is not None else None
            return ConnectionClosed.from_close(exc.code, exc.reason, refusal, local=exc.local)
        except RemoteProtocolError as exc:
            logger.warning("server broke the protocol: %s", exc)
            with trio.move_on_after(self._close_timeout, shield=True):
                try:
                    await transport.aclose(CloseCode.PROTOCOL_ERROR, exc.message[:120])
                except TransportClosed:
                    pass
            # spec §9: a protocol error is not retried; a server that breaks it will again.
            return ConnectionClosed(f"the server broke the protocol: {exc.message}", CloseCode.PROTOCOL_ERROR)
        finally:
            self._lost_connection()
            with trio.move_on_after(self._close_timeout, shield=True):
                try:
                    await transport.aclose()
                except TransportClosed:
                    pass

    async def _fresh_token(self) -> str | None:
        """The token for a hello or a refresh: the one given to `connect`, or what its token
        function returns now (called for every connection and every refresh, spec §5.9).

        Raises:
            TypeError: the function returned something other than a str or None.
            InvalidField, FrameTooLarge: a token no hello could carry (spec §4: ≤8192
                characters of Unicode text).
            Whatever the function raises.
        """
        source = self._token
        if not callable(source):
            return source
        token = source()
        if inspect.isawaitable(token):
            token = await token
        if token is not None and not isinstance(token, str):
            raise TypeError(f"the token function returned {type(token).__name__}, not a str or None")
        if token is not None:
            try:
                encode_frame(Refresh(0, token))
            except LocalProtocolError as exc:
                raise error_for(exc.code, f"the token function's token: {exc.message}") from None
        return token

    def _token_expiring(self, frame: TokenExpiring) -> None:
        """spec §5.9: the server asks for a fresh token before the session's expires."""
        if not callable(self._token):
            logger.warning(
                "the server's token expires in %.1f s and this client cannot refresh it: give connect(token=...) "
                "a function that returns a fresh token", frame.expires_in_ms / 1000)
            return
        if self._connection_nursery is not None and not self._refreshing:
            self._refreshing = True
            self._connection_nursery.start_soon(self._refresh, trio.current_time() + frame.expires_in_ms / 1000)

    async def _refresh(self, expires_at: float) -> None:
        """Send `refresh` with a fresh token until the server acks one, or the old token
        expires (the server then closes 4012 and the client reconnects with a fresh token).
        Runs in the connection's nursery: it ends with the connection."""
        try:
            while True:
                try:
                    token = await self._fresh_token()
                except Exception as exc:  # the application's token function
                    logger.warning("the token function failed: %r", exc)
                else:
                    if token is not None:
                        waiter: Waiter[Any] = Waiter()
                        self.send(Refresh(self.next_ref(), token), waiter)
                        try:
                            await waiter.wait()
                        except ConnectionClosed:
                            return
                        except RequestFailed as exc:
                            logger.warning("the server refused the fresh token: %s", exc)
                        else:
                            logger.info("token refreshed")
                            return
                remaining = expires_at - trio.current_time()
                if remaining < 2 * _PACE_EPSILON:
                    return
                await trio.sleep(min(REFRESH_RETRY, remaining / 2))
        finally:
            self._refreshing = False

    async def _serve(self, transport: Transport, token: str | None) -> BaseException | None:
        conn = Connection(Role.CLIENT)
        hello = Hello((1,), token, self._client_info)
        conn.send(hello)
        await transport.send_message(encode(hello))
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as waiting:
            first = await transport.receive_message()
        if waiting.cancelled_caught:
            return ConnectionClosed(f"no welcome within {HANDSHAKE_TIMEOUT:g} s", None, retryable=True)
        if not isinstance(first, bytes):
            raise RemoteProtocolError("the server answered hello with a text message, not welcome", ErrorCode.MALFORMED_FRAME)
        frames = conn.receive_data(first)
        if not frames or not isinstance(frames[0], Welcome):
            if frames and isinstance(frames[0], Error):
                self._refusal = frames[0]
            # spec §5.1: a refusal is followed by the close that says whether to retry.
            with trio.move_on_after(HANDSHAKE_TIMEOUT):
                while True:
                    await transport.receive_message()
            return ConnectionClosed("the server answered hello without welcome", None, retryable=True)
        _check_limits(frames[0].limits)
        self.welcome = frames[0]
        self.session_id = self.welcome.session
        self._limits = self.welcome.limits
        # spec §3.2: accept messages up to the limits the server announced, in the decoder
        # and in the transport.
        conn.limits = CodecLimits(self._limits.max_message_bytes, self._limits.max_frames_per_message)
        set_limit = getattr(transport, "set_max_message_bytes", None)
        if set_limit is not None:
            set_limit(self._limits.max_message_bytes)
        self._conn = conn
        self._opened_at = trio.current_time()
        self._pacer = Pacer(self.welcome.limits.updates_per_second, self._opened_at)
        self._event_pacer = Pacer(self.welcome.limits.events_per_second, self._opened_at)
        self._frame_pacer = Pacer(self.welcome.limits.frames_per_second, self._opened_at)
        self._rate_limited_in_a_row = 0
        self._events_limited_since_ack = False
        self._set_state(ClientState.OPEN)
        for room in self._rooms.values():
            if room.rejoinable:
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
            self._connection_nursery = nursery
            try:
                nursery.start_soon(until_ended, self._writer(transport, heartbeat), nursery)
                await until_ended(self._reader(transport, conn, silence), nursery)
            finally:
                self._connection_nursery = None
        if ended:
            raise ended[0]
        return None

    async def _reader(self, transport: Transport, conn: Connection, silence: float) -> None:
        while True:
            with trio.move_on_after(silence) as idle:
                data = await transport.receive_message()
            if idle.cancelled_caught:
                # spec §5.7: a connection silent for 2H is dead, even if TCP has not noticed.
                raise TransportClosed(ABNORMAL_CLOSURE, f"nothing from the server for {silence:g} s")
            if not isinstance(data, bytes):
                continue
            for frame in decode(data, conn.limits):
                try:
                    if conn.receive(frame) is STALE:
                        continue
                except RemoteProtocolError as exc:
                    if exc.code.fatal:
                        raise
                    logger.warning("ignored a frame from the server: %s", exc)
                    continue
                self._dispatch(frame)

    async def _writer(self, transport: Transport, heartbeat: float) -> None:
        nonce = 0
        while True:
            idle_until = trio.current_time() + heartbeat
            while not self._outgoing and not self._closing:
                self._wakeup = trio.Event()
                self._send_doc_frames()
                self._send_paced()
                if self._outgoing:
                    break
                now = trio.current_time()
                if now >= idle_until:
                    break
                wake_at = idle_until
                if self._doc_rooms and self._pacer is not None:
                    wake_at = min(wake_at, max(self._pacer.next_token_at(now), now + _PACE_EPSILON))
                pacer = self._pacer_for(self._paced[0][0]) if self._paced else None
                if pacer is not None:
                    wake_at = min(wake_at, max(pacer.next_token_at(now), now + _PACE_EPSILON))
                with trio.move_on_at(wake_at):
                    await self._wakeup.wait()
            if self._closing:
                # What waited for a token goes now (a last leave, say): the server's burst is a
                # second's worth, more than the client ever holds back.
                paced, self._paced = self._paced, deque()
                for frame, waiter in paced:
                    self._send_now(frame, waiter)
            if not self._outgoing:
                if self._closing:
                    return
                nonce += 1  # spec §5.7: nothing to say for H, so a ping
                self._outgoing.append(encode(Ping(nonce % 2**32)))
            batch, self._outgoing = self._outgoing, []
            for message in self._messages(batch):
                await transport.send_message(message)
            if self._closing and not self._outgoing:
                return

    def _messages(self, frames: list[bytes]) -> Iterator[bytes]:
        """The frames as few messages as the server's limits allow (spec §3.2)."""
        assert self._limits is not None
        max_frames, max_bytes = self._limits.max_frames_per_message, self._limits.max_message_bytes
        batch: list[bytes] = []
        size = 0
        for frame in frames:
            if batch and (len(batch) >= max_frames or size + len(frame) > max_bytes):
                yield b"".join(batch)
                batch, size = [], 0
            batch.append(frame)
            size += len(frame)
        if batch:
            yield b"".join(batch)

    def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, TokenExpiring):
            self._token_expiring(frame)
            return
        if isinstance(frame, Joined):
            room = self._joins.pop(frame.ref, None)
            if room is not None and self._rooms.get(room.name) is room:
                room.on_joined(frame)
            elif room is not None:
                # Its block ended before the server answered: leave, or the server keeps a
                # membership no one uses (in the room's presence, and the room refused if
                # joined again on this connection: ALREADY_JOINED).
                self.send(Leave(frame.channel, None))
                self._send_deferred()
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
                    if self._rooms.get(joining.name) is not joining:
                        self._send_deferred()
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

    def _left_behind(self) -> bool:
        """Whether a join whose block has ended still waits for the server's answer."""
        return any(self._rooms.get(joining.name) is not joining for joining in self._joins.values())

    def _send_deferred(self) -> None:
        if self._left_behind() or self.state is not ClientState.OPEN:
            return
        deferred, self._deferred = self._deferred, {}
        for name, room in deferred.items():
            if self._rooms.get(name) is room and room.rejoinable:
                self.send(room.join_frame())

    def _lost_connection(self) -> None:
        self._conn = None
        self._outgoing = []
        paced, self._paced = self._paced, deque()
        waiting = [w for _, w in paced if w is not None]  # rooms send again what matters, on rejoin
        waiters, self._waiters = self._waiters, {}
        self._joins.clear()
        self._deferred.clear()  # every room joins again on the next connection
        lost = ConnectionClosed("connection lost", ABNORMAL_CLOSURE)
        for waiter in [*waiters.values(), *waiting]:
            waiter.fail(lost)
        for room in self._rooms.values():
            room.on_disconnected()

    def _stop(self, error: ConnectionClosed) -> None:
        if self.closed_error is not None:
            return
        self.closed_error = error
        self._set_state(ClientState.CLOSED, error=error)
        for room in self._rooms.values():
            room.on_disconnected()
        self._changes.close()


def _check_arguments(
    token: str | TokenSource | None, heartbeat_timeout: float | None, close_timeout: float, offline_queue: int,
    client_info: dict[str, Any] | None,
) -> None:
    """connect's arguments, refused at once with the rule they break (see `connect`)."""

    def number(name: str, value: object, low: float, above: bool = False) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if value < low or (above and value == low):
            raise ValueError(f"{name} must be {'above' if above else 'at least'} {low:g}, got {value!r}")

    number("close_timeout", close_timeout, 0)
    if heartbeat_timeout is not None:
        number("heartbeat_timeout", heartbeat_timeout, 0, above=True)
    if isinstance(offline_queue, bool) or not isinstance(offline_queue, int):
        raise ValueError(f"offline_queue must be an int, got {offline_queue!r}")
    number("offline_queue", offline_queue, 0)
    if callable(token):  # its tokens are checked as they come (Client._fresh_token)
        token = None
    elif token is not None and not isinstance(token, str):
        raise ValueError(f"token must be a str, a function returning one, or None; got {type(token).__name__}")
    hello = Hello((1,), token, {"name": "plait-py"} if client_info is None else client_info)
    try:
        size = len(encode_frame(hello))
    except LocalProtocolError as exc:
        raise error_for(exc.code, f"connect: {exc.message}") from None
    if size > MAX_HELLO_BYTES - 256:  # the client adds its anonymous_key (spec §4.2, §5.1)
        raise FrameTooLarge(
            f"a hello of {size} bytes exceeds the {MAX_HELLO_BYTES} bytes a server reads of one (spec §5.1): client_info is too large"
        )



VALUE_LIMITS = CodecLimits(max_values_per_message=MAX_VALUES_PER_MESSAGE)
"""The reference server's bound on the values of one message (spec §3.4), checked before a
large request is sent."""

def _too_large(frame: Frame, size: int, limit: int) -> FrameTooLarge:
    return FrameTooLarge(
        f"{type(frame).__name__} of {size} bytes exceeds the server's max_message_bytes ({limit}); not sent"
    )


def _check_limits(limits: Limits) -> None:
    """Limits a client can work within (spec §4.2), or RemoteProtocolError: a server that
    announces a message limit smaller than a hello, or rates of zero, would leave every call
    waiting forever."""
    if limits.max_message_bytes < MIN_MESSAGE_BYTES or limits.max_frames_per_message < 1:
        problem = f"max_message_bytes {limits.max_message_bytes}, max_frames_per_message {limits.max_frames_per_message}"
    elif limits.updates_per_second < 1 or limits.events_per_second < 1 or limits.max_rooms < 1:
        problem = f"rates {limits.updates_per_second}/{limits.events_per_second} per second, {limits.max_rooms} rooms"
    else:
        return
    raise RemoteProtocolError(f"the server announced limits no client can work within: {problem}", ErrorCode.INVALID_FIELD)


EVENT_GROWTH = 9 + 3 + 64 + 3 + 4 * 256
"""At most how much longer an event is than the publish it came from: a seq, and the session
id and user id (up to 256 characters of up to 4 bytes) the server stamps."""

MIN_MESSAGE_BYTES = 4096
"""The smallest max_message_bytes the client accepts from a server."""


def _websocket_target(url: str) -> tuple[str, int, str, bool]:
    """(host, port, resource, secure) of a ws:// or wss:// URL.

    Raises:
        ValueError: not a WebSocket URL.
    """
    if not isinstance(url, str):
        raise ValueError(f"not a WebSocket URL: {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url!r}")
    secure = parts.scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError as exc:
        raise ValueError(f"not a WebSocket URL: {url!r} ({exc})") from None
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return parts.hostname, port, resource, secure


async def _hosted_websocket(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    host: str,
    resource: str,
    *,
    task_status: trio.TaskStatus[trio_websocket.WebSocketConnection],
) -> None:
    """trio-websocket's reader task, in a nursery of this connection's own: it raises a rejected
    upgrade (an HTTP 429 or 403 answer) from that task, which in the client's nursery would end
    the client rather than this attempt. Raises that rejection (HandshakeError) to the opener,
    as `nursery.start` does with what a task raises before it has started."""
    started = False
    try:
        async with trio.open_nursery() as inner:
            ws = await trio_websocket.wrap_client_stream(inner, stream, host, resource, max_message_size=64 * 1024 * 1024)
            task_status.started(ws)
            started = True
    except BaseExceptionGroup as group:
        rejected, rest = group.split(trio_websocket.HandshakeError)
        if rest is not None:
            raise rest from None
        if rejected is not None and not started:
            raise rejected.exceptions[0] from None
        # After the handshake the connection's reads and writes say it is closed (TransportClosed).


def websocket_opener(url: str, nursery: trio.Nursery) -> OpenTransport:
    host, port, resource, secure = _websocket_target(url)

    async def open_websocket() -> Transport:
        # We open the TCP stream ourselves so that a connect cancelled mid-handshake (the app
        # leaving while a reconnect is under way) closes the socket instead of leaking it.
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as connecting:
            tcp = await trio.open_tcp_stream(host, port)
        if connecting.cancelled_caught:
            raise OSError(f"no TCP connection to {host}:{port} within {HANDSHAKE_TIMEOUT:g} s")
        stream = tcp
        try:
            # A server that takes the connection and never answers the upgrade (a frozen
            # process, a proxy that holds it) fails this attempt, which is then retried.
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                if secure:
                    stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=host)
                ws = await nursery.start(_hosted_websocket, stream, host, resource)
        except trio.TooSlowError:
            await trio.aclose_forcefully(stream)
            raise OSError(f"no answer to the WebSocket upgrade within {HANDSHAKE_TIMEOUT:g} s") from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return _WebSocket(ws, stream)

    return open_websocket


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested groups of one, or None if there are several."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


@asynccontextmanager
async def connect(
    url: str | None = None,
    token: str | TokenSource | None = None,
    *,
    backoff: Backoff | None = None,
    heartbeat_timeout: float | None = None,
    close_timeout: float = CLOSE_TIMEOUT,
    offline_queue: int = 1000,
    client_info: dict[str, Any] | None = None,
    open_transport: OpenTransport | None = None,
) -> AsyncIterator[Client]:
    """Connect to a Plait server and stay connected until the block ends.

    Args:
        url: the server's WebSocket URL, e.g. "ws://127.0.0.1:8765/".
        token: passed to the server's authenticate hook: a string, or a function (sync or
            async) returning a fresh one (a str, or None for none), called before every
            connection attempt and whenever the server says the session's token expires soon
            (`token_expiring`, spec §5.9), when the client sends it in a `refresh`; a refused
            refresh is tried again every 5 s until the old token expires. A function that
            raises fails that attempt (retried with backoff, like an unreachable server).
        backoff: reconnect delays (exponential, full jitter; default 0.5 s doubling to 30 s).
        heartbeat_timeout: declare the connection dead after this long without a frame
            (default: twice the server's heartbeat interval).
        close_timeout: seconds a leaving block waits for the server, at most: a room's block
            for its edits to be acknowledged, this block for what is queued to be written
            and the WebSocket close handshake.
        offline_queue: how many publishes may wait while there is no connection (0: a
            publish while offline raises OfflineQueueFull at once).
        open_transport: instead of `url`, a coroutine function that opens a transport (tests
            use an engine's in-memory transport).

    The block is entered at once (state CONNECTING); `room.synced()` waits for the server.
    Watch `client.changes()` to see each attempt. On leaving, everything queued is written and
    the connection closed normally (within `close_timeout`).

    Raises:
        ValueError: `token` is not a str, a function or None, `url` is not a ws:// or wss:// URL, or both or neither of `url` and
            `open_transport` were given, or a number is out of range (`close_timeout` and
            `offline_queue` at least 0, `heartbeat_timeout` above 0), or `backoff` is not a
            Backoff.
        InvalidField, TooDeep, FrameTooLarge: `token` or `client_info` could never be sent
            (spec §3.3, §4: a token of at most 8192 characters, a map of values, a hello that
            fits in a message).
        All raised at once, on entering the block, before anything is sent.

    Escapes: exceptions raised by the block, as they were raised (never wrapped in an
    ExceptionGroup), and Cancelled. Background failures never escape: an unreachable server
    is retried; one that refuses for good stops the client, and waiting calls raise
    ConnectionClosed. Anything else escaping is a bug.
    """
    if (url is None) == (open_transport is None):
        raise ValueError("give exactly one of url and open_transport")
    if url is not None:
        _websocket_target(url)
    _check_arguments(token, heartbeat_timeout, close_timeout, offline_queue, client_info)
    if backoff is not None and not isinstance(backoff, Backoff):
        raise ValueError(f"backoff must be a plait.client.Backoff, got {type(backoff).__name__}")
    escaped: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            opener = open_transport or websocket_opener(url, nursery)  # type: ignore[arg-type]
            client = Client(
                opener, token, backoff or Backoff(), heartbeat_timeout, offline_queue,
                client_info or {"name": "plait-py"}, close_timeout,
            )
            nursery.start_soon(client.run)
            try:
                yield client
            finally:
                with trio.move_on_after(close_timeout, shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
                client._stop(ConnectionClosed("the client closed the connection", CloseCode.NORMAL, retryable=False))
    except BaseExceptionGroup as group:
        escaped = _single(group)
        if escaped is None:
            raise
    if escaped is not None:
        raise escaped
