"""A join that waits (its room loading, its authorize hook) holds up only the joins behind it
(spec §4.1, engine/sessions/_native.py): the connection's rooms already joined are served
meanwhile, every request is still answered exactly once, and what a client may queue behind it
is bounded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, Hooks, Identity
from plait.protocol import (
    Access,
    AccessChanged,
    Ack,
    ChannelClosed,
    Error,
    ErrorCode,
    Frame,
    Join,
    Joined,
    Leave,
    Ping,
    Pong,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    Refresh,
    Update,
    encode,
)
from plait.storage import MemoryStore, RoomData

from .client import DocClient, edit
from .conftest import running_engine


class GatedStore(MemoryStore):
    """A store whose loads of room "slow" wait until `opened` is set (a stalled database)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = trio.Event()
        self.loading = trio.Event()

    async def load(self, room: str) -> RoomData:
        if room == "slow":
            self.loading.set()
            await self.opened.wait()
        return await super().load(room)


class TokenHooks(Hooks):
    """One user whatever the token; the token "read" grants read access, "broken" makes the
    authorize hook fail; room "secret" is no one's; events named "slow" wait a second in the
    on_event hook."""

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": "ada", "token": token}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        if identity["token"] == "broken":
            raise RuntimeError("acl bug")
        if room == "secret":
            return None
        return Access.READ if identity["token"] == "read" else Access.WRITE

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: Any) -> Any:
        if name == "slow":
            await trio.sleep(1)
        return payload


async def member_of(engine: Engine, *rooms: str, token: str = "write") -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello(token)
    for room in rooms:
        await client.join(room)
        await client.wait_for(PresenceSnapshot)
    return client


async def answers(client: DocClient, count: int) -> list[Frame]:
    """The next `count` answers (acks, errors, joined, pongs), skipping what else comes (bounded)."""
    got: list[Frame] = []
    for _ in range(500):
        if len(got) == count:
            return got
        frame = await client.receive()
        if isinstance(frame, (Ack, Error, Joined, Pong)):
            got.append(frame)
    raise AssertionError(f"only {got} of {count} answers")


async def test_a_join_waiting_on_its_room_load_does_not_hold_up_the_connections_other_rooms(
    autojump_clock: MockClock,
) -> None:
    store = GatedStore()
    async with running_engine(store=store) as engine:
        a = await member_of(engine, "fast")
        await a.send(Join(1, "slow", b"\x00", None))
        await store.loading.wait()
        # While the store holds the load, the room joined before is served: its edit is stored
        # and acked, its presence acked, a ping answered.
        await a.send(Update(1, 2, edit(a.doc, "meanwhile")), PresenceSet(1, 3, {"n": 1}), Ping(4))
        got = await answers(a, 3)
        assert sorted(map(repr, got)) == sorted(map(repr, [Ack(2, None), Ack(3, None), Pong(4)]))
        assert got.index(Ack(2, None)) < got.index(Ack(3, None))  # one channel: in request order
        store.opened.set()
        joined = await a.expect(Joined, ref=1)
        assert joined.channel == 2
        await a.wait_for(PresenceSnapshot)
        await a.send(Update(2, 5, edit(pycrdt.Doc(), "in slow")))
        assert (await a.wait_for(Ack)).ref == 5


async def test_joins_keep_their_order_and_a_refresh_meanwhile_judges_them_too(autojump_clock: MockClock) -> None:
    store = GatedStore()
    async with running_engine(store=store, hooks=TokenHooks()) as engine:
        a = await member_of(engine)
        await a.send(Join(1, "slow", None, None), Join(2, "quick", None, None))
        await store.loading.wait()
        # The refresh does not wait for the joins: a token about to expire is renewed in time.
        await a.send(Refresh(3, "read"), Ping(4))
        assert await answers(a, 2) == [Ack(3, None), Pong(4)]
        store.opened.set()
        first, second = await answers(a, 2)
        assert isinstance(first, Joined) and isinstance(second, Joined), (first, second)
        assert (first.ref, first.channel, second.ref, second.channel) == (1, 1, 2, 2)
        # The first was authorised on the old token before its room loaded: judged again
        # before it was admitted, its `joined` says what the fresh token grants.
        assert first.access == Access.READ and second.access == Access.READ
        await a.send(Update(1, 5, edit(pycrdt.Doc(), "no")))
        refused = await a.wait_for(Error)
        assert (refused.ref, refused.code) == (5, ErrorCode.FORBIDDEN)


