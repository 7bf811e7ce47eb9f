"""Presence, cursors, typing and events under MockClock: coalescing, expiry, grace, resume."""

from __future__ import annotations

import itertools
from typing import Any

import trio
from trio.testing import MockClock

from plait.engine import EventRejected, Hooks, Identity
from plait.protocol import (
    Access,
    Ack,
    CursorMove,
    Cursors,
    Error,
    ErrorCode,
    Event,
    Joined,
    Leave,
    Ping,
    PresenceDiff,
    PresencePatch,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    TransportClosed,
    Typing,
    TypingState,
    Update,
    encode,
    encode_json,
)
from plait.storage import MemoryStore

from .client import DocClient
from .conftest import Connect, make_engine
from .test_rooms import edit


async def joined_pair(connect: Connect) -> tuple[DocClient, DocClient]:
    a, b = await connect(), await connect()
    for c in (a, b):
        await c.join("r")
        await c.wait_for(PresenceSnapshot)
    await a.wait_for(PresenceDiff)  # b joined
    return a, b


async def test_presence_changes_within_a_tick_coalesce_to_the_latest(autojump_clock: MockClock, connect: Connect) -> None:
    a, b = await joined_pair(connect)
    for i in range(5):
        await b.send(PresenceSet(1, None, {"n": i}))
    diff = await a.wait_for(PresenceDiff)
    assert [(u.session, u.state) for u in diff.updated] == [("s2", {"n": 4})]
    await b.send(PresencePatch(1, 9, {"status": "busy", "n": None}))
    assert (await b.wait_for(Ack)).ref == 9
    diff = await a.wait_for(PresenceDiff)
    assert diff.updated[0].state == {"status": "busy"}


async def test_late_joiner_gets_everyone_at_once(autojump_clock: MockClock, connect: Connect) -> None:
    a, _ = await joined_pair(connect)
    await a.send(PresenceSet(1, None, {"name": "ada"}))
    await a.send(CursorMove(1, {"index": 3}))
    await a.send(Publish(1, 1, "chat", {"text": "hi"}, None))
    await a.wait_for(Ack)
    await trio.sleep(0.1)
    late = await connect()
    joined = await late.join("r", since=0)
    assert joined.head == 1 and joined.resumed is True
    snap = await late.wait_for(PresenceSnapshot)
    states = {e.session: e.state for e in snap.entries}
    assert states["s1"] == {"name": "ada"} and set(states) == {"s1", "s2", "s3"}
    cursors = await late.expect(Cursors)
    assert [(m.session, m.position) for m in cursors.moves] == [("s1", {"index": 3})]
    assert (await late.expect(Event)).payload == {"text": "hi"}
    # Presence identity is the server's: a client cannot speak for another user.
    assert all(e.identity["id"].startswith("anon-") for e in snap.entries)


async def test_cursors_are_latest_wins_per_tick(autojump_clock: MockClock, connect: Connect) -> None:
    a, b = await joined_pair(connect)
    for i in range(10):
        await b.send(CursorMove(1, i))
    cursors = await a.wait_for(Cursors)
    assert [(m.session, m.position) for m in cursors.moves] == [("s2", 9)]
    await b.send(Leave(1, None))
    cursors = await a.wait_for(Cursors)
    assert [(m.session, m.position) for m in cursors.moves] == [("s2", None)]


async def test_typing_expires_without_a_refresh(autojump_clock: MockClock, connect: Connect) -> None:
    a, b = await joined_pair(connect)
    await b.send(Typing(1, True))
    assert (await a.wait_for(TypingState)).sessions == ("s2",)
    start = trio.current_time()
    assert (await a.wait_for(TypingState)).sessions == ()
    assert 5 <= trio.current_time() - start <= 5.2  # CONFIG.typing_expiry, plus one tick


async def test_typing_off_is_immediate(autojump_clock: MockClock, connect: Connect) -> None:
    a, b = await joined_pair(connect)
    await b.send(Typing(1, True))
    await a.wait_for(TypingState)
    start = trio.current_time()
    await b.send(Typing(1, False))
    assert (await a.wait_for(TypingState)).sessions == ()
    assert trio.current_time() - start < 0.2


