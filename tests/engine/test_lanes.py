"""A request that waits holds up only its own channel (spec §4.1, engine/sessions/_native.py):
a join while its room loads, a publish while its hook runs, a leave behind its channel's
answers. The connection's other rooms go on; each channel's answers stay in request order."""

from __future__ import annotations

from typing import Any

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, Hooks, Identity
from plait.protocol import (
    Ack,
    CursorMove,
    Error,
    ErrorCode,
    Frame,
    Join,
    Joined,
    Leave,
    Ping,
    Pong,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    Refresh,
    Update,
    encode,
)
from plait.storage import MemoryStore, RoomData

from .client import DocClient, edit
from .conftest import running_engine


class GatedStore(MemoryStore):
    """A store whose loads of room "slow" wait until `opened` is set (a stalled database)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = trio.Event()
        self.loading = trio.Event()

    async def load(self, room: str) -> RoomData:
        if room == "slow":
            self.loading.set()
            await self.opened.wait()
        return await super().load(room)


class GatedHooks(Hooks):
    """Events named "slow" wait in the on_event hook until `opened` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = trio.Event()
        self.waiting = trio.Event()

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": "alice", "token": token}

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: Any) -> Any:
        if name == "slow":
            self.waiting.set()
            await self.opened.wait()
        return payload


async def member_of(engine: Engine, *rooms: str) -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello("t1")
    for room in rooms:
        await client.join(room)
        await client.wait_for(PresenceSnapshot)
    return client


async def answers(client: DocClient, count: int) -> list[Frame]:
    """The next `count` answers (acks, errors, joined), skipping what else comes (bounded)."""
    got: list[Frame] = []
    for _ in range(200):
        if len(got) == count:
            return got
        frame = await client.receive()
        if isinstance(frame, (Ack, Error, Joined, Pong)):
            got.append(frame)
    raise AssertionError(f"only {got} of {count} answers")


async def test_a_join_waiting_on_its_room_load_does_not_hold_up_the_connections_other_rooms(
    autojump_clock: MockClock,
) -> None:
    store = GatedStore()
    async with running_engine(store=store) as engine:
        a = await member_of(engine, "fast")
        await a.send(Join(1, "slow", b"\x00", None))
        await store.loading.wait()
        # While the store holds the load, the room joined before is served: its edit is stored
        # and acked, its presence acked, a ping answered.
        await a.send(Update(1, 2, edit(a.doc, "meanwhile")), PresenceSet(1, 3, {"n": 1}), Ping(4))
        got = await answers(a, 3)
        assert sorted(map(repr, got)) == sorted(map(repr, [Ack(2, None), Ack(3, None), Pong(4)]))
        assert got.index(Ack(2, None)) < got.index(Ack(3, None))  # one channel: in request order
        store.opened.set()
        joined = await a.expect(Joined, ref=1)
        assert joined.channel == 2
        await a.wait_for(PresenceSnapshot)
        await a.send(Update(2, 5, edit(pycrdt.Doc(), "in slow")))
        assert (await a.wait_for(Ack)).ref == 5


async def test_joins_and_refreshes_are_answered_in_the_order_they_came(autojump_clock: MockClock) -> None:
    store = GatedStore()
    async with running_engine(store=store, hooks=GatedHooks()) as engine:
        a = await member_of(engine)
        # A join that waits, then a join that would not, then a refresh: the refresh must
        # judge both rooms, so nothing overtakes the waiting join.
        await a.send(Join(1, "slow", None, None), Join(2, "quick", None, None), Refresh(3, "t2"), Ping(4))
        await store.loading.wait()
        assert await answers(a, 1) == [Pong(4)]
        store.opened.set()
        got = await answers(a, 3)
        assert [type(f).__name__ for f in got] == ["Joined", "Joined", "Ack"], got
        assert [(f.ref, f.channel) for f in got[:2]] == [(1, 1), (2, 2)]  # type: ignore[attr-defined]
        assert got[2] == Ack(3, None)


async def test_a_publish_waiting_on_its_hook_holds_up_only_its_own_channel(autojump_clock: MockClock) -> None:
    hooks = GatedHooks()
    async with running_engine(hooks=hooks) as engine:
        a = await member_of(engine, "one", "two")
        await a.send(
            Publish(1, 1, "slow", "first", None),
            PresenceSet(1, 2, {"n": 1}),  # behind the publish: its ack must come after it
            Publish(2, 3, "chat", "other room", None),
            CursorMove(1, 5),
        )
        await hooks.waiting.wait()
        assert await answers(a, 1) == [Ack(3, 1)]  # the other room's event is sequenced and acked
        hooks.opened.set()
        assert await answers(a, 2) == [Ack(1, 1), Ack(2, None)]


async def test_a_leave_waits_for_its_channels_answers_not_for_another_room(autojump_clock: MockClock) -> None:
    hooks = GatedHooks()
    async with running_engine(hooks=hooks) as engine:
        a = await member_of(engine, "one", "two")
        # The update is sent before the client sees its leave answered: stale, answered in turn.
        await a.send_raw(encode([Publish(1, 1, "slow", "first", None), Leave(1, 2), Update(1, 3, b"\x00\x00")]))
        await hooks.waiting.wait()
        await a.send(Update(2, 4, edit(a.doc, "two")))
        assert await answers(a, 1) == [Ack(4, None)]
        hooks.opened.set()
        got = await answers(a, 3)
        assert got[:2] == [Ack(1, 1), Ack(2, None)]
        assert isinstance(got[2], Error) and (got[2].ref, got[2].code) == (3, ErrorCode.UNKNOWN_CHANNEL)


@pytest.mark.parametrize("how", ["closes", "says-goodbye"])
async def test_a_connection_that_ends_while_its_join_waits_is_never_a_member(
    autojump_clock: MockClock, how: str
) -> None:
    store = GatedStore()
    async with running_engine(store=store) as engine:
        a = await member_of(engine)
        await a.send(Join(1, "slow", None, None))
        await store.loading.wait()
        if how == "closes":
            await a.transport.aclose(1000, "bye")
        else:
            await a.send_raw(b"\xc1")  # a message that does not decode: a fatal error
            await a.wait_closed()
        with trio.fail_after(5):
            while engine.sessions():  # bounded by the deadline
                await trio.sleep(0.1)
        store.opened.set()
        b = await member_of(engine, "slow")
        assert [e.session for e in engine.presence("slow")] == [b.welcome.session]  # type: ignore[union-attr]


async def test_a_client_that_keeps_sending_behind_a_waiting_request_is_read_no_further(
    autojump_clock: MockClock,
) -> None:
    hooks = GatedHooks()
    async with running_engine(hooks=hooks, max_frames_per_message=16, frames_per_second=100_000) as engine:
        a = await member_of(engine, "one")
        await a.send(Publish(1, 1, "slow", "first", None))
        await hooks.waiting.wait()
        taken = 0
        with trio.move_on_after(5):
            for position in range(200):  # bounded
                await a.send_raw(encode([CursorMove(1, position * 8 + i) for i in range(8)]))
                taken += 1
        # The reader stopped once 16 frames waited; the transport's buffer (16) took a few more.
        assert taken < 25, taken
        hooks.opened.set()
        assert await answers(a, 1) == [Ack(1, 1)]
        await a.send_raw(encode([Ping(9)]))
        assert (await a.wait_for(Pong)).nonce == 9
