"""Hostile peers over real sockets on 127.0.0.1: a peer that breaks RFC 6455 while the server
is writing to it still gets a close frame with the right code before EOF; a y-websocket client
that drops while the server pings it ends only its own session; invalid room names and the
wrong protocol are refused with a code and a reason; shutdown does not wait for a silent
socket. After each, the engine still serves: a client connects, joins, edits and is acked."""

from __future__ import annotations

import functools
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pycrdt
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request, TextMessage

from plait.engine import Engine, EngineConfig
from plait.engine.http import serve_connection
from plait.protocol import (
    Ack,
    CloseCode,
    Hello,
    Join,
    Joined,
    Update,
    Welcome,
    decode,
    encode,
)

from .test_websocket_endpoint import raw_frame

pytestmark = pytest.mark.slow

SMALL_BUFFER = 4096
"""Bytes of socket buffer on each side of a connection the server is made to write to while
it does not read: a few hundred kilobytes of room traffic then keep a write in progress."""


@asynccontextmanager
async def serving(**config: float) -> AsyncIterator[tuple[Engine, int]]:
    """An engine serving WebSocket on 127.0.0.1, as Engine.serve_websocket does, except that
    accepted sockets get small send buffers (Linux gives them the listener's)."""
    engine = Engine(config=EngineConfig(**config))  # type: ignore[arg-type]
    with trio.fail_after(60):
        async with engine:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            listeners[0].socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
            handler = functools.partial(
                serve_connection,
                handler=engine.serve_transport,
                accepting=lambda: True,
                handshake_timeout=engine.config.handshake_timeout,
                max_message_bytes=engine.max_message_bytes,  # per path, as Engine.serve_websocket does
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(trio.serve_listeners, handler, listeners, handler_nursery=engine.nursery))
                yield engine, listeners[0].socket.getsockname()[1]
                nursery.cancel_scope.cancel()


