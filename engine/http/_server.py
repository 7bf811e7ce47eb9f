"""One TCP connection on the engine's port: its HTTP request, then what serves it. Today a
WebSocket upgrade (the WebSocket then runs in engine/transports/_websocket.py); any other
request is refused with an HTTP status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.server import ServerProtocol

from ..transports._websocket import RECEIVE_BYTES, WebSocketStream

logger = logging.getLogger("plait.http")


Handler = Callable[[WebSocketStream], Awaitable[None]]


async def serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    accepting: Callable[[], bool],
    handshake_timeout: float,
    max_message_bytes: Callable[[str], int],
) -> None:
    """Run one TCP connection: the HTTP upgrade, then `handler` with the WebSocket. The
    socket is closed when this returns, whatever happened."""
    try:
        upgraded = None
        with trio.move_on_after(handshake_timeout):
            upgraded = await _upgrade(stream, accepting, max_message_bytes)
        if upgraded is not None:
            await handler(upgraded)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _upgrade(
    stream: trio.abc.Stream, accepting: Callable[[], bool], max_message_bytes: Callable[[str], int]
) -> WebSocketStream | None:
    """The opening handshake: the WebSocket, or None (the request was refused with an HTTP
    status, or was not HTTP at all)."""
    ws = ServerProtocol(max_size=max_message_bytes("/"))
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            return None
        ws.receive_data(data)
        events = ws.events_received()
        if events and isinstance(request := events[0], Request):
            response = ws.accept(request) if accepting() else ws.reject(503, "shutting down\n")
            ws.send_response(response)
            await stream.send_all(b"".join(ws.data_to_send()))
            if response.status_code != 101:
                logger.info("refused a connection: %s %s", response.status_code, ws.handshake_exc or "")
                return None
            # Read by the parser at every frame (websockets ≥ 15 names it max_message_size).
            ws.max_message_size = ws.max_size = max_message_bytes(request.path)  # type: ignore[attr-defined]
            # The suspended parser keeps the request alive for the life of the connection;
            # its headers are a kilobyte and a half that nothing reads again.
            request.headers.clear()
            # Frames the client sent right behind its request are already parsed.
            return WebSocketStream(stream, ws, request.path, [e for e in events[1:] if isinstance(e, Frame)])
        if ws.handshake_exc is not None:  # not HTTP, or headers too large
            logger.info("refused a connection: %s", ws.handshake_exc)
            await stream.send_all(b"".join(ws.data_to_send()))
            return None
