"""A session that outlives its transport (Engine.serve_transport's detach_grace, Engine.attach):
what the HTTP transports need, whose session spans many requests. MockClock, memory
transports."""

from __future__ import annotations

import functools

import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig, MemoryTransport, memory_transport_pair
from plait.protocol import (
    ABNORMAL_CLOSURE,
    Ack,
    CloseCode,
    Event,
    Frame,
    Ping,
    PresenceDiff,
    PresenceSnapshot,
    Publish,
    TransportClosed,
    Update,
    decode,
)
from plait.storage import MemoryStore

from .client import DocClient, edit

GRACE = 10.0
KEY = "k" * 24
CONFIG = EngineConfig(presence_grace=3.0, heartbeat=5.0)


async def _members(engine: Engine) -> tuple[DocClient, DocClient]:
    a = DocClient(engine.connect_memory(detach_grace=GRACE, resume_key=KEY))
    b = DocClient(engine.connect_memory())
    for c in (a, b):
        await c.hello()
        await c.join("r")
        await c.wait_for(PresenceSnapshot)
    return a, b


def _reattach(engine: Engine, a: DocClient, key: str = KEY) -> trio.Event | None:
    """Give a's session a new transport; `a` goes on over it with its own state."""
    client, server = memory_transport_pair()
    released = engine.attach(a.welcome.session, server, key)
    if released is not None:
        a.transport, a.inbox = client, []
    return released


async def _publish(b: DocClient, n: int) -> None:
    for i in range(n):
        await b.send(Publish(1, b.next_ref(), "chat", {"n": i}, None))
    for _ in range(n):
        await b.wait_for(Ack)


