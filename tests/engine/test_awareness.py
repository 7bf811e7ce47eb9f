"""Yjs awareness against hostile and real-world y-websocket clients (spec §13): a client speaks
only for itself, echoes are not claims, a client that has not spoken shows nothing, a quick
reconnect keeps its client id, and what the room keeps per session goes with the session.

Every Yjs client here (client.YjsClient) keeps awareness states by Yjs's own rule, so what it
shows is what a browser would show; the server's session ids are s1, s2, ... in connection
order."""

from __future__ import annotations

import zlib
from typing import Any

import trio
from trio.testing import MockClock

from plait.engine import Engine, Hooks, Identity
from plait.protocol import (
    Access,
    Ack,
    CursorMove,
    Leave,
    PresenceDiff,
    PresenceSet,
    PresenceSnapshot,
    Typing,
)

from .client import DocClient, YjsClient, assert_engine_serves, yjs_client
from .conftest import CONFIG, running_engine

MAX_CLOCK = 2**53 - 1  # the largest clock a JavaScript client can hold


class Tokens(Hooks):
    """The token is the user's id: a client that reconnects with its token is the same user."""

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": token or "anon"}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return Access.WRITE


async def yjs(engine: Engine, user: str, client_id: int) -> YjsClient:
    return await yjs_client(engine, f"/yjs/r?token={user}", client_id)


async def native(engine: Engine, user: str) -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello(user)
    await client.join("r")
    await client.wait_for(PresenceSnapshot)
    return client


def named(client: YjsClient, client_id: int) -> Any:
    return client.states.get(client_id, {}).get("name")


async def test_a_client_cannot_speak_under_another_connected_clients_id(autojump_clock: MockClock) -> None:
    async with running_engine(hooks=Tokens()) as engine:
        victim = await yjs(engine, "victim", 111)
        attacker = await yjs(engine, "mallory", 666)
        observer = await yjs(engine, "olga", 222)
        watcher = await native(engine, "nora")
        await victim.say({"name": "victim"}, clock=1)
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, 111) == "victim")
        # The highest clock there is: had the server relayed it, Yjs clients would ignore the
        # victim's every later state.
        await attacker.say({"name": "mallory"}, clock=MAX_CLOCK, client_id=111)
        await attacker.say({"name": "attacker"}, clock=1)
        await observer.read_for(1)
        await victim.say({"name": "victim, later"}, clock=2)
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, 111) == "victim, later")
        assert named(observer, 666) == "attacker"
        assert not [e for e in observer.entries if "\"name\": \"mallory\"" in e.state_json]
        assert observer.clocks[111] == 2
        # Native members never saw it either.
        states = []
        for _ in range(20):
            frame = await watcher.wait_for(PresenceDiff)
            states += [e.state for e in frame.joined] + [u.state for u in frame.updated]
            if {"name": "victim, later"} in states:
                break
        assert {"name": "mallory"} not in states
        await assert_engine_serves(engine)


async def test_an_echo_of_another_yjs_clients_entry_is_not_a_claim(autojump_clock: MockClock) -> None:
    # y-websocket clients send the server every awareness change they see, others' included;
    # one whose own state is still null echoes others before it speaks for itself.
    async with running_engine(hooks=Tokens()) as engine:
        ada = await yjs(engine, "ada", 111)
        observer = await yjs(engine, "olga", 222)
        await ada.say({"name": "ada"}, clock=1)
        bob = await yjs(engine, "bob", 333)
        with trio.fail_after(1):
            await bob.until(lambda: named(bob, 111) == "ada")
        echo = next(e for e in reversed(bob.entries) if e.client_id == 111)
        await bob.send_awareness_json(echo.state_json, echo.clock, echo.client_id)
        await bob.send_awareness_json(echo.state_json, echo.clock + 1, echo.client_id)  # even a newer clock
        await bob.say({"name": "bob"}, clock=1)
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, 333) == "bob")
        await ada.say({"name": "ada again"}, clock=2)
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, 111) == "ada again")
        assert observer.states[333]["identity"] == {"id": "bob"}


async def test_an_echo_of_a_native_members_entry_is_not_a_claim(autojump_clock: MockClock) -> None:
    async with running_engine(hooks=Tokens()) as engine:
        nat = await native(engine, "nat")  # session s1
        await nat.send(PresenceSet(1, None, {"name": "nat"}))
        observer = await yjs(engine, "olga", 222)
        bob = await yjs(engine, "bob", 333)
        nat_id = zlib.crc32(b"s1")
        with trio.fail_after(1):
            await bob.until(lambda: named(bob, nat_id) == "nat")
        echo = next(e for e in reversed(bob.entries) if e.client_id == nat_id)
        await bob.send_awareness_json(echo.state_json, echo.clock, echo.client_id)
        await bob.say({"name": "bob"}, clock=1)
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, 333) == "bob")
        await nat.send(PresenceSet(1, None, {"name": "nat, later"}))
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, nat_id) == "nat, later")
        assert named(observer, nat_id) == "nat, later" and observer.states[nat_id]["identity"] == {"id": "nat"}


