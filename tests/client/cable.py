"""Shared by the client tests: a `Cable` opens in-memory connections to an engine (and can cut
them, or refuse to connect, like a network), `client_for` connects the SDK through one."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pycrdt
import trio

from plait.client import Backoff, Client, Room, connect
from plait.engine import Engine, MemoryTransport, Transport


class Cable:
    """Opens in-memory connections to an engine and can cut them all (like a network drop).

    `wrap`, if given, wraps every transport it opens (to make a server lie, or hang up)."""

    def __init__(self, engine: Engine, wrap: Callable[[MemoryTransport], Transport] | None = None) -> None:
        self.engine = engine
        self.live: list[MemoryTransport] = []
        self.opened = 0
        self.down = False
        self.wrap = wrap

    async def open(self) -> Transport:
        if self.down:
            raise OSError("network is down")
        self.opened += 1
        transport = self.engine.connect_memory()
        self.live.append(transport)
        return self.wrap(transport) if self.wrap else transport

    async def cut(self) -> None:
        for transport in self.live:
            await transport.aclose(1006, "cable cut")
        self.live.clear()


@asynccontextmanager
async def client_for(cable: Cable, **kwargs: object) -> AsyncIterator[Client]:
    backoff = Backoff(base=0.5, cap=4, rng=random.Random(1))
    async with connect(open_transport=cable.open, backoff=backoff, **kwargs) as client:  # type: ignore[arg-type]
        yield client


async def doc_change(room: Room) -> None:
    """Wait for the next change to the room's document."""
    changed = trio.Event()
    sub = room.doc.observe(lambda _: changed.set())
    try:
        await changed.wait()
    finally:
        room.doc.unobserve(sub)


async def until_text(room: Room, expected: str) -> None:
    for _ in range(1000):
        if str(room.text) == expected:
            return
        await doc_change(room)
    raise AssertionError(f"text never became {expected!r}: {str(room.text)!r}")


def stored_text(updates: list[bytes], snapshot: bytes | None = None) -> str:
    doc = pycrdt.Doc()
    if snapshot:
        doc.apply_update(snapshot)
    for update in updates:
        doc.apply_update(update)
    return str(doc.get("text", type=pycrdt.Text))
