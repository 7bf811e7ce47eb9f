"""Presence, cursors, typing and Yjs awareness shared by several processes serving one room
(scale-out): what members on each process see of the others' sessions.

Rules of this module: each "process" is an Engine of its own (session ids a1, a2, ... on p1,
b1, b2, ... on p2). `Link` gives room "r"'s Ephemeral on each of them a `replicate` that
hands its bodies to every other process's `apply_remote`, in order, from a task of the test
(as Redis pub/sub would, a moment later); when a process loads the room it exchanges full
states with those that hold it already (what the lead's transport does on load). A process is
"killed" by cutting its link and telling the others `drop_process`. Everything runs under
MockClock over memory transports."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig, Hooks, Identity
from plait.engine._metrics import Metrics
from plait.engine.room import Fanout, Member, MemberSession, _lifecycle
from plait.engine.room._ephemeral import Ephemeral
from plait.engine.room._peerstate import decode_peer_state
from plait.protocol import (
    Access,
    CursorMove,
    Cursors,
    Frame,
    Leave,
    PresenceDiff,
    PresenceSet,
    PresenceSnapshot,
    Typing,
    TypingState,
    YMessage,
    YQueryAwareness,
    decode,
)
from plait.storage import MemoryStore

from .client import DocClient, YjsClient, assert_engine_serves, yjs_client
from .conftest import CONFIG


class Tokens(Hooks):
    """The token is the user's id: a client that reconnects with its token is the same user."""

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": token or "anon"}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return Access.WRITE


