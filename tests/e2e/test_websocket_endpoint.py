"""The server's own WebSocket endpoint (engine/http/, engine/transports/_websocket.py) against hostile and unusual
peers over real sockets on 127.0.0.1: what is not a WebSocket upgrade, a silent socket,
oversized and fragmented messages, pings, and a server that keeps serving through all of it."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Pong, Request

from plait.engine import Engine, EngineConfig
from plait.engine.transports._websocket import FRAGMENTS_PER_SECOND, MAX_FRAGMENTS
from plait.protocol import ABNORMAL_CLOSURE, Hello, TransportClosed, Welcome, decode, encode
from plait.protocol import Ping as PlaitPing
from plait.protocol import Pong as PlaitPong

pytestmark = pytest.mark.slow

HELLO = encode(Hello((1,), None, {}))


@pytest.fixture
async def port() -> AsyncIterator[int]:
    config = EngineConfig(max_message_bytes=4096, handshake_timeout=0.5)
    async with Engine(config=config) as engine, trio.open_nursery() as nursery:
        yield await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        nursery.cancel_scope.cancel()


async def still_serves(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send_message(HELLO)
        assert isinstance(decode(await ws.get_message())[0], Welcome)


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_a_plain_http_request_is_refused_with_426_and_a_reason(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            response = await read_all(stream)
    assert response.startswith(b"HTTP/1.1 426 Upgrade Required"), response
    assert b"WebSocket" in response.partition(b"\r\n\r\n")[2]
    await still_serves(port)


async def request(port: int, raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Send `raw`, read until the server closes: (status line, headers, body)."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        with trio.fail_after(5):
            response = await read_all(stream)
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, body


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", b"404 Not Found", b"nothing is served at /nope"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", b"405 Method Not Allowed", b"open a WebSocket with GET"),
        (b"GET /yjs/doc HTTP/1.1\r\nHost: x\r\n\r\n", b"426 Upgrade Required", b"y-websocket endpoint"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431 Request Header Fields Too Large", b"bad request"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n", b"400 Bad Request", b"bad request"),
        (b"GET /\x00 HTTP/1.1\r\n\r\n", b"400 Bad Request", b"bad request"),
    ],
    ids=["unknown-path", "post", "yjs-without-upgrade", "headers-too-large", "bad-header", "bad-target"],
)
async def test_every_request_it_does_not_serve_gets_a_status_and_a_reason(port: int, raw: bytes, status: bytes, words: bytes) -> None:
    line, headers, body = await request(port, raw)
    assert line == b"HTTP/1.1 " + status, line
    assert words in body, body
    assert headers[b"connection"] == b"close" and int(headers[b"content-length"]) == len(body)
    if status.startswith(b"405"):
        assert headers[b"allow"] == b"GET"
    if status.startswith(b"426"):
        assert headers[b"upgrade"] == b"websocket"
    await still_serves(port)


async def test_a_head_request_gets_the_status_without_a_body(port: int) -> None:
    line, headers, body = await request(port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert line == b"HTTP/1.1 426 Upgrade Required" and body == b"" and int(headers[b"content-length"]) > 0


async def test_garbage_instead_of_http_is_dropped(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(os.urandom(3000) + b"\r\n\r\n")
        with trio.fail_after(5):
            await read_all(stream)  # the server closes it
    await still_serves(port)


async def test_a_socket_that_never_finishes_its_handshake_is_closed(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        with trio.fail_after(5):  # handshake_timeout is 0.5 s
            response = await read_all(stream)
        assert response.startswith(b"HTTP/1.1 408 Request Timeout") and b"no complete request" in response
    await still_serves(port)


async def test_a_message_over_the_limit_closes_with_1009(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send_message(HELLO)
        await ws.get_message()
        await ws.send_message(b"\x92\x03" + b"\x00" * 5000)  # 4096 is the limit here
        with trio.fail_after(5), pytest.raises(trio_websocket.ConnectionClosed) as closed:
            await ws.get_message()
        # trio-websocket leaves the socket open after a close it did not start (see
        # client/_client.py); close it here so the test leaks nothing.
        await trio.aclose_forcefully(ws._stream)
    assert closed.value.reason.code == 1009
    await still_serves(port)


async def test_client_pings_are_answered(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        with trio.fail_after(5):
            await ws.ping(b"are you there")


async def raw_upgrade(port: int, *, receive_buffer: int | None = None) -> tuple[trio.SocketStream, WSConnection]:
    """A TCP connection that has sent its upgrade request and read nothing yet; with a small
    `receive_buffer` the server's sends fill the socket after a few kilobytes."""
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/")))
    return stream, ws


