"""What a joiner is sent at once (the document, the events it missed, everyone's presence and
cursors) is bounded piece by piece, and admitted whatever the outbox budget: a room whose
catch-up passed the budget closed every joiner TOO_SLOW, on every reconnect (fresh-user pass
3). MockClock, memory transports."""

from __future__ import annotations

from trio.testing import MockClock

from plait.engine.room._events import EventLog
from plait.protocol import Ack, Error, ErrorCode, Event, PresenceSet, Publish, SyncStep2, Update

from .client import DocClient, edit
from .conftest import running_engine

KIB = 1024


async def test_a_catch_up_larger_than_the_outbox_budget_is_admitted(autojump_clock: MockClock) -> None:
    async with running_engine(
        outbox_max_bytes=256 * KIB, max_document_bytes=220 * KIB, event_history_bytes=100 * KIB, max_message_bytes=64 * KIB
    ) as engine:
        writer = DocClient(engine.connect_memory())
        await writer.hello()
        await writer.join("r")
        for i in range(4):  # a 190 KiB document, in edits that fit in a message
            await writer.send(Update(1, writer.next_ref(), edit(writer.doc, str(i) * (47 * KIB))))
            await writer.wait_for(Ack)
        for i in range(8):  # 8 events of 15 KiB: the history keeps the last 100 KiB
            await writer.send(Publish(1, writer.next_ref(), "blob", {"n": i, "b": "x" * (15 * KIB)}, None))
            await writer.wait_for(Ack)
        late = DocClient(engine.connect_memory())
        await late.hello()
        joined = await late.join("r", since=0, epoch=None)
        assert joined.resumed is False  # the history no longer starts at 1: said so (spec §7)
        events = []
        while len(events) < 6:
            frame = await late.receive()
            if isinstance(frame, (Update, SyncStep2)):
                late.apply(frame.update)
            elif isinstance(frame, Event):
                events.append(frame.payload["n"])
        assert events == [2, 3, 4, 5, 6, 7]  # the newest 100 KiB, in order
        assert len(str(late.text)) == 4 * 47 * KIB


def test_an_event_history_keeps_its_byte_bound_and_its_newest_event() -> None:
    log = EventLog(1000, epoch="e", max_bytes=10 * KIB)
    for i in range(50):
        log.append("e", "x" * KIB, None, None, f"k{i}")
    missed, complete = log.since(0, "e")
    assert 8 <= len(missed) <= 10 and missed[-1].seq == 50 and not complete
    assert log.seq_for_key("k0") is None and log.seq_for_key("k49") == 50  # forgotten keys go too
    big = log.append("e", "y" * (20 * KIB), None, None, None)  # alone over the bound: kept alone
    assert log.since(0, "e")[0] == [big]


async def test_a_rooms_presence_has_a_budget(autojump_clock: MockClock) -> None:
    async with running_engine(max_message_bytes=8 * KIB, max_room_presence_bytes=4 * KIB) as engine:
        clients = []
        for _ in range(5):
            c = DocClient(engine.connect_memory())
            await c.hello()
            await c.join("r", state_vector=None)
            clients.append(c)
        answers = []
        for c in clients:  # 900 bytes each: the fifth passes the room's 4 KiB
            ref = c.next_ref()
            await c.send(PresenceSet(1, ref, {"note": "n" * 900}))
            frame = await c.wait_for(Ack) if len(answers) < 4 else await c.wait_for(Error)
            answers.append(frame)
        assert isinstance(answers[-1], Error) and answers[-1].code == ErrorCode.PRESENCE_TOO_LARGE
        assert "for a room" in answers[-1].message
        await clients[0].send(PresenceSet(1, clients[0].next_ref(), {}))  # freeing room lets the fifth in
        await clients[0].wait_for(Ack)
        await clients[4].send(PresenceSet(1, clients[4].next_ref(), {"note": "n" * 900}))
        assert isinstance(await clients[4].wait_for(Ack), Ack)