async def test_a_re_attached_session_gets_everything_queued_meanwhile_in_order(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, b = await _members(engine)
        await a.transport.aclose(CloseCode.GOING_AWAY, "network changed")  # not a normal close
        await trio.sleep(1)
        await _publish(b, 3)
        await b.send(Update(1, b.next_ref(), edit(b.doc, "meanwhile")))
        await b.wait_for(Ack)
        await trio.sleep(GRACE - 2)  # within the grace

        assert _reattach(engine, a) is not None
        events = [await a.wait_for(Event) for _ in range(3)]
        assert [e.payload["n"] for e in events] == [0, 1, 2]
        a.apply((await a.wait_for(Update)).update)
        assert str(a.text) == "meanwhile"
        # The same session, channel and refs go on: no new hello, no new join.
        ref = a.next_ref()
        await a.send(Publish(1, ref, "chat", {"n": "back"}, None))
        ack = await a.wait_for(Ack)
        assert (ack.ref, ack.value) == (ref, 4)
        assert _reattach(engine, a) is None  # attached already


class Breaks:
    """A server-side transport that takes `works_for` messages, then fails every send (and,
    with it, the connection), as a network path that dies under a write."""

    def __init__(self, inner: MemoryTransport, works_for: int) -> None:
        self.inner, self.path, self.works_for = inner, inner.path, works_for
        self.delivered: list[bytes] = []

    async def send_message(self, data: bytes) -> None:
        if len(self.delivered) >= self.works_for:
            await self.inner.aclose(ABNORMAL_CLOSURE, "path died")
            raise TransportClosed(ABNORMAL_CLOSURE)
        await self.inner.send_message(data)
        self.delivered.append(data)

    async def receive_message(self) -> bytes | str:
        return await self.inner.receive_message()

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        await self.inner.aclose(code, reason)


async def test_what_a_failing_transport_did_not_take_goes_out_on_the_next(autojump_clock: MockClock) -> None:
    # Review of the restructure: the batch the writer had in hand when the transport died was
    # lost. Now every event goes out exactly once: on the old transport until it failed, the
    # rest, the failed batch first, on the new one.
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        client, server = memory_transport_pair()
        breaks = Breaks(server, works_for=4)  # welcome, joined+sync+snapshot..., then a few events
        engine.nursery.start_soon(functools.partial(engine.serve_transport, breaks, detach_grace=GRACE, resume_key=KEY))
        a = DocClient(client)
        await a.hello()
        await a.join("r")
        b = DocClient(engine.connect_memory())
        await b.hello()
        await b.join("r")
        await _publish(b, 6)
        await trio.sleep(1)
        old = [f.payload["n"] for f in decode_all(breaks.delivered) if isinstance(f, Event)]
        assert _reattach(engine, a) is not None
        new = [(await a.wait_for(Event)).payload["n"] for _ in range(6 - len(old))]
        assert old + new == list(range(6))


def decode_all(messages: list[bytes]) -> list[Frame]:
    return [frame for message in messages for frame in decode(message)]


async def test_attach_needs_the_sessions_resume_key(autojump_clock: MockClock) -> None:
    # Session ids are in every presence entry and event: they cannot be what re-attaches.
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, _ = await _members(engine)
        await a.transport.aclose(CloseCode.GOING_AWAY, "gone")
        await trio.sleep(0.1)
        assert _reattach(engine, a, key="x" * 24) is None
        assert _reattach(engine, a) is not None
    with pytest.raises(ValueError, match="resume key"):
        async with Engine(store=MemoryStore(), config=CONFIG) as engine:
            engine.connect_memory(detach_grace=GRACE)


async def test_attach_is_taken_at_once_after_the_transport_ends(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, _ = await _members(engine)
        await a.transport.aclose(CloseCode.GOING_AWAY, "gone")
        await trio.testing.wait_all_tasks_blocked()
        assert _reattach(engine, a) is not None  # not only after close_timeout


async def test_a_transport_gone_silent_detaches_instead_of_ending(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, b = await _members(engine)
        silent = a.transport
        for _ in range(4):  # a says nothing past 2H; b keeps talking
            await trio.sleep(3)
            await b.send(Ping(1))
        assert _reattach(engine, a) is not None
        await _publish(b, 1)
        assert (await a.wait_for(Event)).payload == {"n": 0}
        with pytest.raises(TransportClosed):  # the silent transport was let go of, and closed
            for _ in range(100):
                await silent.receive_message()


async def test_a_grace_longer_than_the_lag_limit_is_honoured(autojump_clock: MockClock) -> None:
    config = EngineConfig(presence_grace=3.0, heartbeat=30.0, outbox_max_lag=5.0)
    async with Engine(store=MemoryStore(), config=config) as engine:
        a = DocClient(engine.connect_memory(detach_grace=20.0, resume_key=KEY))
        b = DocClient(engine.connect_memory())
        for c in (a, b):
            await c.hello()
            await c.join("r")
        await a.transport.aclose(CloseCode.GOING_AWAY, "gone")
        await _publish(b, 1)  # queued for a, unwritable while detached
        await trio.sleep(15)  # three times the lag limit
        assert _reattach(engine, a) is not None
        assert (await a.wait_for(Event)).payload == {"n": 0}


async def test_the_attacher_hears_when_the_session_lets_go_of_its_transport(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, _ = await _members(engine)
        await a.transport.aclose(CloseCode.GOING_AWAY, "gone")
        await trio.sleep(0.1)
        released = _reattach(engine, a)
        assert released is not None and not released.is_set()
        await a.send(Publish(1, a.next_ref(), "chat", None, None))
        await a.wait_for(Ack)
        assert not released.is_set()  # in use
        await a.transport.aclose(CloseCode.GOING_AWAY, "gone again")
        with trio.fail_after(CONFIG.close_timeout + 1):
            await released.wait()  # detached again: the caller may finish with that transport


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
        assert GRACE + 3.0 <= waited < GRACE + 3.0 + 1
        assert _reattach(engine, a) is None


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
        assert _reattach(engine, a) is None


async def test_attach_refuses_unknown_and_live_sessions(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), config=CONFIG) as engine:
        a, _ = await _members(engine)
        assert engine.attach("no-such-session", memory_transport_pair()[1], KEY) is None
        assert engine.attach(a.welcome.session, memory_transport_pair()[1], KEY) is None  # its transport is fine
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
