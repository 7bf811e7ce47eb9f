"""Events numbered by several processes are delivered in seq order (spec §15): one held behind
a gap waits for the missing one, at most `event_gap_timeout` from when it was held, not from
when some other gap opened."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig
from plait.engine.room import LocalReplication, LocalSequence, Replica, Room
from plait.engine.room._events import EventLog, EventRecord
from plait.protocol import Event, Joined, Publish
from plait.storage import MemoryStore

from .client import DocClient

TIMEOUT = 1.0


class Elsewhere(LocalReplication):
    """Another process exists (so rooms wait for gaps), and says nothing."""

    process = "p1"

    async def attach(self, room: Replica) -> None:
        pass


class Numbers(LocalSequence):
    """Hands out the numbers a test lines up."""

    def __init__(self) -> None:
        self.next: list[int] = []

    async def next_seq(self, room: str, head: int) -> int:
        return self.next.pop(0)


async def member_and_room(engine: Engine) -> tuple[DocClient, Joined, Room]:
    client = DocClient(engine.connect_memory())
    await client.hello()
    joined = await client.join("r")
    room = engine._rooms.get("r")
    assert room is not None
    return client, joined, room


def other(seq: int, epoch: str) -> EventRecord:
    return EventRecord(seq, "chat", f"from elsewhere {seq}", "other-1", "u", None, epoch)


async def test_a_held_event_waits_its_own_timeout_and_late_ones_fill_in_order(autojump_clock: MockClock) -> None:
    numbers = Numbers()
    async with Engine(store=MemoryStore(), config=EngineConfig(event_gap_timeout=TIMEOUT), sequence=numbers,
                      replication=Elsewhere()) as engine:
        client, joined, room = await member_and_room(engine)
        seen: list[int] = []

        async def read() -> None:
            while True:
                frame = await client.receive()
                if isinstance(frame, Event):
                    seen.append(frame.seq)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            numbers.next = [2]
            await client.send(Publish(joined.channel, client.next_ref(), "chat", "mine 2", None))  # 1 is missing
            await trio.sleep(0.9 * TIMEOUT)
            numbers.next = [4]
            await client.send(Publish(joined.channel, client.next_ref(), "chat", "mine 4", None))  # 3 is missing
            await trio.sleep(0.2 * TIMEOUT)
            assert seen == [2]  # 1 never came: skipped after its timeout; 4 waits for 3 still
            await trio.sleep(0.5 * TIMEOUT)
            room._receive_event(other(3, joined.epoch))
            await trio.sleep(0.01)
            assert seen == [2, 3, 4]  # in order, once each
            room._receive_event(other(1, joined.epoch))  # what was skipped and comes after all
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert seen[:3] == [2, 3, 4]


async def test_an_event_from_another_process_counts_toward_the_history_bound_as_one_published_here(
    autojump_clock: MockClock,
) -> None:
    """Its idempotency key included: every process keeps the same events within the bound."""
    async with Engine(store=MemoryStore(), replication=Elsewhere()) as engine:
        _client, joined, room = await member_and_room(engine)
        received = EventRecord(1, "chat", "x" * 100, "other-1", "u", "k" * 500, joined.epoch)
        room._receive_event(received)
        here = EventLog(10)
        here.append(received.name, received.payload, received.session, received.user, received.key)
        assert room._events._bytes == here._bytes
