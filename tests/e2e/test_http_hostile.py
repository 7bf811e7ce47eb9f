"""Hostile requests to the HTTP transports (spec §14) over raw sockets on 127.0.0.1: each gets
a 4xx with a reason, and the server keeps serving everyone else."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from plait.engine import EngineConfig
from plait.protocol import ErrorCode

from .httpclients import HttpPeer, http_client, serving

pytestmark = pytest.mark.slow

CONFIG = EngineConfig(handshake_timeout=0.5, max_message_bytes=4096, max_http_sessions=50)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async with serving(CONFIG) as port:
        yield port


@pytest.fixture
async def http(port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(port) as client:
        yield client


async def conversation(port: int, raw: bytes, then: bytes = b"") -> bytes:
    """Send `raw` (and `then`) on one connection; everything the server answers until it closes."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        if then:
            await stream.send_all(then)
        data = b""
        with trio.fail_after(5):
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:  # reset after the answer: it was read already
                pass
    return data


async def exchange(port: int, raw: bytes, *, then: bytes = b"") -> tuple[int, bytes]:
    """Send `raw` (and `then`), read until the server closes: (status, body)."""
    head, _, body = (await conversation(port, raw, then)).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def still_serves(http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open()
    response = await http.get(peer.url("poll") + "&after=0&timeout=1")
    assert response.json()["frames"][0]["kind"] == "welcome"


async def test_headers_too_large_are_431(port: int, http: httpx.AsyncClient) -> None:
    status, body = await exchange(port, b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
    assert status == 431 and b"16384" in body
    await still_serves(http)


async def test_a_body_over_max_message_bytes_is_413_before_it_is_read(port: int, http: httpx.AsyncClient) -> None:
    status, body = await exchange(port, b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
    assert status == 413 and json.loads(body)["status"] == 413
    head = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _ = await exchange(port, head + (b"1000\r\n" + b"x" * 4096 + b"\r\n") * 2)
    assert status == 413
    await still_serves(http)


async def test_slowloris_heads_and_bodies_get_408(port: int, http: httpx.AsyncClient) -> None:
    async def one_byte_a_tick(raw: bytes, at_once: bytes = b"") -> tuple[int, bytes]:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(at_once)
            data = b""
            with trio.fail_after(5):
                for i in range(len(raw)):
                    try:
                        await stream.send_all(raw[i : i + 1])
                    except trio.BrokenResourceError:
                        break
                    with trio.move_on_after(0.1):
                        data += await stream.receive_some(65536)
                    if data:
                        break
                while chunk := await stream.receive_some(65536):
                    data += chunk
        return int(data.split(b" ", 2)[1]), data

    status, _ = await one_byte_a_tick(b"GET /v1/events?room=r HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 20 + b"\r\n")
    assert status == 408
    status, data = await one_byte_a_tick(b"{" * 60, at_once=b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n\r\n")
    assert status == 408 and b"body" in data
    await still_serves(http)


async def test_a_chunked_body_that_never_ends_gets_408(port: int, http: httpx.AsyncClient) -> None:
    raw = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    status, _ = await exchange(port, raw)
    assert status == 408
    await still_serves(http)


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"{not json", ErrorCode.MALFORMED_FRAME), (b'{"kind":"nope"}', ErrorCode.UNKNOWN_KIND), (b"[]", ErrorCode.MALFORMED_FRAME),
     (b'{"kind":"ping","nonce":"x"}', ErrorCode.INVALID_FIELD), (b"\xff\xfe", ErrorCode.MALFORMED_FRAME),
     (b"[" * 100 + b"]" * 100, ErrorCode.MALFORMED_FRAME)],
)
async def test_frames_that_do_not_decode_are_400_and_the_session_lives_on(http: httpx.AsyncClient, body: bytes, code: int) -> None:
    peer = HttpPeer(http)
    await peer.open()
    response = await http.post(peer.url("frames"), content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == code, response.text
    response = await http.post(peer.url("frames"), content='{"kind":"ping","nonce":1}', headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    poll = await http.get(peer.url("poll") + "&after=1&timeout=2")
    assert [f["kind"] for f in poll.json()["frames"]] == ["pong"]


async def test_unknown_sessions_and_wrong_keys_are_refused(http: httpx.AsyncClient) -> None:
    mine, theirs = HttpPeer(http), HttpPeer(http)
    await mine.open("alice")
    await theirs.open("mallory")
    assert (await http.get("/v1/sessions/nope-1/poll?key=x")).status_code == 404
    for route in ("poll", "events", "frames"):
        method = "POST" if route == "frames" else "GET"
        response = await http.request(method, f"/v1/sessions/{mine.session}/{route}?key={theirs.key}", content=b'{"kind":"ping","nonce":1}')
        assert response.status_code == 403 and "key" in response.json()["error"], route
        response = await http.request(method, f"/v1/sessions/{mine.session}/{route}", content=b'{"kind":"ping","nonce":1}')
        assert response.status_code == 403, route
    assert (await http.delete(f"/v1/sessions/{mine.session}?key={theirs.key}")).status_code == 403
    assert (await http.get(mine.url("poll") + "&after=0&timeout=1")).json()["frames"][0]["kind"] == "welcome"  # untouched


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [("GET", "/v1/nothing", 404), ("PUT", "/v1/sessions", 405), ("GET", "/v1/sessions", 405), ("GET", "/v1/events", 400),
     ("GET", "/v1/events?" + "&".join(f"room={i}" for i in range(100)), 400),
     ("GET", "/v1/sessions/x/poll?after=-1", 404), ("POST", "/v1/sessions/x/y/z", 404)],
)
async def test_requests_that_make_no_sense_get_a_status_that_says_why(
    http: httpx.AsyncClient, method: str, target: str, status: int
) -> None:
    response = await http.request(method, target)
    assert response.status_code == status and response.json()["error"], response.text
    if status == 405:
        assert response.headers["allow"] in ("GET", "POST", "DELETE")


async def test_a_bad_poll_position_is_400(http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open()
    assert (await http.get(peer.url("poll") + "&after=-1")).status_code == 400
    assert (await http.get(peer.url("poll") + "&after=" + "9" * 40)).status_code == 400


async def test_a_body_of_another_content_type_is_415(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/sessions", content=b"<hello/>", headers={"Content-Type": "application/xml"})
    assert response.status_code == 415


async def test_a_hello_body_that_is_not_one_hello_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/sessions", content=b'{"kind":"ping","nonce":1}', headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == ErrorCode.UNEXPECTED_FRAME
    response = await http.post(
        "/v1/sessions", content=b'{"kind":"hello","versions":[9],"token":null,"client":{}}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and response.json()["code"] == ErrorCode.UNSUPPORTED_VERSION


async def test_a_flood_of_sessions_meets_a_limit_not_the_servers_memory(http: httpx.AsyncClient) -> None:
    statuses = [(await http.post("/v1/sessions")).status_code for _ in range(CONFIG.max_http_sessions + 5)]
    assert statuses.count(201) == CONFIG.max_http_sessions and statuses[-1] == 503


async def test_a_websocket_upgrade_after_other_requests_on_a_connection_is_400(port: int, http: httpx.AsyncClient) -> None:
    first = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    upgrade = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")
    data = await conversation(port, first + upgrade)
    assert data.startswith(b"HTTP/1.1 201") and b"HTTP/1.1 400" in data
    await still_serves(http)


@pytest.mark.parametrize(
    "target",
    ["/v1/events?room=" + "r" * 300, "/v1/events?room=a&token=" + "t" * 9000, "/v1/sessions?token=" + "t" * 9000],
)
async def test_a_room_name_or_token_too_long_in_the_query_is_400_not_500(port: int, target: str) -> None:
    method = b"POST" if target.startswith("/v1/sessions") else b"GET"
    status, body = await exchange(port, method + b" " + target.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert status == 400 and json.loads(body)["code"] == ErrorCode.INVALID_FIELD, body


async def test_a_request_whose_session_ends_before_answering_is_410_with_the_close_code(http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open()
    body = ('[{"kind":"hello","versions":[1],"token":null,"client":{}},'
            '{"kind":"join","ref":3,"room":"r","state_vector":null,"since":null,"epoch":null}]')
    response = await http.post(peer.url("frames"), content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 410 and response.json()["code"] == 4001, response.text  # a second hello is fatal (§6)


async def test_the_header_limit_holds_for_every_request_on_a_kept_alive_connection(port: int) -> None:
    first = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    second = b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nX-Junk: " + b"j" * 20_000 + b"\r\n\r\n"
    data = await conversation(port, first + second)
    assert data.startswith(b"HTTP/1.1 201") and b"HTTP/1.1 431" in data


@pytest.mark.parametrize("query", ["room=a%FFb", "room=a%ED%A0%80b", "room=a&token=t%FF"])
async def test_a_query_that_is_not_utf8_text_is_400(http: httpx.AsyncClient, query: str) -> None:
    response = await http.get("/v1/events?" + query)
    assert response.status_code == 400 and response.json()["code"] == ErrorCode.INVALID_FIELD
