"""Large documents over real sockets: a y-websocket client, which cannot split what it sends,
uploads a document larger than the native message limit (up to max_document_bytes); clients
that stop reading in the middle of a large document hold up nobody else's."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pycrdt
import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Message, Request, TextMessage

from plait.client import connect
from plait.engine import Engine, EngineConfig
from plait.protocol import Frame, Hello, Join, Ping, SyncStep2, YSyncStep, decode_json, encode, encode_json, encode_sync

pytestmark = pytest.mark.slow


async def test_yjs_client_uploads_a_document_larger_than_the_native_message_limit() -> None:
    """The issue: a y-websocket client holding 17 MiB of offline text was closed with 1009 on
    every upload and retried forever; the room stayed empty."""
    config = EngineConfig(max_message_bytes=1024 * 1024, max_document_bytes=8 * 1024 * 1024)
    text = "offline " * (3 * 1024 * 1024 // 8)
    doc = pycrdt.Doc(client_id=5)
    doc.get("text", type=pycrdt.Text).insert(0, text)
    async with Engine(config=config) as engine:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{port}/yjs/big"
            async with trio_websocket.open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws:
                await ws.send_message(encode_sync(YSyncStep.STEP2, doc.get_update()))
                async with engine.room("big") as room:
                    with trio.fail_after(20):
                        while len(str(room.doc.get("text", type=pycrdt.Text))) < len(text):
                            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


def in_json(frame: Frame) -> TextMessage:
    return TextMessage(encode_json(frame))


def in_msgpack(frame: Frame) -> BytesMessage:
    return BytesMessage(encode([frame]))


async def stalled_joiner(port: int, room: str, joined: trio.Event, message: Callable[[Frame], Message] = in_msgpack) -> None:
    """Joins `room` asking for all of it, reads nothing (a 4 KiB receive buffer), and pings
    twice a second, so it is never silent: until the server ends the connection. Speaks
    msgpack, or JSON (spec §3.5) with `message=in_json`."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target="/")))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(await stream.receive_some(4096))
    await stream.send_all(ws.send(message(Hello((1,), None, {}))))
    await stream.send_all(ws.send(message(Join(1, room, b"\x00", None))))
    joined.set()
    try:
        for nonce in range(1000):
            await stream.send_all(ws.send(message(Ping(nonce))))
            await trio.sleep(0.5)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def joined_text_over_json(port: int, room: str, synced: Callable[[], None]) -> str:
    """Join `room` as a client that speaks JSON (spec §3.5): the text it is sent. `synced` is
    called then, the connection still open."""
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/", max_message_size=64 * 1024 * 1024) as ws:
        await ws.send_message(encode_json(Hello((1,), None, {})))
        await ws.send_message(encode_json(Join(1, room, b"\x00", None)))
        doc = pycrdt.Doc()
        for _ in range(100):
            message = await ws.get_message()
            assert isinstance(message, str)
            for frame in decode_json(message):
                if isinstance(frame, SyncStep2):
                    doc.apply_update(frame.update)
                    synced()
                    return str(doc.get("text", type=pycrdt.Text))
        raise AssertionError("no sync_step2")


async def joined_text_over_msgpack(port: int, room: str, synced: Callable[[], None]) -> str:
    """Join `room` with the SDK: the text it has once synced (`synced` is called then)."""
    async with connect(f"ws://127.0.0.1:{port}/") as client, client.join(room) as joined:
        await joined.synced()
        synced()
        return str(joined.text)


@pytest.mark.parametrize("wire", ["msgpack", "json"])
async def test_clients_that_stop_reading_a_large_document_hold_up_no_one_else(wire: str) -> None:
    # A QA helper's four clients joined a 6 MiB room and never read: they held every one of
    # the engine's large-send slots for as long as they stayed connected (pinging), and a
    # client joining after them got nothing, then TOO_SLOW. The WebSocket endpoint writes a
    # large message without copying it, so it waits for no slot; and a client that takes
    # none of one for outbox_max_lag is closed TOO_SLOW. With clients that speak JSON, each
    # large message was decoded into a str and encoded back, so it still took a slot, and a
    # second QA helper's four slow JSON readers held up every other JSON joiner for minutes.
    config = EngineConfig(heartbeat=2, concurrent_large_sends=1, outbox_max_lag=4)
    # One value, past large_message_bytes (1 MiB) and what the sockets can hold (4 MiB here).
    text = "large " * (8 * 1024 * 1024 // 6)
    in_wire, joined_text = (in_json, joined_text_over_json) if wire == "json" else (in_msgpack, joined_text_over_msgpack)
    async with Engine(config=config) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with engine.room("big") as handle:
            handle.doc.get("text", type=pycrdt.Text).insert(0, text)
            with trio.fail_after(30):
                for _ in range(2):
                    joined = trio.Event()
                    nursery.start_soon(stalled_joiner, port, "big", joined, in_wire)
                    await joined.wait()
                await trio.sleep(0.5)  # their writes have begun, and stalled
                assert engine.statistics()["sessions"] == 2

                def served_before_they_were_closed() -> None:
                    assert engine.statistics()["sessions"] == 3

                assert await joined_text(port, "big", served_before_they_were_closed) == text
                while engine.statistics()["sessions"] > 0:  # the two that read nothing
                    await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