class Peer:
    """A hand-made WebSocket client (wsproto) that reads only when told to."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection, answers_pings: bool = False) -> None:
        self.stream, self.ws = stream, ws
        self.answers_pings = answers_pings
        self.messages: list[bytes | str] = []
        self.closes: list[CloseConnection] = []
        self.pings = 0
        self._partial: list[bytes | str] = []
        self._replies: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, target: str = "/", receive_buffer: int | None = None, answers_pings: bool = False) -> Peer:
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        peer = cls(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT), answers_pings)
        await peer.stream.send_all(peer.ws.send(Request(host="127.0.0.1", target=target)))
        with trio.fail_after(5):
            while not any(isinstance(e, AcceptConnection) for e in peer._feed(await peer.stream.receive_some(65536))):
                pass
        await peer._reply()
        return peer

    def _feed(self, data: bytes) -> list[object]:
        self.ws.receive_data(data or None)
        events = list(self.ws.events())
        for event in events:
            if isinstance(event, (BytesMessage, TextMessage)):
                self._partial.append(event.data)
                if event.message_finished:
                    self.messages.append(b"".join(self._partial) if isinstance(event, BytesMessage) else "".join(self._partial))  # type: ignore[arg-type]
                    self._partial = []
            elif isinstance(event, CloseConnection):
                self.closes.append(event)
                self._replies.append(self.ws.send(event.response()))  # as every WebSocket client does
            elif isinstance(event, Ping):
                self.pings += 1  # and no pong, unless this client answers
                if self.answers_pings:
                    self._replies.append(self.ws.send(event.response()))
        return events

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read_one(self) -> None:
        self._feed(await self.stream.receive_some(65536))
        await self._reply()

    async def _reply(self) -> None:
        replies, self._replies = self._replies, []
        for data in replies:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server did not wait for it

    async def read_to_eof(self) -> None:
        """Read until the server hangs up (within 10 s); every byte must parse as WebSocket."""
        with trio.fail_after(10):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                if not data:
                    break
                self._feed(data)
                await self._reply()
        await self.stream.aclose()


async def still_serves(port: int) -> None:
    """A new native client connects, joins, edits and gets an ack."""
    peer = await Peer.connect(port)
    await peer.send(raw_frame(2, encode(Hello((1,), None, {}))))
    await peer.send(raw_frame(2, encode(Join(1, "healthy", None, None))))
    doc = pycrdt.Doc()
    doc.get("text", type=pycrdt.Text).insert(0, "alive")
    await peer.send(raw_frame(2, encode(Update(1, 2, doc.get_update()))))
    frames: list[object] = []
    with trio.fail_after(5):
        while Ack(2, None) not in frames:
            await peer.read_one()
            frames = [f for m in peer.messages if isinstance(m, bytes) for f in decode(m)]
    assert isinstance(frames[0], Welcome) and isinstance(frames[1], Joined)
    await peer.stream.aclose()


# -- J: the close frame after a violation, while a write is in progress --------------------------


async def busy_room_victim(engine: Engine, port: int) -> Peer:
    """A native member of a busy room that stopped reading, with the server in the middle of
    writing it a large backlog."""
    victim = await Peer.connect(port, receive_buffer=SMALL_BUFFER)
    await victim.send(raw_frame(2, encode(Hello((1,), None, {}))) + raw_frame(2, encode(Join(1, "busy", None, None))))
    talker = await Peer.connect(port)
    await talker.send(raw_frame(2, encode(Hello((1,), None, {}))) + raw_frame(2, encode(Join(1, "busy", None, None))))
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    for ref in range(1, 21):  # 20 x 16 kB: far more than the victim's buffers hold
        before = doc.get_state()
        text.insert(len(text), "x" * 16_384)
        await talker.send(raw_frame(2, encode(Update(1, ref, doc.get_update(before)))))
    with trio.fail_after(10):
        while Ack(20, None) not in [f for m in talker.messages if isinstance(m, bytes) for f in decode(m)]:
            await talker.read_one()
    # The server's side of the victim's socket has a write under way that cannot finish.
    welcome = decode(talker.messages[0])[0]
    assert isinstance(welcome, Welcome)
    (session,) = [s for s in engine._sessions.values() if s.id != welcome.session]
    with trio.fail_after(5):
        while not session.transport._sending:  # type: ignore[attr-defined]
            await trio.sleep(0.01)
    await talker.stream.aclose()
    return victim


@pytest.mark.parametrize(
    ("what", "data", "code"),
    [
        ("an unknown opcode", raw_frame(3, b"hi"), 1002),
        ("an unmasked frame", raw_frame(2, b"hi", masked=False), 1002),
        ("a text message that is not UTF-8", raw_frame(1, b"\xff\xfe"), 1007),
        ("a message over max_message_bytes", raw_frame(2, b"\x00" * 40_000), 1009),
    ],
    ids=["bad-opcode", "unmasked", "invalid-utf8", "oversized"],
)
async def test_a_violation_while_the_server_is_writing_still_gets_its_close_frame(what: str, data: bytes, code: int) -> None:
    async with serving(max_message_bytes=32_768) as (engine, port):
        victim = await busy_room_victim(engine, port)
        await victim.send(data)
        await victim.read_to_eof()
        assert [c.code for c in victim.closes] == [code], what
        await still_serves(port)


# -- B: a y-websocket client that does not answer pings and drops ------------------------------


async def test_a_yjs_client_that_ignores_pings_and_drops_ends_only_its_session() -> None:
    async with serving(heartbeat=0.3) as (engine, port):
        y = await Peer.connect(port, "/yjs/r")
        with trio.fail_after(5):
            while not y.pings:  # the server's WebSocket ping, which this client never answers
                await y.read_one()
        await y.stream.aclose()  # and it drops, no close frame, while the server waits for a pong
        with trio.fail_after(5):
            while engine.statistics()["sessions"]:
                await trio.sleep(0.05)
        await still_serves(port)


async def test_a_yjs_client_that_reads_but_never_answers_pings_is_closed_heartbeat_timeout() -> None:
    # spec §13: no pong within H, and the socket took nothing of what the server was writing
    # meanwhile: 4005. The ping frame, and the awareness renewal a quiet room sends, once
    # counted as bytes taken, so such a client (or one that vanished) was never closed
    # (fresh user: 16 pings unanswered, still there).
    async with serving(heartbeat=0.3) as (_, port):
        y = await Peer.connect(port, "/yjs/r")
        start = trio.current_time()
        with trio.fail_after(5):
            while not y.closes:  # reads everything the server sends, answers no ping
                await y.read_one()
        assert y.closes[0].code == CloseCode.HEARTBEAT_TIMEOUT
        assert y.pings >= 1
        assert trio.current_time() - start < 4 * 0.3 + 0.5  # a ping after H, no pong within H
        await y.stream.aclose()
        await still_serves(port)


async def test_a_yjs_client_reading_a_large_document_slowly_is_not_dropped_for_its_late_pongs() -> None:
    # The server's pings wait behind the document it is writing: the pong comes only once the
    # client has read it all, long after H. While the socket takes bytes, the client is there
    # (a fresh user's 6.4 MB document on a slow link was closed 4005 after 2H, and never synced).
    async with serving(heartbeat=1) as (engine, port):
        async with engine.room("big") as room:
            room.doc.get("text", type=pycrdt.Text).insert(0, "x" * 2_000_000)
        y = await Peer.connect(port, "/yjs/big", receive_buffer=SMALL_BUFFER, answers_pings=True)
        await y.send(y.ws.send(BytesMessage(b"\x00\x00\x01\x00")))  # sync step 1, empty state vector
        start = trio.current_time()
        with trio.fail_after(60):
            while not any(isinstance(m, bytes) and m[:2] == b"\x00\x01" and len(m) > 2_000_000 for m in y.messages):
                assert not y.closes, f"closed {y.closes[0].code} after {trio.current_time() - start:.1f} s"
                await y.read_one()
                await trio.sleep(0.005)  # a few KiB each time: about 0.5 MB/s, 4 s for the document
        assert trio.current_time() - start > 2 * 1  # more than the 2H it was dropped after
        assert y.pings > 0
        await y.stream.aclose()


async def test_a_yjs_client_that_stops_reading_a_large_document_is_dropped() -> None:
    async with serving(heartbeat=0.3) as (engine, port):
        async with engine.room("big") as room:
            room.doc.get("text", type=pycrdt.Text).insert(0, "x" * 2_000_000)
        y = await Peer.connect(port, "/yjs/big", receive_buffer=SMALL_BUFFER, answers_pings=True)
        await y.send(y.ws.send(BytesMessage(b"\x00\x00\x01\x00")))
        with trio.fail_after(10):  # and reads nothing more: the socket takes no byte for H
            while engine.statistics()["sessions"]:
                await trio.sleep(0.05)
        await y.stream.aclose()
        await still_serves(port)


# -- L, M: refusals with a code and a reason ---------------------------------------------------


@pytest.mark.parametrize("target", ["/yjs/", "/yjs/" + "x" * 300, "/yjs/%00nul"], ids=["empty", "300-characters", "nul"])
async def test_a_yjs_client_asking_for_an_invalid_room_name_is_refused_with_a_reason(target: str) -> None:
    async with serving() as (engine, port):
        y = await Peer.connect(port, target)
        await y.read_to_eof()
        assert [c.code for c in y.closes] == [CloseCode.PROTOCOL_ERROR]
        assert "room name" in y.closes[0].reason
        assert engine.statistics()["rooms"] == 0
        await still_serves(port)


async def test_a_yjs_client_on_the_native_endpoint_is_told_to_use_yjs() -> None:
    async with serving() as (_, port):
        lost = await Peer.connect(port, "/notes")
        await lost.send(raw_frame(2, b"\x00\x00\x01\x00"))  # y-websocket's sync step 1
        await lost.read_to_eof()
        assert [c.code for c in lost.closes] == [CloseCode.PROTOCOL_ERROR]
        assert "/yjs/" in lost.closes[0].reason
        await still_serves(port)


# -- K: shutdown -----------------------------------------------------------------------------


async def test_shutdown_does_not_wait_for_a_socket_that_never_says_hello() -> None:
    async with trio.open_nursery() as nursery:
        async with serving(handshake_timeout=5) as (_, port):
            silent = await Peer.connect(port)
            nursery.start_soon(silent.read_to_eof)  # it answers the close, as WebSocket stacks do
            start = trio.current_time()
        shutdown = trio.current_time() - start
    assert shutdown < 1  # not the 5 s handshake timeout
    assert [c.code for c in silent.closes] == [CloseCode.GOING_AWAY]


# -- the hello is read under a bound of its own (spec §5.1) ---------------------------------------


async def test_a_first_message_longer_than_a_hello_may_be_is_closed_1009_as_it_arrives() -> None:
    # QA: connections made in a loop, each sending one 16 MiB message before hello, kept the
    # server reading 16 MiB per connection (CPU 88 %, RSS 1.7 GiB) before refusing each.
    from wsproto.events import Message as WsMessage

    from plait.protocol import MAX_HELLO_BYTES, Publish

    async with serving(handshake_timeout=30) as (_, port):
        peer = await Peer.connect(port)
        claimed = 16 * 1024 * 1024  # a header claiming it, and no more: refused before the payload
        await peer.send(bytes([0x82, 0x80 | 127]) + claimed.to_bytes(8, "big") + b"\x00\x00\x00\x00")
        with trio.fail_after(5):
            await peer.read_to_eof()
        assert [c.code for c in peer.closes] == [CloseCode.MESSAGE_TOO_BIG]
        await peer.stream.aclose()
        # After hello (and its welcome, before which a client sends nothing else), messages of
        # the full size are taken again.
        member = await Peer.connect(port)
        await member.send(raw_frame(2, encode(Hello((1,), None, {}))))
        with trio.fail_after(10):
            while not member.messages:
                await member.read_one()
        await member.send(raw_frame(2, encode(Join(1, "r", None, None))))
        big = encode(Publish(1, 2, "big", "x" * (MAX_HELLO_BYTES + 1000), None))
        await member.stream.send_all(member.ws.send(WsMessage(data=big)))
        with trio.fail_after(10):
            while Ack(2, 1) not in [f for m in member.messages if isinstance(m, bytes) for f in decode(m)]:
                await member.read_one()
        await member.stream.aclose()
        await still_serves(port)
