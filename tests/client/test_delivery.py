"""Local document changes the server refuses are never dropped silently (spec §4.1, §5.8):
rate-limited updates go out again, paced by `welcome.limits`; a refusal that will not change
(read-only) raises from `flushed()` and brings the local document back to the room's state.
Engine over in-memory transports, under MockClock."""

from __future__ import annotations

import dataclasses
from typing import Any

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.client import DocumentReplaced, DocumentReset, DocumentTooLarge, Forbidden, Room
from plait.engine import Hooks, Identity, MemoryTransport
from plait.protocol import Access, Error, ErrorCode, Welcome, decode, encode
from plait.storage import MemoryStore

from ..engine.conftest import make_engine
from .cable import Cable, client_for, stored_text, until_text


async def type_text(room: Room, text: str) -> None:
    """Type like a person whose editor waits for every keystroke to be durable."""
    for ch in text:
        room.text.insert(len(room.text), ch)
        await room.flushed()


RATE = 20
"""Updates per second per connection the engine allows in these tests (the default is 200;
a tenth of it shows the same in a tenth of the keystrokes)."""


async def test_typing_a_character_at_a_time_outlasts_the_update_rate(autojump_clock: MockClock) -> None:
    # The server allows RATE updates per second per connection, with a burst of one second.
    # This loop used to stall for good once the burst was spent (after about 240 keystrokes
    # at the default rate).
    store = MemoryStore()
    typed = "".join(chr(97 + i % 26) for i in range(3 * RATE))
    async with make_engine(store=store, updates_per_second=RATE) as engine:
        cable = Cable(engine)
        async with client_for(cable) as typist, client_for(cable) as watcher:
            async with typist.join("doc") as room, watcher.join("doc") as other:
                await room.synced()
                await other.synced()
                await type_text(room, typed)
                await until_text(other, typed)
        assert cable.opened == 2  # paced below the limit: never closed for going over it
    data = await store.load("doc")
    assert stored_text(list(data.updates), data.snapshot) == typed


class Overstated:
    """A server that announces a higher rate (`limit`, of welcome.limits) than it enforces: the
    SDK trusts the announcement, so its frames get RATE_LIMITED and must go out again. (A real
    server's count runs ahead alike when paced frames reach it bunched: it was paused.)"""

    def __init__(self, inner: MemoryTransport, rate: int = 100_000, limit: str = "updates_per_second") -> None:
        self.inner = inner
        self.rate = rate
        self.limit = limit
        self.refused = 0

    async def send_message(self, data: bytes) -> None:
        await self.inner.send_message(data)

    async def receive_message(self) -> bytes | str:
        data = await self.inner.receive_message()
        assert isinstance(data, bytes)
        frames = decode(data)
        for i, frame in enumerate(frames):
            if isinstance(frame, Welcome):
                limits = dataclasses.replace(frame.limits, **{self.limit: self.rate})
                frames[i] = Welcome(frame.version, frame.session, frame.heartbeat_ms, limits)
            elif isinstance(frame, Error) and frame.code == ErrorCode.RATE_LIMITED:
                self.refused += 1
        return encode(frames)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.aclose(code, reason)


