"""End to end over real sockets on 127.0.0.1: the engine's WebSocket server and the client SDK.
Real time here, so every wait is on an event, bounded by the suite's deadline."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pycrdt
import pytest
import trio
import trio_websocket
from wsproto.events import BytesMessage, Message

from plait.client import Backoff, ClientState, Room, connect
from plait.engine import Engine, EngineConfig
from plait.engine.transports import WebSocketStream
from plait.protocol import CloseCode, Hello, Join, Joined, Ping, Pong, SyncStep2, Update, Welcome, decode, encode

from .proxy import proxy_to
from .test_websocket_endpoint import handshake_raw

pytestmark = pytest.mark.slow


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with Engine() as engine, trio.open_nursery() as nursery:
        yield await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        nursery.cancel_scope.cancel()


@pytest.fixture
def url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/"


async def until(room: Room, check: Callable[[], bool]) -> None:
    """Wait until `check()` holds, re-checking on every document or room change."""
    changes = room.changes()
    woke = trio.Event()

    def wake(_: object) -> None:
        woke.set()

    sub = room.doc.observe(wake)
    try:
        while not check():
            async with trio.open_nursery() as nursery:
                async def on_change() -> None:
                    await changes.__anext__()
                    woke.set()  # noqa: B023 (the nursery ends before woke is replaced)

                nursery.start_soon(on_change)
                await woke.wait()
                nursery.cancel_scope.cancel()
            woke = trio.Event()
    finally:
        room.doc.unobserve(sub)
        changes.close()


async def test_three_clients_converge_and_see_each_other(url: str) -> None:
    async with connect(url) as c1, connect(url) as c2, connect(url) as c3:
        async with c1.join("doc") as r1, c2.join("doc") as r2:
            await r1.synced()
            await r2.synced()
            r1_events = r1.events()
            # Concurrent edits at the same position from both sides.
            for _ in range(20):
                r1.text.insert(0, "a")
                r2.text.insert(0, "b")
            await r1.set_presence({"name": "ada"})
            await r2.set_presence({"name": "bob"})
            await r2.move_cursor({"index": 2})
            await r2.set_typing(True)
            await r2.publish("chat", {"text": "hi"})
            await r1.flushed()
            await r2.flushed()
            await until(r1, lambda: len(str(r1.text)) == 40 and str(r1.text) == str(r2.text))
            assert sorted(str(r1.text)) == sorted("ab" * 20)
            assert (await r1_events.__anext__()).payload == {"text": "hi"}
            await until(r1, lambda: bool(r1.typing) and bool(r1.cursors) and any(e.state for e in r1.presence.values()))
            # A late joiner gets the document, presence, cursors and typing at once.
            async with c3.join("doc") as r3:
                await r3.synced()
                assert str(r3.text) == str(r1.text)
                await until(r3, lambda: len(r3.presence) == 2 and len(r3.cursors) == 1 and len(r3.typing) == 1)
                names = sorted(e.state.get("name") for e in r3.presence.values())
                assert names == ["ada", "bob"]


async def test_resume_after_reconnect_over_tcp(url: str, port: int) -> None:
    fast = Backoff(base=0.05, cap=0.2)
    async with proxy_to(port) as proxy, connect(f"ws://127.0.0.1:{proxy.port}/", backoff=fast) as writer, connect(url) as reader:
        async with writer.join("r") as w, reader.join("r") as r:
            await w.synced()
            await r.synced()
            w_events = w.events()
            w.text.insert(0, "one ")
            await w.flushed()
            proxy.cut()  # the writer's TCP connection drops, no close frame
            await writer.wait_state(ClientState.RECONNECTING)
            await r.publish("missed", 1)  # published while the writer is away
            w.text.insert(len(w.text), "two")
            await writer.wait_state(ClientState.OPEN)
            await w.flushed()
            await until(r, lambda: str(r.text) == "one two")
            event = await w_events.__anext__()
            assert (event.name, event.payload) == ("missed", 1)  # resumed from the last seq
            assert proxy.connections == 2


def test_plait_serve_end_to_end(tmp_path: Path) -> None:
    """The standalone server as a user runs it: start, edit from two clients, stop with Ctrl-C
    (SIGINT), start again on the same data and find the document there."""

    async def edit_and_check(url: str, text: str, expect: str) -> None:
        with trio.fail_after(30):
            async with connect(url) as a, connect(url) as b, a.join("notes") as ra, b.join("notes") as rb:
                await ra.synced()
                await rb.synced()
                assert a.welcome is not None and a.welcome.limits.updates_per_second == 500  # --updates-per-second
                assert a.welcome.limits.frames_per_second == 300  # --frames-per-second
                ra.text.insert(len(ra.text), text)
                await ra.flushed()
                await until(rb, lambda: str(rb.text) == expect)

    traces = tmp_path / "traces"
    for text, expect in (("hello", "hello"), (" again", "hello again")):
        proc = subprocess.Popen(
            [sys.executable, "-m", "plait.engine._cli", "serve", "--port", "0", "--data", str(tmp_path),
             "--record", str(traces), "--updates-per-second", "500", "--frames-per-second", "300"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            port = None
            for _ in range(50):
                line = proc.stdout.readline()
                match = re.search(r"serving on ws://127.0.0.1:(\d+)/", line)
                if match:
                    port = int(match.group(1))
                    break
            assert port, "server did not start"
            trio.run(edit_and_check, f"ws://127.0.0.1:{port}/", text, expect)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=20)
            assert proc.returncode == 0, out
            assert "plait: stopped" in out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (tmp_path / "plait.db").exists()
    # Each run wrote a trace of its connections (replaying recorded traffic: tests/e2e/test_record.py).
    recorded = sorted(traces.glob("trace-*.jsonl"))
    assert len(recorded) == 2, "plait serve --record wrote no trace (or one run overwrote the other)"
    first = recorded[0].read_text()
    assert '"kind": "hello"' in first and '"kind": "update"' in first


async def test_a_reader_that_stalls_gets_every_update_in_order_once_it_reads(
    url: str, port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fan-out to a socket that is full goes on in the connection's writer task; nothing is
    # lost or reordered on the way (Peer.flush_nowait).
    short_writes = 0
    send_nowait = WebSocketStream.send_message_nowait

    def counting(self: WebSocketStream, data: bytes) -> bool:
        nonlocal short_writes
        written = send_nowait(self, data)
        short_writes += not written
        return written

    monkeypatch.setattr(WebSocketStream, "send_message_nowait", counting)
    with trio.fail_after(20):
        stream, ws = await handshake_raw(port, receive_buffer=4096)
        await stream.send_all(ws.send(Message(data=encode(Hello((1,), None, {})))))
        await stream.send_all(ws.send(Message(data=encode(Join(1, "r", None, None)))))
        doc = pycrdt.Doc()
        pending = b""

        async def read_frames() -> list[object]:
            nonlocal pending
            ws.receive_data(await stream.receive_some(65536))
            frames: list[object] = []
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    pending += event.data
                    if event.message_finished:
                        frames += decode(pending)
                        pending = b""
            return frames

        joined = False
        while not joined:
            for frame in await read_frames():
                joined = joined or isinstance(frame, Joined)
        async with connect(url) as client, client.join("r") as room:
            await room.synced()
            for i in range(100):  # 100 updates of 8 KiB while the reader reads nothing
                room.text.insert(len(room.text), chr(97 + i % 26) * 8192)
                await room.flushed()
            expected = str(room.text)
        text = doc.get("text", type=pycrdt.Text)
        for _ in range(10_000):
            for frame in await read_frames():
                if isinstance(frame, (Update, SyncStep2)):
                    doc.apply_update(frame.update)
            if len(str(text)) == len(expected):
                break
        await stream.aclose()
    assert str(text) == expected
    assert short_writes > 0  # the socket did fill up


async def test_a_failure_writing_one_connection_closes_that_connection_only(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    send_nowait = WebSocketStream.send_message_nowait
    failures = 0

    def fail_once(self: WebSocketStream, data: bytes) -> bool:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("a bug in the output path")
        return send_nowait(self, data)

    monkeypatch.setattr(WebSocketStream, "send_message_nowait", fail_once)
    with trio.fail_after(10):
        async with trio_websocket.open_websocket_url(url) as first:
            await first.send_message(encode(Hello((1,), None, {})))
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    await first.get_message()
            await trio.aclose_forcefully(first._stream)  # trio-websocket leaves it open
        assert closed.value.reason.code == CloseCode.INTERNAL_ERROR
        async with trio_websocket.open_websocket_url(url) as second:  # the server goes on
            await second.send_message(encode(Hello((1,), None, {})))
            assert isinstance(decode(await second.get_message())[0], Welcome)
    assert failures == 1


async def test_the_heartbeat_pings_a_quiet_connection_and_one_that_answers_stays_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # spec §5.7 over TCP: the server pings a connection it has said nothing to for most of H,
    # written from the heartbeat sweep; a ping the socket does not take at once (simulated for
    # the first) is written by a writer task, not left behind. A client that only answers pings
    # is never closed for silence.
    heartbeat = 0.4
    send_nowait = WebSocketStream.send_message_nowait
    held_back = 0

    def first_ping_not_taken(self: WebSocketStream, data: bytes | str) -> bool:
        nonlocal held_back
        if held_back == 0 and isinstance(data, bytes) and isinstance(decode(data)[0], Ping):
            held_back += 1
            self._outgoing.append(self._framed(data))  # as a socket that took none of it
            return False
        return send_nowait(self, data)

    monkeypatch.setattr(WebSocketStream, "send_message_nowait", first_ping_not_taken)
    async with Engine(config=EngineConfig(heartbeat=heartbeat)) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        stream, ws = await handshake_raw(port)
        await stream.send_all(ws.send(Message(data=encode(Hello((1,), None, {})))))
        frames: list[object] = []
        pings: list[float] = []
        with trio.fail_after(20):
            while len(pings) < 4:  # four pings: more than 2H of a client that only answers
                data = await stream.receive_some(65536)
                assert data, "the server closed a connection that answers its pings"
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, BytesMessage):
                        frames += decode(event.data)
                for frame in frames:
                    if isinstance(frame, Ping):
                        pings.append(trio.current_time())
                        await stream.send_all(ws.send(Message(data=encode(Pong(frame.nonce)))))
                frames.clear()
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert held_back == 1
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.75 * heartbeat <= gap < 2 * heartbeat for gap in gaps), gaps
