"""A trio-websocket connection as an engine transport (for embedding with trio-websocket's
server; `plait serve` uses engine/transports/_websocket.py)."""

from __future__ import annotations

import trio
import trio_websocket

from plait.protocol import ABNORMAL_CLOSURE, CloseCode, TransportClosed


class WebSocketTransport:
    """A trio-websocket connection, either side."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, path: str = "/") -> None:
        self.ws = ws
        self.path = path

    async def send_message(self, data: bytes | str) -> None:
        try:
            await self.ws.send_message(data)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def receive_message(self) -> bytes | str:
        try:
            return await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def ping(self) -> None:
        try:
            await self.ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from None

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        try:
            await self.ws.aclose(code, reason)
        finally:
            # After an abnormal closure trio-websocket's aclose returns early without closing
            # the socket; close it so a dropped client never leaks a file descriptor.
            stream = getattr(self.ws, "_stream", None)
            if stream is not None:
                await trio.aclose_forcefully(stream)


def _closed(exc: trio_websocket.ConnectionClosed) -> TransportClosed:
    reason = exc.reason
    if reason is None:
        return TransportClosed(ABNORMAL_CLOSURE)
    return TransportClosed(reason.code, reason.reason or "")
