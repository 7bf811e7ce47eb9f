"""What an operator does to a running engine (spec/api.md, Engine.set_access, disconnect,
delete_room), under MockClock over memory transports: the races and the y-websocket side."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from plait.engine import Engine, Hooks, Identity
from plait.engine import _engine as engine_module
from plait.protocol import (
    Access,
    AccessChanged,
    Ack,
    ChannelClosed,
    CloseCode,
    Error,
    ErrorCode,
    Join,
    Joined,
    PresenceSnapshot,
    Publish,
    Update,
)
from plait.storage import MemoryStore

from .client import DocClient, edit, yjs_client
from .conftest import make_engine


class Gated(Hooks):
    """Every identity is its token; `authorize` (if `gate_authorize`) and `on_event` (if
    `gate_events`) wait until `release` is set: slow hooks, with `waiting` set once one waits."""

    def __init__(self, *, gate_authorize: bool = True, gate_events: bool = False) -> None:
        super().__init__()
        self.waiting = trio.Event()
        self.release = trio.Event()
        self._gate_authorize, self._gate_events = gate_authorize, gate_events

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": token or "nobody"}

    async def _wait(self) -> None:
        self.waiting.set()
        await self.release.wait()

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        if self._gate_authorize:
            await self._wait()
        return Access.WRITE

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: Any) -> Any:
        if self._gate_events:
            await self._wait()
        return payload


async def test_access_taken_while_a_join_waits_for_its_hook_holds(autojump_clock: trio.testing.MockClock) -> None:
    hooks = Gated()
    async with make_engine(hooks=hooks) as engine:
        client = DocClient(engine.connect_memory())
        await client.hello("ivy")
        await client.send(Join(1, "r", None, None))
        await hooks.waiting.wait()
        engine.set_access("ivy", "r", None)  # the hook said write when it was asked; no longer
        hooks.release.set()
        refusal = await client.expect(Error, ref=1)
        assert refusal.code == ErrorCode.FORBIDDEN


async def test_access_lowered_while_a_join_waits_is_the_access_it_joins_with(autojump_clock: trio.testing.MockClock) -> None:
    hooks = Gated()
    async with make_engine(hooks=hooks) as engine:
        client = DocClient(engine.connect_memory())
        await client.hello("ivy")
        await client.send(Join(1, "r", None, None))
        await hooks.waiting.wait()
        engine.set_access("ivy", "r", Access.COMMENT)
        hooks.release.set()
        await client.expect(Joined, ref=1, access=Access.COMMENT)


async def test_a_yjs_member_made_read_only_has_its_updates_ignored_then_is_closed_when_access_goes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with make_engine(store=MemoryStore()) as engine:
        y = await yjs_client(engine, "/yjs/doc?token=yann")
        await y.edit("kept ")
        await y.read_for(0.5)
        user = engine.sessions(room="doc")[0].user
        assert user is not None
        assert engine.set_access(user, "doc", Access.READ) == 1
        await y.edit("ignored")
        await y.read_for(0.5)
        async with engine.room("doc") as room:
            assert room.document_json({"text": "text"}) == {"text": "kept "}
        engine.set_access(user, "doc", None)
        closed = await y.wait_closed()
        assert closed.code == CloseCode.FORBIDDEN


async def test_deleting_a_room_closes_its_yjs_members_for_good(autojump_clock: trio.testing.MockClock) -> None:
    async with make_engine(store=(store := MemoryStore())) as engine:
        y = await yjs_client(engine, "/yjs/doc")
        await y.edit("bye")
        await y.read_for(0.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.delete_room, "doc")
            closed = await y.wait_closed()
        assert closed.code == CloseCode.DISCONNECTED and not CloseCode(closed.code).retryable
        assert "doc" not in await store.list_rooms()


async def test_access_changes_reach_every_session_of_the_user_and_no_one_else(autojump_clock: trio.testing.MockClock) -> None:
    hooks = Gated()
    hooks.release.set()
    async with make_engine(hooks=hooks) as engine:
        clients = []
        for token in ("jo", "jo", "kim"):
            client = DocClient(engine.connect_memory())
            await client.hello(token)
            await client.join("r")
            await client.wait_for(PresenceSnapshot)
            clients.append(client)
        assert engine.set_access("jo", "r", Access.READ) == 2
        assert engine.set_access("jo", "r", Access.READ) == 0  # no change, nobody told twice
        for client in clients[:2]:
            assert (await client.wait_for(AccessChanged)).access == Access.READ
        await clients[2].send(Update(1, 5, edit(clients[2].doc, "kim writes")))
        assert (await clients[2].wait_for(Ack)).ref == 5
        assert engine.set_access("jo", "other-room", None) == 0


async def test_the_number_of_access_overrides_is_bounded(autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "MAX_ACCESS_OVERRIDES", 3)
    async with make_engine() as engine:
        for n in range(3):
            engine.set_access(f"u{n}", "r", Access.READ)
        engine.set_access("u0", "r", Access.WRITE)  # changing one held is fine
        with pytest.raises(ValueError, match="access overrides"):
            engine.set_access("u9", "r", Access.READ)
        assert engine.clear_access("u1", "r") is True
        assert engine.clear_access("u1", "r") is False
        engine.set_access("u9", "r", Access.READ)


async def test_disconnect_needs_exactly_one_of_session_and_user(autojump_clock: trio.testing.MockClock) -> None:
    async with make_engine() as engine:
        with pytest.raises(ValueError, match="session or a user"):
            engine.disconnect()
        with pytest.raises(ValueError, match="session or a user"):
            engine.disconnect(session="s1", user="u")
        assert engine.disconnect(session="nobody") == 0


async def test_a_disconnected_session_is_closed_4013_with_the_reason(autojump_clock: trio.testing.MockClock, engine: Engine) -> None:
    client = DocClient(engine.connect_memory())
    welcome = await client.hello()
    assert engine.disconnect(session=welcome.session, reason="maintenance") == 1
    assert await client.wait_closed() == CloseCode.DISCONNECTED
    assert client.closed is not None and client.closed.reason == "maintenance"


async def test_channel_closed_codes_for_access_and_deletion(autojump_clock: trio.testing.MockClock) -> None:
    hooks = Gated()
    hooks.release.set()
    async with make_engine(hooks=hooks) as engine:
        client = DocClient(engine.connect_memory())
        await client.hello("lee")
        for ref, room in ((1, "a"), (2, "b")):
            await client.send(Join(ref, room, None, None))
            await client.wait_for(Joined)
        engine.set_access("lee", "a", None)
        closed = await client.wait_for(ChannelClosed)
        assert (closed.channel, closed.code) == (1, ErrorCode.FORBIDDEN)
        await engine.delete_room("b")
        closed = await client.wait_for(ChannelClosed)
        assert (closed.channel, closed.code) == (2, ErrorCode.ROOM_DELETED)


async def test_a_publish_whose_hook_ran_across_the_downgrade_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    hooks = Gated(gate_authorize=False, gate_events=True)
    async with make_engine(hooks=hooks) as engine:
        client = DocClient(engine.connect_memory())
        await client.hello("max")
        await client.join("r")
        await client.send(Publish(1, 9, "chat", "sent while writer", None))
        await hooks.waiting.wait()
        engine.set_access("max", "r", Access.READ)
        hooks.release.set()
        refusal = await client.wait_for(Error)
        assert (refusal.ref, refusal.code) == (9, ErrorCode.FORBIDDEN)
        async with engine.room("r") as room:
            assert room.history().events == ()


async def test_a_room_asked_to_unload_takes_no_more_members_even_before_it_drains(autojump_clock: trio.testing.MockClock) -> None:
    """A join that held a live room across a checkpoint while the room was deleted must not
    be admitted to it: the room closes under it and its edits are never acked (the race
    tests/e2e/test_server_api.py's delete loop found)."""
    async with make_engine() as engine:
        async with engine.hold_room("r") as room:
            assert room.accepting
            room.request_unload()
            assert room.state.value == "live" and not room.accepting
