"""What the engine asks of a transport, beyond the message transport both sides share
(`plait.protocol.Transport`): where it was opened, and two optional capabilities."""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import trio

from plait.protocol import Frame
from plait.protocol import Transport as MessageTransport


class Transport(MessageTransport, Protocol):
    """A server-side connection."""

    path: str
    """The request target it was opened with (`/`, `/yjs/ROOM?token=...`): recorded in
    traces, and what routes it to a protocol."""


@runtime_checkable
class PingTransport(Transport, Protocol):
    """A transport with a transport-level ping (WebSocket ping/pong): how the engine knows a
    y-websocket client, which sends no heartbeats, is still there (spec §13)."""

    async def ping(self) -> None:
        """Return once the peer answered.

        A transport may also count the bytes it has written so far as `sent_bytes` (an int)
        and say whether bytes still wait for the socket as `writing` (a bool): a pong comes
        after everything written before its ping, so while a write is under way and that
        count grows, a peer that has not answered yet is reading, only slowly, and is not
        dropped for it. Every transport may count `sent_bytes`: a large message's sending
        time then counts as lag only while the count stands still (Peer._check_lag); and a
        transport that writes a binary message of `uncopied_bytes` (an int) or more without
        copying it says so, so that sending it takes none of the engine's large-send slots."""
        ...


@runtime_checkable
class NowaitTransport(Transport, Protocol):
    """A transport that can also send without waiting (the server's WebSocket endpoint). A
    busy room's fan-out then writes to every socket from one task instead of waking a writer
    task per connection (Flusher.flush_soon)."""

    def send_message_nowait(self, data: bytes | str) -> bool:
        """Send `data` in order, now as far as the peer takes it; False when part of it waits
        for `flush()`. Raises TransportClosed like send_message."""
        ...

    async def flush(self) -> None:
        """Write what send_message_nowait left waiting."""
        ...


@runtime_checkable
class TextBytesTransport(Transport, Protocol):
    """A transport that can send UTF-8 bytes as a text message (the server's WebSocket
    endpoint): a JSON session's messages then go as the bytes its frames were encoded to, not
    decoded into a str for the transport to encode again (two copies of each message, a large
    document's per session)."""

    def send_bytes_as_text(self) -> None:
        """From now on send every bytes message as a text message; its bytes are UTF-8."""
        ...


@runtime_checkable
class AnsweringTransport(Transport, Protocol):
    """A transport whose requests wait for their answers (HTTP, spec §14.3): the session
    shows it each answer it sends (an ack, an error or `joined` with a ref), and whether it
    answers a join (joins are answered in their own order, spec §4.1)."""

    def answered(self, frame: Frame, *, join: bool) -> None: ...


def read_now(socket: trio.socket.SocketType, max_bytes: int) -> bytes | None:
    """Read what the socket holds now, up to `max_bytes`, without waiting: b"" at the end of
    the stream, None if nothing has arrived. Called after `trio.lowlevel.wait_readable`, it
    reads what woke the task without `receive_some`'s second checkpoint (a pass through Trio's
    scheduler per message: a tenth of an idle server's time, bench/idle.py).

    Raises:
        OSError: the connection is gone (reset).
    """
    try:
        return os.read(socket.fileno(), max_bytes)  # the descriptor looked up as in write_now
    except BlockingIOError:
        return None


def write_now(socket: trio.socket.SocketType, data: bytes) -> int:
    """Write what of `data` the socket takes now, without waiting (a fan-out writes to many
    sockets from one task); the bytes written, 0 if none.

    Raises:
        OSError: the connection is gone.
    """
    try:
        # The descriptor is looked up at each write: once the socket is closed it is -1
        # (EBADF), never a number the kernel has since given to another connection.
        return os.write(socket.fileno(), data)
    except BlockingIOError:
        return 0
