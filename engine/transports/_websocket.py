"""The server's WebSocket endpoint: the sans-I/O protocol of the `websockets` library driven
straight off a Trio socket stream, one connection per task.

trio-websocket (which the client uses) runs a reader task and a memory channel per
connection and passes every message through both; a busy room pays for that on every frame
it fans out, and an idle connection pays for the extra task in memory. Here the session's own
reader parses what arrives and its writer frames what leaves, so a message costs one socket
call and no task switch beyond the session's own. `websockets` rather than wsproto: it parses
a small frame in 4 µs where wsproto takes 23 µs (its masking is C), which at one update per
message was a fifth of the server's time (bench/README.md).
"""

from __future__ import annotations

import functools
import logging
import math
import struct

import trio
from websockets.exceptions import InvalidState, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from plait.protocol import ABNORMAL_CLOSURE, CloseCode, TransportClosed

from ._base import read_now, write_now

logger = logging.getLogger("plait.websocket")

RECEIVE_BYTES = 64 * 1024
# RFC 6455 close codes that Plait's CloseCode does not name.
WS_PROTOCOL_ERROR = 1002
NO_STATUS_RECEIVED = 1005
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
MAX_FRAGMENTS = 4096
"""Fragments of one message kept before it ends: the protocol bounds their bytes, not their
count, and empty fragments (6 bytes each on the wire) held ~140 bytes of server memory apiece."""
MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 of them the code
UNCOPIED_BYTES = 64 * 1024
"""A binary message this large (a 64-bit length in its header) is written after its frame
header as it is, not copied into a frame."""
FIN_BINARY = 0x82
FIN_TEXT = 0x81
PONG_FIRST_BYTE = b"\x8a"  # a final pong frame (RFC 6455 §5.2, §5.5.3)
CONTROL_FRAMES_PER_SECOND = 200.0
"""Pings and pongs read from one connection a second, after a burst of a second's worth: past
it the connection is read later (the peer meets backpressure). They never reach the session,
so its frame rate (frames_per_second, spec §5.8) does not see them, and a peer sending tiny
ones as fast as it could kept the server's loop parsing them (about 5 µs each)."""
FRAGMENTS_PER_SECOND = 1024.0
"""Fragments of data messages read from one connection a second, on the same terms. Each costs
a parse whatever its size, and the session sees only the message: one connection sending
messages of 4,095 empty fragments and a ping kept a core busy. A client that fragments its
uploads at 16 KiB still sends 16 MiB a second (read_bytes_per_second); browsers and most
libraries do not fragment at all."""
_NEVER = -math.inf  # one float for every connection: an idle server holds thousands


@functools.lru_cache(maxsize=8)
def frame_costs(control_frames_per_second: float, fragments_per_second: float) -> tuple[float, float]:
    """Seconds of a connection's frame budget a ping or pong, and a fragment, take: one tuple
    shared by every connection of an engine (bench/idle.py: two floats each were 48 bytes)."""
    return 1 / control_frames_per_second, 1 / fragments_per_second


CLOSE_WRITE_SECONDS = 2.0
"""How long the close frame that ends a connection may wait behind a write in progress."""


