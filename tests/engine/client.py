"""A raw protocol client for engine tests: frames in, frames out, over any transport.

It is deliberately thin (no reconnects, no document logic) so tests see exactly what the server
sends. Every wait is bounded by the test's deadline on Trio's clock.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pycrdt

from plait.engine import Transport, TransportClosed
from plait.protocol import (
    Connection,
    Frame,
    Hello,
    Join,
    Joined,
    Role,
    Welcome,
    decode,
    encode,
)

F = TypeVar("F", bound=Frame)


class RawClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.conn = Connection(Role.CLIENT)
        self.inbox: list[Frame] = []
        self.welcome: Welcome | None = None
        self.closed: TransportClosed | None = None
        self._ref = 0

    def next_ref(self) -> int:
        self._ref += 1
        return self._ref

    async def send(self, *frames: Frame) -> None:
        for frame in frames:
            self.conn.send(frame)
        await self.transport.send_message(encode(list(frames)))

    async def send_raw(self, data: bytes | str) -> None:
        await self.transport.send_message(data)  # type: ignore[arg-type]

    async def _fill(self) -> None:
        data = await self.transport.receive_message()
        assert isinstance(data, bytes)
        for frame in decode(data):
            self.inbox.append(frame)

    async def receive(self) -> Frame:
        while not self.inbox:
            await self._fill()
        frame = self.inbox.pop(0)
        self.conn.receive(frame)
        return frame

    async def expect(self, cls: type[F], **fields: Any) -> F:
        """The next frame, which must be a `cls` with these field values."""
        frame = await self.receive()
        assert isinstance(frame, cls), f"expected {cls.__name__}, got {frame!r}"
        for name, value in fields.items():
            assert getattr(frame, name) == value, f"{name}: {getattr(frame, name)!r} != {value!r} in {frame!r}"
        return frame

    async def wait_for(self, cls: type[F], limit: int = 1000) -> F:
        """Skip frames until one of type `cls` arrives (bounded)."""
        for _ in range(limit):
            frame = await self.receive()
            if isinstance(frame, cls):
                return frame
        raise AssertionError(f"no {cls.__name__} in {limit} frames")

    async def wait_closed(self, limit: int = 10_000) -> int:
        """Read until the server closes the connection; return the close code."""
        for _ in range(limit):
            try:
                await self._fill()
            except TransportClosed as exc:
                self.closed = exc
                return exc.code
        raise AssertionError("connection never closed")

    async def hello(self, token: str | None = None) -> Welcome:
        await self.send(Hello(versions=(1,), token=token, client={"name": "test"}))
        self.welcome = await self.expect(Welcome)
        return self.welcome

    async def join(
        self, room: str, state_vector: bytes | None = b"\x00", since: int | None = None, epoch: str | None = None
    ) -> Joined:
        ref = self.next_ref()
        await self.send(Join(ref, room, state_vector, since, epoch))
        return await self.expect(Joined, ref=ref)


class DocClient(RawClient):
    """A RawClient that keeps a pycrdt document in step with one room."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        self.doc = pycrdt.Doc()
        self.text = self.doc.get("text", type=pycrdt.Text)

    def apply(self, update: bytes) -> None:
        self.doc.apply_update(update)