class Link:
    """Passes each process's bodies for room "r" to the other processes, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.processes: dict[int, str] = {}
        """id(an engine's config) -> its process name: how a new Ephemeral finds its process."""
        self.rooms: dict[str, Ephemeral] = {}
        self.sent: dict[str, list[bytes]] = {}
        self.cut: set[str] = set()
        self.exchange = True
        self._send, self._receive = trio.open_memory_channel[tuple[str, str, bytes]](10_000)
        monkeypatch.setattr(_lifecycle, "Ephemeral", self._ephemeral)

    def _ephemeral(
        self, name: str, config: EngineConfig, members: dict[MemberSession, Member], fanout: Fanout, metrics: Metrics,
        replicate: Callable[[bytes], None] | None = None,
    ) -> Ephemeral:
        """Room's `Ephemeral(name, config, members, fanout, metrics)`, with a `replicate` (these
        engines have no Replication of their own: this link is it)."""
        assert replicate is None
        process = self.processes[id(config)]
        if name != "r":
            return Ephemeral(name, config, members, fanout, metrics)
        room = Ephemeral(name, config, members, fanout, metrics, replicate=lambda body: self._publish(process, body))
        if self.exchange:  # what a process that loads the room asks its peers for, and tells them
            for peer, other in self.rooms.items():
                if peer not in self.cut:
                    self._send.send_nowait((process, peer, other.local_state()))
                    self._send.send_nowait((peer, process, room.local_state()))
        self.rooms[process] = room
        return room

    def _publish(self, process: str, body: bytes) -> None:
        self.sent.setdefault(process, []).append(body)
        for peer in self.rooms:
            if peer != process and process not in self.cut:
                self._send.send_nowait((peer, process, body))

    async def run(self) -> None:
        async for to, sender, body in self._receive:
            if sender not in self.cut and to not in self.cut:
                self.rooms[to].apply_remote(sender, body)

    def kill(self, process: str) -> None:
        """The process is gone: nothing more from it; its peers notice (a lapsed heartbeat)."""
        self.cut.add(process)
        for peer, room in self.rooms.items():
            if peer != process:
                room.drop_process(process)

    def sessions_sent(self, process: str) -> set[str]:
        """Every session id `process` has told its peers anything about."""
        sids: set[str] = set()
        for body in self.sent.get(process, []):
            r = decode_peer_state(body)
            sids |= {p.session for p in r.presence} | set(r.left) | {c[0] for c in r.cursors}
            sids |= set(r.typing or ()) | {a.session for a in r.awareness}
        return sids


@asynccontextmanager
async def cluster(link: Link, count: int = 2, **config: Any) -> AsyncIterator[list[Engine]]:
    """`count` engines linked through `link`, processes p1, p2, ... (sessions a1.., b1.., ...)."""
    engines = []
    for n in range(count):
        conf = dataclasses.replace(CONFIG, **config)
        process, prefix = f"p{n + 1}", "abcdefgh"[n]
        link.processes[id(conf)] = process
        numbers = itertools.count(1)
        engines.append(Engine(store=MemoryStore(), hooks=Tokens(), config=conf,
                              session_ids=lambda prefix=prefix, numbers=numbers: f"{prefix}{next(numbers)}"))  # type: ignore[misc]
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            async with engines[0]:
                if count == 1:
                    yield engines
                else:
                    async with engines[1]:
                        yield engines
            nursery.cancel_scope.cancel()


class Watcher:
    """A native member of room "r" that keeps what it was sent: presence, cursors, typers,
    and every presence frame in order."""

    def __init__(self, client: DocClient, max_bytes: int | None = None) -> None:
        self.client = client
        self.max_bytes = max_bytes
        """If set, every message must be at most this long."""
        self.presence: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        """Session -> (identity, state)."""
        self.cursors: dict[str, Any] = {}
        self.typing: tuple[str, ...] = ()
        self.frames: list[Frame] = []

    def _apply(self, frame: Frame) -> None:
        match frame:
            case PresenceSnapshot(entries=entries):
                self.presence = {e.session: (e.identity, e.state) for e in entries}
            case PresenceDiff(joined=joined, updated=updated, left=left):
                for sid in left:
                    self.presence.pop(sid, None)
                for e in joined:
                    self.presence[e.session] = (e.identity, e.state)
                for u in updated:
                    self.presence[u.session] = (self.presence[u.session][0], u.state)
            case Cursors(moves=moves):
                for m in moves:
                    if m.position is None:
                        self.cursors.pop(m.session, None)
                    else:
                        self.cursors[m.session] = m.position
            case TypingState(sessions=sessions):
                self.typing = sessions
            case _:
                return
        self.frames.append(frame)

    async def _next(self) -> Frame:
        if self.max_bytes is not None and not self.client.inbox:
            data = await self.client.transport.receive_message()
            assert isinstance(data, bytes) and len(data) <= self.max_bytes, f"a message of {len(data)} bytes"
            self.client.inbox += decode(data)
        return await self.client.receive()

    async def until(self, check: Callable[[], bool], limit: int = 500) -> None:
        with trio.fail_after(5):
            for _ in range(limit):
                if check():
                    return
                self._apply(await self._next())
        raise AssertionError("condition never held")

    async def read_for(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            for _ in range(10_000):
                self._apply(await self._next())

    def states(self) -> dict[str, dict[str, Any]]:
        return {sid: state for sid, (_, state) in self.presence.items()}


async def member(engine: Engine, user: str) -> Watcher:
    client = DocClient(engine.connect_memory())
    await client.hello(user)
    await client.join("r")
    return Watcher(client)


async def next_of(client: YjsClient, kind: type[YMessage], limit: int = 1000) -> None:
    """Read until a message of `kind` arrives (bounded)."""
    for _ in range(limit):
        if isinstance(await client.next(), kind):
            return
    raise AssertionError(f"no {kind.__name__}")


def named(client: YjsClient, client_id: int) -> Any:
    return client.states.get(client_id, {}).get("name")


async def test_a_session_on_one_process_is_seen_on_the_other_as_a_local_one(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="plait.room")
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        ada = await member(p1, "ada")  # a1
        bob = await member(p2, "bob")  # b1
        await ada.until(lambda: "b1" in ada.presence)
        await bob.until(lambda: "a1" in bob.presence)
        assert bob.presence["a1"] == ({"id": "ada"}, {})
        await ada.client.send(PresenceSet(1, None, {"name": "Ada"}), CursorMove(1, {"index": 3}), Typing(1, True))
        await bob.until(lambda: bob.states().get("a1") == {"name": "Ada"} and bob.cursors.get("a1") == {"index": 3}
                        and bob.typing == ("a1",))
        await bob.client.send(PresenceSet(1, None, {"name": "Bob"}), Typing(1, True))
        await ada.until(lambda: ada.states().get("b1") == {"name": "Bob"} and set(ada.typing) == {"a1", "b1"})
        async with p2.hold_room("r") as room:
            entries = {e.session: (e.identity, e.state) for e in room.presence()}
        assert entries == {"a1": ({"id": "ada"}, {"name": "Ada"}), "b1": ({"id": "bob"}, {"name": "Bob"})}
        # Off again, and typing that lapses on its owner lapses everywhere.
        await bob.client.send(Typing(1, False))
        await ada.until(lambda: ada.typing == ("a1",))
        start = trio.current_time()
        await bob.until(lambda: bob.typing == ())
        assert trio.current_time() - start <= CONFIG.typing_expiry + 0.2
        # A leave: presence, cursor and typing go, in one tick's frames.
        await ada.client.send(Typing(1, True), Leave(1, None))
        await bob.until(lambda: "a1" not in bob.presence and "a1" not in bob.cursors and bob.typing == ())
        # What came from p2 was never sent back by p1, nor p1's by p2.
        assert link.sessions_sent("p1") == {"a1"}
        assert link.sessions_sent("p2") == {"b1"}
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "nothing was out of the ordinary"


async def test_a_process_that_loads_the_room_late_gets_the_whole_state_from_its_peers(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        ada = await member(p1, "ada")
        await ada.client.send(PresenceSet(1, None, {"name": "Ada"}), CursorMove(1, 7), Typing(1, True))
        await ada.until(lambda: ada.typing == ("a1",))
        await trio.sleep(1)  # everything was flushed before p2 held the room: deltas reached nobody
        bob = await member(p2, "bob")
        await bob.until(lambda: bob.states().get("a1") == {"name": "Ada"} and bob.cursors.get("a1") == 7 and bob.typing == ("a1",))
        await ada.until(lambda: "b1" in ada.presence)


async def test_a_full_state_catches_up_a_peer_that_missed_changes(autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        ada, ann = await member(p1, "ada"), await member(p1, "ann")
        bob = await member(p2, "bob")
        await bob.until(lambda: {"a1", "a2"} <= set(bob.presence))
        await ada.client.send(CursorMove(1, 1))
        await bob.until(lambda: bob.cursors.get("a1") == 1)
        link.cut.add("p1")  # a blip: p2 misses what p1 says
        await ann.client.send(Leave(1, None))
        await ada.client.send(PresenceSet(1, None, {"name": "Ada"}), CursorMove(1, None))
        await ada.until(lambda: "a2" not in ada.presence)
        await bob.read_for(1)
        assert "a2" in bob.presence and bob.cursors.get("a1") == 1
        link.cut.discard("p1")
        link.rooms["p2"].apply_remote("p1", link.rooms["p1"].local_state())
        await bob.until(lambda: "a2" not in bob.presence and bob.states().get("a1") == {"name": "Ada"} and "a1" not in bob.cursors)


async def test_the_sessions_of_a_process_that_died_leave(autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        ada = await member(p1, "ada")
        await ada.client.send(PresenceSet(1, None, {"name": "Ada"}), CursorMove(1, 7), Typing(1, True))
        bob = await member(p2, "bob")
        await bob.until(lambda: bob.cursors.get("a1") == 7 and bob.typing == ("a1",))
        await bob.read_for(CONFIG.tick * 4)  # the tick that announces bob's own join
        link.kill("p1")
        await bob.until(lambda: "a1" not in bob.presence)
        diff = bob.frames[-1]
        assert isinstance(diff, PresenceDiff) and diff.left == ("a1",) and not diff.joined, diff
        await bob.until(lambda: "a1" not in bob.cursors and bob.typing == ())
        async with p2.hold_room("r") as room:
            assert [e.session for e in room.presence()] == ["b1"]
            ephemeral = link.rooms["p2"]
            assert ephemeral._owner == {} and ephemeral._typing == {} and set(ephemeral._cursors) <= {"b1"}


async def test_remote_sessions_are_not_expired_here_but_by_their_owner(autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        ada = await member(p1, "ada")
        bob = await member(p2, "bob")
        await bob.until(lambda: "a1" in bob.presence)
        await ada.client.transport.aclose()  # a1 lingers for the grace, on p1, which ends it
        start = trio.current_time()
        await bob.until(lambda: "a1" not in bob.presence)
        assert CONFIG.presence_grace <= trio.current_time() - start <= CONFIG.presence_grace + 0.3
        # A peer's session whose owner says nothing stays (its owner is alive: its heartbeat).
        link.cut.add("p1")
        ann = await member(p1, "ann")
        link.cut.discard("p1")
        link.rooms["p2"].apply_remote("p1", link.rooms["p1"].local_state())
        await bob.until(lambda: "a2" in bob.presence)
        await ann.client.transport.aclose()
        await trio.sleep(CONFIG.tick * 4)
        assert link.rooms["p2"]._presence.lingering("a2")
        link.cut.add("p1")  # its linger reached p2, its leave never does
        await bob.read_for(CONFIG.presence_grace * 4)
        assert "a2" in bob.presence


async def test_a_reconnect_to_another_process_within_the_grace_shows_no_gap(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        olga = await member(p1, "olga")  # a1
        oscar = await member(p2, "oscar")  # b1
        alice = await member(p1, "alice")  # a2
        await alice.client.send(PresenceSet(1, None, {"name": "Alice"}))
        for watcher in (olga, oscar):
            await watcher.until(lambda w=watcher: w.states().get("a2") == {"name": "Alice"})  # type: ignore[misc]
        await alice.client.transport.aclose()
        await trio.sleep(CONFIG.presence_grace / 2)
        again = await member(p2, "alice")  # b2
        for watcher in (olga, oscar):
            await watcher.until(lambda w=watcher: "a2" not in w.presence and "b2" in w.presence)  # type: ignore[misc]
            (diff,) = [f for f in watcher.frames if isinstance(f, PresenceDiff) and "a2" in f.left]
            assert [e.session for e in diff.joined] == ["b2"], "the old session leaves in the diff the new one joins"
        await again.client.send(PresenceSet(1, None, {"name": "Alice, back"}))
        await olga.until(lambda: olga.states().get("b2") == {"name": "Alice, back"})
        await olga.read_for(CONFIG.presence_grace * 2)  # the grace of a2 ends on p1: nothing more happens
        assert [f for f in olga.frames if isinstance(f, PresenceDiff) and "a2" in f.left] == [diff]


async def test_yjs_clients_see_the_members_of_other_processes(autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        nat = await member(p1, "nat")  # a1: a native member, its id derived from its session id
        await nat.client.send(PresenceSet(1, None, {"name": "nat"}), CursorMove(1, 5))
        ada = await yjs_client(p1, "/yjs/r?token=ada", 111)  # a2
        await ada.say({"name": "ada"}, clock=4)
        observer = await yjs_client(p2, "/yjs/r?token=olga", 222)
        nat_id = zlib.crc32(b"a1")
        with trio.fail_after(5):
            await observer.until(lambda: named(observer, 111) == "ada" and named(observer, nat_id) == "nat")
        assert observer.states[111] == {"name": "ada", "identity": {"id": "ada"}}
        assert observer.states[nat_id] == {"name": "nat", "cursor": 5, "identity": {"id": "nat"}}
        assert observer.clocks[111] == 4, "a Yjs client's clock as its own process shows it"
        await observer.say({"name": "olga"}, clock=1)
        with trio.fail_after(5):
            await ada.until(lambda: named(ada, 222) == "olga")
        await nat.until(lambda: nat.states().get("b1") == {"name": "olga"})
        await ada.say({"name": "ada, later"}, clock=5)
        with trio.fail_after(5):
            await observer.until(lambda: named(observer, 111) == "ada, later")
        # Hidden (a null state of its own), then shown again.
        await ada.say(None, clock=6)
        with trio.fail_after(5):
            await observer.until(lambda: 111 not in observer.states)
        await ada.say({"name": "ada, again"}, clock=7)
        with trio.fail_after(5):
            await observer.until(lambda: named(observer, 111) == "ada, again")
        # A member of another process that leaves becomes a null state.
        await ada.transport.aclose()
        with trio.fail_after(10):
            await observer.until(lambda: 111 not in observer.states)
        assert observer.clocks[111] == 7


async def test_a_client_id_held_by_another_users_lingering_session_elsewhere_passes_once_it_left(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        observer = await yjs_client(p1, "/yjs/r?token=olga", 222)  # a1
        bob = await yjs_client(p1, "/yjs/r?token=bob", 500)  # a2
        await bob.say({"name": "bob"}, clock=1)
        with trio.fail_after(5):
            await observer.until(lambda: named(observer, 500) == "bob")
        await bob.transport.aclose()
        await trio.sleep(CONFIG.tick * 4)
        eve = await yjs_client(p2, "/yjs/r?token=eve", 500)  # b1: another user, the same client id
        await eve.say({"name": "eve"}, clock=1)
        await observer.read_for(CONFIG.presence_grace / 2)
        assert named(observer, 500) == "bob", "a client speaks only for itself while the holder may come back"
        start = trio.current_time()
        with trio.fail_after(10):
            await next_of(eve, YQueryAwareness)
        assert trio.current_time() - start <= CONFIG.presence_grace
        await eve.say({"name": "eve"}, clock=2)
        with trio.fail_after(5):
            await observer.until(lambda: named(observer, 500) == "eve")
        assert observer.states[500]["identity"] == {"id": "eve"}


async def test_a_yjs_client_that_reconnects_to_another_process_keeps_its_client_id(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="plait.room")
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        here = await yjs_client(p1, "/yjs/r?token=olga", 222)  # a1
        there = await yjs_client(p2, "/yjs/r?token=oscar", 333)  # b1
        alice = await yjs_client(p1, "/yjs/r?token=alice", 111)  # a2
        await alice.say({"name": "alice"}, clock=3)
        with trio.fail_after(5):
            for observer in (here, there):
                await observer.until(lambda o=observer: named(o, 111) == "alice")  # type: ignore[misc]
        await alice.transport.aclose()
        await trio.sleep(CONFIG.presence_grace / 2)
        # y-websocket reconnects (to the other process) and sends its state with its clock.
        again = YjsClient(p2.connect_memory("/yjs/r?token=alice"), 111)  # b2
        await again.say({"name": "alice"}, clock=3)
        for observer in (here, there):
            await observer.read_for(CONFIG.tick * 6)
            assert observer.states.get(111) == {"name": "alice", "identity": {"id": "alice"}}
        await again.say({"name": "alice, back"}, clock=4)
        with trio.fail_after(5):
            for observer in (here, there):
                await observer.until(lambda o=observer: named(o, 111) == "alice, back")  # type: ignore[misc]
        # Each process holds the id for the new session, and nothing for the old one.
        for process in ("p1", "p2"):
            awareness = link.rooms[process]._awareness
            assert awareness.holder(111) == "b2" and awareness.bound_id("a2") is None
        # Its grace over on p1, the old session leaves nothing behind.
        for observer in (here, there):
            await observer.read_for(CONFIG.presence_grace * 2)
            assert named(observer, 111) == "alice, back"
        # And back to the first process, with the clock the client has (the server shows it
        # past the last clock shown, wherever that was).
        await again.transport.aclose()
        await trio.sleep(CONFIG.presence_grace / 2)
        home = YjsClient(p1.connect_memory("/yjs/r?token=alice"), 111)  # a3
        await home.say({"name": "alice, home"}, clock=4)
        with trio.fail_after(5):
            for observer in (here, there):
                await observer.until(lambda o=observer: named(o, 111) == "alice, home")  # type: ignore[misc]
        for process in ("p1", "p2"):
            assert link.rooms[process]._awareness.holder(111) == "a3"
            assert {e.session for e in link.rooms[process].presence()} == {"a1", "b1", "a3"}
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "nothing was out of the ordinary"


async def test_hostile_bodies_are_dropped_and_the_room_goes_on(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    link = Link(monkeypatch)
    async with cluster(link) as (p1, p2):
        ada = await member(p1, "ada")
        await ada.client.send(PresenceSet(1, None, {"name": "Ada"}))
        bob = await member(p2, "bob")
        await bob.until(lambda: bob.states().get("a1") == {"name": "Ada"})
        pack = msgpack.packb
        body: dict[str, Any] = {"v": 1, "full": False}
        deep: Any = 1
        for _ in range(40):
            deep = [deep]
        hostile = [
            b"", b"\xc1", b"\x92\x01", pack([1, 2]), pack({"v": 2}), pack({1: 2}), pack({**body, "p": "x"}),
            pack({**body, "p": [["a9", {"id": "x"}, {}, False]]}),  # a record one short
            pack({**body, "p": [[7, {"id": "x"}, {}, False, False]]}),
            pack({**body, "p": [["a9", {"id": "x"}, {"n": math.nan}, False, False]]}),
            pack({**body, "p": [["a9", {"id": "x"}, {"n": 1}, False, 1]]}),
            pack({**body, "p": [["a9", {"id": "x"}, {1: 2}, False, False]]}),
            pack({**body, "c": [["a1", deep]]}),
            pack({**body, "a": [["a1", -1, 1, False]]}), pack({**body, "a": [["a1", 1, 2**53, False]]}),
            pack({**body, "t": [None]}), pack({**body, "l": ["x" * 300]}), pack({**body, "full": 1}),
        ]
        with caplog.at_level(logging.WARNING, logger="plait.room"):
            for data in hostile:
                link.rooms["p2"].apply_remote("p1", data)
        assert len([r for r in caplog.records if "dropped a presence body" in r.message]) == len(hostile)
        # Well-formed, but not p1's to say: another process's session, one of p2's own.
        link.rooms["p2"].apply_remote("p1", pack({**body, "p": [["b1", None, {"name": "mallory"}, False, False]]}))
        link.rooms["p2"].apply_remote("p3", pack({**body, "l": ["a1"], "c": [["a1", 1]], "t": ["a1"]}))
        link.rooms["p2"].apply_remote("p1", pack({**body, "a": [["a1", 999, 5, False]]}))  # a1 shows a derived id
        assert link.rooms["p2"]._awareness.holder(999) is None
        await bob.read_for(1)
        assert bob.states() == {"a1": {"name": "Ada"}, "b1": {}} and bob.cursors == {} and bob.typing == ()
        await bob.client.send(PresenceSet(1, None, {"name": "Bob"}))
        await ada.until(lambda: ada.states().get("b1") == {"name": "Bob"})
        await assert_engine_serves(p2)


async def test_remote_presence_keeps_to_the_room_budget_and_the_message_size(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = Link(monkeypatch)
    limit = 64 * 1024
    async with cluster(link, max_message_bytes=limit, max_room_presence_bytes=400_000) as (_, p2):
        bob = await member(p2, "bob")
        bob.max_bytes = limit
        # 300 sessions of a peer with states of ~1 KiB: more than one message holds.
        records = [[f"z{i}", {"id": f"user{i}"}, {"bio": "x" * 1000}, False, False] for i in range(300)]
        link.rooms["p2"].apply_remote("p9", msgpack.packb({"v": 1, "full": True, "p": records, "t": [], "c": []}))
        await bob.until(lambda: len(bob.presence) == 301)
        late = DocClient(p2.connect_memory())
        await late.hello("late")
        await late.join("r")
        watcher = Watcher(late, max_bytes=limit)
        await watcher.until(lambda: len(watcher.presence) >= 302)
        assert isinstance(watcher.frames[0], PresenceSnapshot) and len(watcher.frames) > 1
        # A peer's state that would take the room past its budget is not shown.
        for i in range(10):
            big = {"v": 1, "full": False, "p": [[f"z{i}", None, {"bio": "y" * 15_000}, False, False]]}
            link.rooms["p2"].apply_remote("p9", msgpack.packb(big))
        await bob.read_for(1)
        shown = [sid for sid, state in bob.states().items() if state.get("bio", "").startswith("y")]
        async with p2.hold_room("r") as room:
            ephemeral = link.rooms["p2"]
            assert ephemeral._presence.total_bytes + ephemeral._cursor_bytes <= 400_000
            assert len(room.presence()) == 302
        assert 0 < len(shown) < 10
        # The peer goes: every one of its sessions leaves, in diffs that fit.
        link.kill("p9")
        await bob.until(lambda: set(bob.presence) == {"b1", "b2"})


async def test_a_room_of_one_process_keeps_nothing_for_peers(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), hooks=Tokens(), config=CONFIG) as engine:
        ada = await member(engine, "ada")
        await ada.client.send(PresenceSet(1, None, {"name": "Ada"}), CursorMove(1, 1), Typing(1, True))
        yjs = await yjs_client(engine, "/yjs/r?token=bob", 111)
        await yjs.say({"name": "bob"}, clock=1)
        await yjs.transport.aclose()
        await ada.read_for(1)
        async with engine.hold_room("r") as room:
            ephemeral = room._ephemeral
            assert ephemeral._replicate is None
            assert not (ephemeral._owner or ephemeral._out_lingering or ephemeral._out_awareness or ephemeral._sent_typing)
