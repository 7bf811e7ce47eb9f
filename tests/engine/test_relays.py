"""Document updates relayed by another process before its commit (engine/room/_replica.py, spec
§15): members here see them at once; they are kept until their commit comes, and stored here if
it does not (the process died, or its store failed past store_outage_grace). Another process is
played by calling the room's Replica methods, as the cluster does."""

from __future__ import annotations

from collections.abc import Sequence

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig
from plait.engine.room._replica import GAP_RESYNC_INTERVAL, RELAY_CONFIRM_MARGIN, LocalReplication, Replica
from plait.protocol import Ack, Update
from plait.storage import MemoryStore, RoomData, StorageUnavailable

from .client import DocClient, edit, until_text

GRACE = 2.0
TIMEOUT = GRACE + RELAY_CONFIRM_MARGIN


class Elsewhere(LocalReplication):
    """Another process exists, and says nothing on its own."""

    process = "here"

    async def attach(self, room: Replica) -> None:
        pass


def their_edits(*texts: str) -> list[bytes]:
    """Updates another process's member made, one per text, in order."""
    doc: pycrdt.Doc = pycrdt.Doc(client_id=4242)
    return [edit(doc, text) for text in texts]


async def stored_text(store: MemoryStore) -> str:
    data = await store.load("r")
    doc: pycrdt.Doc = pycrdt.Doc()
    for update in ([data.snapshot] if data.snapshot else []) + list(data.updates):
        doc.apply_update(update)
    return str(doc.get("text", type=pycrdt.Text))


async def room_with_member(engine: Engine) -> tuple[DocClient, Replica]:
    client = DocClient(engine.connect_memory())
    await client.hello()
    await client.join("r")
    room = engine._rooms.get("r")
    assert room is not None
    return client, room


def config() -> EngineConfig:
    return EngineConfig(store_outage_grace=GRACE, heartbeat=600)


async def test_a_relayed_update_reaches_members_at_once_and_is_not_stored_here_when_its_commit_comes(
    autojump_clock: MockClock,
) -> None:
    store = MemoryStore()
    async with Engine(store=store, config=config(), replication=Elsewhere()) as engine:
        alice, room = await room_with_member(engine)
        one, two = their_edits("one", "two")
        room.receive_relayed("p2", 1, [one, two])
        with trio.fail_after(1):
            await until_text(alice, "onetwo")
        room.receive_committed([one, two], [], "p2", (1, 2))  # stored by p2
        await trio.sleep(2 * TIMEOUT)
        assert (await store.load("r")).updates == ()  # not stored again here


