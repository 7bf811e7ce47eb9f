"""How fast one HTTP connection's requests are read (spec §14.5, RequestPace), on Trio's mock
clock: the routes over an in-memory stream, spoken to with h11 as a client would."""

from __future__ import annotations

import json
from typing import Any

import h11
import msgpack
import pytest
import trio
import trio.testing
from trio.testing import MockClock

from plait.engine import Engine
from plait.engine.http import RequestPace, serve_connection

from .conftest import make_engine

MIB = 1024 * 1024


class HttpOverMemory:
    """One keep-alive HTTP/1.1 connection to the engine's routes, over a memory stream."""

    def __init__(self, engine: Engine, nursery: trio.Nursery) -> None:
        client, server = trio.testing.memory_stream_pair()
        self.stream = client
        self.conn = h11.Connection(h11.CLIENT)
        nursery.start_soon(
            lambda: serve_connection(
                server, engine.serve_transport, accepting=lambda: True, handshake_timeout=engine.config.handshake_timeout,
                max_message_bytes=engine.max_message_bytes, router=engine.router, pace=RequestPace.of(engine.config),
            )
        )

    async def request(self, method: str, target: str, body: bytes = b"", content_type: str = "application/json") -> tuple[int, bytes]:
        headers = [("Host", "x"), ("Content-Length", str(len(body))), ("Content-Type", content_type)]
        data = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        data += self.conn.send(h11.Data(data=body)) if body else b""
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status, parts = 0, []
        for _ in range(10_000):
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:  # kept alive
                    self.conn.start_next_cycle()
                return status, b"".join(parts)
        raise AssertionError("no whole answer")

    async def open_session(self) -> dict[str, Any]:
        status, body = await self.request("POST", "/v1/sessions")
        assert status == 201, body
        session: dict[str, Any] = json.loads(body)
        return session


async def test_requests_on_one_connection_are_read_at_frames_per_second(autojump_clock: MockClock) -> None:
    # QA: one keep-alive connection asking GET /readyz (or opening and deleting sessions) as
    # fast as it could held the server's core at 80-90 %; nothing paced plain requests.
    async with make_engine(frames_per_second=100) as engine, trio.open_nursery() as nursery:
        http = HttpOverMemory(engine, nursery)
        start = trio.current_time()
        for _ in range(400):
            status, _ = await http.request("GET", "/healthz")
            assert status == 200
        elapsed = trio.current_time() - start
        assert 2.9 <= elapsed < 4, elapsed  # 100 at once (a second's burst), then 100 a second
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("content_type", ["application/msgpack", "application/json"])
async def test_a_bodys_values_are_read_at_read_bytes_per_value_and_decoded_once(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, content_type: str
) -> None:
    # QA: POST .../frames decoded its body twice (in the route, then in the session), and one
    # refused 429 had been decoded first; and nothing paced a body's values (spec §3.4, §5.8).
    import plait.engine.http._sessions as routes
    import plait.engine.sessions._native as native

    decodes: list[int] = []
    decoders = [(module, name) for module in (routes, native) for name in ("decode_counted", "decode_json_counted")]
    for module, name in decoders:
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda data, limits, real=real: decodes.append(len(data)) or real(data, limits))
    config = {"read_bytes_per_second": MIB, "read_bytes_per_value": 64, "max_message_bytes": MIB, "events_per_second": 1000}
    async with make_engine(**config) as engine, trio.open_nursery() as nursery:
        http = HttpOverMemory(engine, nursery)
        session = await http.open_session()
        frames_url = session["frames"]
        join = {"kind": "join", "ref": 1, "room": "r", "state_vector": None, "since": None, "epoch": None}
        assert (await http.request("POST", frames_url, json.dumps(join).encode()))[0] == 200
        decodes.clear()
        start = trio.current_time()
        for i in range(10):  # 10 x 8,192 values: 5 s at 16,384 a second, after a 1 s burst
            payload = [None] * 8192
            if content_type == "application/json":
                body = json.dumps({"kind": "publish", "channel": 1, "ref": 10 + i, "name": "x", "payload": payload, "key": None}).encode()
            else:
                body = msgpack.packb([50, 1, 10 + i, "x", payload, None])
            status, answer = await http.request("POST", frames_url, body, content_type)
            assert status == 200, answer
        elapsed = trio.current_time() - start
        assert 3.5 <= elapsed < 6, elapsed
        assert len(decodes) == 10  # each body once
        nursery.cancel_scope.cancel()


async def test_hellos_values_are_read_at_read_bytes_per_value_on_their_connection(autojump_clock: MockClock) -> None:
    # Each POST /v1/sessions opens a session of its own: only the connection's pace sees them.
    config = {"read_bytes_per_second": MIB, "read_bytes_per_value": 64, "max_message_bytes": MIB}
    async with make_engine(**config) as engine, trio.open_nursery() as nursery:
        http = HttpOverMemory(engine, nursery)
        start = trio.current_time()
        for _ in range(10):  # 10 x 8,192 values: 5 s at 16,384 a second, after a 1 s burst
            hello = {"kind": "hello", "versions": [1], "token": None, "client": {"a": [0] * 8192}}
            status, answer = await http.request("POST", "/v1/sessions", json.dumps(hello).encode())
            assert status == 201, answer
        elapsed = trio.current_time() - start
        assert 3.5 <= elapsed < 6, elapsed
        nursery.cancel_scope.cancel()


async def test_a_bodys_frames_count_as_requests(autojump_clock: MockClock) -> None:
    # QA: one keep-alive connection opened sessions of 64 joins each (one POST of 64 frames)
    # and loaded 22,661 rooms in 30 s. Each frame counts as a request, as on a WebSocket each
    # counts toward frames_per_second: 10 sessions of 40 joins is 4 s at 100 a second.
    async with make_engine(frames_per_second=100, max_rooms_per_connection=64) as engine, trio.open_nursery() as nursery:
        http = HttpOverMemory(engine, nursery)
        start = trio.current_time()
        for s in range(10):
            session = await http.open_session()
            joins = [
                {"kind": "join", "ref": i + 1, "room": f"r{s}-{i}", "state_vector": None, "since": None, "epoch": None} for i in range(40)
            ]
            status, answer = await http.request("POST", session["frames"], json.dumps(joins).encode())
            assert status == 200 and len(json.loads(answer)) == 40, answer
        elapsed = trio.current_time() - start
        assert 2.5 <= elapsed < 5, elapsed  # 420 requests' worth, the first 100 at once, the last paid after
        nursery.cancel_scope.cancel()


async def test_a_hello_body_longer_than_a_hello_may_be_is_413(autojump_clock: MockClock) -> None:
    # spec §5.1: the hello is read before anyone knows who sent it, under a bound of its own.
    from plait.protocol import MAX_HELLO_BYTES

    async with make_engine() as engine, trio.open_nursery() as nursery:
        http = HttpOverMemory(engine, nursery)
        hello = {"kind": "hello", "versions": [1], "token": None, "client": {"pad": "x" * MAX_HELLO_BYTES}}
        status, answer = await http.request("POST", "/v1/sessions", json.dumps(hello).encode())
        assert status == 413, answer
        assert engine.max_message_bytes("/") > MAX_HELLO_BYTES  # the bound is the hello's, not every message's
        nursery.cancel_scope.cancel()


def test_the_default_pace_is_the_default_configs() -> None:
    from plait.engine import EngineConfig

    assert RequestPace() == RequestPace.of(EngineConfig())