async def handshake_raw(port: int, *, receive_buffer: int | None = None) -> tuple[trio.SocketStream, WSConnection]:
    stream, ws = await raw_upgrade(port, receive_buffer=receive_buffer)
    while True:
        ws.receive_data(await stream.receive_some(65536))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return stream, ws


async def test_a_fragmented_message_is_reassembled(port: int) -> None:
    stream, ws = await handshake_raw(port)
    half = len(HELLO) // 2
    await stream.send_all(ws.send(Message(data=HELLO[:half], message_finished=False)))
    await stream.send_all(ws.send(Message(data=HELLO[half:], message_finished=True)))
    data = b""
    with trio.fail_after(5):
        while True:
            ws.receive_data(await stream.receive_some(65536))
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    data += event.data
            if data:
                break
    assert isinstance(decode(data)[0], Welcome)
    await stream.aclose()


async def test_fragments_over_the_limit_close_with_1009_before_they_are_all_sent(port: int) -> None:
    stream, ws = await handshake_raw(port)
    with trio.fail_after(5):
        for _ in range(100):  # 100 x 1000 bytes would be 100 kB; the limit is 4 kB
            try:
                await stream.send_all(ws.send(Message(data=b"\x00" * 1000, message_finished=False)))
            except trio.BrokenResourceError:
                break
            await trio.sleep(0.01)
    assert await close_codes(stream, ws) == [1009]
    await still_serves(port)


async def test_a_message_in_endless_empty_fragments_closes_with_1009(port: int) -> None:
    # Empty fragments pass the byte limit; each one held server memory until the count bound.
    # (Read at FRAGMENTS_PER_SECOND: the session says hello first, or its handshake times out.)
    stream, ws = await handshake_raw(port)
    await stream.send_all(ws.send(Message(data=HELLO)))
    fragments = b"".join(ws.send(Message(data=b"", message_finished=False)) for _ in range(MAX_FRAGMENTS + 100))
    with trio.fail_after(5):
        try:
            await stream.send_all(fragments)
        except trio.BrokenResourceError:
            pass
    assert await close_codes(stream, ws, timeout=5 + MAX_FRAGMENTS / FRAGMENTS_PER_SECOND) == [1009]
    await still_serves(port)


async def test_a_peer_close_is_answered_with_its_code(port: int) -> None:
    stream, ws = await handshake_raw(port)
    await stream.send_all(ws.send(CloseConnection(code=1000, reason="bye")))
    assert await close_codes(stream, ws) == [1000]