async def test_a_relayed_update_whose_commit_never_comes_is_stored_here_after_the_grace(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with Engine(store=store, config=config(), replication=Elsewhere()) as engine:
        _alice, room = await room_with_member(engine)
        [one] = their_edits("lost?")
        room.receive_relayed("p2", 1, [one])
        await trio.sleep(TIMEOUT - 0.5)
        assert (await store.load("r")).updates == ()  # its process may still be storing it
        await trio.sleep(1.0)
        assert await stored_text(store) == "lost?"


async def test_relayed_updates_stored_here_through_an_outage_are_warned_of_once(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """One WARNING per outage (the commits stop coming), not one per relayed batch; a commit
    that confirms relays again ends it."""
    store = MemoryStore()
    async with Engine(store=store, config=config(), replication=Elsewhere()) as engine:
        _alice, room = await room_with_member(engine)
        edits = their_edits(*(f"<{n}>" for n in range(6)))
        for n in range(4):  # an outage: four batches, a second apart, whose commits never come
            room.receive_relayed("p2", n + 1, [edits[n]])
            await trio.sleep(1.0)
        await trio.sleep(TIMEOUT)
        assert await stored_text(store) == "<0><1><2><3>"
        room.receive_relayed("p2", 5, [edits[4]])
        room.receive_committed([edits[4]], [], "p2", (5, 5))  # it is back
        room.receive_relayed("p2", 6, [edits[5]])  # and out again
        await trio.sleep(2 * TIMEOUT)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "whose commit has not come" in r.getMessage()]
    assert len(warned) == 2


async def test_a_dead_process_s_relayed_updates_are_stored_at_once(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with Engine(store=store, config=config(), replication=Elsewhere()) as engine:
        _alice, room = await room_with_member(engine)
        one, two = their_edits("a", "b")
        room.receive_relayed("p2", 1, [one])
        room.receive_relayed("p3", 1, [two])
        room.receive_committed([two], [], "p3", (1, 1))
        room.drop_process("p2")
        await trio.sleep(0.1)
        data = await store.load("r")
        assert data.updates == (one,)  # p2's, not p3's (stored by p3)


async def test_a_copy_that_unloads_stores_what_it_applied_and_was_not_stored(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    quick = EngineConfig(store_outage_grace=GRACE, heartbeat=600, room_idle_grace=0.5)  # unloads before TIMEOUT
    async with Engine(store=store, config=quick, replication=Elsewhere()) as engine:
        alice, room = await room_with_member(engine)
        [one] = their_edits("last words")
        room.receive_relayed("p2", 1, [one])
        await alice.transport.aclose()
        with trio.fail_after(TIMEOUT - 1):
            await room.wait_closed()  # type: ignore[attr-defined]
    assert await stored_text(store) == "last words"


async def test_a_commit_covering_a_relay_not_heard_here_is_applied(autojump_clock: MockClock) -> None:
    """Relays 1 and 3 heard, 2 lost: the commit of 1-3 must be applied (it alone has 2)."""
    async with Engine(store=MemoryStore(), config=config(), replication=Elsewhere()) as engine:
        alice, room = await room_with_member(engine)
        one, two, three = their_edits("1", "2", "3")
        room.receive_relayed("p2", 1, [one])
        room.receive_relayed("p2", 3, [three])
        room.receive_committed([one, two, three], [], "p2", (1, 3))
        with trio.fail_after(1):
            await until_text(alice, "123")


async def test_relayed_updates_that_do_not_apply_resync_the_room_and_break_nothing(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with Engine(store=store, config=config(), replication=Elsewhere()) as engine:
        alice, room = await room_with_member(engine)
        room.receive_relayed("p2", 1, [b"\xff\x00 not an update"])
        room.receive_relayed("p2", 2, [])
        await alice.send(Update(1, 5, edit(alice.doc, "still fine")))
        with trio.fail_after(1):
            await alice.wait_for(Ack)
        await trio.sleep(2 * TIMEOUT)  # what did not apply is not kept, nor stored
        assert await stored_text(store) == "still fine"
        assert len((await store.load("r")).updates) == 1


async def test_a_resync_whose_store_read_fails_is_tried_again_until_it_works(autojump_clock: MockClock) -> None:
    """What another process stored reaches this copy even if the store failed when asked."""

    class Flaky(MemoryStore):
        failures = 0

        async def load(self, room: str) -> RoomData:
            if self.failures:
                self.failures -= 1
                raise StorageUnavailable("down for a moment")
            return await super().load(room)

    store = Flaky()
    async with Engine(store=store, config=config(), replication=Elsewhere()) as engine:
        alice, room = await room_with_member(engine)
        [theirs] = their_edits("stored elsewhere")
        await store.append("r", [theirs])  # as another process commits, unheard here
        store.failures = 3
        room.want_resync()
        with trio.fail_after(30):
            await until_text(alice, "stored elsewhere")
        assert store.failures == 0


class Recording(Elsewhere):
    """Another process exists; what this copy relays is recorded."""

    def __init__(self) -> None:
        self.relayed: list[tuple[int, list[bytes]]] = []

    def relay(self, room: str, first: int, updates: Sequence[bytes]) -> None:
        self.relayed.append((first, list(updates)))


async def test_edits_are_relayed_while_a_commit_waits_for_the_store(autojump_clock: MockClock) -> None:
    """A stalled store holds the commit, not the relay: the other processes' members go on
    seeing the edits as this process's members do."""

    class Stalled(MemoryStore):
        stalled = False

        async def append(self, room: str, updates: Sequence[bytes]) -> None:
            while self.stalled:
                await trio.sleep(0.1)
            await super().append(room, updates)

    store, replication = Stalled(), Recording()
    async with Engine(store=store, config=EngineConfig(store_outage_grace=30, heartbeat=600), replication=replication) as engine:
        alice, _room = await room_with_member(engine)
        store.stalled = True
        for n in range(3):
            await alice.send(Update(1, 10 + n, edit(alice.doc, f"<{n}>")))
            await trio.sleep(1)
        firsts = [first for first, _ in replication.relayed]
        assert firsts == [firsts[0], firsts[0] + 1, firsts[0] + 2]  # one at a time, numbered in turn
        store.stalled = False
        with trio.fail_after(5):
            for _ in range(3):
                await alice.wait_for(Ack)


async def test_an_update_that_waits_for_one_this_copy_never_heard_of_makes_it_resync(autojump_clock: MockClock) -> None:
    """Another process's commit reached the store but not this copy (its store call was
    abandoned during a database stall and committed when the database came back, after this
    copy loaded the room): its later updates, which build on it, would wait in this copy's
    document for good. The copy notices they did not integrate and reads the store."""
    store = MemoryStore()
    async with Engine(store=store, config=config(), replication=Elsewhere()) as engine:
        alice, room = await room_with_member(engine)
        one, two = their_edits("one", "two")
        await store.append("r", [one])  # the late commit: nothing said of it
        room.receive_committed([two], [], "p2", (1, 1))
        with trio.fail_after(5):
            await until_text(alice, "onetwo")


async def test_an_update_whose_missing_one_comes_within_the_interval_makes_no_resync(autojump_clock: MockClock) -> None:
    """A commit missed on pub/sub comes from the room's stream soon after: no store read."""

    class CountingStore(MemoryStore):
        loads = 0

        async def load(self, room: str) -> RoomData:
            self.loads += 1
            return await super().load(room)

    store = CountingStore()
    async with Engine(store=store, config=config(), replication=Elsewhere()) as engine:
        alice, room = await room_with_member(engine)
        loads = store.loads
        one, two = their_edits("one", "two")
        room.receive_committed([two], [], "p2", (2, 2))
        await trio.sleep(GAP_RESYNC_INTERVAL / 2)
        room.receive_committed([one], [], "p2", (1, 1))
        with trio.fail_after(1):
            await until_text(alice, "onetwo")
        await trio.sleep(2 * GAP_RESYNC_INTERVAL)
        assert store.loads == loads