class WebSocketStream:
    """A server-side WebSocket connection over a Trio stream (the `Transport` protocol).

    Sends from several tasks (the writer, a pong, a ping) never interleave: the first sender
    writes, later ones queue their bytes for it.
    """

    __slots__ = ("path", "sent_bytes", "_stream", "_socket", "_ws", "_frames", "_parts", "_outgoing", "_sending", "_written",
                 "_closed", "_pongs", "_ping_count", "_torn",
                 "_waiting_pong", "_frame_costs", "_frames_free_at", "_bytes_as_text")

    uncopied_bytes = UNCOPIED_BYTES
    """A bytes message this large is written as it is (send_message), not copied into a frame:
    sending it needs none of the engine's concurrent_large_sends (Peer._copies)."""

    # Thousands of idle connections each hold one of these: plain lists, no deques.
    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: ServerProtocol,
        path: str,
        frames: list[Frame],
        control_frames_per_second: float = CONTROL_FRAMES_PER_SECOND,
        fragments_per_second: float = FRAGMENTS_PER_SECOND,
    ) -> None:
        self.path = path
        self.sent_bytes = 0
        """Bytes the socket has taken so far (PingTransport): while it grows during a write, the
        peer reads."""
        self._stream = stream
        # A socket stream can be written without waiting (send_message_nowait).
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._ws = ws
        self._frames = frames  # parsed, not yet handled
        self._parts: list[Frame] = []  # of a fragmented message
        self._outgoing: list[bytes | memoryview] = []  # a memoryview continues a frame begun
        self._sending = False
        self._written: trio.Event | None = None  # made when someone waits for a write to end
        self._closed: TransportClosed | None = None
        self._pongs: dict[bytes, trio.Event] = {}
        self._ping_count = 0
        self._torn = False
        """A write to a stream that is not a socket was cut short: the stream may end inside a
        frame, so no close frame may be written after it."""
        self._waiting_pong: bytes | None = None  # the pong in _outgoing, if one is
        self._frame_costs = frame_costs(control_frames_per_second, fragments_per_second)
        self._frames_free_at = _NEVER
        """When the pings, pongs and fragments read so far are paid for (_charge_frames, _paced)."""
        self._bytes_as_text = False
        """Whether a bytes message goes as a text message (send_bytes_as_text)."""

    # -- receiving --------------------------------------------------------------------------

    def limit_messages(self, max_bytes: int) -> None:
        """Take messages of at most `max_bytes` from now on: a longer one fails the connection
        with 1009 as it arrives, never buffered whole (spec §3.4, §5.1)."""
        self._ws.max_message_size = self._ws.max_size = max_bytes  # type: ignore[attr-defined]

    async def receive_message(self) -> bytes | str:
        ws = self._ws
        while True:
            while self._frames:
                message = await self._handle(self._frames.pop(0))
                if message is not None:
                    return message
            if self._closed is not None:
                raise self._closed_error()
            if ws.parser_exc is not None:
                # A protocol violation, an oversized message: the close frame with the code
                # to send is queued; the frames before the bad one have been handled.
                await self._end(ws.close_sent.code if ws.close_sent else WS_PROTOCOL_ERROR,
                                ws.close_sent.reason if ws.close_sent else "")
            if self._frames_free_at is not _NEVER:
                await self._paced()
            data: bytes | bytearray | None
            try:
                if self._socket is not None:
                    # Waited for here, not inside receive_some: an idle connection's task then
                    # holds none of the stream's and socket's coroutine frames (bench/idle.py:
                    # about 1.1 KB), and the read finds its data at the first try.
                    await trio.lowlevel.wait_readable(self._socket)
                    data = read_now(self._socket, RECEIVE_BYTES)
                    if data is None:  # woken with nothing to read
                        continue
                else:
                    data = await self._stream.receive_some(RECEIVE_BYTES)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                ws.receive_eof()
                self._lost()
                raise self._closed_error()
            ws.receive_data(data)
            self._frames = ws.events_received()  # type: ignore[assignment]
            if ws.parser_exc is None:
                await self._answer_pings()
                self._charge_frames(self._frames)

    def _charge_frames(self, frames: list[Frame]) -> None:
        """Count the pings, pongs and fragments among `frames` against CONTROL_FRAMES_PER_SECOND
        and FRAGMENTS_PER_SECOND: one token bucket of one float (as Peer._received paces bytes),
        paid for by waiting before the next read (_paced). The frames already parsed are
        handled at once; the peer meets the wait as backpressure; nothing is refused. A whole
        message in one frame costs nothing here."""
        control, fragment = self._frame_costs
        cost = 0.0
        for frame in frames:
            opcode = frame.opcode
            if opcode is Opcode.PING or opcode is Opcode.PONG:
                cost += control
            elif opcode is Opcode.CONT or not frame.fin:
                cost += fragment
        if cost:
            now = trio.current_time()
            self._frames_free_at = max(self._frames_free_at, now - 1.0) + cost  # a second's burst

    async def _paced(self) -> None:
        """Wait until what _charge_frames counted is paid for."""
        if (wait := self._frames_free_at - trio.current_time()) > 0:
            await trio.sleep(wait)

    async def _answer_pings(self) -> None:
        """Write the pongs the protocol queued for the peer's pings. Behind a write under way
        only the latest waits, in place of any still waiting (RFC 6455 §5.5.3 allows
        answering only the most recent ping): a peer that pings without reading what is
        written to it would otherwise grow this side's memory by every ping it sends."""
        writes = self._ws.data_to_send()
        if not writes:
            return
        if (self._sending or self._outgoing) and all(w[:1] == PONG_FIRST_BYTE for w in writes):
            latest = writes[-1]
            for i, chunk in enumerate(self._outgoing):
                if chunk is self._waiting_pong:
                    self._outgoing[i] = self._waiting_pong = latest
                    return
            self._outgoing.append(latest)
            self._waiting_pong = latest
            return
        await self._write(b"".join(writes))

    async def _handle(self, frame: Frame) -> bytes | str | None:
        opcode = frame.opcode
        if opcode is Opcode.BINARY or opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if not frame.fin:
                if len(self._parts) >= MAX_FRAGMENTS:
                    await self._fail(MESSAGE_TOO_BIG, "message in too many fragments")
                self._parts.append(frame)  # the protocol bounds their bytes by max_size
                return None
            if self._parts:
                first = self._parts[0]
                data = b"".join([part.data for part in self._parts] + [frame.data])
                self._parts = []
                opcode = first.opcode
            else:
                data = bytes(frame.data)
            # The protocol's parser holds the last frame it parsed until it parses the next: a
            # connection that sent one 16 MiB message and went quiet kept it, and so did one
            # that ended until the garbage collector found its parser (a cycle): 1.7 GiB.
            frame.data = b""
            if opcode is Opcode.TEXT:
                try:
                    return data.decode()
                except UnicodeDecodeError:
                    await self._fail(INVALID_DATA, "text message is not UTF-8")
            return data
        if opcode is Opcode.PONG:
            waiter = self._pongs.pop(bytes(frame.data), None)
            if waiter is not None:
                waiter.set()
        elif opcode is Opcode.CLOSE:
            # The protocol has queued the answer (the peer's own code, RFC 6455 §5.5.1).
            received = self._ws.close_rcvd
            await self._end(received.code if received else NO_STATUS_RECEIVED, received.reason if received else "")
        return None  # a ping: the protocol has queued the pong

    async def _fail(self, code: int, reason: str) -> None:
        """The peer broke a rule the protocol does not check itself: close with `code`.
        Raises TransportClosed."""
        self._ws.fail(code, reason)
        await self._end(code, reason)

    async def _end(self, code: int, reason: str) -> None:
        """The connection is over (the peer closed it or broke the protocol): send what the
        protocol queued (its close frame, RFC 6455 §7.1.7), close the socket. The close frame
        goes after a write another task has in progress, not instead of it. Raises
        TransportClosed."""
        self._finish(TransportClosed(code, reason))
        with trio.move_on_after(CLOSE_WRITE_SECONDS):
            try:
                await self.flush()
                while self._sending or self._outgoing:
                    if self._sending:
                        self._written = self._written or trio.Event()
                        await self._written.wait()
                    await self.flush()
            except TransportClosed:
                pass
            if self._ws.close_rcvd is None and not self._sending:
                await self._drain()
        await trio.aclose_forcefully(self._stream)
        raise self._closed_error()

    async def _drain(self) -> None:
        """After a close frame for a violation, read and drop what the peer still sends (the
        rest of an oversized message) until it hangs up: closing a socket with unread data
        resets the connection, and a reset can destroy the close frame before the peer reads
        it. The caller bounds the time."""
        stream = self._stream
        if isinstance(stream, trio.abc.HalfCloseableStream):
            try:
                await stream.send_eof()  # the close frame is all we send
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        try:
            while await stream.receive_some(RECEIVE_BYTES):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- sending ----------------------------------------------------------------------------

    def send_bytes_as_text(self) -> None:
        """TextBytesTransport: from now on a bytes message goes as a text message."""
        self._bytes_as_text = True

    async def send_message(self, data: bytes | str) -> None:
        if self._closed is not None or self._ws.state is not State.OPEN:
            raise self._closed_error()
        if isinstance(data, bytes) and len(data) >= UNCOPIED_BYTES:
            # The frame's header, then the payload itself: `websockets` would copy the payload
            # into a frame of its own, twice, per connection (a 20 MB document sent to 150
            # joiners is one shared payload: those copies were a fifth of the server's time).
            self._outgoing.append(self._output() + data_frame_header(len(data), binary=not self._bytes_as_text))
            await self._write(memoryview(data))
            return
        await self._write(self._framed(data))

    def _framed(self, data: bytes | str) -> bytes:
        """`data` as one data frame, behind what the protocol queued (a pong): framed here,
        not by `websockets`, whose frame objects cost a fan-out several µs per connection.
        No extension is negotiated (_server.py), so a final unmasked frame is all it is."""
        payload = data if isinstance(data, bytes) else data.encode()
        framed = data_frame_header(len(payload), binary=payload is data and not self._bytes_as_text) + payload
        queued = self._ws.data_to_send()
        return b"".join((*queued, framed)) if queued else framed

    def send_message_nowait(self, data: bytes | str) -> bool:
        """Send `data` without waiting: written to the socket as far as it takes it, the rest
        kept here in order. True when nothing is left over (or a send in progress will write
        it); False when `flush()` must be awaited to write what is left."""
        if self._closed is not None or self._ws.state is not State.OPEN:
            raise self._closed_error()
        chunk = self._framed(data)
        if self._sending:
            self._outgoing.append(chunk)
            return True
        if self._outgoing or self._socket is None:
            self._outgoing.append(chunk)
            return False
        try:
            written = write_now(self._socket, chunk)
        except OSError:
            self._lost()
            raise self._closed_error() from None
        self.sent_bytes += written
        if written < len(chunk):
            self._outgoing.append(memoryview(chunk)[written:])  # the rest of a frame begun
            return False
        return True

    @property
    def writing(self) -> bool:
        """Whether bytes wait for the socket: a write under way, or queued behind one."""
        return self._sending or bool(self._outgoing)

    async def ping(self) -> None:
        if self._closed is not None or self._ws.state is not State.OPEN:
            raise self._closed_error()
        self._ping_count += 1
        payload = self._ping_count.to_bytes(8, "big")
        waiter = self._pongs[payload] = trio.Event()
        self._ws.send_ping(payload)
        try:
            await self.flush()
            await waiter.wait()
        finally:
            self._pongs.pop(payload, None)
        if self._closed is not None:
            raise self._closed

    async def flush(self) -> None:
        """Write what the protocol queued (pongs, a close) and what send_message_nowait left."""
        await self._write(self._output())

    def _output(self) -> bytes:
        """What the protocol has to send, as one string. (A b"" in its output means
        "half-close"; the socket is closed outright later.)"""
        writes = self._ws.data_to_send()
        return writes[0] if len(writes) == 1 else b"".join(writes)

    async def _write(self, data: bytes | memoryview) -> None:
        if self._torn:
            self._outgoing.clear()
            raise self._closed_error()
        if data:
            self._outgoing.append(data)
        elif not self._outgoing:
            return
        if self._sending:
            return  # the task already sending will write it, in order
        self._sending = True
        try:
            while self._outgoing:
                chunk = self._outgoing.pop(0)
                try:
                    await self._send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    self._lost()
                    raise self._closed_error() from None
        finally:
            self._sending = False
            if self._written is not None:
                self._written.set()
                self._written = None

    async def _send_all(self, chunk: bytes | memoryview) -> None:
        """`send_all`, counting in `sent_bytes` what each system call takes, so that a long
        write's progress shows while it runs (a peer reading a large message slowly is not
        taken for gone, engine/sessions/_yjs.py)."""
        if self._socket is None:
            try:
                await self._stream.send_all(chunk)
            except BaseException:
                self._torn = True  # how much it took is unknown: no frame may follow
                raise
            self.sent_bytes += len(chunk)
            return
        view = memoryview(chunk)
        try:
            while view:
                taken = await self._socket.send(view)
                self.sent_bytes += taken
                view = view[taken:]
        except BaseException:
            # Cancelled (a close that would not wait longer, TOO_SLOW): what the socket did
            # not take goes back first in line, so that whatever is written next (the close
            # frame) comes after the end of the frame begun, never inside it (RFC 6455 §5.2).
            if view:  # untouched, the chunk itself; else its rest, a continuation (memoryview)
                self._outgoing.insert(0, chunk if len(view) == len(chunk) else view)
            raise

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close frame, wait (as long as the caller allows) for the peer's, then close
        the socket."""
        ws = self._ws
        try:
            if self._closed is None and ws.state is State.OPEN and not self._torn:
                self._finish(TransportClosed(code, reason))
                # What waits is dropped, except the rest of a frame already begun (its header
                # written): cut there, the peer would read the close frame as its payload. A
                # memoryview continues the frame of what is before it (_send_all, the large
                # messages' payloads, send_message_nowait's rest).
                begun = 0
                while begun < len(self._outgoing) and isinstance(self._outgoing[begun], memoryview):
                    begun += 1
                del self._outgoing[begun:]
                ws.send_close(code, _short(reason))
                await self.flush()
                # send_close moved the state on (mypy narrowed it to OPEN above)
                while ws.state is not State.CLOSED and ws.close_rcvd is None:  # type: ignore[comparison-overlap]
                    await self._paced()
                    data = await self._stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        break
                    ws.receive_data(data)
                    self._charge_frames(ws.events_received())  # type: ignore[arg-type]
        except (trio.BrokenResourceError, trio.ClosedResourceError, TransportClosed, ProtocolError, InvalidState):
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


def data_frame_header(length: int, *, binary: bool) -> bytes:
    """RFC 6455 §5.2: the header of a final, unmasked binary (or text) frame of `length`
    bytes, its length in the shortest of the 7-, 16- and 64-bit forms."""
    first = FIN_BINARY if binary else FIN_TEXT
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def _short(reason: str) -> str:
    """`reason`, cut to fit a close frame without splitting a character."""
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")