def raw_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """One WebSocket frame as a client would put it on the wire (RFC 6455 §5.2), or not."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    length = len(payload)
    size = bytes([length]) if length < 126 else bytes([126]) + length.to_bytes(2, "big")
    if not masked:
        return head + size + payload
    mask = os.urandom(4)
    size = bytes([size[0] | 0x80]) + size[1:]
    return head + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def close_codes(stream: trio.SocketStream, ws: WSConnection, timeout: float = 5) -> list[int]:
    """The close codes the server sends until it hangs up (within `timeout` s); closes `stream`."""
    codes = []
    with trio.fail_after(timeout):
        try:
            while chunk := await stream.receive_some(65536):
                ws.receive_data(chunk)
                codes += [e.code for e in ws.events() if isinstance(e, CloseConnection)]
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return codes


async def close_code_after(port: int, data: bytes) -> list[int]:
    """Upgrade, send `data`, and collect the close codes the server sends before it hangs up."""
    stream, ws = await handshake_raw(port)
    await stream.send_all(data)
    return await close_codes(stream, ws)


@pytest.mark.parametrize(
    ("what", "data", "code"),
    [
        ("an unmasked frame", raw_frame(2, HELLO, masked=False), 1002),
        ("a reserved bit set", raw_frame(2, HELLO, rsv=4), 1002),
        ("an unknown opcode", raw_frame(3, HELLO), 1002),
        ("a continuation with nothing to continue", raw_frame(0, HELLO), 1002),
        ("a new message inside a fragmented one", raw_frame(2, b"ab", fin=False) + raw_frame(2, b"cd"), 1002),
        ("a fragmented ping", raw_frame(9, b"hi", fin=False), 1002),
        ("a ping over 125 bytes", raw_frame(9, b"x" * 126), 1002),
        ("a close with a one-byte payload", raw_frame(8, b"\x03"), 1002),
        ("a close with a reserved code", raw_frame(8, (1005).to_bytes(2, "big")), 1002),
        ("a text message that is not UTF-8", raw_frame(1, b"\xff\xfe"), 1007),
    ],
)
async def test_a_frame_that_breaks_rfc_6455_closes_with_its_code(port: int, what: str, data: bytes, code: int) -> None:
    assert await close_code_after(port, data) == [code], what
    await still_serves(port)


async def test_frames_sent_right_behind_the_upgrade_request_are_served(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    # The request, a hello and a ping in one write: the server must not lose the bytes after
    # the request, and its pong comes after its 101 response (it once came before, and broke
    # the handshake: a fresh user).
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/")) + raw_frame(2, HELLO) + raw_frame(9, b"hi"))
    frames, pongs = [], []
    with trio.fail_after(5):
        while not (frames and pongs):
            ws.receive_data(await stream.receive_some(65536))
            for e in ws.events():
                if isinstance(e, BytesMessage):
                    frames.append(decode(e.data)[0])
                elif isinstance(e, Pong):
                    pongs.append(bytes(e.payload))
    await stream.aclose()
    assert isinstance(frames[0], Welcome)
    assert pongs == [b"hi"]


def test_a_long_close_reason_is_cut_to_fit_without_splitting_a_character() -> None:
    from plait.engine.transports._websocket import MAX_REASON_BYTES, _short

    reason = _short("é" * 100)  # 200 bytes of UTF-8
    assert len(reason.encode()) <= MAX_REASON_BYTES and set(reason) == {"é"}


async def serve_one(
    listener: trio.SocketListener, handler: Callable[[Any], Awaitable[None]], max_message_bytes: int, control_frames_per_second: float = 200
) -> None:
    """Serve one connection with `handler`, its socket's send buffer small (4 KiB) so that the
    server's writes fill it."""
    from plait.engine.http import serve_connection

    stream = await listener.accept()
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    await serve_connection(stream, handler, accepting=lambda: True, handshake_timeout=5,
                           max_message_bytes=lambda path: max_message_bytes, control_frames_per_second=control_frames_per_second)


async def read_messages(stream: trio.SocketStream, ws: WSConnection, count: int) -> list[bytes | str]:
    """The next `count` messages (bytes, or str for text), read with wsproto (bounded by the
    test's deadline)."""
    received: list[bytes | str] = []
    partial: list[bytes | str] = []
    while len(received) < count:
        ws.receive_data(await stream.receive_some(65536))
        for event in ws.events():
            if isinstance(event, Message):
                partial.append(event.data)
                if event.message_finished:
                    received.append(b"".join(partial) if isinstance(event, BytesMessage) else "".join(partial))  # type: ignore[arg-type]
                    partial = []
    return received


