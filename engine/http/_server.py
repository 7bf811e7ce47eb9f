"""One TCP connection on the engine's port: its HTTP request, then what serves it.

The request is parsed by h11. A WebSocket upgrade, on any path, is handed to `websockets`'
sans-I/O protocol for its handshake (the path then picks the protocol: engine.serve_transport),
and the WebSocket runs in engine/transports/_websocket.py. Any other request gets an HTTP
status with a reason in its body, and the connection closes:

- `/` and `/yjs/ROOM` without an upgrade: 426 Upgrade Required (GET, HEAD) or 405;
- any other path: 404;
- a request h11 cannot parse: 400 (431 for headers over 16 KiB);
- while the engine shuts down: 503;
- no complete request within the handshake timeout: 408.

HTTP transports (SSE, long-polling) and the server API will be routes here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.server import ServerProtocol

from plait.protocol import YJS_PATH

from ..transports._websocket import RECEIVE_BYTES, WebSocketStream

logger = logging.getLogger("plait.http")

MAX_HEADER_BYTES = 16 * 1024
"""A request's line and headers together; more is refused with 431."""
WEBSOCKET_PATHS = ("/", YJS_PATH)
"""The endpoints (spec §2): `/` for the native protocol, `/yjs/ROOM` for y-websocket. A
WebSocket upgrade is served on any path (every other path is native, behind a proxy that adds a
prefix, say); a plain request only on these."""

Handler = Callable[[WebSocketStream], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An HTTP answer that ends the connection."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


async def serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    accepting: Callable[[], bool],
    handshake_timeout: float,
    max_message_bytes: Callable[[str], int],
) -> None:
    """Run one TCP connection: its request, then `handler` with the WebSocket, or an HTTP
    refusal. The socket is closed when this returns, whatever happened. The request must
    arrive within `handshake_timeout` seconds."""
    try:
        # In a coroutine of its own: nothing of the request's handling (its cancel scope, say)
        # stays referenced by this frame for the life of the connection (bench/idle.py).
        upgraded = await _accept_in_time(stream, accepting, handshake_timeout, max_message_bytes)
        if upgraded is not None:
            await handler(upgraded)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _accept_in_time(
    stream: trio.abc.Stream, accepting: Callable[[], bool], handshake_timeout: float, max_message_bytes: Callable[[str], int]
) -> WebSocketStream | None:
    """`_accept` within the handshake timeout; past it, 408."""
    with trio.move_on_after(handshake_timeout):
        return await _accept(stream, accepting, max_message_bytes)
    with trio.move_on_after(1):
        await _refuse(stream, None, Refusal(408, f"no complete request within {handshake_timeout:g} s"))
    return None


async def _accept(
    stream: trio.abc.Stream, accepting: Callable[[], bool], max_message_bytes: Callable[[str], int]
) -> WebSocketStream | None:
    """Read the request; the WebSocket, or None (refused with an HTTP status, or not HTTP)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    received = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            await _refuse(stream, None, Refusal(status, f"bad request: {exc}"))
            return None
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(RECEIVE_BYTES))
            if not data:
                return None
            received += data
            conn.receive_data(data)
            continue
        if not isinstance(event, h11.Request):  # pragma: no cover - h11 gives a request first
            return None
        if len(received) > MAX_HEADER_BYTES and received.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES) < 0:
            # h11 bounds only what is still incomplete; a request read in one go is checked here.
            await _refuse(stream, event, Refusal(431, f"bad request: the request line and headers are over {MAX_HEADER_BYTES} bytes"))
            return None
        refusal = _route(event, accepting())
        if refusal is not None:
            await _refuse(stream, event, refusal)
            return None
        return await _upgrade(stream, bytes(received), max_message_bytes)


def _route(request: h11.Request, accepting: bool) -> Refusal | None:
    """None for a WebSocket upgrade to serve; else the refusal."""
    target = request.target.decode("ascii", "replace")
    path = target.partition("?")[0].partition("#")[0]
    websocket_path = path == WEBSOCKET_PATHS[0] or path.startswith(WEBSOCKET_PATHS[1])
    if _is_upgrade(request):
        if not accepting:
            return Refusal(503, "the server is shutting down; connect to another, or again shortly", (("Retry-After", "5"),))
        return None  # native on any path but /yjs/... (engine.serve_transport)
    if not websocket_path:
        return Refusal(404, f"nothing is served at {path[:200]} over plain HTTP; Plait's WebSocket endpoints are / and /yjs/ROOM")
    if request.method not in (b"GET", b"HEAD"):
        method = request.method.decode("ascii", "replace")
        return Refusal(405, f"{method} is not served here: open a WebSocket with GET", (("Allow", "GET"),))
    what = "Plait's y-websocket endpoint (spec §13)" if path != "/" else "Plait's WebSocket endpoint (spec/protocol.md)"
    return Refusal(426, f"this is {what}: connect with a WebSocket client", (("Upgrade", "websocket"),))


def _is_upgrade(request: h11.Request) -> bool:
    upgrade = connection = False
    for name, value in request.headers:
        tokens = {t.strip() for t in value.lower().split(b",")}
        if name == b"upgrade" and b"websocket" in tokens:
            upgrade = True
        elif name == b"connection" and b"upgrade" in tokens:
            connection = True
    return upgrade and connection


async def _refuse(stream: trio.abc.Stream, request: h11.Request | None, refusal: Refusal) -> None:
    """Answer with the refusal and its reason (no body for HEAD). Written out here rather
    than through h11, which will not answer a request it could not parse."""
    logger.info("refused a request: %d %s", refusal.status, refusal.reason)
    body = (refusal.reason + "\n").encode()
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *refusal.headers,
    ]
    head = f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    data = head.encode("latin-1") + (b"" if request is not None and request.method == b"HEAD" else body)
    await stream.send_all(data)


async def _upgrade(stream: trio.abc.Stream, request_bytes: bytes, max_message_bytes: Callable[[str], int]) -> WebSocketStream | None:
    """The WebSocket opening handshake, by `websockets` from the request's own bytes (and any
    frames the client sent right behind it)."""
    ws = ServerProtocol(max_size=max_message_bytes("/"))
    ws.receive_data(request_bytes)
    events = ws.events_received()
    if not events or not isinstance(request := events[0], Request):
        logger.info("refused a connection: %s", ws.handshake_exc)
        await stream.send_all(b"".join(ws.data_to_send()))
        return None
    response = ws.accept(request)
    ws.send_response(response)
    await stream.send_all(b"".join(ws.data_to_send()))
    if response.status_code != 101:
        logger.info("refused a connection: %s %s", response.status_code, ws.handshake_exc or "")
        return None
    # Read by the parser at every frame (websockets ≥ 15 names it max_message_size).
    ws.max_message_size = ws.max_size = max_message_bytes(request.path)  # type: ignore[attr-defined]
    # The suspended parser keeps the request alive for the life of the connection; its
    # headers are a kilobyte and a half that nothing reads again.
    request.headers.clear()
    return WebSocketStream(stream, ws, request.path, [e for e in events[1:] if isinstance(e, Frame)])