async def test_rate_limited_updates_go_out_again_in_order(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    wrapped: list[Overstated] = []

    def overstate(transport: MemoryTransport) -> Overstated:
        wrapped.append(Overstated(transport))
        return wrapped[-1]

    typed = "".join(chr(97 + i % 26) for i in range(5 * RATE))
    async with make_engine(store=store, updates_per_second=RATE) as engine:
        typist_cable, watcher_cable = Cable(engine, wrap=overstate), Cable(engine)
        async with client_for(typist_cable) as typist, client_for(watcher_cable) as watcher:
            async with typist.join("doc") as room, watcher.join("doc") as other:
                await room.synced()
                await other.synced()
                for ch in typed:  # 1000 keystrokes a second, each its own update frame
                    room.text.insert(len(room.text), ch)
                    await trio.sleep(0.001)
                await room.flushed()
                await until_text(other, typed)
        assert wrapped[0].refused > 0  # the server did refuse some
        assert typist_cable.opened == 1  # and the SDK backed off before being closed for it
    data = await store.load("doc")
    assert stored_text(list(data.updates), data.snapshot) == typed


class Bunched:
    """What the client sends waits while `held` (as it would in the socket of a server that
    is paused), then reaches the server all at once, in order."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.held = False
        self.waiting: list[bytes | str] = []
        self.refused = 0

    async def send_message(self, data: bytes | str) -> None:
        if self.held:
            self.waiting.append(data)
            return
        await self.inner.send_message(data)

    async def release(self) -> None:
        self.held = False
        waiting, self.waiting = self.waiting, []
        for data in waiting:
            await self.inner.send_message(data)

    async def receive_message(self) -> bytes | str:
        data = await self.inner.receive_message()
        assert isinstance(data, bytes)
        self.refused += sum(isinstance(f, Error) and f.code == ErrorCode.RATE_LIMITED for f in decode(data))
        return data

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.aclose(code, reason)


async def test_publishes_refused_for_a_burst_the_pace_did_not_cause_go_out_again_once_each(autojump_clock: MockClock) -> None:
    """A client publishes 6 events a second, under the 10 a second the server announces. For
    3 s its frames reach the server bunched (a server paused, spec §5.8's count on arrival):
    the server refuses the ones past its burst, and the SDK sends them again, slower. Every
    publish() returns its event's seq, none raises RateLimited, each event is published once,
    and the connection stays open."""
    wrapped: list[Bunched] = []

    def bunch(transport: MemoryTransport) -> Bunched:
        wrapped.append(Bunched(transport))
        return wrapped[-1]

    async with make_engine(events_per_second=10) as engine:
        cable, watcher_cable = Cable(engine, wrap=bunch), Cable(engine)
        async with client_for(cable) as client, client_for(watcher_cable) as watcher:
            async with client.join("chat") as room, watcher.join("chat") as other:
                await room.synced()
                await other.synced()
                seqs: dict[int, int] = {}
                received: list[Any] = []

                async def publish(n: int) -> None:
                    seqs[n] = await room.publish("msg", {"n": n})

                async def watch() -> None:
                    async for event in other.events():
                        received.append(event)
                        if len(received) == 60:
                            return

                with trio.fail_after(120):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(watch)
                        for n in range(60):
                            if n == 12:
                                wrapped[0].held = True
                            if n == 30:
                                await wrapped[0].release()
                            nursery.start_soon(publish, n)
                            await trio.sleep(1 / 6)
        assert wrapped[0].refused > 0  # the server did refuse some
        assert cable.opened == 1
        assert sorted(seqs.values()) == [e.seq for e in received] == list(range(1, 61))
        assert sorted(e.payload["n"] for e in received) == list(range(60))


class Viewers(Hooks):
    """The token is the user id; "viewer" may only read."""

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": token or "anon"}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return Access.READ if identity["id"] == "viewer" else Access.WRITE


async def test_a_read_only_member_is_told_and_its_document_is_the_rooms_again(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=Viewers()) as engine:
        cable = Cable(engine)
        async with client_for(cable, token="ed") as ed, client_for(cable, token="viewer") as viewer:
            async with ed.join("doc") as er, viewer.join("doc") as vr:
                await er.synced()
                await vr.synced()
                await vr.flushed()  # joining sends nothing of ours to refuse
                er.text.insert(0, "the room's text")
                await er.flushed()
                await until_text(vr, "the room's text")
                changes = vr.changes()
                vr.text.insert(0, "mine: ")
                vr.text.insert(len(vr.text), "!")
                with pytest.raises(Forbidden):
                    await vr.flushed()
                async for change in changes:
                    if isinstance(change, DocumentReset):
                        break
                assert isinstance(change.error, Forbidden)
                # Exactly what was dropped: the two edits, which on the room's text give ours.
                mine = pycrdt.Doc()
                mine.apply_update(er.doc.get_update())
                mine.apply_update(change.discarded)
                assert str(mine.get("text", type=pycrdt.Text)) == "mine: the room's text!"
                await vr.synced()
                assert str(vr.text) == "the room's text"
                await vr.flushed()  # reported once; nothing else is waiting
                er.text.insert(0, ">")
                await er.flushed()
                await until_text(vr, ">the room's text")  # and it keeps following the room


async def test_edits_made_before_a_read_only_join_are_refused_not_kept(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=Viewers()) as engine:
        cable = Cable(engine)
        async with client_for(cable, token="ed") as ed, ed.join("doc") as er:
            await er.synced()
            er.text.insert(0, "kept")
            await er.flushed()
            async with client_for(cable, token="viewer") as viewer, viewer.join("doc") as vr:
                vr.text.insert(0, "offline draft ")  # before the join is even answered
                with pytest.raises(Forbidden):
                    await vr.flushed()
                await vr.synced()
                await until_text(vr, "kept")


async def test_an_edit_too_large_for_the_room_is_refused_and_undone_locally(autojump_clock: MockClock) -> None:
    async with make_engine(max_document_bytes=2000) as engine:
        async with client_for(Cable(engine)) as client, client.join("doc") as room:
            await room.synced()
            room.text.insert(0, "small")
            await room.flushed()
            room.text.insert(5, "x" * 5000)
            with pytest.raises(DocumentTooLarge):
                await room.flushed()
            await room.synced()
            assert str(room.text) == "small"
            room.text.insert(5, "!")  # and editing goes on
            await room.flushed()
        async with client_for(Cable(engine)) as client, client.join("doc") as room:
            await room.synced()
            assert str(room.text) == "small!"


async def test_an_edit_through_a_reference_taken_before_a_reset_is_never_reported_as_acknowledged(
    autojump_clock: MockClock,
) -> None:
    # Second fresh-eyes run: after a DocumentReset, `t = room.text` taken before it pointed
    # into the replaced document; edits through it went nowhere and flushed() returned.
    async with make_engine(hooks=Viewers()) as engine:
        cable = Cable(engine)
        async with client_for(cable, token="viewer") as viewer, viewer.join("doc") as vr:
            await vr.synced()
            held = vr.text
            held.insert(0, "refused")
            with pytest.raises(Forbidden):
                await vr.flushed()
            await vr.synced()  # the reset's new document
            held.insert(0, "lost? ")
            with pytest.raises(DocumentReplaced):
                await vr.flushed()
            await vr.flushed()  # raised once; the room's own document has nothing waiting
            assert str(vr.text) == ""
