"""Rooms: join sequence, document sync and fan-out, acks after durability, lifecycle."""

from __future__ import annotations

from collections.abc import Sequence

import pycrdt
import pytest
import trio

from plait.engine import Engine, EngineConfig
from plait.protocol import (
    Ack,
    ChannelClosed,
    Error,
    ErrorCode,
    Join,
    Joined,
    Leave,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    SyncStep1,
    SyncStep2,
    Update,
)
from plait.storage import MemoryStore, RoomData, StorageUnavailable, StoredEvent

from .client import DocClient
from .conftest import Connect, make_engine


def edit(doc: pycrdt.Doc, text: str) -> bytes:
    """Append `text` to the doc's "text" and return the update it made."""
    before = doc.get_state()
    doc.get("text", type=pycrdt.Text).insert(len(doc.get("text", type=pycrdt.Text)), text)
    return doc.get_update(before)


async def member_of(engine: Engine, room: str) -> DocClient:
    """A client of `engine` that has joined `room` and read its presence snapshot."""
    client = DocClient(engine.connect_memory())
    await client.hello()
    await client.join(room)
    await client.wait_for(PresenceSnapshot)
    return client


async def test_join_sends_joined_sync_and_presence_in_order(autojump_clock: trio.testing.MockClock, connect: Connect) -> None:
    a = await connect()
    await a.send(__import__("plait.protocol").protocol.Join(1, "r", b"\x00", None))
    joined = await a.expect(Joined, ref=1, channel=1, access=2, head=0, resumed=None)
    await a.expect(SyncStep1, channel=joined.channel)
    await a.expect(SyncStep2, channel=joined.channel, ref=None)
    snap = await a.expect(PresenceSnapshot, channel=joined.channel)
    assert [(e.session, e.identity["id"]) for e in snap.entries] == [("s1", snap.entries[0].identity["id"])]


async def test_updates_fan_out_to_others_not_the_sender_and_ack_after_storing(autojump_clock: trio.testing.MockClock,
    connect: Connect, store: MemoryStore
) -> None:
    a, b = await connect(), await connect()
    for c in (a, b):
        await c.join("r")
        await c.wait_for(PresenceSnapshot)
    update = edit(a.doc, "hello")
    await a.send(Update(1, 7, update))
    ack = await a.wait_for(Ack)
    assert ack.ref == 7
    assert (await store.load("r")).updates, "acked before the update was stored"
    got = await b.wait_for(Update)
    b.apply(got.update)
    assert str(b.text) == "hello"
    # The sender never gets its own update back.
    assert not any(isinstance(f, Update) for f in a.inbox)


async def test_offline_edits_reach_the_server_on_join(autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine) -> None:
    a = await connect()
    await a.join("r")
    await a.wait_for(PresenceSnapshot)
    await a.send(Update(1, 1, edit(a.doc, "server ")))
    await a.wait_for(Ack)

    offline = DocClient(engine.connect_memory())
    await offline.hello()
    edit(offline.doc, "offline")
    joined = await offline.join("r", state_vector=offline.doc.get_state())
    step1 = await offline.expect(SyncStep1)
    step2 = await offline.expect(SyncStep2)
    offline.apply(step2.update)
    await offline.send(SyncStep2(joined.channel, 2, offline.doc.get_update(step1.state_vector)))
    assert (await offline.wait_for(Ack)).ref == 2
    from_offline = await a.wait_for(Update)
    a.apply(from_offline.update)
    assert str(a.text) == str(offline.text)
    assert "offline" in str(a.text) and "server" in str(a.text)


