"""Two engines in one Trio process, each with its own RedisCluster on one private Redis and one
shared store: a room shared by members of both behaves like a room on one (architecture:
Scale-out). The store here is a memory store with the shared store's numbering; the three-process
tests with PostgreSQL are in tests/e2e/test_cluster.py."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import coredis
import msgpack
import pycrdt
import pytest
import trio

from plait.engine import Engine, EngineConfig
from plait.engine.cluster import RedisCluster
from plait.engine.room._events import EventRecord
from plait.engine.room._peerstate import PeerState, PresenceRecord, encode_peer_state
from plait.protocol import (
    Access,
    AccessChanged,
    Ack,
    ChannelClosed,
    CloseCode,
    Error,
    ErrorCode,
    Event,
    Join,
    Joined,
    Leave,
    PresenceDiff,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    Update,
)
from plait.storage import MemoryStore, PostgreSQLStore, RoomData, StoredEvent
from tests.e2e.proxy import proxy_to
from tests.engine.client import DocClient, edit, until_text, yjs_client
from tests.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.slow  # a real Redis


class SharedMemoryStore(MemoryStore):
    """One memory store for both engines, numbering events as a shared store does."""

    def __init__(self) -> None:
        super().__init__()
        self.heads: dict[str, int] = {}
        self.epochs: dict[str, str] = {}

    async def next_seq(self, room: str, head: int) -> int:
        self.heads[room] = max(self.heads.get(room, 0), head) + 1
        return self.heads[room]

    async def epoch(self, room: str, proposed: str) -> str:
        return self.epochs.setdefault(room, proposed)

    async def add_event(self, room: str, head: int, key: str | None, body: bytes, keep: int) -> tuple[int, bool]:
        for stored in (await self.load(room)).events:
            if key is not None and EventRecord.from_stored(stored).key == key:
                return stored.seq, False
        seq = await self.next_seq(room, head)
        await self.append_events(room, [StoredEvent(seq, body)], keep)
        return seq, True

    async def events_since(self, room: str, seq: int) -> tuple[StoredEvent, ...]:
        return tuple(e for e in (await self.load(room)).events if e.seq > seq)

    async def compact_stored(self, room: str, merge: Callable[[list[bytes]], bytes]) -> tuple[int, bytes]:
        data = await self.load(room)
        if not data.updates:
            return 0, b""
        snapshot = merge(([data.snapshot] if data.snapshot else []) + list(data.updates))
        await self.compact(room, snapshot, len(data.updates))
        return len(data.updates), snapshot


@asynccontextmanager
async def node(
    redis: RedisServer, store: SharedMemoryStore, config: EngineConfig | None = None, stream_length: int = 10_000
) -> AsyncIterator[Engine]:
    async with RedisCluster(redis.url, store, heartbeat=0.5, stream_length=stream_length) as cluster:
        async with engine_on(cluster, store, config) as engine:
            yield engine


def engine_on(cluster: RedisCluster, store: SharedMemoryStore, config: EngineConfig | None = None) -> Engine:
    """An engine whose process is `cluster` (its Replication, SequenceAuthority and lease)."""
    return Engine(store=store, config=config, replication=cluster, sequence=cluster, lease=cluster)


async def member(engine: Engine, room: str = "r") -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello()
    await client.join(room)
    return client


async def test_an_edit_on_one_process_reaches_members_on_the_other(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b:
        alice, bob = await member(a), await member(b)
        await alice.send(Update(1, 2, edit(alice.doc, "hello")))
        with trio.fail_after(10):
            await until_text(bob, "hello")
        await bob.send(Update(1, 2, edit(bob.doc, " world")))
        with trio.fail_after(10):
            await until_text(alice, "hello world")


class HangingAppends:
    """A process's view of the shared store in which its appends never finish."""

    def __init__(self, store: SharedMemoryStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def append(self, room: str, updates: Any) -> None:
        await trio.sleep_forever()


async def test_an_edit_reaches_the_other_process_before_it_is_stored_and_outlives_its_process(redis: RedisServer) -> None:
    """a cannot store alice's edit; bob on b sees it anyway (relayed before the commit, as a's
    own members would); a dies; b stores it (a never will)."""
    store = SharedMemoryStore()
    async with node(redis, store) as b:
        bob = await member(b)
        await bob.send(PresenceSet(1, None, {"name": "bob"}))
        with trio.CancelScope() as dies:
            async with node(redis, HangingAppends(store)) as a:  # type: ignore[arg-type]
                alice = await member(a)
                await alice.send(PresenceSet(1, None, {"name": "alice"}))
                with trio.fail_after(10):  # a has heard of b (relays go to rooms another process holds)
                    await presence_names(alice, {"alice", "bob"})
                await alice.send(Update(1, 2, edit(alice.doc, "not stored yet")))
                with trio.fail_after(10):
                    await until_text(bob, "not stored yet")
                assert (await store.load("r")).updates == ()
                dies.cancel()
        with trio.fail_after(15):  # b hears a is gone within its heartbeats, and stores the edit
            while (await store.load("r")).updates == ():
                await trio.sleep(0.05)
        doc: pycrdt.Doc = pycrdt.Doc()
        for update in (await store.load("r")).updates:
            doc.apply_update(update)
        assert str(doc.get("text", type=pycrdt.Text)) == "not stored yet"


def kinds_said(cluster: RedisCluster) -> list[bytes]:
    """The kinds of the room messages `cluster` publishes from now on (`u`, `e`, `w`, ...), in
    order, as a list that grows."""
    said: list[bytes] = []
    queue_publish = cluster._queue_publish

    def counting(room: str, kind: bytes, body: bytes) -> None:
        queue_publish(room, kind, body)
        said.append(kind)

    cluster._queue_publish = counting  # type: ignore[method-assign]
    return said


async def test_edits_are_relayed_only_while_another_process_holds_the_room(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    quick = EngineConfig(room_idle_grace=0.2)
    async with (
        RedisCluster(redis.url, store, heartbeat=0.5) as cluster,
        engine_on(cluster, store, quick) as a,
        node(redis, store, quick) as b,
    ):
        said = kinds_said(cluster)
        alice = await member(a)
        await alice.send(Update(1, 2, edit(alice.doc, "alone")))
        await alice.wait_for(Ack)
        assert b"u" not in said  # nobody else holds the room
        await alice.send(PresenceSet(1, None, {"name": "alice"}))
        bob = await member(b)
        await bob.send(PresenceSet(1, None, {"name": "bob"}))
        with trio.fail_after(10):
            await presence_names(alice, {"alice", "bob"})
        await alice.send(Update(1, 3, edit(alice.doc, " together")))
        with trio.fail_after(10):
            await until_text(bob, "alone together")
        assert said.count(b"u") == 1
        await bob.send(Leave(1, 9))
        with trio.fail_after(10):
            while b.room_info("r") is not None or any("r" in rooms for rooms in cluster._peers.values()):
                await trio.sleep(0.05)  # bounded by the deadline: until b unloaded it and said so
        await alice.send(Update(1, 4, edit(alice.doc, " again")))
        await alice.wait_for(Ack)
        assert said.count(b"u") == 1


async def test_a_member_who_leaves_a_process_that_unloads_the_room_at_once_leaves_everyone_s_presence(
    redis: RedisServer,
) -> None:
    """`--room-idle-seconds 0`: b unloads the room as bob leaves, maybe before it told of his
    leave; a drops b's members when b says it no longer holds the room (he stayed there for good)."""
    store = SharedMemoryStore()
    at_once = EngineConfig(room_idle_grace=0)
    async with node(redis, store, at_once) as a, node(redis, store, at_once) as b:
        alice = await member(a)
        await alice.send(PresenceSet(1, None, {"name": "alice"}))
        for n in range(3):
            bob = await member(b)
            await bob.send(PresenceSet(1, None, {"name": f"bob{n}"}))
            with trio.fail_after(10):
                await presence_names(alice, {"alice", f"bob{n}"})
            await bob.send(Leave(1, 9))
            with trio.fail_after(10):
                await presence_names(alice, {"alice"})


async def test_presence_changes_are_published_only_while_another_process_holds_the_room(redis: RedisServer) -> None:
    """Alone in a room, a process says nothing of its members' presence to Redis; a process
    that loads the room meets everyone already there, and the one there meets the newcomer's."""
    store = SharedMemoryStore()
    quick = EngineConfig(room_idle_grace=0.2)
    async with (
        RedisCluster(redis.url, store, heartbeat=0.5) as cluster,
        engine_on(cluster, store, quick) as a,
        node(redis, store, quick) as b,
    ):
        said = kinds_said(cluster)
        alice = await member(a)
        for n in range(3):
            await alice.send(PresenceSet(1, n + 10, {"name": "alice", "n": n}))
            await alice.wait_for(Ack)
        with trio.fail_after(10):
            await presence_names(alice, {"alice"})
        assert b"e" not in said  # nobody else holds the room
        send_state = cluster._send_state
        cluster._send_state = lambda room: None  # type: ignore[method-assign]  # a does not answer b's `w`
        bob = await member(b)
        await bob.send(PresenceSet(1, 5, {"name": "bob"}))
        await bob.wait_for(Ack)
        cluster._send_state = send_state  # type: ignore[method-assign]
        await alice.send(PresenceSet(1, None, {"name": "alice2"}))
        with trio.fail_after(10):
            await presence_names(alice, {"alice2", "bob"})
            await presence_names(bob, {"alice2", "bob"})


async def test_a_process_that_keeps_the_room_gets_the_edits_of_one_that_loaded_it_again(redis: RedisServer) -> None:
    """Alice stays in the room on a; bob, on b, edits, leaves (b unloads the room) and comes
    back. The room's new copy on b numbers its updates anew, and before b hears from a it
    relays nothing: a gets bob's edits with their commit, and must not take them for the ones
    b relayed in the copy before (they were lost on a for good)."""
    store = SharedMemoryStore()
    quick = EngineConfig(room_idle_grace=0)
    async with (
        RedisCluster(redis.url, store, heartbeat=0.5) as cluster,
        engine_on(cluster, store, quick) as a,
        RedisCluster(redis.url, store, heartbeat=0.5) as other,
        engine_on(other, store, quick) as b,
    ):
        alice = await member(a)
        text = ""
        for life in range(3):
            bob = await member(b)
            with trio.fail_after(10):
                await until_text(bob, text)
                while life == 0 and not other._shared("r"):
                    await trio.sleep(0.02)  # bounded by the deadline: until b relays to a
            if life == 1:  # from now on b does not hear that a holds the room: it relays nothing
                cluster._send_state = lambda room: None  # type: ignore[method-assign]
            for k in range(3):
                await bob.send(Update(1, 10 + k, edit(bob.doc, f"<{life}.{k}>")))
                await bob.wait_for(Ack)
            text = str(bob.text)
            with trio.fail_after(10):
                await until_text(alice, text)
            await bob.send(Leave(1, 3))
            await bob.wait_for(Ack)
            with trio.fail_after(10):
                while b.room_info("r") is not None:
                    await trio.sleep(0.02)  # bounded by the deadline: until b unloaded the room


async def test_events_from_both_processes_arrive_once_and_in_seq_order_everywhere(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    slow_gaps = EngineConfig(event_gap_timeout=60)  # so they come on the stream, not from the store after a gap
    async with node(redis, store, slow_gaps) as a, node(redis, store, slow_gaps) as b:
        alice, bob = await member(a), await member(b)
        for i in range(10):
            await alice.send(Publish(1, alice.next_ref(), "chat", f"a{i}", None))
            await bob.send(Publish(1, bob.next_ref(), "chat", f"b{i}", None))
        for client in (alice, bob):
            seen: list[int] = []
            with trio.fail_after(10):
                while len(seen) < 20:
                    frame = await client.receive()
                    if isinstance(frame, Event):
                        seen.append(frame.seq)
            assert seen == list(range(1, 21))


async def test_a_yjs_editor_and_a_native_client_on_two_processes_converge(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b:
        native = await member(b)
        editor = await yjs_client(a, "/yjs/r")
        await editor.edit("from yjs")
        with trio.fail_after(10):
            await until_text(native, "from yjs")
        await native.send(Update(1, 2, edit(native.doc, "+native")))
        with trio.fail_after(10):
            await editor.until(lambda: editor.text == "from yjs+native")


async def test_a_late_process_loads_what_the_first_committed(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a:
        alice = await member(a)
        await alice.send(Update(1, 2, edit(alice.doc, "early")))
        await alice.wait_for(Ack)
        async with node(redis, store) as b:
            bob = await member(b)
            with trio.fail_after(10):
                await until_text(bob, "early")


async def test_edits_made_while_redis_is_down_reach_the_other_process_when_it_is_back(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b:
        alice, bob = await member(a), await member(b)
        await alice.send(Update(1, 2, edit(alice.doc, "before")))
        with trio.fail_after(10):
            await until_text(bob, "before")
        redis.process.kill()
        redis.process.wait()
        await alice.send(Update(1, 3, edit(alice.doc, " during")))
        with trio.fail_after(10):
            await alice.wait_for(Ack)  # committed to the store: acknowledged, Redis or not
        redis.restart()
        with trio.fail_after(20):
            await until_text(bob, "before during")
        await bob.send(Update(1, 2, edit(bob.doc, " after")))
        with trio.fail_after(20):
            await until_text(alice, "before during after")


async def presence_names(client: DocClient, names: set[str], limit: int = 500) -> None:
    """Read until the client's view of the room's presence (names by session, kept across
    calls) is exactly `names`."""
    seen: dict[str, str] = client.__dict__.setdefault("names_by_session", {})
    for _ in range(limit):
        if set(seen.values()) == names:
            return
        frame = await client.receive()
        if isinstance(frame, PresenceSnapshot):
            seen.clear()
            seen.update({e.session: (e.state or {}).get("name") for e in frame.entries})
        elif isinstance(frame, PresenceDiff):
            for e in frame.joined:
                seen[e.session] = (e.state or {}).get("name")
            for u in frame.updated:
                seen[u.session] = (u.state or {}).get("name")
            for sid in frame.left:
                seen.pop(sid, None)
    raise AssertionError(f"presence never became {names}: {seen}")


async def test_presence_is_shared_between_processes(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b:
        alice = await member(a)
        await alice.send(PresenceSet(1, None, {"name": "alice"}))
        bob = await member(b)
        await bob.send(PresenceSet(1, None, {"name": "bob"}))
        with trio.fail_after(10):
            await presence_names(bob, {"alice", "bob"})
            await presence_names(alice, {"alice", "bob"})
        await bob.send(Leave(1, 9))
        with trio.fail_after(10):
            await presence_names(alice, {"alice"})


async def test_the_members_of_a_process_that_stopped_beating_leave(redis: RedisServer) -> None:
    """A peer that says who is in the room and then dies (no heartbeat key): its members are
    gone from the room within the bound (engine/cluster/_redis.py)."""
    store = SharedMemoryStore()
    async with node(redis, store) as a:
        alice = await member(a)
        await alice.send(PresenceSet(1, None, {"name": "alice"}))
        ghost = PeerState(full=True, presence=(PresenceRecord("g1", {"id": "ghost"}, {"name": "ghost"}, False, False),))
        message = msgpack.packb(["deadbeef0000", b"e", encode_peer_state(ghost)], use_bin_type=True)
        async with coredis.Redis.from_url(redis.url) as client:
            await client.publish(b"plait:r:eph", message)
        with trio.fail_after(10):
            await presence_names(alice, {"alice", "ghost"})
            started = trio.current_time()
            await presence_names(alice, {"alice"})
        assert trio.current_time() - started < 4 * 0.5 + 1


async def test_hostile_relays_and_published_commits_break_nothing(redis: RedisServer) -> None:
    """Whatever another client of Redis publishes on a room's channels: logged, the room may
    resync, and both processes go on (commits too, not only relays: events come only with
    commits, and a gap is not filled from the store for a minute here)."""
    store = SharedMemoryStore()
    slow_gaps = EngineConfig(event_gap_timeout=60)
    async with node(redis, store, slow_gaps) as a, node(redis, store, slow_gaps) as b:
        alice, bob = await member(a), await member(b)
        hostile: list[tuple[bytes, bytes]] = [
            (b"plait:r:eph", msgpack.packb(["evil00000000", b"u", b"\xc1 not msgpack"], use_bin_type=True)),
            (b"plait:r:eph", msgpack.packb(["evil00000000", b"u", msgpack.packb([1, [b"\xff not an update"]])], use_bin_type=True)),
            (b"plait:r:eph", msgpack.packb(["evil00000000", b"u", msgpack.packb(["one", "two"])], use_bin_type=True)),
            (b"plait:r:eph", msgpack.packb(["evil00000000", b"u", msgpack.packb([1, [1, 2]])], use_bin_type=True)),
            (b"plait:r:log", b"no spaces at all"),
            (b"plait:r:log", b"0-0 not-an-id \x93"),
            (b"plait:r:log", b"0-0 99-0 \xc1 not msgpack"),
            (b"plait:r:log", b"0-0 1-1 " + msgpack.packb(["evil00000000", [b"\xff"], [[1, b"x"]], "a", None])),
        ]
        async with coredis.Redis.from_url(redis.url) as client:
            await client.set(b"plait:process:evil00000000", b"1", px=600_000)  # alive: not resynced as dead
            for channel, message in hostile:
                await client.publish(channel, message)
        await alice.send(Update(1, 2, edit(alice.doc, "fine")))
        with trio.fail_after(20):
            await until_text(bob, "fine")
        await bob.send(Update(1, 2, edit(bob.doc, " here")))
        with trio.fail_after(20):
            await until_text(alice, "fine here")
        await alice.send(Publish(1, alice.next_ref(), "chat", "still heard", None))
        with trio.fail_after(10):
            event = await bob.wait_for(Event)
        assert event.payload == "still heard"


async def test_presence_of_three_processes(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b, node(redis, store) as c:
        clients = []
        for name, engine in (("a", a), ("b", b), ("c", c)):
            client = await member(engine)
            await client.send(PresenceSet(1, None, {"name": name}))
            clients.append(client)
        for client in clients:
            with trio.fail_after(10):
                await presence_names(client, {"a", "b", "c"})


async def test_a_room_that_cannot_reach_redis_refuses_joins_and_opens_once_redis_is_back(redis: RedisServer) -> None:
    store = SharedMemoryStore()
    async with node(redis, store) as a:
        redis.process.kill()
        redis.process.wait()
        client = DocClient(a.connect_memory())
        await client.hello()
        await client.send(Join(1, "r", b"\x00", None, None))
        with trio.fail_after(10):
            refused = await client.wait_for(Error)
        assert refused.code == ErrorCode.STORAGE_UNAVAILABLE
        redis.restart()
        with trio.fail_after(20):
            for _ in range(100):  # a join once Redis answers again opens the room
                await client.send(Join(client.next_ref(), "r", b"\x00", None, None))
                frame = await client.wait_for(Joined | Error)  # type: ignore[arg-type]
                if isinstance(frame, Joined):
                    break
                await trio.sleep(0.2)
            else:
                raise AssertionError("the room never opened")


async def test_an_operators_actions_on_one_process_reach_members_on_every_process(redis: RedisServer) -> None:
    """spec/api.md in a cluster: an access change, a disconnect and a room's deletion, asked
    of one process, act on the members of the others too."""
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b:
        bob = await member(b)  # anonymous: identity anon-<n> of process b
        user = b.sessions()[0].user
        assert user is not None
        a.set_access(user, "r", Access.READ)
        with trio.fail_after(10):
            changed = await bob.wait_for(AccessChanged)
        assert changed.access == Access.READ
        carol = await member(b, "other")
        await member(a, "other")
        await a.delete_room("other")
        with trio.fail_after(10):
            closed = await carol.wait_for(ChannelClosed)
        assert closed.code == ErrorCode.ROOM_DELETED
        assert "other" not in await store.list_rooms()
        async with coredis.Redis.from_url(redis.url) as client:  # its stream went with it
            assert not await client.exists([b"plait:other:log"])
        assert a.disconnect(user=user) == 0  # none of its sessions is on process a...
        with trio.fail_after(10):
            assert await bob.wait_closed() == CloseCode.DISCONNECTED  # ...but b ends them


async def test_a_retry_on_another_process_of_an_event_stored_by_a_process_that_died_is_not_published_twice(
    redis: RedisServer,
) -> None:
    """Process a stored the event (key k1) and died before its stream entry went out; the
    client retries on process b, which has not heard of it: it is acked with the stored seq."""
    store = SharedMemoryStore()
    async with node(redis, store) as b:
        bob = await member(b)
        seq = await store.next_seq("r", 0)
        lost = EventRecord(seq, "chat", "hi", "dead-1", "anon-x", "k1", store.epochs["r"])
        await store.append_events("r", [lost.stored()], 1000)
        ref = bob.next_ref()
        await bob.send(Publish(1, ref, "chat", "hi", "k1"))
        await bob.send(Publish(1, bob.next_ref(), "chat", "next", "k2"))
        events: list[Event] = []
        acks: list[Ack] = []
        with trio.fail_after(10):
            for _ in range(100):
                if len(events) == 2 and len(acks) == 2:
                    break
                frame = await bob.receive()
                if isinstance(frame, Event):
                    events.append(frame)
                elif isinstance(frame, Ack):
                    acks.append(frame)
        assert (acks[0].ref, acks[0].value) == (ref, seq)
        assert [(e.seq, e.payload) for e in events] == [(1, "hi"), (2, "next")]  # once each, in order


async def test_a_process_given_up_for_dead_that_speaks_again_is_heard_in_full(redis: RedisServer) -> None:
    """A peer whose heartbeat lapsed (stalled, not dead) has its members dropped; when it
    speaks again, the others ask for its whole state, so members who did nothing meanwhile
    come back too."""



    store = SharedMemoryStore()
    async with node(redis, store) as a:
        alice = await member(a)
        await alice.send(PresenceSet(1, None, {"name": "alice"}))
        ghost = PeerState(full=True, presence=(PresenceRecord("g1", {"id": "ghost"}, {"name": "ghost"}, False, False),))
        async with coredis.Redis.from_url(redis.url) as client:
            await client.publish(b"plait:r:eph", msgpack.packb(["stalled00000", b"e", encode_peer_state(ghost)], use_bin_type=True))
            with trio.fail_after(10):
                await presence_names(alice, {"alice", "ghost"})
                await presence_names(alice, {"alice"})  # no heartbeat: given up
            async with client.pubsub(channels=[b"plait:r:eph"]) as listening:
                await client.set(b"plait:process:stalled00000", b"1")  # it beats again...
                nothing = PeerState(cursors=(("g1", None),))
                await client.publish(b"plait:r:eph", msgpack.packb(["stalled00000", b"e", encode_peer_state(nothing)], use_bin_type=True))
                with trio.fail_after(10):  # ...and says something: a asks everyone for their state
                    for _ in range(100):
                        message = await listening.get_message(ignore_subscribe_messages=True)
                        if message is not None and msgpack.unpackb(message["data"])[1] == b"w":
                            break
                    else:
                        raise AssertionError("no state was asked for")


class CountingStore(SharedMemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0

    async def load(self, room: str) -> RoomData:
        self.loads += 1
        return await super().load(room)


@asynccontextmanager
async def deaf_to_commits(cluster: RedisCluster) -> AsyncIterator[Callable[[], None]]:
    """While inside (until the yielded `hear` is called), `cluster` does not hear the commits
    published (as when its subscription drops a message)."""
    on_commit = cluster._on_commit
    deaf = True

    def hear() -> None:
        nonlocal deaf
        deaf = False

    def maybe(name: str, data: bytes) -> None:
        if not deaf:
            on_commit(name, data)

    cluster._on_commit = maybe  # type: ignore[method-assign]
    try:
        yield hear
    finally:
        cluster._on_commit = on_commit  # type: ignore[method-assign]


async def test_commits_a_process_did_not_hear_are_read_from_the_stream_not_the_store(redis: RedisServer) -> None:
    """Process b misses two published commits; the third shows the gap, and b reads the two
    from the room's stream: the document converges without a load from the store."""
    store = CountingStore()
    patient = EngineConfig(heartbeat=600)
    async with (
        node(redis, store, patient) as a,
        RedisCluster(redis.url, store, heartbeat=0.5) as cluster,
        engine_on(cluster, store, patient) as b,
    ):
        alice, bob = await member(a), await member(b)
        async with deaf_to_commits(cluster) as hear:
            for n, text in enumerate(["one", "two"]):
                await alice.send(Update(1, n + 10, edit(alice.doc, text)))
                await alice.wait_for(Ack)
            loads = store.loads
            hear()
            await alice.send(Update(1, 20, edit(alice.doc, "three")))
            with trio.fail_after(10):
                await until_text(bob, "onetwothree")
        assert store.loads == loads  # from the stream, not a resync


async def test_a_commit_of_a_process_not_yet_heard_of_is_read_when_a_commit_of_ones_own_follows_it(
    redis: RedisServer,
) -> None:
    """a hears nothing of b on the room's presence channel, so it does not know b holds the room
    and does not listen to its commits. a's next commit of its own comes after b's on the
    stream (Redis's answer says so): a reads b's from the stream."""
    store = CountingStore()
    patient = EngineConfig(heartbeat=600)
    async with (
        RedisCluster(redis.url, store, heartbeat=0.5) as cluster,
        engine_on(cluster, store, patient) as a,
        node(redis, store, patient) as b,
    ):
        on_message = cluster._on_message

        def deaf_to_rooms(message: Any) -> None:
            if not message["channel"].endswith(b":eph"):
                on_message(message)

        cluster._on_message = deaf_to_rooms  # type: ignore[method-assign]
        alice = await member(a)
        await alice.send(Update(1, 2, edit(alice.doc, "one;")))
        await alice.wait_for(Ack)
        bob = await member(b)
        with trio.fail_after(10):
            await until_text(bob, "one;")
        await bob.send(Update(1, 2, edit(bob.doc, "two;")))
        await bob.wait_for(Ack)
        loads = store.loads
        await alice.send(Update(1, 3, edit(alice.doc, "three;")))
        with trio.fail_after(10):
            for _ in range(50):
                if "two;" in str(alice.text):
                    break
                frame = await alice.receive()
                if isinstance(frame, Update):
                    alice.apply(frame.update)
        assert sorted(str(alice.text).split(";")) == ["", "one", "three", "two"]
        assert store.loads == loads  # from the stream, not a resync


async def test_what_is_committed_while_a_process_loads_the_room_reaches_it(redis: RedisServer) -> None:
    """b reads the room from the store, a commits, and only then b's room goes live (it heard
    nothing of it: it did not yet know a holds the room): b reads it from the stream."""

    class SlowLoad(SharedMemoryStore):
        gate: trio.Event | None = None
        loading = trio.Event()

        async def load(self, room: str) -> RoomData:
            data = await super().load(room)
            if self.gate is not None:
                self.loading.set()
                await self.gate.wait()
            return data

    store = SlowLoad()
    async with (
        node(redis, store) as a,
        RedisCluster(redis.url, store, heartbeat=0.5) as cluster,
        engine_on(cluster, store) as b,
    ):
        alice = await member(a)
        await alice.send(Update(1, 2, edit(alice.doc, "before")))
        await alice.wait_for(Ack)
        store.gate = gate = trio.Event()
        async with trio.open_nursery() as nursery:
            joined: list[DocClient] = []

            async def join() -> None:
                joined.append(await member(b))

            nursery.start_soon(join)
            with trio.fail_after(10):
                await store.loading.wait()
                async with coredis.Redis.from_url(redis.url) as client:
                    while (await numsub(client, "r"))["r"] < 2:
                        await trio.sleep(0.01)  # bounded by the deadline: until b listens too
            await alice.send(Update(1, 3, edit(alice.doc, " during")))
            await alice.wait_for(Ack)
            store.gate = None
            gate.set()
        with trio.fail_after(10):
            await until_text(joined[0], "before during")


async def test_a_process_left_behind_a_trimmed_stream_resyncs_from_the_store(redis: RedisServer) -> None:
    """Process b hears nothing while a commits far more than a room's stream keeps; the next
    commit it hears shows the gap, and what was trimmed before b read it comes from the store."""
    store = SharedMemoryStore()
    patient = EngineConfig(heartbeat=600)  # these test clients send no pings, and a loaded machine is slow
    short = 20  # entries a room's stream keeps, about
    async with (
        node(redis, store, patient, stream_length=short) as a,
        RedisCluster(redis.url, store, heartbeat=0.5, stream_length=short) as cluster,
        engine_on(cluster, store, patient) as b,
    ):
        alice, bob = await member(a), await member(b)
        async with deaf_to_commits(cluster) as hear:
            for n in range(200):  # about 200 stream entries, trimmed (by whole nodes of 100) to under 150
                await alice.send(Update(1, n + 10, edit(alice.doc, f"<{n}>")))
                await alice.wait_for(Ack)
            info = await cluster._client.xinfo_stream(b"plait:r:log")
            assert info["length"] < 150 < info["entries-added"]  # trimmed past where b stopped
            hear()
            await alice.send(Update(1, 300, edit(alice.doc, "<last>")))
            with trio.fail_after(60):
                await until_text(bob, str(alice.text), limit=5000)


async def test_a_room_deleted_through_a_process_that_does_not_hold_it_is_gone(redis: RedisServer, postgres: PostgresServer) -> None:
    """The holder's copy is discarded, not stored once more: nothing of the room is left in
    PostgreSQL (its last compaction used to write the snapshot back after the deletion)."""
    dsn = postgres.fresh_dsn()
    store, other = PostgreSQLStore(dsn, shared=True), PostgreSQLStore(dsn, shared=True)  # as two processes have
    async with node(redis, store) as a, node(redis, other) as b:  # type: ignore[arg-type]
        alice = await member(a, "secret")
        for n in range(20):
            await alice.send(Update(1, n + 10, edit(alice.doc, f"secret{n};")))
            await alice.wait_for(Ack)
        await b.delete_room("secret")
        with trio.fail_after(10):
            closed = await alice.wait_for(ChannelClosed)
        assert closed.code == ErrorCode.ROOM_DELETED
        with trio.fail_after(10):
            while a.room_info("secret") is not None:  # bounded by the deadline: until a unloaded it
                await trio.sleep(0.05)
        assert await store.load("secret") == RoomData()
        assert "secret" not in await store.list_rooms()
    await store.aclose()
    await other.aclose()


async def numsub(client: Any, *rooms: str, kind: str = "eph") -> dict[str, int]:
    """How many Redis connections listen to each room's channel of `kind`: `eph` (every process
    that holds the room) or `log` (its commits: those processes that hold it with another)."""
    counts = await client.pubsub_numsub(*(f"plait:{room}:{kind}".encode() for room in rooms))
    return {room: counts[f"plait:{room}:{kind}".encode()] for room in rooms}


async def until_numsub(client: Any, room: str, count: int, kind: str = "eph") -> None:
    with trio.fail_after(10):
        while (await numsub(client, room, kind=kind))[room] != count:
            await trio.sleep(0.05)  # bounded by the deadline: Redis has no event for it


async def test_a_rooms_traffic_reaches_only_the_processes_that_hold_it(redis: RedisServer) -> None:
    """Each process subscribes to the channels of the rooms it holds, and unsubscribes when a
    room unloads: two processes with different rooms share none of their traffic; a room
    loaded again on a process is heard again there. A room's commits are heard only while
    another process holds it: a process does not hear its own."""
    store = SharedMemoryStore()
    quick = EngineConfig(room_idle_grace=0.2)
    async with node(redis, store, quick) as a, node(redis, store, quick) as b, coredis.Redis.from_url(redis.url) as client:
        alice, bob = await member(a, "r"), await member(b, "s")
        await alice.send(PresenceSet(1, None, {"name": "alice"}))
        await alice.send(Update(1, 2, edit(alice.doc, "alone;")))
        await alice.wait_for(Ack)
        assert await numsub(client, "r", "s") == {"r": 1, "s": 1}
        assert await numsub(client, "r", "s", kind="log") == {"r": 0, "s": 0}
        assert await client.pubsub_numpat() == 0  # no process hears every room
        carol = await member(b, "r")
        assert await numsub(client, "r", "s") == {"r": 2, "s": 1}
        await until_numsub(client, "r", 2, kind="log")  # each heard of the other
        await bob.send(Leave(1, 9))
        await until_numsub(client, "s", 0)  # until b unloaded it
        await carol.send(Leave(1, 9))
        await until_numsub(client, "r", 1)
        await until_numsub(client, "r", 0, kind="log")  # a alone again
        dave = await member(b, "r")  # loaded again on b: subscribed again, and in step
        await until_numsub(client, "r", 2, kind="log")
        await alice.send(Update(1, 3, edit(alice.doc, "heard")))
        with trio.fail_after(10):
            await until_text(dave, "alone;heard")
        await dave.send(PresenceSet(1, None, {"name": "dave"}))
        with trio.fail_after(10):
            await presence_names(alice, {"alice", "dave"})


async def test_a_join_storm_over_many_rooms_subscribes_them_all(redis: RedisServer) -> None:
    """200 rooms start loading on one process at once: their subscriptions share a few
    commands, every join succeeds, and the other process's edits reach every room."""
    store = SharedMemoryStore()
    rooms = [f"room-{n}" for n in range(200)]
    async with node(redis, store) as a, node(redis, store) as b, coredis.Redis.from_url(redis.url) as client:
        writers = {room: await member(a, room) for room in rooms[:5]}
        joined: dict[str, DocClient] = {}

        async def join(room: str) -> None:
            joined[room] = await member(b, room)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for room in rooms:
                    nursery.start_soon(join, room)
        assert set(joined) == set(rooms)
        assert await numsub(client, *rooms) == {room: 2 if room in writers else 1 for room in rooms}
        for room, writer in writers.items():
            await writer.send(Update(1, 2, edit(writer.doc, room)))
        with trio.fail_after(20):
            for room in writers:
                await until_text(joined[room], room)


async def test_the_messages_a_process_hears_are_not_kept(redis: RedisServer) -> None:
    """coredis queues every message it hands to a handler for get_message() as well: the
    cluster drops them, or a process's memory would grow with everything it ever heard."""
    store = SharedMemoryStore()
    async with (
        RedisCluster(redis.url, store, heartbeat=0.5) as cluster,
        engine_on(cluster, store) as a,
        coredis.Redis.from_url(redis.url) as client,
    ):
        await member(a)
        async with client.pubsub(channels=[b"plait:r:eph"]) as listening:
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(3000):
                    pipe.publish(b"plait:r:eph", msgpack.packb(["other0000000", b"l", b""], use_bin_type=True))
                pipe.publish(b"plait:r:eph", msgpack.packb(["other0000000", b"w", b""], use_bin_type=True))
            with trio.fail_after(10):  # a answers the `w` with its state: it has handled all before it
                for _ in range(5000):
                    message = await listening.get_message(ignore_subscribe_messages=True)
                    if message is not None and msgpack.unpackb(message["data"])[0] == cluster.process:
                        break
        assert cluster._pubsub is not None
        with trio.fail_after(5):
            while cluster._pubsub._receive_stream.statistics().current_buffer_used > 10:
                await trio.sleep(0.05)  # bounded by the deadline: until the next round drops them


class LateSubscriptions(RedisCluster):
    """A cluster whose subscriptions to rooms' channels wait for `gate` (Redis slow to confirm,
    a busy process): its rooms go live before they listen."""

    gate: trio.Event | None = None

    async def _keep_subscriptions(self, pubsub: Any, *, again: bool) -> None:
        cluster = self

        class Gated:
            def __getattr__(self, name: str) -> Any:
                return getattr(pubsub, name)

            async def subscribe(self, **handlers: Any) -> None:
                if cluster.gate is not None:
                    await cluster.gate.wait()
                await pubsub.subscribe(**handlers)

        await super()._keep_subscriptions(Gated(), again=again)


async def test_a_room_live_before_it_listens_hears_what_it_missed_once_it_does(redis: RedisServer) -> None:
    """b's room loads and goes live while its subscription waits; a commits meanwhile. Once b
    listens, it reads that commit from the stream and asks for the others' presence (which
    nobody changes again)."""
    store = SharedMemoryStore()
    patient = EngineConfig(heartbeat=600)
    async with (
        node(redis, store, patient) as a,
        LateSubscriptions(redis.url, store, heartbeat=0.5) as cluster,
        engine_on(cluster, store, patient) as b,
    ):
        alice = await member(a)
        await alice.send(PresenceSet(1, None, {"name": "alice"}))
        await alice.send(Update(1, 2, edit(alice.doc, "before")))
        await alice.wait_for(Ack)
        cluster.gate = gate = trio.Event()
        bob = await member(b)
        await bob.send(PresenceSet(1, None, {"name": "bob"}))
        await alice.send(Update(1, 3, edit(alice.doc, " during")))
        await alice.wait_for(Ack)
        assert "r" not in cluster._subscribed
        gate.set()
        with trio.fail_after(10):
            await until_text(bob, "before during")
            await presence_names(bob, {"alice", "bob"})


def key_exists_now(url: str, key: bytes) -> bool:
    """EXISTS over a plain socket, without letting the event loop run."""
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n" % (len(key), key))
        return conn.recv(64) == b":1\r\n"


async def test_a_process_whose_loop_is_busy_stays_alive_to_the_others(redis: RedisServer) -> None:
    """No task runs for longer than the heartbeat key lives (a storm of joins does that to a
    process): its key is still there, so the others do not drop its members and resync."""
    store = SharedMemoryStore()
    async with RedisCluster(redis.url, store, heartbeat=0.5) as cluster:
        time.sleep(4 * 0.5)  # noqa: ASYNC251 -- the point: the event loop held up
        assert key_exists_now(redis.url, cluster._key())


async def test_a_process_whose_loop_was_stuck_tells_its_state_again_without_resyncing_every_room(
    redis: RedisServer,
) -> None:
    """b's event loop makes no progress for longer than `stuck_after`: its heartbeat stops and
    its key lapses (the others may drop its members). Once it runs again it sends the others
    its state and checks its rooms' streams, but reads no room from the store (a resync of
    every room at once queued every write behind the reads until they timed out)."""
    store = CountingStore()
    patient = EngineConfig(heartbeat=600)
    async with (
        RedisCluster(redis.url, store, heartbeat=30) as slow_checker,  # a does not check on b meanwhile
        engine_on(slow_checker, store, patient) as a,
        RedisCluster(redis.url, store, heartbeat=0.5, stuck_after=0.5) as cluster,
        engine_on(cluster, store, patient) as b,
        coredis.Redis.from_url(redis.url) as client,
    ):
        alice, bob = await member(a), await member(b)
        await bob.send(PresenceSet(1, None, {"name": "bob"}))
        with trio.fail_after(10):
            await presence_names(alice, {None, "bob"})  # type: ignore[arg-type]
        loads = store.loads
        async with client.pubsub(channels=[b"plait:r:eph"]) as listening:
            time.sleep(6 * 0.5)  # noqa: ASYNC251 -- the point: b's loop (and a's) stuck
            assert not key_exists_now(redis.url, cluster._key())
            with trio.fail_after(10):  # b says its state again, unasked
                for _ in range(100):
                    message = await listening.get_message(ignore_subscribe_messages=True)
                    if message is not None and msgpack.unpackb(message["data"])[:2] == [cluster.process, b"e"]:
                        break
                else:
                    raise AssertionError("b did not send its state")
        await bob.send(Update(1, 2, edit(bob.doc, "still")))
        with trio.fail_after(10):
            await until_text(alice, "still")
        assert store.loads == loads


async def test_rooms_resync_from_the_store_a_few_at_a_time(redis: RedisServer) -> None:
    """A peer given up for dead makes every room it was in resync: their store reads go a
    few at a time (Replication.resyncs), not all at once ahead of the store's writes."""

    class Overlapping(SharedMemoryStore):
        reading = 0
        most = 0
        reads = 0

        async def load(self, room: str) -> RoomData:
            self.reading += 1
            self.most = max(self.most, self.reading)
            try:
                await trio.sleep(0.02)  # a store read that takes a moment
                return await super().load(room)
            finally:
                self.reading -= 1
                self.reads += 1

    store = Overlapping()
    rooms = [f"room-{n}" for n in range(12)]
    async with node(redis, store) as b, coredis.Redis.from_url(redis.url) as client:
        for room in rooms:
            await member(b, room)
        reads = store.reads
        ghost = PeerState(full=True, presence=(PresenceRecord("g1", {"id": "ghost"}, {"name": "ghost"}, False, False),))
        said = msgpack.packb(["ghost0000000", b"e", encode_peer_state(ghost)], use_bin_type=True)
        for room in rooms:  # a process (no heartbeat key) speaks in every room, then is found dead
            await client.publish(f"plait:{room}:eph".encode(), said)
        with trio.fail_after(20):
            while store.reads < reads + len(rooms):
                await trio.sleep(0.05)  # bounded by the deadline: until every room resynced
        assert 1 < store.most <= 4


async def test_a_redis_failure_is_logged_without_the_members_content(redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    """A publish that times out (Redis stalled): coredis names the failed command with its
    arguments, which are what members wrote; the log says what failed, not what was sent."""
    store = SharedMemoryStore()
    async with node(redis, store) as a, node(redis, store) as b:
        alice, _ = await member(a), await member(b)
        await alice.send(PresenceSet(1, None, {"name": "alice"}))
        redis.pause()
        try:
            await alice.send(Update(1, 2, edit(alice.doc, "a private note")))
            with trio.fail_after(20):
                while not any("Redis failed" in r.getMessage() for r in caplog.records):
                    await trio.sleep(0.05)  # bounded by the deadline: until a call to Redis times out
        finally:
            redis.resume()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Redis failed" in logged and "private note" not in logged and "plait:r:" not in logged


async def test_a_process_that_speaks_is_not_given_up_for_dead_before_its_key_is_renewed(redis: RedisServer) -> None:
    """A process that was paused speaks again before it beats: while it speaks, its members
    stay (they left and came back before: presence flapped); once it is silent and its key is
    gone, they leave."""
    store = SharedMemoryStore()
    async with node(redis, store) as a, coredis.Redis.from_url(redis.url) as client:
        alice = await member(a)
        ghost = PeerState(full=True, presence=(PresenceRecord("g1", {"id": "ghost"}, {"name": "ghost"}, False, False),))
        said = msgpack.packb(["paused000000", b"e", encode_peer_state(ghost)], use_bin_type=True)
        await client.publish(b"plait:r:eph", said)
        with trio.fail_after(10):
            await presence_names(alice, {None, "ghost"})  # type: ignore[arg-type]
        left: list[str] = []

        async def watch() -> None:
            while True:
                frame = await alice.receive()
                if isinstance(frame, PresenceDiff):
                    left.extend(frame.left)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            for _ in range(12):  # 3 s: six heartbeats of a, its key never set
                await client.publish(b"plait:r:eph", said)
                await trio.sleep(0.25)
            assert left == []
            with trio.fail_after(10):
                while not left:
                    await trio.sleep(0.05)  # bounded by the deadline: silent now, it goes
            nursery.cancel_scope.cancel()


async def test_after_a_redis_restart_each_room_resyncs_once_without_a_warning_of_its_own(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A restarted Redis has lost every stream. Each room resyncs from the store once (after
    its stream position is settled), not once for the outage and again for the lost stream,
    and the loss is said once per process ("Redis is back"), not once per room."""
    store = CountingStore()
    rooms = [f"room-{n}" for n in range(6)]
    async with (
        RedisCluster(redis.url, store, heartbeat=0.5) as first,
        engine_on(first, store) as a,
        RedisCluster(redis.url, store, heartbeat=0.5) as second,
        engine_on(second, store) as b,
    ):
        pairs = [(await member(a, room), await member(b, room)) for room in rooms]
        for alice, bob in pairs:
            await alice.send(Update(1, 2, edit(alice.doc, "before")))
            with trio.fail_after(10):
                await until_text(bob, "before")
        loads = store.loads
        redis.restart()
        with trio.fail_after(30):
            while not (
                store.loads >= loads + 2 * len(rooms)
                and all(c.available and not c._behind and c.resyncs.borrowed_tokens == 0 for c in (first, second))
            ):
                await trio.sleep(0.05)  # bounded by the deadline: until both are back and settled
        for alice, bob in pairs:  # the rooms work again, both ways
            await bob.send(Update(1, 3, edit(bob.doc, " after")))
            with trio.fail_after(10):
                await until_text(alice, "before after")
        assert store.loads == loads + 2 * len(rooms)
    assert not [r for r in caplog.records if "no longer in its stream" in r.getMessage()]


@asynccontextmanager
async def alice_and_bob(
    redis: RedisServer,
    store: SharedMemoryStore,
    config: EngineConfig | None = None,
    *,
    a_url: str | None = None,
    a_heartbeat: float = 0.5,
    b_heartbeat: float = 0.5,
) -> AsyncIterator[tuple[RedisCluster, DocClient, DocClient]]:
    """Processes a (on `a_url`: a proxy, say) and b sharing `store`, alice a member of room r on
    a and bob on b, bob having seen alice's "before". Yields (a's RedisCluster, alice, bob)."""
    async with (
        RedisCluster(a_url or redis.url, store, heartbeat=a_heartbeat) as cluster,
        engine_on(cluster, store, config) as a,
        RedisCluster(redis.url, store, heartbeat=b_heartbeat) as other,
        engine_on(other, store, config) as b,
    ):
        alice, bob = await member(a), await member(b)
        await alice.send(Update(1, 2, edit(alice.doc, "before")))
        with trio.fail_after(10):
            await until_text(bob, "before")
        yield cluster, alice, bob


async def test_writes_waiting_on_a_stalled_redis_fail_together_and_the_rooms_recover(redis: RedisServer) -> None:
    """Redis stops answering while a process has written many commits: the first to time out
    fails the others with it (not each after its own timeout, 3 heartbeats apiece, while Redis
    stays stalled), and once Redis answers the rooms resync and converge."""
    async with alice_and_bob(redis, SharedMemoryStore()) as (cluster, alice, bob):
        redis.pause()
        try:
            for n in range(30):
                await alice.send(Update(1, 10 + n, edit(alice.doc, f"<{n}>")))
                await alice.wait_for(Ack)  # stored: acknowledged whatever Redis does
            with trio.fail_after(8):  # one timeout (1.5 s) and a margin; 30 in turn would take 45 s
                while cluster._written or cluster.available:
                    await trio.sleep(0.05)  # bounded by the deadline: until every write has failed
        finally:
            redis.resume()
        with trio.fail_after(15):
            await until_text(bob, str(alice.text), limit=5000)


async def test_commits_redis_refuses_are_resynced_once_it_takes_them_again(redis: RedisServer) -> None:
    """Redis refuses the commits (out of memory: -OOM) while the connection stays up, and
    messages still pass: the refusal is counted as a Redis failure (this process resyncs its
    rooms once Redis takes writes again), what was written after it still goes (the relays:
    the other process has every edit), and commits reach the stream again afterwards."""
    async with alice_and_bob(redis, SharedMemoryStore()) as (cluster, alice, bob), coredis.Redis.from_url(redis.url) as admin:
        entries = await admin.xlen(b"plait:r:log")
        await admin.config_set({"maxmemory": "1", "maxmemory-policy": "noeviction"})
        try:
            with pytest.raises(coredis.exceptions.ResponseError, match="OOM"):
                await admin.set(b"probe", b"1")
            for n in range(3):
                await alice.send(Update(1, 10 + n, edit(alice.doc, f"<{n}>")))
                await alice.wait_for(Ack)
            with trio.fail_after(10):
                while cluster.available:
                    await trio.sleep(0.05)  # bounded by the deadline: until a refusal is read
            with trio.fail_after(10):
                await until_text(bob, str(alice.text))  # relayed: publishes pass
            await alice.send(PresenceSet(1, 30, {"name": "alice"}))
            await alice.wait_for(Ack)
            with trio.fail_after(10):
                await presence_names(bob, {"alice", None})  # type: ignore[arg-type]
                while cluster._written:
                    await trio.sleep(0.05)  # bounded by the deadline: until it is answered
            assert not cluster.available  # still refusing writes: not back (it flapped, resyncing every room each time)
        finally:
            await admin.config_set({"maxmemory": "0"})
        await alice.send(Update(1, 20, edit(alice.doc, "<after>")))
        await alice.wait_for(Ack)
        with trio.fail_after(15):
            await until_text(bob, str(alice.text), limit=5000)
            while not (cluster.available and await admin.xlen(b"plait:r:log") > entries):
                await trio.sleep(0.05)  # bounded by the deadline: until a commit is taken again


async def test_a_process_that_was_not_running_when_its_write_timed_out_does_not_blame_redis(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """This process's loop is held up (as by kill -STOP, or a long stall) past the timeout of a
    write it is waiting on: it gives Redis another timeout instead of taking it for failed
    (before: "Redis failed", and every room resynced from the store once Redis answered)."""
    store = CountingStore()
    async with alice_and_bob(redis, store, b_heartbeat=5) as (cluster, alice, bob):  # b: not troubled by Redis's pause
        loads = store.loads
        failures: list[Exception] = []

        async def read() -> None:  # any other call (a heartbeat, a stream read) alike
            try:
                await cluster._ask(cluster._client.get(b"anything"))
            except Exception as exc:
                failures.append(exc)
                cluster._failed("a read", exc)

        redis.pause()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await alice.send(Update(1, 3, edit(alice.doc, " paused")))
                await alice.wait_for(Ack)
                with trio.fail_after(5):
                    while not cluster._written:
                        await trio.sleep(0.01)  # bounded by the deadline: until the commit is written
                await trio.sleep(0.1)  # its answer awaited, due 1.5 s on
                time.sleep(2.5)  # noqa: ASYNC251 -- the point: the loop held up past that
                await trio.sleep(0.2)  # the loop runs again, sees the deadline passed, no answer yet
        finally:
            redis.resume()
        assert [type(e).__name__ for e in failures] == ["WokeLate"]  # given up, not blamed on Redis
        with trio.fail_after(10):
            await until_text(bob, "before paused")
            while cluster._written:
                await trio.sleep(0.05)  # bounded by the deadline: until the answer is read
        assert cluster.available
        assert store.loads == loads  # no room resynced
    assert not [r for r in caplog.records if "Redis failed" in r.getMessage()]


@pytest.mark.parametrize(("edits", "bound"), [(1, None), (40, 2000)], ids=["kept", "over the bound"])
async def test_what_a_process_committed_while_only_it_was_cut_off_from_redis_reaches_the_others(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, edits: int, bound: int | None
) -> None:
    """Only process a loses Redis for a while (its link down; b and Redis are fine): what its
    members write meanwhile is stored, and waits for Redis; past OUTBOX_MAX_BYTES it is
    dropped, and the others resync the room from the store once a is back. Either way b
    converges, and the edits after it apply there too."""
    if bound is not None:
        import plait.engine.cluster._redis as redis_cluster

        monkeypatch.setattr(redis_cluster, "OUTBOX_MAX_BYTES", bound)
    store = SharedMemoryStore()
    async with proxy_to(redis.port) as link:
        async with alice_and_bob(redis, store, a_url=f"redis://127.0.0.1:{link.port}") as (cluster, alice, bob):
            link.down = True
            link.cut()
            with trio.fail_after(10):
                while cluster.available:
                    await trio.sleep(0.05)  # bounded by the deadline: until a knows it is cut off
            for n in range(edits):
                await alice.send(Update(1, 10 + n, edit(alice.doc, f" <{n:02}>")))
                await alice.wait_for(Ack)  # stored
            if bound is not None:  # 40 commits and relays: well over 2,000 bytes
                assert cluster._outbox_bytes <= bound
                assert any("waiting for Redis dropped" in r.getMessage() for r in caplog.records)
            link.down = False
            with trio.fail_after(10):
                while not cluster.available:
                    await trio.sleep(0.05)  # bounded by the deadline: until a is back
            await alice.send(Update(1, 100, edit(alice.doc, " after")))
            await alice.wait_for(Ack)
            with trio.fail_after(20):
                await until_text(bob, str(alice.text), limit=5000)


async def test_commits_on_their_way_to_redis_when_the_link_broke_reach_the_others(redis: RedisServer) -> None:
    """a's link to Redis breaks while a commit (and its relay) are on the wire: Redis never got
    them, and b, whose own link is fine, has no reason to look in the store: a tells it to
    (`r`) once it is back, and b converges."""
    store = SharedMemoryStore()
    patient = EngineConfig(commit_delay=0)
    async with proxy_to(redis.port, delay=0.3) as link:
        async with alice_and_bob(redis, store, patient, a_url=f"redis://127.0.0.1:{link.port}", a_heartbeat=1.0) as (cluster, alice, bob):
            await alice.send(Update(1, 3, edit(alice.doc, " during")))
            await alice.wait_for(Ack)  # stored, and its commit written: on the wire for 0.3 s
            with trio.fail_after(5):
                while not cluster._written:
                    await trio.sleep(0.01)  # bounded by the deadline: until the commit is written
            link.cut()  # what was on the wire is lost
            await alice.send(Update(1, 4, edit(alice.doc, " after")))
            await alice.wait_for(Ack)
            with trio.fail_after(20):
                await until_text(bob, "before during after")
