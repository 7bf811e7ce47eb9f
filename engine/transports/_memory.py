"""In-memory transports: a connection's two ends joined by bounded buffers, like a socket's.
Tests and traces run the engine over them (engine/testing.py)."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from plait.protocol import ABNORMAL_CLOSURE, CloseCode, TransportClosed


@dataclass
class _Direction:
    close_code: int | None = None
    close_reason: str = ""


class MemoryTransport:
    """One end of an in-memory connection, with a bounded buffer each way like a socket's."""

    def __init__(
        self,
        send: trio.MemorySendChannel[bytes | str],
        receive: trio.MemoryReceiveChannel[bytes | str],
        outgoing: _Direction,
        incoming: _Direction,
        path: str,
    ) -> None:
        self._send, self._receive = send, receive
        self._outgoing, self._incoming = outgoing, incoming
        self.path = path
        self.sent_bytes = 0  # PingTransport: counted per message sent
        self._unsent: list[bytes | str] = []
        self._sending = trio.StrictFIFOLock()

    async def send_message(self, data: bytes | str) -> None:
        """Send `data` after what earlier sends left unsent. A send cancelled while the
        buffer is full leaves its message to go first with the next send, as a WebSocket's
        socket keeps the rest of a message begun (the goodbye after a writer is given up)."""
        if self._outgoing.close_code is not None:
            raise TransportClosed(self._outgoing.close_code, self._outgoing.close_reason)
        async with self._sending:  # one sender at a time: the unsent go once, in order
            self._unsent.append(data)
            try:
                while self._unsent:
                    await self._send.send(self._unsent[0])
                    self.sent_bytes += len(self._unsent.pop(0))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._closed_by_peer() from None

    async def receive_message(self) -> bytes | str:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed_by_peer() from None

    async def ping(self) -> None:
        if self._outgoing.close_code is not None:
            raise TransportClosed(self._outgoing.close_code, self._outgoing.close_reason)
        await trio.lowlevel.checkpoint()

    def _closed_by_peer(self) -> TransportClosed:
        for side in (self._incoming, self._outgoing):
            if side.close_code is not None:
                return TransportClosed(side.close_code, side.close_reason)
        return TransportClosed(ABNORMAL_CLOSURE)

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self._outgoing.close_code is None:
            self._outgoing.close_code, self._outgoing.close_reason = code, reason
        # The peer drains what was sent, then sees the close, as with a WebSocket close frame.
        await self._send.aclose()
        await self._receive.aclose()
        await trio.lowlevel.checkpoint()


def memory_transport_pair(path: str = "/", buffer: int = 16) -> tuple[MemoryTransport, MemoryTransport]:
    """(client end, server end) of one in-memory connection."""
    c2s_send, c2s_receive = trio.open_memory_channel[bytes | str](buffer)
    s2c_send, s2c_receive = trio.open_memory_channel[bytes | str](buffer)
    c2s, s2c = _Direction(), _Direction()
    client = MemoryTransport(c2s_send, s2c_receive, outgoing=c2s, incoming=s2c, path=path)
    server = MemoryTransport(s2c_send, c2s_receive, outgoing=s2c, incoming=c2s, path=path)
    return client, server