async def test_invalid_update_is_refused_and_room_keeps_working(autojump_clock: trio.testing.MockClock, connect: Connect) -> None:
    a, b = await connect(), await connect()
    for c in (a, b):
        await c.join("r")
        await c.wait_for(PresenceSnapshot)
    await a.send(Update(1, 3, b"\xff\xff\xff"))
    err = await a.wait_for(Error)
    assert (err.ref, err.code) == (3, ErrorCode.INVALID_UPDATE)
    await a.send(Update(1, 4, edit(a.doc, "ok")))
    assert (await a.wait_for(Ack)).ref == 4
    b.apply((await b.wait_for(Update)).update)
    assert str(b.text) == "ok"


async def test_idle_room_unloads_and_reloads_from_the_store(
    autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine, store: MemoryStore
) -> None:
    a = await connect()
    await a.join("r")
    await a.wait_for(PresenceSnapshot)
    await a.send(Update(1, 1, edit(a.doc, "kept")))
    await a.wait_for(Ack)
    await a.transport.aclose()
    await trio.sleep(CONFIG_IDLE + 1)
    assert engine.statistics()["rooms"] == 0
    stored = await store.load("r")
    assert stored.snapshot is not None and not stored.updates  # compacted on unload
    b = await connect()
    await b.join("r")
    await b.expect(SyncStep1)
    b.apply((await b.expect(SyncStep2)).update)
    assert str(b.text) == "kept"


CONFIG_IDLE = 7  # conftest CONFIG.room_idle_grace


async def test_a_room_idle_grace_of_zero_unloads_as_the_last_member_leaves(autojump_clock: trio.testing.MockClock) -> None:
    """`plait serve --room-idle-seconds 0`: stored and unloaded at once, and a member who comes
    back finds what was written."""
    store = MemoryStore()
    async with make_engine(store=store, room_idle_grace=0) as engine:
        a = await member_of(engine, "r")
        await a.send(Update(1, 1, edit(a.doc, "kept")))
        await a.wait_for(Ack)
        await a.send(Leave(1, 2))
        await a.wait_for(Ack)
        await trio.sleep(1)  # well inside any other grace: the flush's own time
        assert engine.statistics()["rooms"] == 0
        b = DocClient(engine.connect_memory())
        await b.hello()
        await b.join("r")
        await b.expect(SyncStep1)
        b.apply((await b.expect(SyncStep2)).update)
        assert str(b.text) == "kept"