async def test_sends_the_socket_cannot_take_at_once_are_kept_in_order_and_flushed() -> None:
    # The fan-out writes without waiting (send_message_nowait); what a full socket does not
    # take waits in the transport, in order, for flush().
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    payloads = [bytes([i]) * 16_384 for i in range(64)]  # 1 MiB: more than the buffers hold
    queued, read_all_of_it = trio.Event(), trio.Event()
    results: list[bool] = []

    async def handler(ws: object) -> None:
        results.extend(ws.send_message_nowait(p) for p in payloads)  # type: ignore[attr-defined]
        queued.set()
        await ws.flush()  # type: ignore[attr-defined]
        await read_all_of_it.wait()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, listener, handler, 2**20)
            stream, ws = await raw_upgrade(port, receive_buffer=4096)
            await queued.wait()  # the server queued everything before this side read a byte
            received = await read_messages(stream, ws, len(payloads))
            read_all_of_it.set()
            await stream.aclose()
            await listener.aclose()
    assert received == payloads
    first_short = results.index(False)  # the socket filled up: the partial path ran
    assert not any(results[first_short:])  # and nothing jumped the queue after that


async def test_messages_of_every_length_encoding_arrive_whole_and_in_order() -> None:
    # Plait frames what it sends itself (a binary message of UNCOPIED_BYTES or more as its
    # header and then the payload as it is). Read by wsproto, binary and text messages of every
    # size around the RFC 6455 length encodings arrive whole and in order, sent with and
    # without waiting, while the socket is too small to take any of them at once.
    from plait.engine.transports._websocket import UNCOPIED_BYTES

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    sizes = [0, 1, 125, 126, 127, UNCOPIED_BYTES - 1, UNCOPIED_BYTES, 65_535, 65_536, 2**20 + 7]
    large = [os.urandom(n) for n in sizes]
    sent: list[bytes | str] = []
    read_all_of_it = trio.Event()

    async def handler(ws: object) -> None:
        for i, payload in enumerate(large):
            small = f"small {i}".encode()
            ws.send_message_nowait(small)  # type: ignore[attr-defined]
            text = "é" * (len(payload) // 2)  # two bytes each in UTF-8
            ws.send_message_nowait(text)  # type: ignore[attr-defined]
            await ws.send_message(payload)  # type: ignore[attr-defined]
            await ws.send_message(text)  # type: ignore[attr-defined]
            ws.send_message_nowait(payload)  # type: ignore[attr-defined]
            sent.extend([small, text, payload, text, payload])
        await ws.flush()  # type: ignore[attr-defined]
        await read_all_of_it.wait()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, listener, handler, 2**21)
            stream, ws = await raw_upgrade(port, receive_buffer=4096)
            received = await read_messages(stream, ws, 5 * len(large))
            read_all_of_it.set()
            await stream.aclose()
            await listener.aclose()
    assert [len(m) for m in received] == [len(m) for m in sent]
    assert received == sent


@pytest.mark.parametrize("size", [1024, 128 * 1024])
async def test_a_close_while_a_message_is_being_written_comes_after_the_whole_message(size: int) -> None:
    # aclose() drops what waits to be sent, but not the rest of a frame whose start is on the
    # wire: a large message is written as its header, then its payload, and dropping the
    # payload made the peer read the close frame as payload bytes (found by a fresh user).
    from websockets.protocol import State
    from websockets.server import ServerProtocol
    from wsproto.frame_protocol import FrameProtocol
    from wsproto.frame_protocol import Opcode as WsOpcode

    from plait.engine.transports._websocket import WebSocketStream

    client, server = trio.testing.lockstep_stream_pair()  # a write waits until the peer reads
    ws = WebSocketStream(server, ServerProtocol(state=State.OPEN), "/", [])
    payload = os.urandom(size)
    got = bytearray()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.send_message, payload)
            await trio.testing.wait_all_tasks_blocked()  # blocked writing: nobody reads yet
            nursery.start_soon(ws.aclose, 4013, "disconnected")
            await trio.testing.wait_all_tasks_blocked()
            while data := await client.receive_some(1 << 20):
                got += data
                if got.endswith(b"disconnected"):
                    break
            nursery.cancel_scope.cancel()  # aclose waits for this side's close frame
    frames = FrameProtocol(client=True, extensions=[])
    frames.receive_bytes(bytes(got))
    received = [(f.opcode, f.payload) for f in frames.received_frames()]
    assert received[0] == (WsOpcode.BINARY, payload)
    assert received[1][0] is WsOpcode.CLOSE and received[1][1][0] == 4013