async def test_silent_connection_times_out_and_its_presence_leaves_after_the_grace(
    autojump_clock: MockClock, connect: Connect
) -> None:
    a, b = await joined_pair(connect)
    start = trio.current_time()
    # b stops sending anything at all; a keeps its connection alive with pings.
    async def keep_alive() -> None:
        for nonce in range(10):
            await trio.sleep(5)
            await a.send(Ping(nonce))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.wait_closed)
        nursery.start_soon(keep_alive)
        diff = await a.wait_for(PresenceDiff)
        nursery.cancel_scope.cancel()
    assert b.closed is not None and b.closed.code == 4005
    assert diff.left == ("s2",)
    # 2H silence (20 s, noticed within one heartbeat sweep of H/8) + presence grace (3 s)
    assert 23 <= trio.current_time() - start <= 23 + 10 / 8 + 0.1


async def test_reconnect_within_the_grace_shows_no_gap(autojump_clock: MockClock, connect: Connect) -> None:
    hooks = FixedIdentity()
    async with make_engine(hooks=hooks) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello("alice")
        await a.join("r")
        await a.wait_for(PresenceSnapshot)
        b = DocClient(engine.connect_memory())
        await b.hello("bob")
        await b.join("r")
        await a.wait_for(PresenceDiff)
        await b.transport.aclose()
        await trio.sleep(1)  # inside the 3 s grace
        b2 = DocClient(engine.connect_memory())
        await b2.hello("bob")
        await b2.join("r")
        diff = await a.wait_for(PresenceDiff)
        assert diff.left == ("s2",) and [e.session for e in diff.joined] == ["s3"]
        assert diff.joined[0].identity == {"id": "bob"}


class FixedIdentity(Hooks):
    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": token or "nobody"}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        if identity["id"] == "viewer":
            return Access.READ
        if identity["id"] == "stranger":
            return None
        return Access.WRITE

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: Any) -> Any:
        if name == "forbidden":
            raise EventRejected("not here", 4321)
        if name == "shout":
            return {"text": str(payload["text"]).upper()}
        return payload


async def test_events_sequence_ack_dedupe_and_hooks(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=FixedIdentity()) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello("alice")
        await a.join("r")
        await a.send(Publish(1, 1, "chat", {"text": "one"}, "k1"))
        ev = await a.wait_for(Event)
        assert (ev.seq, ev.name, ev.session, ev.user) == (1, "chat", "s1", "alice")
        assert (await a.wait_for(Ack)).value == 1
        await a.send(Publish(1, 2, "chat", {"text": "one"}, "k1"))  # a retry
        ack = await a.wait_for(Ack)
        assert (ack.ref, ack.value) == (2, 1)
        await a.send(Publish(1, 3, "shout", {"text": "hey"}, None))
        ev = await a.wait_for(Event)
        assert (ev.seq, ev.payload) == (2, {"text": "HEY"})
        await a.send(Publish(1, 4, "forbidden", None, None))
        err = await a.wait_for(Error)
        assert (err.ref, err.code) == (4, 4321)


async def test_resume_reports_whether_history_covered_the_gap(autojump_clock: MockClock) -> None:
    async with make_engine(event_history=3) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        epoch = (await a.join("r")).epoch
        for i in range(5):
            await a.send(Publish(1, i + 1, "n", i, None))
            await a.wait_for(Ack)
        b = DocClient(engine.connect_memory())
        await b.hello()
        joined = await b.join("r", since=3, epoch=epoch)
        assert (joined.head, joined.resumed) == (5, True)
        seqs = [(await b.wait_for(Event)).seq for _ in range(2)]
        assert seqs == [4, 5]
        c = DocClient(engine.connect_memory())
        await c.hello()
        joined = await c.join("r", since=1, epoch=epoch)
        assert joined.resumed is False  # events 2 is gone from the 3-event history
        assert [(await c.wait_for(Event)).seq for _ in range(3)] == [3, 4, 5]