async def test_a_join_racing_an_unload_gets_a_working_room(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    slow = SlowCompactStore(store)
    async with make_engine(store=slow) as engine:
        a = await member_of(engine, "r")
        await a.send(Update(1, 1, edit(a.doc, "before")))
        await a.wait_for(Ack)
        await a.transport.aclose()
        await slow.compacting.wait()  # the room is draining now, its flush half done
        b = DocClient(engine.connect_memory())
        await b.hello()
        await b.join("r")
        await b.expect(SyncStep1)
        b.apply((await b.expect(SyncStep2)).update)
        assert str(b.text) == "before"


class SlowCompactStore(MemoryStore):
    def __init__(self, inner: MemoryStore) -> None:
        super().__init__()
        self.compacting = trio.Event()

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None:
        self.compacting.set()
        await trio.sleep(1)
        await super().compact(room, snapshot, covered)


class FailingLoadStore(MemoryStore):
    async def load(self, room: str) -> RoomData:
        raise StorageUnavailable("disk on fire")


async def test_a_room_that_fails_to_load_refuses_joins(autojump_clock: trio.testing.MockClock) -> None:
    store = FailingLoadStore()
    await store.append("r", [b"precious"])
    async with make_engine(store=store) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.send(__import__("plait.protocol").protocol.Join(1, "r", None, None))
        err = await a.expect(Error, ref=1)
        assert err.code == ErrorCode.STORAGE_UNAVAILABLE
    assert store._rooms["r"].updates == [b"precious"]


class FailingAppendStore(MemoryStore):
    async def append(self, room: str, updates: object) -> None:
        raise StorageUnavailable("disk full")


async def test_a_store_failure_never_acks_and_closes_the_rooms_channels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with make_engine(store=FailingAppendStore()) as engine:
        a = await member_of(engine, "r")
        await a.send(Update(1, 5, edit(a.doc, "x")))
        sent_at = trio.current_time()
        err = await a.wait_for(Error)
        assert (err.ref, err.code) == (5, ErrorCode.STORAGE_UNAVAILABLE)
        # Told once the store stayed unavailable for the outage grace, not before.
        assert EngineConfig().store_outage_grace - 1.5 <= trio.current_time() - sent_at <= EngineConfig().store_outage_grace
        closed = await a.wait_for(ChannelClosed)
        assert closed.code == ErrorCode.STORAGE_UNAVAILABLE
        # Other rooms are unaffected.
        assert (await a.join("other")).channel == 2


class FlakyStore(MemoryStore):
    """Refuses `failures` appends and event appends as unavailable (a database restarting),
    then works; counts what it stored."""

    def __init__(self, failures: int, events_fail: bool = False) -> None:
        super().__init__()
        self.failures, self.events_fail = failures, events_fail
        self.appended: list[bytes] = []

    def _refuse(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StorageUnavailable("connection to the database lost")

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        if not self.events_fail:
            self._refuse()
        await super().append(room, updates)
        self.appended.extend(updates)

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None:
        if self.events_fail:
            self._refuse()
        await super().append_events(room, events, keep)


@pytest.mark.parametrize("events_fail", [False, True])
async def test_a_short_store_outage_delays_acks_and_loses_nothing(
    autojump_clock: trio.testing.MockClock, events_fail: bool
) -> None:
    store = FlakyStore(failures=4, events_fail=events_fail)
    async with make_engine(store=store) as engine:
        a = await member_of(engine, "r")
        await a.send(Update(1, 5, edit(a.doc, "x")), Publish(1, 6, "chat", "hi", None))
        frames = []
        for _ in range(100):
            frames.append(await a.receive())
            if frames[-1] == Ack(6, 1):
                break
        answers = [f for f in frames if isinstance(f, (Ack, Error, ChannelClosed))]
        assert answers == [Ack(5, None), Ack(6, 1)]
        assert store.failures == 0
        assert len(store.appended) == 1  # stored once, not once per try
        data = await store.load("r")
        assert [e.seq for e in data.events] == [1]


class SlowThenFailingStore(FlakyStore):
    """Its first append hangs past the outage grace before it is refused (a database that
    stopped answering, until the call's own timeout); the next `failures - 1` are refused at once."""

    hung = False

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        if not self.hung:
            self.hung = True
            await trio.sleep(EngineConfig().store_outage_grace + 2)
        await super().append(room, updates)


async def test_a_commit_whose_first_try_failed_late_is_tried_again(autojump_clock: trio.testing.MockClock) -> None:
    store = SlowThenFailingStore(failures=1)
    async with make_engine(store=store) as engine:
        a = await member_of(engine, "r")
        await a.send(Update(1, 5, edit(a.doc, "x")))
        assert await a.wait_for(Ack | Error) == Ack(5, None)  # type: ignore[arg-type]
        assert len(store.appended) == 1


async def test_a_store_that_keeps_failing_late_fails_the_room_a_second_after_its_first_refusal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The bound members wait stays the grace (plus the store's own wait), not twice it."""
    store = SlowThenFailingStore(failures=1000)
    async with make_engine(store=store) as engine:
        a = await member_of(engine, "r")
        await a.send(Update(1, 5, edit(a.doc, "x")))
        sent_at = trio.current_time()
        err = await a.wait_for(Error)
        assert err.code == ErrorCode.STORAGE_UNAVAILABLE
        first_refusal = EngineConfig().store_outage_grace + 2
        assert first_refusal + 0.5 < trio.current_time() - sent_at <= first_refusal + 1.0
    [failed] = [r for r in caplog.records if r.getMessage().startswith("room 'r' failed:")]
    assert not failed.exc_info  # an outage: one line, no traceback


async def test_server_side_handle_edits_reach_members_and_storage(autojump_clock: trio.testing.MockClock,
    connect: Connect, engine: Engine, store: MemoryStore
) -> None:
    a = await connect()
    await a.join("r")
    await a.wait_for(PresenceSnapshot)
    async with engine.room("r") as room:
        room.doc.get("text", type=pycrdt.Text).insert(0, "from server")
        await room.flushed()
        seq = await room.publish("notice", {"text": "hi"})
        assert [e.session for e in room.presence()] == ["s1"]
    a.apply((await a.wait_for(Update)).update)
    assert str(a.text) == "from server"
    assert seq == 1
    assert (await store.load("r")).updates


@pytest.mark.parametrize("frames", [1, 5])
async def test_shutdown_closes_sessions_going_away_and_flushes(frames: int, autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    async with make_engine(store=store) as engine:
        a = await member_of(engine, "r")
        for i in range(frames):
            await a.send(Update(1, None, edit(a.doc, str(i))))
        await trio.testing.wait_all_tasks_blocked()
    assert await a.wait_closed() == 4008
    reloaded = pycrdt.Doc()
    data = await store.load("r")
    if data.snapshot:
        reloaded.apply_update(data.snapshot)
    for u in data.updates:
        reloaded.apply_update(u)
    assert str(reloaded.get("text", type=pycrdt.Text)) == str(a.text)


class TemplateHooks(__import__("plait.engine").engine.Hooks):
    def __init__(self) -> None:
        super().__init__()
        self.stored: list[tuple[str, bytes]] = []

    async def on_room_loaded(self, room: str, doc: pycrdt.Doc) -> None:
        if room == "broken":
            raise RuntimeError("template service down")
        text = doc.get("text", type=pycrdt.Text)
        if not str(text):
            text.insert(0, f"# {room}\n")

    async def on_room_stored(self, room: str, snapshot: bytes) -> None:
        self.stored.append((room, snapshot))


async def test_room_hooks_seed_new_rooms_and_see_every_stored_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    store, hooks = MemoryStore(), TemplateHooks()
    async with make_engine(store=store, hooks=hooks) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.join("notes")
        await a.expect(SyncStep1)
        a.apply((await a.expect(SyncStep2)).update)
        assert str(a.text) == "# notes\n"
        await a.send(__import__("plait.protocol").protocol.Join(2, "broken", None, None))
        assert (await a.wait_for(Error)).code == ErrorCode.STORAGE_UNAVAILABLE
    # Unloading stored a snapshot, and the hook saw it; reloading does not seed twice.
    assert [room for room, _ in hooks.stored] == ["notes"]
    async with make_engine(store=store, hooks=hooks) as engine:
        async with engine.room("notes") as room:
            assert str(room.doc.get("text", type=pycrdt.Text)) == "# notes\n"


class SlowAppendStore(MemoryStore):
    async def append(self, room: str, updates: object) -> None:
        await trio.sleep(1)
        await super().append(room, updates)  # type: ignore[arg-type]


async def test_answers_come_in_request_order_even_when_an_error_is_immediate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with make_engine(store=SlowAppendStore()) as engine:
        a = await member_of(engine, "r")
        # One message: a good update (its ack waits ~1 s for the store), then a bad one.
        await a.send(Update(1, 1, edit(a.doc, "ok")), Update(1, 2, b"\xff\xff\xff"))
        first = await a.wait_for((Ack, Error))  # type: ignore[arg-type]
        second = await a.wait_for((Ack, Error))  # type: ignore[arg-type]
        assert (type(first), first.ref) == (Ack, 1)
        assert (type(second), second.ref, second.code) == (Error, 2, ErrorCode.INVALID_UPDATE)


async def test_a_burst_of_updates_in_one_message_is_applied_once_and_acked_in_order(
    autojump_clock: trio.testing.MockClock, connect: Connect, store: MemoryStore
) -> None:
    a, b = await connect(), await connect()
    for c in (a, b):
        await c.join("r")
        await c.wait_for(PresenceSnapshot)
    burst = [Update(1, 10 + i, edit(a.doc, str(i))) for i in range(5)]
    await a.send(*burst)
    acks = [(await a.wait_for(Ack)).ref for _ in range(5)]
    assert acks == [10, 11, 12, 13, 14]
    b.apply((await b.wait_for(Update)).update)
    assert str(b.text) == "01234"  # one merged update carried the whole burst
    assert len((await store.load("r")).updates) == 1


async def test_joiners_with_empty_documents_share_one_encoded_sync(autojump_clock: trio.testing.MockClock, engine: Engine) -> None:
    # A join storm on a large document must not hold one encoded copy per joiner.
    async with engine.hold_room("r") as room:
        room.doc.get("text", type=pycrdt.Text).insert(0, "x" * 100_000)
        first = room._sync_step2_for(b"\x00")
        assert room._sync_step2_for(b"\x00") is first
        again = room._sync_step2_for(b"\x00")
        assert [f.for_channel(1) for f in first] == [f.for_channel(1) for f in again]
        assert all(a.for_channel(1) is b.for_channel(1) for a, b in zip(first, again, strict=True))
        room.doc.get("text", type=pycrdt.Text).insert(0, "y")
        fresh = room._sync_step2_for(b"\x00")
        assert fresh is not first  # a changed document is encoded again
        doc = pycrdt.Doc()
        for frame in fresh:
            doc.apply_update(frame.frame.update)  # type: ignore[attr-defined]
        assert str(doc.get("text", type=pycrdt.Text)) == "y" + "x" * 100_000


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.snapshot_bytes_written = 0
        self.compactions = 0

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None:
        self.compactions += 1
        self.snapshot_bytes_written += len(snapshot)
        await super().compact(room, snapshot, covered)


async def test_compacting_a_growing_document_costs_in_proportion_to_what_was_appended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A fresh user appended 300 updates of 96 KB: with a fixed 1 MiB threshold the room wrote
    # its whole (up to 29 MB) document every 11 appends, and the writer slowed tenfold. Here,
    # 120 appends of 10 kB against a 64 kB threshold: a fixed threshold would rewrite the
    # document ~18 times (~11 MB of snapshots for 1.2 MB appended); proportional, a handful.
    store = CountingStore()
    async with make_engine(store=store, compact_after_bytes=64_000, compact_after_updates=10_000) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.join("big")
        await a.wait_for(PresenceSnapshot)
        for i in range(120):
            await a.send(Update(1, i + 1, edit(a.doc, f"{i:05d}" * 2000)))
            await a.wait_for(Ack)
        appended = len(a.doc.get_update())
        assert appended > 1_100_000
        assert store.compactions <= 8, store.compactions
        assert store.snapshot_bytes_written <= 3 * appended, (store.snapshot_bytes_written, appended)
        # A log as long as the snapshot at most (and the threshold): loading replays little.
        stored = await store.load("big")
        assert sum(map(len, stored.updates)) <= max(64_000, len(stored.snapshot or b"")) + 10_100
    stored = await store.load("big")
    assert not stored.updates  # folded in on unload


class AppendCountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.appends: list[int] = []  # updates per append

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        self.appends.append(len(updates))
        await super().append(room, updates)


async def test_members_writing_together_share_a_commit_a_lone_writer_is_not_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """EngineConfig.commit_delay (spec §4.1): once a second member writes within the delay, the
    next commit waits for it, so one commit stores both members' updates and only their acks
    wait; the fan-out does not. A member writing alone gets its ack at once."""
    store = AppendCountingStore()
    async with make_engine(store=store, commit_delay=0.01) as engine:
        a, b = await member_of(engine, "r"), await member_of(engine, "r")
        start = trio.current_time()
        await a.send(Update(1, 1, edit(a.doc, "a")))
        assert await a.wait_for(Ack) == Ack(1, None)
        assert trio.current_time() == start, "a member writing alone was held"
        b.apply((await b.wait_for(Update)).update)

        await b.send(Update(1, 2, edit(b.doc, "b")))  # another writer, within the delay
        await a.send(Update(1, 3, edit(a.doc, "c")))
        a.apply((await a.wait_for(Update)).update)
        b.apply((await b.wait_for(Update)).update)
        assert trio.current_time() == start, "the fan-out waited for the commit"
        assert await b.wait_for(Ack) == Ack(2, None)
        assert trio.current_time() >= start + 0.01
        assert await a.wait_for(Ack) == Ack(3, None)
        assert store.appends == [1, 2], "the two members' updates were not stored in one commit"
        assert str(a.text) == str(b.text) and len(str(a.text)) == 3


async def answers(client: DocClient, count: int) -> list[int]:
    """The refs of the next `count` answers (acks and errors) the client gets."""
    refs: list[int] = []
    for _ in range(1000):
        frame = await client.receive()
        if isinstance(frame, (Ack, Error)) and frame.ref is not None:
            refs.append(frame.ref)
            if len(refs) == count:
                return refs
    raise AssertionError(f"only {refs} answered")


async def test_an_answer_that_needs_no_commit_waits_behind_one_under_way(autojump_clock: trio.testing.MockClock) -> None:
    """spec §4.1: answers come in request order. A presence ack sent while the commit of an
    earlier update is under way went out first (it queued only behind answers not yet taken
    by a commit)."""
    async with make_engine(store=SlowAppendStore()) as engine:
        a = await member_of(engine, "r")
        await a.send(Update(1, 5, edit(a.doc, "x")))
        await trio.sleep(0.01)  # the commit is under way
        await a.send(PresenceSet(1, 6, {"name": "ada"}), Publish(1, 7, "chat", "hi", None))
        assert await answers(a, 3) == [5, 6, 7]


async def test_a_leave_is_answered_after_every_request_before_it(autojump_clock: trio.testing.MockClock) -> None:
    """spec §4.1: every request is answered, in order. Updates, a publish and a leave sent
    together, while another member writes (the commit waits commit_delay): the update acks
    were dropped because the member had left, and the leave's ack came alone."""
    async with make_engine(commit_delay=0.01) as engine:
        a, b = await member_of(engine, "r"), await member_of(engine, "r")
        await b.send(Update(1, 1, edit(b.doc, "b")))
        await a.send(Update(1, 2, edit(a.doc, "a")), Update(1, 3, edit(a.doc, "a")), Publish(1, 4, "chat", "bye", None),
                     Leave(1, 5))
        assert await answers(a, 4) == [2, 3, 4, 5]


async def test_an_outage_s_refused_loads_log_one_line_each_without_a_traceback(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """During a long outage clients retry their joins: a traceback per refusal buried the log
    (188 of them in 90 s with five clients). A fault that is not an outage keeps its traceback."""

    class Down(MemoryStore):
        fault: Exception = StorageUnavailable("database unreachable")

        async def load(self, room: str) -> RoomData:
            raise self.fault

    store = Down()
    async with make_engine(store=store) as engine:
        for fault in (StorageUnavailable("database unreachable"), RuntimeError("a bug")):
            store.fault = fault
            caplog.clear()
            client = DocClient(engine.connect_memory())
            await client.hello()
            await client.send(Join(1, "r", None, None))
            assert (await client.wait_for(Error)).code == ErrorCode.STORAGE_UNAVAILABLE
            failed = [r for r in caplog.records if "failed to load" in r.getMessage()]
            assert len(failed) == 1
            assert (not failed[0].exc_info) == isinstance(fault, StorageUnavailable)