@pytest.mark.parametrize("size", [50_000, 300_000])
async def test_a_write_cancelled_inside_a_frame_is_finished_before_the_close_frame(size: int) -> None:
    # A session's writer is cancelled when a close will not wait longer for it (close
    # timeout, TOO_SLOW): what the socket had not taken of the frame begun must still go
    # before the close frame. Lost, the peer read the close frame and what followed as the
    # payload, and the next bytes of the document as frames (found by a fresh user: a 40 MB
    # document, a slow reader, a malformed message).
    from websockets.protocol import State
    from websockets.server import ServerProtocol
    from wsproto.frame_protocol import FrameProtocol
    from wsproto.frame_protocol import Opcode as WsOpcode

    from plait.engine.transports._websocket import WebSocketStream

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    client_socket = trio.socket.socket()
    client_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await client_socket.connect(listener.socket.getsockname())
    client = trio.SocketStream(client_socket)
    server = await listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ws = WebSocketStream(server, ServerProtocol(state=State.OPEN), "/", [])
    payload = os.urandom(size)
    got = bytearray()
    writer = trio.CancelScope()

    async def write() -> None:
        with writer:
            await ws.send_message(payload)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            while len(got) < 10_000:  # the frame has begun on the wire
                got += await client.receive_some(4096)
            await trio.testing.wait_all_tasks_blocked()
            assert not writer.cancelled_caught
            writer.cancel()
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ws.aclose, 4001, "malformed")
            while data := await client.receive_some(1 << 16):
                got += data
                if got.endswith(b"malformed"):
                    break
            nursery.cancel_scope.cancel()  # aclose waits for this side's close frame
    await listener.aclose()
    await client.aclose()
    frames = FrameProtocol(client=True, extensions=[])
    frames.receive_bytes(bytes(got))
    received = [(f.opcode, f.payload) for f in frames.received_frames()]
    assert received[0] == (WsOpcode.BINARY, payload)
    assert received[1][0] is WsOpcode.CLOSE and received[1][1][0] == 4001
    assert len(received) == 2


async def test_pings_from_a_peer_that_does_not_read_are_answered_by_one_pong_not_one_each() -> None:
    # A client that never reads what is written to it and floods pings: each pong waited
    # behind the write in progress, and the server's memory grew with every ping (a fresh
    # user: 94 MB to 1.5 GB in 70 s from one connection). Only the latest is answered now
    # (RFC 6455 §5.5.3), once the write ends, with that ping's payload.
    from wsproto.events import Ping

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    big = os.urandom(2_000_000)
    queued_after_pings: list[int] = []
    done = trio.Event()

    async def handler(ws: Any) -> None:
        async def read() -> None:
            assert await ws.receive_message() == b"after the pings"
            queued_after_pings.append(sum(len(chunk) for chunk in ws._outgoing))
            await done.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await ws.send_message(big)

    pings = [os.urandom(100) for _ in range(5000)]  # 530 kB of pings
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, listener, handler, 2**22, 1e6)  # not paced here
            stream, ws = await handshake_raw(port, receive_buffer=4096)
            for payload in pings:
                await stream.send_all(ws.send(Ping(payload)))
            await stream.send_all(ws.send(BytesMessage(b"after the pings")))
            while not queued_after_pings:
                await trio.sleep(0.01)
            done.set()
            received, pongs = b"", []
            while len(received) < len(big) or not pongs:
                ws.receive_data(await stream.receive_some(65536))
                for event in ws.events():
                    if isinstance(event, BytesMessage):
                        received += event.data
                    elif isinstance(event, Pong):
                        pongs.append(bytes(event.payload))
            await stream.aclose()
            await listener.aclose()
    assert queued_after_pings[0] < 10_000  # the rest of the big message waits, and one pong
    assert received == big
    assert pongs[-1] == pings[-1] and len(pongs) < 10