async def test_yjs_clients_that_have_not_spoken_show_nothing(autojump_clock: MockClock) -> None:
    # The issue: five y-websocket clients joining one room at once each saw up to four extra
    # name-less states ({"identity": ...}) under ids the server derived from session ids.
    async with running_engine(hooks=Tokens()) as engine:
        clients = [await yjs(engine, f"user{i}", 100 + i) for i in range(5)]
        for client in clients:
            await client.read_for(1)
        assert [c.states for c in clients] == [{}] * 5
        for i, client in enumerate(clients):
            await client.say({"name": f"user{i}"}, clock=1)
        for client in clients:
            await client.read_for(1)
        for i, client in enumerate(clients):
            others = {100 + j: {"name": f"user{j}", "identity": {"id": f"user{j}"}} for j in range(5) if j != i}
            assert client.states == others


async def test_a_quick_reconnect_is_shown_under_its_client_id_at_once(autojump_clock: MockClock) -> None:
    async with running_engine(hooks=Tokens()) as engine:
        observer = await yjs(engine, "olga", 222)
        alice = await yjs(engine, "alice", 111)
        await alice.say({"name": "alice"}, clock=3)
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, 111) == "alice")
        await alice.transport.aclose()
        await trio.sleep(CONFIG.presence_grace / 2)
        # y-websocket reconnects and, on open, sends its local state with the clock it had.
        again = YjsClient(engine.connect_memory("/yjs/r?token=alice"), 111)
        await again.say({"name": "alice"}, clock=3)
        await observer.read_for(CONFIG.tick * 4)
        assert observer.states.get(111) == {"name": "alice", "identity": {"id": "alice"}}
        await again.say({"name": "alice, back"}, clock=4)
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, 111) == "alice, back")


async def test_a_quick_reconnect_over_a_slow_link_is_shown_under_its_client_id_at_once(autojump_clock: MockClock) -> None:
    """When the reconnected session's first message arrives after the room's next tick, that
    tick has shown the old session's null state at its last clock; the client's state at the
    same clock would be ignored by every Yjs client until its renewal 15 s later, so the
    server shows it one clock on."""
    async with running_engine(hooks=Tokens()) as engine:
        observer = await yjs(engine, "olga", 222)
        alice = await yjs(engine, "alice", 111)
        await alice.say({"name": "alice"}, clock=3)
        with trio.fail_after(1):
            await observer.until(lambda: named(observer, 111) == "alice")
        await alice.transport.aclose()
        await trio.sleep(CONFIG.presence_grace / 2)
        again = YjsClient(engine.connect_memory("/yjs/r?token=alice"), 111)
        await trio.sleep(0.2)  # the link's round trip: the server has opened the session, then ticked
        await again.say({"name": "alice"}, clock=3)
        await observer.read_for(CONFIG.tick * 4)
        assert observer.states.get(111) == {"name": "alice", "identity": {"id": "alice"}}


async def test_a_room_forgets_every_session_that_has_gone(autojump_clock: MockClock) -> None:
    async with running_engine(hooks=Tokens()) as engine:
        keeper = await yjs(engine, "keeper", 500)
        await keeper.say({"name": "keeper", "cursor": 1}, clock=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keeper.read_for, 600)
            for i in range(4):
                leaves = await native(engine, f"leaver{i}")
                await leaves.send(PresenceSet(1, None, {"name": "l"}), CursorMove(1, i), Typing(1, True))
                await leaves.send(Leave(1, 9))
                await leaves.wait_for(Ack)
                drops = await native(engine, f"dropper{i}")
                await drops.send(PresenceSet(1, None, {"name": "d"}), CursorMove(1, i), Typing(1, True))
                await drops.transport.aclose()
                speaker = await yjs(engine, f"speaker{i}", 1000 + i)
                await speaker.say({"name": "s", "cursor": i}, clock=1)
                await speaker.say(None, clock=2)  # hides itself
                await speaker.say({"name": "s"}, clock=3)
                await speaker.transport.aclose()
                impostor = await yjs(engine, f"impostor{i}", 2000 + i)
                await impostor.say({"name": "i"}, clock=MAX_CLOCK, client_id=500)  # refused: waits for 500
                await impostor.say({"name": "i"}, clock=1)
                await impostor.transport.aclose()
                silent = await yjs(engine, f"silent{i}", 3000 + i)
                await silent.transport.aclose()
                await trio.sleep(CONFIG.tick * 2)
            await trio.sleep(CONFIG.presence_grace + CONFIG.typing_expiry + 1)
            async with engine.hold_room("r") as room:
                (entry,) = room.presence()
                assert entry.identity == {"id": "keeper"}
                sid = entry.session
                ephemeral = room._ephemeral
                awareness = ephemeral._awareness
                assert len(awareness) == 1
                assert set(awareness._clients) == {sid}
                assert awareness._holders == {500: sid}
                assert awareness._native == set() and awareness._hidden == set()
                assert set(awareness._entries) <= {sid}
                assert ephemeral._awareness_waiting == {}
                assert set(ephemeral._cursors) == {sid} and set(ephemeral._moved) <= {sid} and not ephemeral._typing
            nursery.cancel_scope.cancel()
        await assert_engine_serves(engine)
