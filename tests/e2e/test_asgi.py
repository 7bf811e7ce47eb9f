"""plait.engine.asgi under Hypercorn's Trio worker, in this process, on real sockets of
127.0.0.1 (those tests are slow; the scope's and asyncio's are not): Plait mounted at
/collab in a Starlette app with a route of its own; native WebSocket clients (the SDK, and a
hand-made one that misbehaves), the HTTP transports (httpx and an h11 event-stream reader) in
the same rooms. Every wait is bounded."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import httpx
import pycrdt
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection
from wsproto.events import Request as WsRequest

from plait.client import connect
from plait.engine import Engine, EngineConfig, Unauthenticated
from plait.engine.asgi import PlaitApp, relative_target
from plait.engine.http import Exchange, Refusal
from plait.protocol import CloseCode, Hello, Join, Publish, Welcome, decode, encode, encode_json
from plait.storage import MemoryStore

from .httpclients import event_stream
from .test_hostile_endpoints import Peer, raw_frame


async def who(scope: Any) -> dict[str, Any] | None:
    """The test app's own auth: `X-User: NAME` (as a middleware that checked it would leave
    it), `X-User: nobody` refused; `X-User: bug` is a bug in the app's code, `X-User: odd` a
    wrong answer."""
    await trio.lowlevel.checkpoint()
    for name, value in scope.get("headers", ()):
        if name == b"x-user":
            if value == b"nobody":
                raise Unauthenticated("not logged in")
            if value == b"bug":
                raise KeyError("session")
            if value == b"odd":
                return {"name": "no id"}
            return {"id": value.decode()}
    return None


async def hello_route(request: Request) -> JSONResponse:
    return JSONResponse({"app": "own route", "path": request.url.path})


def mounted(plait: PlaitApp) -> Starlette:
    return Starlette(routes=[Route("/hello", hello_route), Mount("/collab", plait)], lifespan=plait.lifespan)


@asynccontextmanager
async def hypercorn(app: Any, **settings: Any) -> AsyncIterator[int]:
    """`app` served by Hypercorn's Trio worker on a free port of 127.0.0.1 (the port); a
    graceful shutdown (its lifespan's end) when the block exits."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 1
    config.accesslog = None
    for name, value in settings.items():
        setattr(config, name, value)
    stop = trio.Event()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(functools.partial(serve, app, config, shutdown_trigger=stop.wait))
            yield int(binds[0].rsplit(":", 1)[1])
            stop.set()


class Closes:
    """Metrics that keep the close code of every session that ended."""

    def __init__(self) -> None:
        self.codes: list[str] = []

    def add(self, name: str, amount: float = 1.0, label: str = "") -> None:
        if name == "sessions_closed":
            self.codes.append(label)

    def observe(self, name: str, value: float, label: str = "") -> None:
        pass


@asynccontextmanager
async def collab(**config: Any) -> AsyncIterator[tuple[Engine, int]]:
    settings = config.pop("hypercorn", {})
    metrics = config.pop("metrics", Closes())
    engine = Engine(config=EngineConfig(**config), metrics=metrics)
    async with hypercorn(mounted(PlaitApp(engine, identity_from_scope=who)), **settings) as port:
        yield engine, port


async def wait_until(check: Any, what: str, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)
    assert check(), what


# -- the scope ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "target"),
    [
        (
            {"path": "/collab/yjs/notes", "raw_path": b"/collab/yjs/notes", "root_path": "/collab", "query_string": b"token=T"},
            "/yjs/notes?token=T",
        ),
        ({"path": "/collab/yjs/a b", "raw_path": b"/collab/yjs/a%20b", "root_path": "/collab", "query_string": b""}, "/yjs/a%20b"),
        ({"path": "/collab/", "raw_path": b"/collab/", "root_path": "/collab", "query_string": b""}, "/"),
        ({"path": "/collab", "raw_path": b"/collab", "root_path": "/collab", "query_string": b""}, "/"),
        ({"path": "/yjs/x", "root_path": "", "query_string": b""}, "/yjs/x"),  # no raw_path: quoted again
        ({"path": "/v1/events", "raw_path": b"/v1/events", "root_path": "/mnt", "query_string": b"room=a"}, "/v1/events?room=a"),
    ],
)
def test_paths_are_relative_to_the_mount(scope: dict[str, Any], target: str) -> None:
    assert relative_target(scope) == target