async def test_a_send_without_waiting_on_a_closed_socket_raises_instead_of_writing() -> None:
    # Once the socket is closed its descriptor number can belong to another connection; the
    # write must fail, not land there.
    from plait.engine.http import serve_connection

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    outcome: list[BaseException] = []

    reused: list[socket.socket] = []

    async def handler(ws: object) -> None:
        await trio.aclose_forcefully(ws._stream)  # type: ignore[attr-defined]
        reused.extend(socket.socketpair())  # most likely given the descriptor just freed
        try:
            ws.send_message_nowait(b"late")  # type: ignore[attr-defined]
        except TransportClosed as exc:
            outcome.append(exc)

    async def serve() -> None:
        await serve_connection(await listener.accept(), handler, accepting=lambda: True, handshake_timeout=5,
                               max_message_bytes=lambda path: 4096)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            stream, _ = await handshake_raw(port)
            await read_all(stream)  # the server hung up without sending anything more
            await stream.aclose()
    await listener.aclose()
    assert len(outcome) == 1 and outcome[0].code == ABNORMAL_CLOSURE
    other_end = reused[1]
    other_end.setblocking(False)
    with pytest.raises(BlockingIOError):
        other_end.recv(100)  # nothing landed on the socket that took the number
    for sock in reused:
        sock.close()


async def test_the_close_frame_reaches_a_peer_still_sending_its_oversized_message(port: int) -> None:
    # A 1 MB message against a 4 kB limit, written in full as a client library would: the
    # server refuses it early, and must read the rest before hanging up, or the reset that
    # closing a socket with unread data causes can destroy its close frame (fresh-eyes run:
    # a 70 MiB publish got no close frame).
    stream, ws = await handshake_raw(port)
    big = ws.send(Message(data=b"\x00" * 1_000_000))
    with trio.fail_after(5):
        try:
            await stream.send_all(big)
        except trio.BrokenResourceError:
            pytest.fail("the server reset the connection before the message was sent")
    assert await close_codes(stream, ws) == [1009]
    await still_serves(port)


@pytest.mark.parametrize("cut", ["between-messages", "inside-a-frame"])
async def test_a_connection_reset_by_the_peer_ends_its_session_only(cut: str) -> None:
    # A reset (RST, not FIN) makes the server's read fail with ECONNRESET: the session ends as
    # lost, and the server goes on.
    async with Engine() as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        stream, ws = await handshake_raw(port)
        await stream.send_all(ws.send(Message(data=HELLO)))
        with trio.fail_after(5):
            while engine.statistics()["sessions"] != 1:
                await trio.sleep(0.01)
        if cut == "inside-a-frame":
            await stream.send_all(ws.send(Message(data=HELLO))[:3])
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        stream.socket.close()  # linger 0: the kernel resets the connection
        with trio.fail_after(5):
            while engine.statistics()["sessions"] != 0:
                await trio.sleep(0.01)
        await still_serves(port)
        nursery.cancel_scope.cancel()


def control_flood(opcode: int, count: int) -> bytes:
    return b"".join(raw_frame(opcode, b"%08d" % i) for i in range(count)) + raw_frame(2, HELLO)


def fragment_flood(count: int) -> bytes:
    """HELLO as the last of `count` fragments, the others empty."""
    first = raw_frame(2, b"", fin=False)
    return first + raw_frame(0, b"", fin=False) * (count - 2) + raw_frame(0, HELLO)


async def next_message(stream: trio.SocketStream, ws: WSConnection) -> bytes:
    while True:
        messages = [e.data for e in ws.events() if isinstance(e, BytesMessage)]
        if messages:
            return bytes(messages[0])
        ws.receive_data(await stream.receive_some(65536))


