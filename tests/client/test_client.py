"""The client SDK against an in-memory engine under MockClock: sync, flush, presence, events,
reconnects with backoff, offline edits and publishes. A `Cable` lets a test cut connections."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from plait.client import Backoff, ClientState, ConnectionClosed, EventRejected, Forbidden
from plait.engine import EventRejected as ServerEventRejected
from plait.engine import Hooks, Identity
from plait.protocol import Access
from plait.storage import MemoryStore

from ..engine.conftest import make_engine
from .cable import Cable, client_for, stored_text, until_text


async def test_two_clients_edit_one_document(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c1, client_for(cable) as c2:
            async with c1.join("doc") as r1, c2.join("doc") as r2:
                await r1.synced()
                await r2.synced()
                r1.text.insert(0, "hello")
                await r1.flushed()
                await until_text(r2, "hello")
                r2.text.insert(5, " world")
                await r2.flushed()
                await until_text(r1, "hello world")


async def test_flushed_means_durable(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    async with make_engine(store=store) as engine:
        async with client_for(Cable(engine)) as c, c.join("doc") as room:
            await room.synced()
            room.text.insert(0, "saved")
            await room.flushed()
            data = await store.load("doc")
            assert stored_text(list(data.updates), data.snapshot) == "saved"


async def test_presence_cursors_typing_and_events_between_clients(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c1, client_for(cable) as c2:
            async with c1.join("r") as r1, c2.join("r") as r2:
                await r1.synced()
                await r2.synced()
                changes = r2.changes()
                events = r2.events()
                await r1.set_presence({"name": "ada"})
                await r1.move_cursor(3)
                await r1.set_typing(True)
                seq = await r1.publish("chat", {"text": "hi"})
                assert seq == 1
                event = await events.__anext__()
                assert (event.seq, event.name, event.payload) == (1, "chat", {"text": "hi"})
                for _ in range(20):
                    ada = r2.presence.get(c1.session_id or "", None)
                    if ada is not None and ada.state == {"name": "ada"} and r2.cursors and r2.typing:
                        break
                    await changes.__anext__()
                assert r2.presence[c1.session_id].state == {"name": "ada"}  # type: ignore[index]
                assert r2.cursors == {c1.session_id: 3}
                assert r2.typing == {c1.session_id}
                assert c1.session_id not in r1.presence  # others only


async def test_reconnect_rejoins_resyncs_and_restores_presence(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable, watcher_cable = Cable(engine), Cable(engine)
        async with client_for(cable) as c1, client_for(watcher_cable) as c2:
            async with c1.join("r") as r1, c2.join("r") as r2:
                await r1.synced()
                await r2.synced()
                await r1.set_presence({"name": "ada"})
                r1.text.insert(0, "before ")
                await r1.flushed()
                r2_changes = r2.changes()
                await cable.cut()
                await c1.wait_state(ClientState.RECONNECTING)
                r1.text.insert(len(r1.text), "offline")  # edited while disconnected
                await c1.wait_state(ClientState.OPEN)
                await r1.flushed()
                await until_text(r2, "before offline")
                for _ in range(20):
                    if any(e.state == {"name": "ada"} for e in r2.presence.values()) and len(r2.presence) == 1:
                        break
                    await r2_changes.__anext__()
                assert [e.state for e in r2.presence.values()] == [{"name": "ada"}]
                assert cable.opened == 2


async def test_backoff_delays_are_bounded_and_grow(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        cable.down = True
        async with client_for(cable) as c:
            for _ in range(8):
                await c.wait_state(ClientState.RECONNECTING)
                await trio.sleep(5)
            cable.down = False
            await c.wait_state(ClientState.OPEN)
            bounds = [min(4, 0.5 * 2**i) for i in range(len(c.delays))]
            assert all(0 <= d <= b for d, b in zip(c.delays, bounds, strict=True))
            assert len(c.delays) >= 5
            changes = c.changes()
            await trio.sleep(Backoff().reset_after)  # a connection that lasts starts the count again
            await cable.cut()
            change = await changes.__anext__()
            assert (change.state, change.attempt) == ("reconnecting", 1)


async def test_publishes_made_offline_go_out_once_on_reconnect(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable, watcher = Cable(engine), Cable(engine)
        async with client_for(cable) as c1, client_for(watcher) as c2:
            async with c1.join("r") as r1, c2.join("r") as r2:
                await r1.synced()
                await r2.synced()
                r2_events = r2.events()
                cable.down = True
                await cable.cut()
                await c1.wait_state(ClientState.RECONNECTING)
                seqs: list[int] = []

                async def publish(i: int) -> None:
                    seqs.append(await r1.publish("n", i))

                async with trio.open_nursery() as nursery:
                    for i in range(3):
                        nursery.start_soon(publish, i)
                    await trio.sleep(3)
                    assert seqs == []  # still offline
                    cable.down = False
                assert sorted(seqs) == [1, 2, 3]
                got = []
                async for event in r2_events:
                    got.append(event.payload)
                    if len(got) == 3:
                        break
                assert sorted(got) == [0, 1, 2]


class Picky(Hooks):
    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return None if room == "secret" else Access.WRITE

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: object) -> object:
        if name == "bad":
            raise ServerEventRejected("nope", 4100)
        return payload


async def test_typed_errors_for_refusals(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=Picky()) as engine:
        async with client_for(Cable(engine)) as c:
            async with c.join("secret") as room:
                with pytest.raises(Forbidden):
                    await room.synced()
            async with c.join("open") as room:
                await room.synced()
                with pytest.raises(EventRejected) as info:
                    await room.publish("bad", None)
                assert info.value.code == 4100


async def test_unsupported_or_refused_connection_stops_for_good(autojump_clock: MockClock) -> None:
    class NoOne(Hooks):
        async def authenticate(self, token: str | None, client: dict[str, object]) -> Identity:
            from plait.engine import Unauthenticated

            raise Unauthenticated("who are you")

    async with make_engine(hooks=NoOne()) as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room:
            with pytest.raises(ConnectionClosed) as info:
                await room.synced()
            assert info.value.code == 4003
            assert c.state is ClientState.CLOSED
            assert cable.opened == 1  # no retry storm against a refusal


async def test_dead_connection_is_detected_by_heartbeat(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, heartbeat_timeout=3.0) as c, c.join("r") as room:
            await room.synced()
            # Freeze the server side: the TCP connection "stays up" but nothing arrives.
            frozen = cable.live[0]
            real_receive = frozen.receive_message

            async def never() -> bytes:
                await trio.sleep_forever()
                raise AssertionError

            frozen.receive_message = never  # type: ignore[method-assign]
            start = trio.current_time()
            await c.wait_state(ClientState.RECONNECTING)
            assert 3 <= trio.current_time() - start <= 3.1
            await c.wait_state(ClientState.OPEN)
            del real_receive


async def test_a_burst_is_split_into_messages_the_server_accepts(autojump_clock: MockClock) -> None:
    # A message over the announced max_frames_per_message is a fatal FRAME_TOO_LARGE (spec
    # §3.2), which would stop the client for good.
    async with make_engine(max_frames_per_message=4) as engine:
        cable = Cable(engine)
        async with client_for(cable) as c1, client_for(cable) as c2:
            async with c1.join("r") as r1, c2.join("r") as r2:
                await r1.synced()
                await r2.synced()
                async with trio.open_nursery() as nursery:
                    for i in range(50):
                        nursery.start_soon(r1.move_cursor, i)
                changes = r2.changes()
                while r2.cursors.get(c1.session_id or "") is None:
                    await changes.__anext__()
                assert c1.state is ClientState.OPEN
                assert cable.opened == 2