# -- through the app ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_native_and_http_clients_share_a_room_under_the_mount_and_the_apps_route_still_works() -> None:
    async with collab() as (_engine, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert (await http.get("/hello")).json() == {"app": "own route", "path": "/hello"}
        async with connect(f"ws://127.0.0.1:{port}/collab/") as client, client.join("notes") as room:
            await room.synced()
            events = room.events()
            # An HTTP session, its identity from the app's own auth (X-User), publishes.
            created = await http.post("/collab/v1/sessions", headers={"X-User": "ada"})
            assert created.status_code == 201, created.text
            body = created.json()
            frames = "/collab" + body["frames"]
            answers = await http.post(frames, content=encode_json([Join(1, "notes", None, None)]))
            assert answers.status_code == 200 and answers.json()[0]["kind"] == "joined", answers.text
            channel = answers.json()[0]["channel"]
            sent = await http.post(frames, content=encode_json([Publish(channel, 2, "chat", {"text": "hi"}, None)]))
            assert sent.json()[0]["kind"] == "ack", sent.text
            with trio.fail_after(10):
                chat = await events.__anext__()
            assert chat.name == "chat" and chat.user == "ada" and chat.payload == {"text": "hi"}
            # An event stream through the mount sees the native client's edit.
            async with event_stream(port, "/collab/v1/events?room=notes") as (status, headers, stream):
                assert status == 200 and headers["content-type"].startswith("text/event-stream")
                room.text.insert(0, "hello")
                await room.flushed()
                with trio.fail_after(10):
                    async for event in stream:
                        if event.type == "update":
                            break
        assert (await http.get("/collab/nothing")).status_code == 404
        refused = await http.post("/collab/v1/sessions", headers={"X-User": "nobody"})
        assert refused.status_code == 401 and refused.json()["code"] == 2002


@pytest.mark.slow
async def test_the_apps_identity_hook_failing_fails_only_that_handshake() -> None:
    async with collab() as (_, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        for user in ("bug", "odd"):
            answer = await http.post("/collab/v1/sessions", headers={"X-User": user})
            assert answer.status_code == 500 and answer.json()["code"] == 3999, answer.text  # INTERNAL
            peer = await peer_as(port, user)
            await peer.send(raw_frame(2, encode(Hello((1,), None, {}))))
            await peer.read_to_eof()
            assert [c.code for c in peer.closes] == [CloseCode.INTERNAL_ERROR]
        assert (await http.post("/collab/v1/sessions", headers={"X-User": "ada"})).status_code == 201


@pytest.mark.slow
async def test_a_body_over_max_message_bytes_is_413_under_asgi_too() -> None:
    async with collab(max_message_bytes=16 * 1024) as (_, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        created = (await http.post("/collab/v1/sessions")).json()
        answer = await http.post("/collab" + created["frames"], content=b"[" + b" " * 20000 + b"]")
        assert answer.status_code == 413 and "16384" in answer.json()["error"]
        assert (await http.post("/collab/v1/sessions")).status_code == 201


async def peer_as(port: int, user: str | None) -> Peer:
    """A hand-made WebSocket client on /collab/, sending `X-User: user` with its upgrade."""
    sock = trio.socket.socket()
    await sock.connect(("127.0.0.1", port))
    peer = Peer(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT))
    headers = [(b"x-user", user.encode())] if user is not None else []
    await peer.send(peer.ws.send(WsRequest(host="127.0.0.1", target="/collab/", extra_headers=headers)))
    with trio.fail_after(5):
        while not any(isinstance(e, AcceptConnection) for e in peer._feed(await peer.stream.receive_some(65536))):
            pass
    return peer


@pytest.mark.slow
async def test_the_apps_auth_refuses_a_websocket_4003_and_leaves_others_to_plaits_hooks() -> None:
    async with collab() as (_engine, port):
        refused = await peer_as(port, "nobody")
        await refused.send(raw_frame(2, encode(Hello((1,), None, {}))))
        await refused.read_to_eof()
        assert [c.code for c in refused.closes] == [CloseCode.UNAUTHENTICATED]
        for user in ("bob", None):  # vouched for; not vouched for: anonymous (the default hooks)
            peer = await peer_as(port, user)
            await peer.send(raw_frame(2, encode(Hello((1,), None, {}))))
            with trio.fail_after(5):
                while not peer.messages:
                    await peer.read_one()
            assert isinstance(decode(peer.messages[0])[0], Welcome)  # type: ignore[arg-type]
            await peer.stream.aclose()


@pytest.mark.slow
async def test_an_engine_whose_lifespan_does_not_run_says_how_to_run_it() -> None:
    plait = PlaitApp(Engine())
    app = Starlette(routes=[Mount("/collab", plait)])  # no lifespan=plait.lifespan
    async with hypercorn(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        answer = await http.post("/collab/v1/sessions")
        assert answer.status_code == 503
        assert "lifespan" in answer.json()["error"]
        # A WebSocket is refused with the same answer, not a bare 403.
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            upgrade = f"GET /collab/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            await stream.send_all((upgrade + "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            seen = b""
            with trio.fail_after(10):
                while b"}" not in seen:
                    chunk = await stream.receive_some(4096)
                    assert chunk, seen
                    seen += chunk
        assert seen.startswith(b"HTTP/1.1 503") and b"lifespan" in seen, seen


@pytest.mark.slow
async def test_every_route_on_the_engines_router_is_served_under_the_mount_as_is() -> None:
    engine = Engine()

    async def healthz(ex: Exchange, request: h11.Request) -> None:
        await ex.body(0)
        await ex.respond_json(200, {"ok": True, "target": request.target.decode()})

    async def refusing(ex: Exchange, request: h11.Request) -> None:
        raise Refusal(418, "no tea here", as_json=True)

    engine.router.add("/app-health", healthz)
    engine.router.add("/api/", refusing)
    async with hypercorn(mounted(PlaitApp(engine))) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        answer = await http.get("/collab/app-health?deep=1")
        assert answer.status_code == 200 and answer.json() == {"ok": True, "target": "/app-health?deep=1"}
        assert answer.headers["cache-control"] == "no-store"
        refused = await http.get("/collab/api/rooms")
        assert refused.status_code == 418 and refused.json() == {"status": 418, "error": "no tea here"}


@pytest.mark.slow
async def test_plait_alone_is_an_asgi_app_with_its_own_lifespan() -> None:
    engine = Engine()
    async with hypercorn(PlaitApp(engine)) as port:
        async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("alone") as room:
            await room.synced()
            room.text.insert(0, "served")
            await room.flushed()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            answer = await http.get("/")
            assert answer.status_code == 426 and "WebSocket" in answer.text


def test_a_request_under_asyncio_is_refused_with_what_to_do() -> None:
    """No lifespan (uvicorn --lifespan off): the first request says to use hypercorn -k trio."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/events", "root_path": "", "query_string": b"", "headers": []}
    asyncio.run(PlaitApp(Engine())(scope, receive, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 500
    assert "hypercorn -k trio" in json.loads(sent[1]["body"])["error"]


# -- hostile clients ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_clients_that_go_mid_handshake_leave_nothing_behind() -> None:
    async with collab(handshake_timeout=2) as (engine, port):
        for cut in (20, 60):  # inside the upgrade request's head
            with trio.socket.socket() as sock:
                await sock.connect(("127.0.0.1", port))
                request = b"GET /collab/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                await sock.send(request[:cut])
        peer = await Peer.connect(port, "/collab/")  # upgraded, then gone before its hello
        await peer.stream.aclose()
        half = await Peer.connect(port, "/collab/")
        await half.send(raw_frame(2, encode(Hello((1,), None, {})))[:3])  # part of a hello
        await half.stream.aclose()
        await wait_until(lambda: engine.statistics()["sessions"] == 0, "every session ended")
        async with connect(f"ws://127.0.0.1:{port}/collab/") as client, client.join("after") as room:
            await room.synced()


@pytest.mark.slow
async def test_a_message_over_plaits_limit_is_closed_1009_by_plait_under_hypercorns_larger_limit() -> None:
    limit = 16 * 1024
    async with collab(max_message_bytes=limit) as (engine, port):
        peer = await Peer.connect(port, "/collab/")
        await peer.send(raw_frame(2, encode(Hello((1,), None, {}))))
        await peer.send(raw_frame(2, b"\x00" * (limit + 1)))
        await peer.read_to_eof()
        assert [c.code for c in peer.closes] == [CloseCode.MESSAGE_TOO_BIG]
        await wait_until(lambda: engine.statistics()["sessions"] == 0, "the session ended")


@pytest.mark.slow
async def test_hypercorns_own_limit_closes_1009_before_plait_sees_the_message() -> None:
    async with collab(hypercorn={"websocket_max_message_size": 8 * 1024}) as (_engine, port):
        peer = await Peer.connect(port, "/collab/")
        await peer.send(raw_frame(2, encode(Hello((1,), None, {}))))
        await peer.send(raw_frame(2, b"\x00" * 12000))
        await peer.read_to_eof()
        assert [c.code for c in peer.closes][:1] == [CloseCode.MESSAGE_TOO_BIG]


@pytest.mark.slow
async def test_a_reader_that_stops_reading_is_closed_too_slow_and_the_room_goes_on() -> None:
    outbox = 256 * 1024
    closes = Closes()
    async with collab(outbox_max_bytes=outbox, metrics=closes) as (engine, port):
        slow = await Peer.connect(port, "/collab/", receive_buffer=4096)
        await slow.send(raw_frame(2, encode(Hello((1,), None, {}))))
        await slow.send(raw_frame(2, encode(Join(1, "busy", None, None))))
        async with connect(f"ws://127.0.0.1:{port}/collab/") as client, client.join("busy") as room:
            await room.synced()
            await wait_until(lambda: len(room.presence) >= 0 and engine.statistics()["sessions"] == 2, "both in")
            # Writes the slow peer never reads: far more than its outbox, its socket and
            # Hypercorn's one message in hand can hold.
            with trio.fail_after(30):
                for i in range(200):
                    room.text.insert(0, f"{i:04d}" + "x" * 64000)
                    await room.flushed()
                    if engine.statistics()["sessions"] == 1:
                        break
                    assert engine.statistics()["queued_bytes"] <= outbox + 64 * 1024
            await wait_until(lambda: engine.statistics()["sessions"] == 1, "the slow reader's session ended")
            room.text.insert(0, "still here")
            await room.flushed()
        slow_closed = trio.Event()

        async def drain() -> None:
            await slow.read_to_eof()
            slow_closed.set()

        # Its connection is dropped (the server wrote what it could, then hung up): reading
        # what is left ends at EOF.
        with trio.fail_after(15):
            await drain()
        assert all(isinstance(c, CloseConnection) for c in slow.closes)
        assert closes.codes[0] == str(CloseCode.TOO_SLOW)



@pytest.mark.slow
async def test_an_event_stream_that_stops_reading_is_closed_too_slow_and_the_room_goes_on() -> None:
    outbox = 256 * 1024
    closes = Closes()
    async with collab(outbox_max_bytes=outbox, resume_bytes=outbox, metrics=closes) as (engine, port):
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        await sock.send(b"GET /collab/v1/events?room=busy HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        async with connect(f"ws://127.0.0.1:{port}/collab/") as client, client.join("busy") as room:
            await room.synced()
            await wait_until(lambda: engine.statistics()["sessions"] == 2, "the stream's session is in")
            with trio.fail_after(30):
                for i in range(400):  # far more than the stream's socket and outbox can hold
                    room.text.insert(0, f"{i:04d}" + "x" * 64000)
                    await room.flushed()
                    if str(CloseCode.TOO_SLOW) in closes.codes:
                        break
            assert closes.codes == [str(CloseCode.TOO_SLOW)]
            room.text.insert(0, "still here")
            await room.flushed()
        sock.close()  # the client goes at last: nothing of it is left
        await wait_until(lambda: engine.statistics()["sessions"] == 0, "every session ended")


# -- shutdown -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_shutdown_says_going_away_to_sessions_and_stores_every_acked_edit() -> None:
    store = MemoryStore()
    engine = Engine(store=store)
    peer: Peer | None = None
    async with hypercorn(mounted(PlaitApp(engine))) as port:
        async with connect(f"ws://127.0.0.1:{port}/collab/") as client, client.join("kept") as room:
            await room.synced()
            room.text.insert(0, "acked before the shutdown")
            await room.flushed()
        peer = await Peer.connect(port, "/collab/")
        await peer.send(raw_frame(2, encode(Hello((1,), None, {}))))
        await peer.send(raw_frame(2, encode(Join(1, "kept", None, None))))
        with trio.fail_after(5):
            while len(peer.messages) < 2:
                await peer.read_one()
    assert peer is not None
    await peer.read_to_eof()
    assert [c.code for c in peer.closes] == [CloseCode.GOING_AWAY]
    async with Engine(store=store) as again, again.room("kept") as handle:
        assert str(handle.doc.get("text", type=pycrdt.Text)) == "acked before the shutdown"


async def upgrade_status(port: int, target: str, origin: str | None = None) -> tuple[int, trio.SocketStream]:
    """Send a WebSocket upgrade; the answer's status (101: opened) and the open socket."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    origin_line = f"Origin: {origin}\r\n" if origin else ""
    await stream.send_all(
        (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{origin_line}\r\n").encode()
    )
    head = b""
    with trio.fail_after(5):
        while b"\r\n" not in head:
            chunk = await stream.receive_some(4096)
            assert chunk, head
            head += chunk
    return int(head.split(b" ", 2)[1]), stream


@pytest.mark.slow
async def test_the_mount_checks_a_pages_origin_and_the_connections_per_address_as_the_port_does() -> None:
    async with collab(allow_origins=("https://app.example.com",), max_connections_per_ip=2) as (engine, port):
        for target in ("/collab/", "/collab/yjs/notes"):
            status, stream = await upgrade_status(port, target, "https://evil.example")
            assert status == 403, target  # cross-site WebSocket hijacking (spec §2)
            await stream.aclose()
        held = []
        for origin in ("https://app.example.com", None):
            status, stream = await upgrade_status(port, "/collab/", origin)
            assert status == 101
            held.append(stream)
        status, third = await upgrade_status(port, "/collab/")
        assert status == 429  # two from this address already
        await third.aclose()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert (await http.post("/collab/v1/sessions")).status_code == 429  # HTTP sessions count too
            for stream in held:
                await stream.aclose()
            await wait_until(lambda: not engine.sessions(), "the two sessions ended")
            assert (await http.post("/collab/v1/sessions")).status_code == 201  # their places came back


@pytest.mark.slow
async def test_a_websocket_under_the_mounts_v1_is_refused() -> None:
    async with collab() as (_engine, port):
        status, stream = await upgrade_status(port, "/collab/v1/sessions")
        assert status == 404
        await stream.aclose()