async def test_a_position_from_another_history_is_never_resumed(autojump_clock: MockClock) -> None:
    """Issue: with a memory store, 3 events, a restart, 5 new events, then a rejoin with
    since=3 said resumed=true and replayed new events 4-5 as if they followed the old 3."""
    store = MemoryStore()
    async with make_engine(store=store) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        old_epoch = (await a.join("r")).epoch
        for i in range(3):
            await a.send(Publish(1, i + 1, "n", f"old-{i}", None))
            await a.wait_for(Ack)
    async with make_engine(store=MemoryStore()) as restarted:  # the memory store did not survive
        b = DocClient(restarted.connect_memory())
        await b.hello()
        new_epoch = (await b.join("r")).epoch
        assert new_epoch != old_epoch
        for i in range(5):
            await b.send(Publish(1, i + 1, "n", f"new-{i}", None))
            await b.wait_for(Ack)
        c = DocClient(restarted.connect_memory())
        await c.hello()
        joined = await c.join("r", since=3, epoch=old_epoch)
        assert (joined.resumed, joined.epoch, joined.head) == (False, new_epoch, 5)
        replayed = [(await c.wait_for(Event)).payload for _ in range(5)]
        assert replayed == [f"new-{i}" for i in range(5)]  # the whole new history, from its start
    async with make_engine(store=store) as same_store:  # a durable store keeps the epoch
        d = DocClient(same_store.connect_memory())
        await d.hello()
        joined = await d.join("r", since=3, epoch=old_epoch)
        assert (joined.resumed, joined.epoch) == (True, old_epoch)


async def test_read_only_members_cannot_edit_but_have_presence(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=FixedIdentity()) as engine:
        viewer = DocClient(engine.connect_memory())
        await viewer.hello("viewer")
        joined = await viewer.join("r")
        assert joined.access == Access.READ
        await viewer.wait_for(PresenceSnapshot)
        await viewer.send(Update(1, 1, edit(viewer.doc, "sneaky")))
        err = await viewer.wait_for(Error)
        assert (err.ref, err.code) == (1, ErrorCode.FORBIDDEN)
        await viewer.send(PresenceSet(1, 2, {"name": "v"}))
        assert (await viewer.wait_for(Ack)).ref == 2
        async with engine.room("r") as room:
            assert str(room.doc.get("text", type=__import__("pycrdt").Text)) == ""
        stranger = DocClient(engine.connect_memory())
        await stranger.hello("stranger")
        await stranger.send(__import__("plait.protocol").protocol.Join(1, "r", None, None))
        assert (await stranger.expect(Error)).code == ErrorCode.FORBIDDEN


async def test_unauthenticated_is_closed_4003(autojump_clock: MockClock) -> None:
    class Refuse(Hooks):
        async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
            from plait.engine import Unauthenticated

            raise Unauthenticated("bad token")

    async with make_engine(hooks=Refuse()) as engine:
        a = DocClient(engine.connect_memory())
        from plait.protocol import Hello

        await a.send(Hello((1,), "x", {}))
        assert (await a.expect(Error)).code == ErrorCode.UNAUTHENTICATED
        assert await a.wait_closed() == 4003


async def test_joined_is_answered_with_the_same_ref(autojump_clock: MockClock, connect: Connect) -> None:
    a = await connect()
    j = await a.join("x")
    assert isinstance(j, Joined) and j.ref == 1


async def test_a_lagging_member_gets_the_latest_presence_not_every_diff(autojump_clock: MockClock) -> None:
    async with make_engine(outbox_lag_frames=4) as engine:
        lagging = DocClient(engine.connect_memory(buffer=1))
        await lagging.hello()
        await lagging.join("r")
        busy = DocClient(engine.connect_memory())
        await busy.hello()
        await busy.join("r")
        for i in range(50):  # one presence change per tick, while `lagging` reads nothing
            await busy.send(PresenceSet(1, None, {"n": i}))
            await trio.sleep(0.06)
        await busy.send(__import__("plait.protocol").protocol.Publish(1, 99, "done", None, None))
        await busy.wait_for(Ack)
        diffs = snapshots = 0
        latest = None
        event_seen = False
        for _ in range(200):  # now it reads: what was queued, then one refresh with the latest
            frame = await lagging.receive()
            if isinstance(frame, PresenceDiff):
                diffs += 1
                latest = next((u.state for u in frame.updated if u.session == "s2"), latest)
            elif isinstance(frame, PresenceSnapshot):
                snapshots += 1
                latest = next((e.state for e in frame.entries if e.session == "s2"), latest)
            elif isinstance(frame, Event):
                event_seen = True
            if event_seen and latest == {"n": 49}:
                break
        assert snapshots >= 2  # the join snapshot, then the catch-up refresh
        assert diffs < 10  # not the 50 intermediate diffs
        assert latest == {"n": 49}


