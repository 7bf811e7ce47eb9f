"""An event stream's socket (spec §14.2), as the HTTP transport's sink: each message is
written as it is sent, without waiting and with no task woken, as the WebSocket's writes are;
a task of its own writes only what the socket did not take at once, and a comment line when
the stream has been quiet for a heartbeat interval."""

from __future__ import annotations

import trio

from ..transports import HttpTransport, write_now
from ._exchange import Exchange

HEARTBEAT = b":\n\n"


class EventStreamSink:
    """Writes (position, message) pairs as SSE events: `id:` then the message, then the
    blank line that ends the event (`Sink`)."""

    def __init__(self, ex: Exchange, id_prefix: bytes) -> None:
        self._ex = ex
        self._prefix = id_prefix
        self._socket = ex.socket
        self._pending: list[bytes] = []
        self._sending = False
        self._woken = trio.Event()
        self._lost = False

    def events(self, entries: list[tuple[int, bytes]]) -> bytes:
        prefix = self._prefix
        if len(entries) == 1:  # the fan-out's case: one frame at a time
            ((pos, data),) = entries
            return self._ex.chunk(b"%s%d\n%s\n" % (prefix, pos, data))
        return self._ex.chunk(b"".join(b"%s%d\n%s\n" % (prefix, pos, data) for pos, data in entries))

    def write_nowait(self, entries: list[tuple[int, bytes]]) -> bool:
        data = self.events(entries)
        if self._pending or self._sending or self._socket is None or self._lost:
            self._pending.append(data)
            self.wake()
            return False
        try:
            written = write_now(self._socket, data)
        except OSError:
            self._lost = True  # what was taken stays kept: the client resumes with Last-Event-ID
            self.wake()
            return False
        if written < len(data):
            self._pending.append(data[written:])
            self.wake()
            return False
        return True

    def wake(self) -> None:
        self._woken.set()

    async def send(self, data: bytes) -> None:
        """Write `data` after what is kept, waiting for the socket."""
        self._sending = True
        try:
            await self._ex.send(data)
        finally:
            self._sending = False

    async def run(self, transport: HttpTransport, consumer: int, heartbeat: float) -> None:
        """Write what the socket did not take at once, and a comment when quiet for
        `heartbeat` seconds, until the session ends or another consumer replaces this one.

        Raises:
            trio.BrokenResourceError: the client went away.
        """
        while True:
            if self._pending:
                data = b"".join(self._pending)
                self._pending.clear()
                await self.send(data)
                transport.sink_drained()  # what came meanwhile
                continue
            if self._lost:
                raise trio.BrokenResourceError("the event stream's socket failed")
            if transport.consumer != consumer or transport.closed is not None:
                return
            with trio.move_on_after(heartbeat) as quiet:
                await self._woken.wait()
            self._woken = trio.Event()
            if quiet.cancelled_caught:
                await self.send(self._ex.chunk(HEARTBEAT))  # proxies keep a stream that talks
                transport.trim()
