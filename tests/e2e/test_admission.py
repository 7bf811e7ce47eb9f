"""Who may connect, over real sockets on 127.0.0.1: the origin of a browser's WebSocket upgrade
(spec §2, §13), the connections one address may hold (max_connections_per_ip: WebSockets and
HTTP sessions together, spec §2, §14.1) and the sessions one user may hold
(max_connections_per_user, spec §5.1).

Rules: every client is 127.0.0.1, so the per-address limit counts all of a test's connections.
A freed place is seen by connecting again until it works, within a deadline: the server gives
the place back when it has finished with the connection, a moment after the client has.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, RejectConnection, RejectData, Request

from plait.client import Backoff, connect
from plait.engine import Engine, EngineConfig
from plait.engine.testing import TokenHooks
from plait.protocol import CloseCode, Error, ErrorCode, Hello, Welcome, decode, encode

from .httpclients import http_client
from .serveprocess import plait_serve

pytestmark = pytest.mark.slow


@asynccontextmanager
async def serving(**settings: object) -> AsyncIterator[tuple[Engine, int]]:
    config = EngineConfig(handshake_timeout=1, http_session_grace=1, **settings)  # type: ignore[arg-type]
    async with Engine(config=config, hooks=TokenHooks()) as engine, trio.open_nursery() as nursery:
        yield engine, await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        nursery.cancel_scope.cancel()


async def upgrade(port: int, target: str = "/", headers: list[tuple[str, str]] | None = None,
                  host: str | None = None) -> tuple[int, dict[str, str], str, trio.SocketStream, WSConnection]:
    """A WebSocket upgrade request with `headers`: (status, headers, body, the socket, the
    client's protocol state). The socket stays open after a 101."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host or f"127.0.0.1:{port}", target=target, extra_headers=headers or [])))
    body = b""
    with trio.fail_after(5):
        while True:
            data = await stream.receive_some(65536)
            assert data, "the server hung up without an answer"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return 101, {}, "", stream, ws
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    answer = {k.decode().lower(): v.decode() for k, v in event.headers}
                    if not event.has_body:
                        await stream.aclose()
                        return status, answer, "", stream, ws
                if isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        await stream.aclose()
                        return status, answer, body.decode(), stream, ws


async def status_of_upgrade(
    port: int, target: str = "/", headers: list[tuple[str, str]] | None = None, host: str | None = None
) -> tuple[int, str]:
    status, _, body, stream, _ = await upgrade(port, target, headers, host)
    await stream.aclose()
    return status, body


async def hello(stream: trio.SocketStream, ws: WSConnection, token: str | None = None) -> object:
    """Say hello on an open WebSocket: the first frame the server answers with."""
    await stream.send_all(ws.send(Message(data=encode(Hello((1,), token, {})))))
    with trio.fail_after(5):
        while True:
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    return decode(bytes(event.data))[0]
            data = await stream.receive_some(65536)
            assert data, "closed without an answer"
            ws.receive_data(data)


# -- origins -------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/", "/yjs/notes"])
async def test_a_page_of_another_site_cannot_open_a_websocket(target: str) -> None:
    async with serving(allow_origins=("https://app.example.com",)) as (_, port):
        status, body = await status_of_upgrade(port, target, [("Origin", "https://evil.example")])
        assert status == 403
        assert "pages from https://evil.example may not open a WebSocket" in body and "--allow-origin" in body
        # The same origin with another port or scheme-less is another origin too.
        status, _ = await status_of_upgrade(port, target, [("Origin", "https://app.example.com:8443")])
        assert status == 403
        status, _ = await status_of_upgrade(port, target, [("Origin", "null")])  # a sandboxed frame, a file
        assert status == 403
        # Hostile: a huge origin is refused with a short reason; one that names the host in
        # another scheme, or only as a prefix, is not the server's own.
        status, body = await status_of_upgrade(port, target, [("Origin", "https://" + "a" * 8000)])
        assert status == 403 and len(body) < 400
        for fake in (f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}.evil.example", "http://127.0.0.1"):
            assert (await status_of_upgrade(port, target, [("Origin", fake)]))[0] == 403, fake


@pytest.mark.parametrize("target", ["/", "/yjs/notes"])
async def test_the_servers_own_pages_allowed_origins_and_clients_without_origin_connect(target: str) -> None:
    async with serving(allow_origins=("https://app.example.com",)) as (_, port):
        own = f"http://127.0.0.1:{port}"
        assert (await status_of_upgrade(port, target, [("Origin", own)]))[0] == 101
        assert (await status_of_upgrade(port, target, [("Origin", "https://APP.example.com")]))[0] == 101
        assert (await status_of_upgrade(port, target, []))[0] == 101
        # Behind a proxy that rewrote Host: the page's origin is the host the proxy was asked for.
        forwarded = [("Origin", "https://collab.example.org"), ("X-Forwarded-Host", "collab.example.org")]
        assert (await status_of_upgrade(port, target, forwarded, host="127.0.0.1:1"))[0] == 101
    async with serving(allow_origins=("*",)) as (_, port):
        assert (await status_of_upgrade(port, target, [("Origin", "https://anyone.example")]))[0] == 101


async def test_the_python_client_and_a_refused_origin_leave_the_server_serving() -> None:
    async with serving() as (_, port):
        assert (await status_of_upgrade(port, "/", [("Origin", "https://evil.example")]))[0] == 403
        async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("r") as room:
            await room.synced()


# -- connections per address ---------------------------------------------------------------------


async def test_past_its_connections_an_address_gets_429_and_a_closed_one_frees_its_place() -> None:
    async with serving(max_connections_per_ip=2) as (_, port), http_client(port) as http:
        a_status, _, _, a, a_ws = await upgrade(port)
        b_status, _, _, b, _ = await upgrade(port, "/yjs/notes")
        assert (a_status, b_status) == (101, 101)
        assert isinstance(await hello(a, a_ws), Welcome)

        status, headers, body, _, _ = await upgrade(port)
        assert status == 429 and headers["retry-after"] == "10"
        assert "2 connections from 127.0.0.1 are open already" in body
        response = await http.post("/v1/sessions")  # an HTTP session counts with them
        assert response.status_code == 429 and response.headers["retry-after"] == "10"
        assert "max_connections_per_ip" in response.json()["error"]

        await a.send_all(a_ws.send(CloseConnection(code=1000)))
        await a.aclose()
        await until_upgrade_succeeds(port)
        await b.aclose()


async def until_upgrade_succeeds(port: int, target: str = "/") -> None:
    with trio.fail_after(5):
        while (await status_of_upgrade(port, target))[0] != 101:
            await trio.sleep(0.02)


async def test_http_sessions_hold_a_place_until_they_end_however_they_end() -> None:
    async with serving(max_connections_per_ip=1) as (engine, port), http_client(port) as http:
        response = await http.post("/v1/sessions")
        assert response.status_code == 201
        session = response.json()
        assert (await status_of_upgrade(port))[0] == 429
        assert (await http.post("/v1/sessions")).status_code == 429
        # Deleted: its place is free.
        assert (await http.delete(f"/v1/sessions/{session['session']}?key={session['key']}")).status_code == 200
        await until_upgrade_succeeds(port)
        # Refused in its handshake (a bad token): it held a place only while it ran.
        for _ in range(3):
            assert (await http.post("/v1/sessions", headers={"Authorization": "Bearer bad"})).status_code == 401
        # Ended by its grace (nobody streams or polls it): free again.
        assert (await http.post("/v1/sessions")).status_code == 201
        with trio.fail_after(engine.config.http_session_grace + 5):
            while (response := await http.post("/v1/sessions")).status_code != 201:
                assert response.status_code == 429
                await trio.sleep(0.05)
        assert engine._per_ip.count("127.0.0.1") == 1


async def test_aborted_handshakes_do_not_keep_a_place() -> None:
    async with serving(max_connections_per_ip=1) as (engine, port):
        # Half an upgrade request, then gone.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        await stream.aclose()
        # A whole upgrade request, gone before the answer.
        for _ in range(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send_all(ws.send(Request(host="x", target="/")))
            await stream.aclose()
        # An upgrade websockets refuses (no Sec-WebSocket-Key).
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        with trio.fail_after(5):
            assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 400")
        await stream.aclose()
        # Open, then garbage instead of hello; open, then silence until the handshake timeout.
        status, _, _, stream, ws = await upgrade(port)
        assert status == 101
        await stream.send_all(b"\xff" * 10)
        assert await close_code(stream, ws) in (1002, None)
        await until_upgrade_succeeds(port)
        status, _, _, stream, ws = await upgrade(port)
        assert status == 101
        with trio.fail_after(engine.config.handshake_timeout + 5):
            while await stream.receive_some(65536):
                pass
        await stream.aclose()
        await until_upgrade_succeeds(port)
        with trio.fail_after(5):
            while len(engine._per_ip):  # the last check's connection, just closed
                await trio.sleep(0.02)


async def test_many_connect_disconnect_cycles_leave_the_count_exact() -> None:
    async with serving(max_connections_per_ip=3) as (engine, port):
        for round in range(20):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(one_session, port)
            # All three closed: the count goes back to 0, never below, never stuck.
            with trio.fail_after(5):
                while len(engine._per_ip):
                    await trio.sleep(0.01)
            assert engine._per_ip.count("127.0.0.1") == 0, round


async def one_session(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send_message(encode(Hello((1,), None, {})))
        assert isinstance(decode(await ws.get_message())[0], Welcome)


# -- sessions per user ---------------------------------------------------------------------------


async def test_past_its_sessions_a_user_is_refused_on_every_endpoint_and_retries_when_one_ends() -> None:
    async with serving(max_connections_per_user=2) as (_, port), http_client(port) as http:
        held = []
        for _ in range(2):
            status, _, _, stream, ws = await upgrade(port)
            assert status == 101 and isinstance(await hello(stream, ws, "ada"), Welcome)
            held.append((stream, ws))
        # The third: the error, then close 4014 (retry with backoff).
        status, _, _, stream, ws = await upgrade(port)
        await stream.send_all(ws.send(Message(data=encode(Hello((1,), "ada", {})))))
        frames, code = await until_closed(stream, ws)
        assert len(frames) == 1 and isinstance(frames[0], Error) and frames[0].code == ErrorCode.TOO_MANY_CONNECTIONS
        assert code == CloseCode.TOO_MANY_CONNECTIONS == 4014
        assert CloseCode.TOO_MANY_CONNECTIONS.retryable
        # y-websocket: the close says it.
        status, _, _, stream, ws = await upgrade(port, "/yjs/notes?token=ada")
        assert status == 101 and await close_code(stream, ws) == 4014
        # HTTP: 429 with the code.
        response = await http.post("/v1/sessions", headers={"Authorization": "Bearer ada"})
        assert response.status_code == 429 and response.json()["code"] == ErrorCode.TOO_MANY_CONNECTIONS
        # Another user is not counted with ada.
        status, _, _, stream, ws = await upgrade(port)
        assert isinstance(await hello(stream, ws, "bob"), Welcome)
        await stream.aclose()

        # The Python client retries 4014 with backoff, and gets in once one of ada's ends.
        async with connect(f"ws://127.0.0.1:{port}/", "ada", backoff=Backoff(base=0.05, cap=0.2)) as client:
            first, first_ws = held.pop()
            await first.send_all(first_ws.send(CloseConnection(code=1000)))
            await first.aclose()
            with trio.fail_after(10):
                async with client.join("r") as room:
                    await room.synced()
        for stream, _ in held:
            await stream.aclose()


async def close_code(stream: trio.SocketStream, ws: WSConnection) -> int | None:
    return (await until_closed(stream, ws))[1]


async def until_closed(stream: trio.SocketStream, ws: WSConnection) -> tuple[list[object], int | None]:
    """What the server sends until it closes: its frames and its close code; closes `stream`."""
    frames: list[object] = []
    with trio.fail_after(5):
        while True:
            # What came with the upgrade's answer first: a refusal may be in the same packet.
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    frames += decode(bytes(event.data))
                if isinstance(event, CloseConnection):
                    await stream.aclose()
                    return frames, event.code
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
    await stream.aclose()
    return frames, None


# -- the same, configured as a user would: a plait serve process with a config file ---------------


async def test_plait_serve_applies_its_config_file_and_environment(tmp_path: Path) -> None:
    (tmp_path / "plait.toml").write_text(
        'store = "memory"\nallow_origin = ["https://app.example.com"]\nmax_connections_per_ip = 2\nport = 1\n'
    )
    # the variable wins over the file
    async with plait_serve("--config", "plait.toml", cwd=tmp_path, env={"PLAIT_PORT": "0"}, stop=signal.SIGTERM) as served:
        port = served.port
        a_status, _, _, a, _ = await upgrade(port)
        b_status, _, _, b, _ = await upgrade(port)
        assert (a_status, b_status) == (101, 101)
        assert (await status_of_upgrade(port))[0] == 429
        assert (await status_of_upgrade(port, "/yjs/r", [("Origin", "https://evil.example")]))[0] == 403
        await a.aclose()
        await b.aclose()
        with trio.fail_after(5):
            while (await status_of_upgrade(port, "/", [("Origin", "https://app.example.com")]))[0] != 101:
                await trio.sleep(0.02)



async def test_the_python_client_takes_a_429_upgrade_as_a_reason_to_retry_and_gets_in_when_a_place_frees() -> None:
    """A refused upgrade is an attempt that failed, never the client's end: trio-websocket
    raises it from its reader task, which ran in the client's own nursery (it ended the client)."""
    async with serving(max_connections_per_ip=1) as (_engine, port):
        url = f"ws://127.0.0.1:{port}/"
        async with connect(url) as first:
            async with first.join("r") as room:
                await room.synced()
            async with connect(url, backoff=Backoff(base=0.05, cap=0.1)) as second:
                changes = second.changes()
                with trio.fail_after(10):
                    change = await anext(changes)
                    while change.state != "reconnecting":
                        change = await anext(changes)
                assert "HTTP 429" in str(change.error)
                await first.aclose()
                with trio.fail_after(10):
                    await second.wait_state("open")


async def test_a_websocket_under_v1_is_refused_not_served_the_event_stream_wire() -> None:
    async with serving() as (_engine, port):
        for target in ("/v1/", "/v1/sessions", "/v1/events?room=r"):
            status, _headers, body, stream, _ws = await upgrade(port, target)
            assert status == 404 and "/v1/" in body, (target, status, body)
            await stream.aclose()


async def test_plait_serve_keeps_answering_503_while_it_drains(tmp_path: Path) -> None:
    """A load balancer sees /readyz go 503 and takes the node out, while sessions close and
    rooms are stored; the port closes after (it closed at once, so nothing could drain)."""
    import httpx

    async with plait_serve("--port", "0", "--store", "memory") as served:
        status, _headers, _body, lingering, _ws = await upgrade(served.port)  # never answers a close: 2 s to drain
        assert status == 101
        # A new connection for every probe, as a load balancer's health check makes.
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}", timeout=5, limits=fresh) as http:
            assert (await http.get("/readyz")).status_code == 200
            served.process.send_signal(signal.SIGINT)
            seen = []
            with trio.fail_after(10):
                while 503 not in seen:
                    try:
                        seen.append((await http.get("/readyz")).status_code)
                    except httpx.TransportError:
                        seen.append(-1)  # the port closed
                        break
                    await trio.sleep(0.02)
        assert 503 in seen and -1 not in seen, seen
        await lingering.aclose()
        with trio.fail_after(30):
            assert await served.process.wait() == 0  # and then it stops, gracefully