async def test_a_big_room_ticks_less_often_so_its_ephemeral_traffic_stays_bounded(autojump_clock: MockClock) -> None:
    # 4 members and a budget of 20 messages/s: one diff per 0.2 s instead of per 0.05 s tick.
    async with make_engine(ephemeral_messages_per_second=20) as engine:
        clients = [DocClient(engine.connect_memory()) for _ in range(4)]
        for c in clients:
            await c.hello()
            await c.join("r")
            await c.wait_for(PresenceSnapshot)
        await trio.sleep(1)
        with trio.move_on_after(0.01):  # what the joins caused
            while True:
                await clients[1].receive()
        start = trio.current_time()
        diffs: list[tuple[PresenceDiff, float]] = []

        async def watch() -> None:
            while True:
                diffs.append((await clients[1].wait_for(PresenceDiff), trio.current_time() - start))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for i in range(10):  # a change every 0.05 s for 0.5 s
                await clients[0].send(PresenceSet(1, None, {"n": i}))
                await trio.sleep(0.05)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
        assert 2 <= len(diffs) <= 4  # not 10
        gaps = [b[1] - a[1] for a, b in itertools.pairwise(diffs)]
        assert all(gap >= 0.2 - 1e-9 for gap in gaps), gaps
        assert diffs[-1][0].updated[0].state == {"n": 9}  # latest wins, nothing lost


async def test_the_server_speaks_at_least_once_per_heartbeat_but_not_much_more(
    autojump_clock: MockClock, connect: Connect
) -> None:
    quiet = await connect()  # sends nothing after hello, so it is closed after 2H (20 s)
    start = trio.current_time()
    sent_at = [start]
    with trio.move_on_after(30):
        while True:
            try:
                frame = await quiet.receive()
            except TransportClosed as exc:
                assert exc.code == 4005  # HEARTBEAT_TIMEOUT
                break
            assert isinstance(frame, Ping)
            sent_at.append(trio.current_time())
    assert 20 <= trio.current_time() - start <= 20 + 10 / 8 + 0.01  # 2H, plus at most one sweep (H/8)
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    assert len(gaps) >= 2 and all(5 <= gap < 10 for gap in gaps), gaps  # H = 10 s


async def test_a_name_set_just_before_a_chat_message_arrives_before_it(autojump_clock: MockClock, connect: Connect) -> None:
    # Fresh-eyes run: `plait client --name ada` sets its name, then the first chat line; the
    # event went out at once and the presence diff at the next tick, so others showed the
    # line under ada's anonymous id. A member's presence change is now sent before its event.
    a, b = await joined_pair(connect)
    await b.send(PresenceSet(1, None, {"name": "ada"}), Publish(1, 7, "chat", {"text": "hello"}, None))
    frames = []
    for _ in range(10):  # bounded: the diff, the event
        frame = await a.receive()
        frames.append(frame)
        if isinstance(frame, Event):
            break
    kinds = [type(f) for f in frames]
    assert PresenceDiff in kinds and kinds.index(PresenceDiff) < kinds.index(Event), frames
    diff = frames[kinds.index(PresenceDiff)]
    assert [(u.session, u.state) for u in diff.updated] == [("s2", {"name": "ada"})]
    # Without a presence change pending, an event does not force a tick.
    await b.send(Publish(1, 8, "chat", {"text": "again"}, None))
    assert isinstance(await a.receive(), Event)


async def test_a_publish_whose_event_would_not_fit_a_message_is_refused(autojump_clock: MockClock) -> None:
    # Second fresh-eyes run: a publish of exactly max_message_bytes was acked and came back to
    # every member as a longer event (plus session and user), which SDK members refused (1009,
    # no retry). The event is refused instead; one that fits goes out.
    limit = 4096
    async with make_engine(max_message_bytes=limit) as engine:
        a, b = DocClient(engine.connect_memory()), DocClient(engine.connect_memory())
        for c in (a, b):
            await c.hello()
            await c.join("r")
            await c.wait_for(PresenceSnapshot)
        overhead = len(encode(Publish(1, 7, "chat", "", None)))
        await a.send(Publish(1, 7, "chat", "x" * (limit - overhead - 2), None))  # the publish fits
        err = await a.expect(Error, ref=7)
        assert err.code == ErrorCode.EVENT_REJECTED and str(limit) in err.message
        # One that fits in either form (JSON names the fields: about 100 bytes more, spec §3.5).
        await a.send(Publish(1, 8, "chat", "x" * (limit - overhead - 200), None))
        assert (await a.wait_for(Ack)).ref == 8
        event = await b.wait_for(Event)
        assert event.seq == 1 and len(encode(event)) <= limit  # the refused one took no seq
        assert len(encode_json(event).encode()) <= limit