@pytest.mark.parametrize(
    "flood",
    [control_flood(0x9, 300), control_flood(0xA, 300), fragment_flood(int(3 * FRAGMENTS_PER_SECOND))],
    ids=["pings", "pongs", "fragments"],
)
async def test_a_flood_of_frames_the_session_never_sees_is_read_at_a_rate_while_others_are_served(flood: bytes) -> None:
    # WebSocket pings and pongs, and the fragments of a message, never reach the session, so
    # frames_per_second did not see them: three connections sending tiny pings as fast as they
    # could kept the server's loop parsing (a fresh user's probe waited 0.9-6.8 s), and one
    # sending messages of 4,095 empty fragments and a ping kept a core busy. They are read at
    # a rate now, after a burst of a second's worth: three seconds' worth (a hello with them,
    # answered at once) hold the connection's next read back two seconds, and nobody else's.
    config = EngineConfig(frames_per_second=100)  # pings and pongs: 100 a second
    async with Engine(config=config) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        stream, ws = await handshake_raw(port)
        started = trio.current_time()
        await stream.send_all(flood)
        with trio.fail_after(10):
            assert isinstance(decode(await next_message(stream, ws))[0], Welcome)
            await stream.send_all(ws.send(Message(data=encode([PlaitPing(7)]))))
            await still_serves(port)  # another connection, meanwhile
            served_other = trio.current_time()
            assert decode(await next_message(stream, ws)) == [PlaitPong(7)]
        answered = trio.current_time()
        assert answered - started >= 1.8  # paced: two seconds past the burst
        assert served_other < answered
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_close_waits_for_the_peers_close_frame_reading_its_control_frames_at_the_rate() -> None:
    # Closing a connection, the server reads on until the peer's close frame (as long as the
    # caller allows): that read parsed a flood of pings unpaced, and three flooding
    # connections being closed stalled everyone else for two seconds. Here 9,000 pings come
    # before the peer's close frame: the server reads at most 64 KiB (4,681 of them) at a
    # time, so at least 4,319 are read before the read that finds the close frame, and at
    # 2,000 a second after a second's burst that read waits over a second.
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    from plait.engine.transports._websocket import RECEIVE_BYTES, WebSocketStream

    rate, pings = 2000, 9000
    last_read = RECEIVE_BYTES // len(raw_frame(0x9, b"%08d" % 0))
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    client = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
    server = await listener.accept()
    ws = WebSocketStream(server, ServerProtocol(state=State.OPEN), "/", [], control_frames_per_second=rate)
    started = trio.current_time()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"".join(raw_frame(0x9, b"%08d" % i) for i in range(pings)) + raw_frame(0x8, b"\x03\xe8"))
            await ws.aclose(1000)
    assert trio.current_time() - started >= (pings - last_read) / rate - 1 - 0.05
    await client.aclose()
    await listener.aclose()


@pytest.mark.parametrize("fragments", [1, 3])
async def test_a_message_delivered_is_not_kept_by_the_transport(fragments: int) -> None:
    # websockets' parser holds the last frame it parsed until it parses the next: a connection
    # that sent one 16 MiB message and went quiet kept it on the server, and so did every one
    # that ended, until the garbage collector found its parser (a reference cycle). Connections
    # made in a loop, each sending one large message, grew a server to 1.7 GiB (QA).
    import sys

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    refcounts: list[int] = []
    got_it = trio.Event()

    async def handler(transport: Any) -> None:
        message = await transport.receive_message()
        assert len(message) == 3 * 2**20
        refcounts.append(sys.getrefcount(message))  # this name, and getrefcount's argument
        got_it.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one, listener, handler, 2**22)
            stream, ws = await handshake_raw(port)
            part = 2**20 * 3 // fragments
            for i in range(fragments):
                await stream.send_all(ws.send(Message(data=b"x" * part, message_finished=i == fragments - 1)))
            await got_it.wait()
            await stream.aclose()
            await listener.aclose()
            nursery.cancel_scope.cancel()
    assert refcounts == [2]