async def test_a_join_whose_fresh_token_cannot_be_judged_is_refused_and_never_admitted(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = GatedStore()
    async with running_engine(store=store, hooks=TokenHooks()) as engine:
        a = await member_of(engine)
        await a.send(Join(1, "slow", None, None))
        await store.loading.wait()
        await a.send(Refresh(2, "broken"))  # no room joined yet: nothing to judge, acked
        assert await answers(a, 1) == [Ack(2, None)]
        store.opened.set()
        refused = await a.expect(Error, ref=1)
        assert refused.code == ErrorCode.INTERNAL
        assert engine.presence("slow") == ()
        await a.send(Ping(9))
        assert (await a.wait_for(Pong)).nonce == 9


class SlowAcl(TokenHooks):
    """Every authorize takes a second; the token "none" grants nothing."""

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        await trio.sleep(1)
        return None if identity["token"] == "none" else await super().authorize(identity, room)


async def test_a_refresh_that_grants_access_while_a_join_is_being_judged_admits_it(autojump_clock: MockClock) -> None:
    async with running_engine(hooks=SlowAcl()) as engine:
        a = await member_of(engine, token="none")
        await a.send(Join(1, "doc", None, None))
        await trio.sleep(0.1)  # the hook is judging the join on the old token
        await a.send(Refresh(2, "write"), Ping(3))
        got = await answers(a, 3)
        assert got[:2] == [Ack(2, None), Pong(3)], got
        assert isinstance(got[2], Joined) and got[2].access == Access.WRITE, got


async def test_of_two_refreshes_around_a_join_the_newest_token_decides(autojump_clock: MockClock) -> None:
    async with running_engine(hooks=SlowAcl()) as engine:
        a = await member_of(engine, token="write")
        await a.send(Join(1, "doc", None, None))
        await trio.sleep(0.1)
        await a.send(Refresh(2, "read"))  # judged while the join is: no room joined yet
        await trio.sleep(0.1)
        await a.send(Refresh(3, "none"))
        await trio.sleep(0.1)
        await a.send(Refresh(4, "write"))
        got = await answers(a, 4)
        assert got[:3] == [Ack(2, None), Ack(3, None), Ack(4, None)], got
        assert isinstance(got[3], Joined) and got[3].access == Access.WRITE, got


@pytest.mark.parametrize("room", ["other", "doc"], ids=["too-many-rooms", "already-joined"])
async def test_a_join_is_judged_against_the_rooms_joined_as_it_arrives(autojump_clock: MockClock, room: str) -> None:
    """A join before a leave in one message: the leave came after it, so it cannot make room
    for it (TOO_MANY_ROOMS), nor free the name it asks for (ALREADY_JOINED)."""
    async with running_engine(max_rooms_per_connection=1) as engine:
        a = await member_of(engine, "doc")
        await a.send_raw(encode([Join(5, room, None, None), Leave(1, 6)]))
        got = await answers(a, 2)
        expected = ErrorCode.TOO_MANY_ROOMS if room == "other" else ErrorCode.ALREADY_JOINED
        assert [(f.ref, getattr(f, "code", None)) for f in got] in (
            [(5, expected), (6, None)], [(6, None), (5, expected)]
        ), got


@pytest.mark.parametrize("behind", ["nothing", "a-publish"])
async def test_a_room_left_and_joined_again_in_one_message_is_joined(autojump_clock: MockClock, behind: str) -> None:
    async with running_engine(hooks=TokenHooks(), max_rooms_per_connection=1) as engine:
        a = await member_of(engine, "doc")
        for trial in range(5):  # bounded; a race between the leave and the join would show
            ref = 10 * trial
            first = [Publish(trial + 1, ref, "slow", {}, None)] if behind == "a-publish" else []
            await a.send_raw(encode([*first, Leave(trial + 1, ref + 1), Join(ref + 2, "doc", None, None)]))
            got = await answers(a, 2 + len(first))
            assert isinstance(got[-1], Joined) and got[-1].ref == ref + 2, got
            assert got[-2] == Ack(ref + 1, None), got
            await a.wait_for(PresenceSnapshot)


async def test_an_update_sent_right_after_a_refresh_that_takes_write_away_is_forbidden(autojump_clock: MockClock) -> None:
    async with running_engine(hooks=TokenHooks()) as engine:
        a = await member_of(engine, "doc")
        await a.send_raw(encode([Refresh(1, "read"), Update(1, 2, edit(a.doc, "x")), Publish(1, 3, "chat", {}, None)]))
        got = await answers(a, 3)
        assert got[0] == Ack(1, None)
        assert [(e.ref, e.code) for e in got[1:] if isinstance(e, Error)] == [(2, ErrorCode.FORBIDDEN), (3, ErrorCode.FORBIDDEN)]


@pytest.mark.parametrize("how", ["closes", "says-goodbye"])
async def test_a_connection_that_ends_while_its_join_waits_is_never_a_member(
    autojump_clock: MockClock, how: str
) -> None:
    store = GatedStore()
    async with running_engine(store=store) as engine:
        a = await member_of(engine)
        await a.send(Join(1, "slow", None, None))
        await store.loading.wait()
        if how == "closes":
            await a.transport.aclose(1000, "bye")
        else:
            await a.send_raw(b"\xc1")  # a message that does not decode: a fatal error
            await a.wait_closed()
        with trio.fail_after(5):
            while engine.sessions():  # bounded by the deadline
                await trio.sleep(0.1)
        store.opened.set()
        b = await member_of(engine, "slow")
        assert [e.session for e in engine.presence("slow")] == [b.welcome.session]  # type: ignore[union-attr]


async def joins_taken(client: DocClient, most: int, state_vector: bytes | None) -> int:
    """How many joins (refs 10, 11, ...), one per message, the transport takes within 5 s."""
    taken = 0
    with trio.move_on_after(5):
        for i in range(most):
            await client.send_raw(encode([Join(10 + i, f"room-{i}", state_vector, None)]))
            taken += 1
    return taken


async def test_joins_queued_behind_a_waiting_one_are_bounded_and_each_answered_once(autojump_clock: MockClock) -> None:
    store = GatedStore()
    async with running_engine(store=store, max_rooms_per_connection=4) as engine:
        a = await member_of(engine)
        await a.send(Join(1, "slow", None, None))
        await store.loading.wait()
        taken = await joins_taken(a, 200, None)
        # The reader stopped once more joins waited than a connection may have rooms; the
        # transport's buffer (16) took a few more.
        assert taken < 30, taken
        store.opened.set()
        got = await answers(a, taken + 1)
        assert [f.ref for f in got] == [1, *range(10, 10 + taken)]  # type: ignore[attr-defined]
        assert [type(f).__name__ for f in got[:4]] == ["Joined"] * 4
        assert {f.code for f in got[4:] if isinstance(f, Error)} == {ErrorCode.TOO_MANY_ROOMS}
        assert all(isinstance(f, Error) for f in got[4:])


async def test_joins_queued_behind_a_waiting_one_are_bounded_in_bytes(autojump_clock: MockClock) -> None:
    store = GatedStore()
    async with running_engine(store=store, max_message_bytes=2**20) as engine:
        a = DocClient(engine.connect_memory(buffer=1))
        await a.hello("t")
        await a.send(Join(1, "slow", None, None))
        await store.loading.wait()
        taken = await joins_taken(a, 100, b"\x00" * 2**17)
        # About a message's worth (8 of these) waits; then the reader reads no further.
        assert taken < 14, taken


class SlowToJudgeHooks(TokenHooks):
    """The token "read" takes a second to judge (an authorize hook asking a slow service)."""

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        if identity["token"] == "read":
            await trio.sleep(1)
        return await super().authorize(identity, room)


async def admitted_during_a_refresh(engine: Engine, store: GatedStore, token: str, enough: Callable[[list[Frame]], bool]) -> list[Frame]:
    """A member of "doc" joins "slow", refreshes to `token` while it loads, then the load ends:
    the join is admitted on the old token while the refresh judges "doc" (its hook is slow).
    What the member received, until `enough` (bounded)."""
    a = await member_of(engine, "doc")
    await a.send(Join(2, "slow", None, None))
    await store.loading.wait()
    await a.send(Refresh(3, token))
    store.opened.set()
    seen: list[Frame] = []
    for _ in range(50):
        seen.append(await a.receive())
        if enough(seen):
            break
    return seen


async def test_a_join_admitted_while_a_refresh_is_judging_the_other_rooms_is_judged_too(autojump_clock: MockClock) -> None:
    store = GatedStore()
    async with running_engine(store=store, hooks=SlowToJudgeHooks()) as engine:
        seen = await admitted_during_a_refresh(
            engine, store, "read", lambda seen: len([f for f in seen if isinstance(f, AccessChanged)]) == 2
        )
        joined = next(f for f in seen if isinstance(f, Joined))
        assert (joined.ref, joined.access) == (2, Access.WRITE)
        assert Ack(3, None) in seen
        assert sorted(f.channel for f in seen if isinstance(f, AccessChanged)) == [1, joined.channel]
        assert all(f.access == Access.READ for f in seen if isinstance(f, AccessChanged))


async def test_frames_for_the_channel_a_waiting_join_will_open_wait_for_it(autojump_clock: MockClock) -> None:
    """A client that counts channels (spec §5.2) and sends to the one its join will open before
    the `joined` came: those frames wait for the join, as if it had been answered at once."""
    store = GatedStore()
    async with running_engine(store=store) as engine:
        a = await member_of(engine, "fast")
        doc = pycrdt.Doc()
        await a.send_raw(encode([Join(1, "slow", None, None), Update(2, 2, edit(doc, "pipelined")), Ping(3)]))
        await store.loading.wait()
        meanwhile: list[Frame] = []
        with trio.move_on_after(5):  # the update, and the ping behind it, wait
            for _ in range(100):  # bounded
                meanwhile.append(await a.receive())
        assert not [f for f in meanwhile if isinstance(f, (Ack, Error, Joined, Pong))], meanwhile
        store.opened.set()
        got = await answers(a, 3)
        assert isinstance(got[0], Joined) and got[0].channel == 2, got
        assert sorted(map(repr, got[1:])) == sorted(map(repr, [Ack(2, None), Pong(3)])), got


class FailsForSlow(SlowToJudgeHooks):
    """The token "odd" takes a second to judge room "doc" (read), and its hook fails for "slow"."""

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        if identity["token"] == "odd":
            if room == "slow":
                raise RuntimeError("acl bug")
            await trio.sleep(1)
            return Access.READ
        return await super().authorize(identity, room)


async def test_a_join_admitted_while_a_refresh_judges_ends_if_the_fresh_token_cannot_judge_it(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = GatedStore()
    async with running_engine(store=store, hooks=FailsForSlow()) as engine:
        seen = await admitted_during_a_refresh(engine, store, "odd", lambda seen: any(isinstance(f, ChannelClosed) for f in seen))
        joined = next(f for f in seen if isinstance(f, Joined))
        assert Ack(3, None) in seen and AccessChanged(1, Access.READ) in seen, seen
        closed = next(f for f in seen if isinstance(f, ChannelClosed))
        assert (closed.channel, closed.code) == (joined.channel, ErrorCode.INTERNAL)
        assert engine.presence("slow") == ()


async def test_a_join_refused_in_its_turn_leaves_room_for_the_joins_after_it(autojump_clock: MockClock) -> None:
    """As if each join were answered before the next is read: one refused (FORBIDDEN) takes
    no room from those behind it, and does not hold its name."""
    async with running_engine(hooks=TokenHooks(), max_rooms_per_connection=1) as engine:
        a = await member_of(engine)
        await a.send(Join(1, "secret", None, None), Join(2, "secret", None, None), Join(3, "doc", None, None))
        got = await answers(a, 3)
        assert [(f.ref, getattr(f, "code", None)) for f in got[:2]] == [(1, ErrorCode.FORBIDDEN), (2, ErrorCode.FORBIDDEN)], got
        assert isinstance(got[2], Joined) and got[2].ref == 3, got


async def test_an_operator_grant_made_while_a_join_is_being_judged_admits_it(autojump_clock: MockClock) -> None:
    async with running_engine(hooks=SlowAcl()) as engine:
        a = await member_of(engine, token="none")
        await a.send(Join(1, "doc", None, None))
        await trio.sleep(0.1)  # the hook is judging the join: it will say no
        engine.set_access("ada", "doc", Access.READ)
        joined = await a.expect(Joined, ref=1)
        assert joined.access == Access.READ
