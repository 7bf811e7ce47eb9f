"""A session that outlives its transport (Engine.serve_transport's detach_grace, Engine.attach):
what the HTTP transports need, whose session spans many requests. MockClock, memory
transports."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig, memory_transport_pair
from plait.protocol import Ack, CloseCode, Event, PresenceDiff, PresenceSnapshot, Publish, Update
from plait.storage import MemoryStore

from .client import DocClient, edit

GRACE = 10.0
CONFIG = EngineConfig(presence_grace=3.0, heartbeat=5.0)


async def _members(engine: Engine) -> tuple[DocClient, DocClient]:
    a = DocClient(engine.connect_memory(detach_grace=GRACE))
    b = DocClient(engine.connect_memory())
    for c in (a, b):
        await c.hello()
        await c.join("r")
        await c.wait_for(PresenceSnapshot)
    return a, b


async def test_a_re_attached_session_gets_everything_queued_meanwhile_in_order(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, b = await _members(engine)
        session = a.welcome.session
        await a.transport.aclose(CloseCode.GOING_AWAY, "network changed")  # not a normal close
        await trio.sleep(1)
        for i in range(3):
            await b.send(Publish(1, b.next_ref(), "chat", {"n": i}, None))
        await b.send(Update(1, b.next_ref(), edit(b.doc, "meanwhile")))
        for _ in range(4):
            await b.wait_for(Ack)
        await trio.sleep(GRACE - 2)  # within the grace

        client, server = memory_transport_pair()
        assert engine.attach(session, server)
        a.transport, a2 = client, a  # the client's own state (channels, refs) goes on
        events = [await a2.wait_for(Event) for _ in range(3)]
        assert [e.payload["n"] for e in events] == [0, 1, 2]
        a2.apply((await a2.wait_for(Update)).update)
        assert str(a2.text) == "meanwhile"
        # The same session, channel and refs go on: no new hello, no new join.
        ref = a2.next_ref()
        await a2.send(Publish(1, ref, "chat", {"n": "back"}, None))
        ack = await a2.wait_for(Ack)
        assert (ack.ref, ack.value) == (ref, 4)
        assert engine.attach(session, memory_transport_pair()[1]) is False  # attached already


async def test_a_detached_member_stays_present_until_the_grace_ends_then_leaves(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=EngineConfig(presence_grace=3.0, heartbeat=30.0)) as engine:
        a, b = await _members(engine)
        session = a.welcome.session
        cut = trio.current_time()
        await a.transport.aclose(CloseCode.GOING_AWAY, "gone")
        diff = await b.wait_for(PresenceDiff)
        while session not in diff.left:
            diff = await b.wait_for(PresenceDiff)
        # Still there through the detach grace; then gone after the presence grace, as for a
        # WebSocket that closed at the end of the detach grace.
        waited = trio.current_time() - cut
        assert GRACE + CONFIG.presence_grace <= waited < GRACE + CONFIG.presence_grace + 1
        assert engine.attach(session, memory_transport_pair()[1]) is False


async def test_a_normal_close_ends_the_session_at_once(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, b = await _members(engine)
        session = a.welcome.session
        cut = trio.current_time()
        await a.transport.aclose(CloseCode.NORMAL, "bye")
        diff = await b.wait_for(PresenceDiff)
        while session not in diff.left:
            diff = await b.wait_for(PresenceDiff)
        assert trio.current_time() - cut < CONFIG.presence_grace + 1
        assert engine.attach(session, memory_transport_pair()[1]) is False


async def test_attach_refuses_unknown_and_live_sessions(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, _ = await _members(engine)
        assert engine.attach("no-such-session", memory_transport_pair()[1]) is False
        assert engine.attach(a.welcome.session, memory_transport_pair()[1]) is False  # its transport is fine
        await a.send(Publish(1, a.next_ref(), "chat", None, None))
        await a.wait_for(Ack)


async def test_shutdown_ends_a_detached_session_without_waiting_for_its_grace(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, _ = await _members(engine)
        await a.transport.aclose(CloseCode.GOING_AWAY, "gone")
        await trio.sleep(1)
        start = trio.current_time()
        await engine.shutdown()
        assert trio.current_time() - start < GRACE / 2
