"""Presence, cursors and typing in a room whose members' states add up to more than a message
(spec §5.4): nobody is sent a message over the limit the server announced, and everybody sees
everybody. MockClock, an in-memory engine, the SDK."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from trio.testing import MockClock

from plait.client import Client, ClientState, Room
from plait.engine import MemoryTransport

from ..engine.conftest import make_engine
from .cable import Cable, client_for

LIMIT = 64 * 1024
"""max_message_bytes here; the presence limit is a quarter of it."""
STATE = 15 * 1024
"""Under the 16 KiB presence limit; a dozen of them do not fit in one message."""
MEMBERS = 12


class Measured:
    """A transport that remembers the longest message the server sent through it."""

    longest = 0

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner

    async def send_message(self, data: bytes | str) -> None:
        await self.inner.send_message(data)

    async def receive_message(self) -> bytes | str:
        data = await self.inner.receive_message()
        Measured.longest = max(Measured.longest, len(data))
        return data

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.aclose(code, reason)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def _members(stack: AsyncExitStack, cable: Cable, count: int) -> list[tuple[Client, Room]]:
    members = []
    for _ in range(count):
        client = await stack.enter_async_context(client_for(cable))
        room = await stack.enter_async_context(client.join("big"))
        await room.synced()
        members.append((client, room))
    return members


async def _until(done: object, room: Room) -> None:
    changes = room.changes()
    for _ in range(1000):
        if done():  # type: ignore[operator]
            return
        with trio.move_on_after(5):
            await changes.__anext__()
    raise AssertionError("never happened")


async def test_a_joiner_sees_every_large_presence_and_no_message_is_over_the_limit(autojump_clock: MockClock) -> None:
    # Second fresh-user pass: two 9 MiB presences made an 18 MiB snapshot; an SDK joiner
    # refused it (over its 16 MiB limit) and stopped with 1009.
    Measured.longest = 0
    async with make_engine(max_message_bytes=LIMIT) as engine, AsyncExitStack() as stack:
        cable = Cable(engine, wrap=Measured)  # type: ignore[arg-type]
        members = await _members(stack, cable, MEMBERS)
        for i, (_, room) in enumerate(members):
            await room.set_presence({"i": i, "blob": "p" * STATE})
            await room.move_cursor({"i": i, "path": "c" * STATE})
            await room.set_typing(True)
        watcher_client = await stack.enter_async_context(client_for(cable))
        watcher = await stack.enter_async_context(watcher_client.join("big"))
        await _until(lambda: len(watcher.presence) == MEMBERS and len(watcher.cursors) == MEMBERS, watcher)
        assert sorted(e.state["i"] for e in watcher.presence.values()) == list(range(MEMBERS))
        assert len(watcher.typing) == MEMBERS

        # Every member changes presence and cursor within one tick: one tick's diff and cursor
        # moves do not fit in a message either.
        for i, (_, room) in enumerate(members):
            await room.set_presence({"i": i + 100, "blob": "q" * STATE})
            await room.move_cursor({"i": i + 100, "path": "d" * STATE})

        def moved() -> bool:
            states = sorted(e.state["i"] for e in watcher.presence.values())
            cursors = sorted(c["i"] for c in watcher.cursors.values())
            return states == cursors == [i + 100 for i in range(MEMBERS)]

        await _until(moved, watcher)
        assert Measured.longest > LIMIT // 2  # the test did fill messages...
        assert Measured.longest <= LIMIT  # ...and none went over
        assert cable.opened == MEMBERS + 1  # nobody was refused and reconnected
        assert all(c.state is ClientState.OPEN for c, _ in members)
