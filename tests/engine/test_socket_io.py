"""The socket calls that read and write without waiting (engine/transports/_base.py), on a real
socket pair: what each returns when there is data, none yet, the end of the stream, or a reset."""

from __future__ import annotations

import errno
import socket

import pytest
import trio

from plait.engine.transports._base import read_now, write_now


async def test_read_now_returns_what_arrived_none_before_and_empty_at_the_end() -> None:
    a, b = trio.socket.socketpair()
    with a, b:
        assert read_now(a, 1024) is None  # nothing yet: no wait, no error
        assert write_now(b, b"hello") == 5
        await trio.lowlevel.wait_readable(a)
        assert read_now(a, 3) == b"hel"  # at most max_bytes
        assert read_now(a, 1024) == b"lo"
        b.shutdown(socket.SHUT_WR)
        await trio.lowlevel.wait_readable(a)
        assert read_now(a, 1024) == b""


async def test_read_now_on_a_reset_connection_raises_oserror() -> None:
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
        with server:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()
            await trio.lowlevel.wait_readable(server)
            with pytest.raises(ConnectionResetError):
                read_now(server, 1024)


async def test_a_closed_socket_is_never_read_by_its_old_descriptor() -> None:
    a, b = trio.socket.socketpair()
    with b:
        a.close()
        with pytest.raises(OSError, match="Bad file descriptor") as raised:  # never a reused descriptor
            read_now(a, 1024)
        assert raised.value.errno == errno.EBADF
