"""Resuming events across reconnects (spec §7): within one history the client asks for what it
missed by (epoch, seq) and gets exactly that; against a history that started again (a server
restarted on a memory store) it is told so, and takes the new history's events although
their sequence numbers start again."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from plait.client import ClientState, HistoryGap, RoomEvent

from ..engine.conftest import make_engine
from .cable import Cable, client_for


async def test_a_reconnect_gets_exactly_the_missed_events_and_no_gap(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable, other = Cable(engine), Cable(engine)
        async with client_for(cable) as c1, client_for(other) as c2:
            async with c1.join("r") as r1, c2.join("r") as r2:
                await r1.synced()
                await r2.synced()
                events, changes = r1.events(), r1.changes()
                await r2.publish("before", 1)
                assert (await events.__anext__()).name == "before"
                cable.down = True
                await cable.cut()
                await c1.wait_state(ClientState.RECONNECTING)
                await r2.publish("missed", 2)
                cable.down = False
                await c1.wait_state(ClientState.OPEN)
                event = await events.__anext__()
                assert (event.seq, event.name) == (2, "missed")
                seen = []
                with trio.move_on_after(1):
                    async for change in changes:
                        seen.append(change)
                assert not any(isinstance(c, HistoryGap) for c in seen)


async def test_a_history_that_started_again_is_reported_and_its_events_delivered(autojump_clock: MockClock) -> None:
    async with make_engine() as first, make_engine() as restarted:
        cable = Cable(first)
        async with client_for(cable) as client, client.join("r") as room:
            await room.synced()
            events, changes = room.events(), room.changes()
            for i in range(3):
                await room.publish("old", i)
            assert [(await events.__anext__()).seq for _ in range(3)] == [1, 2, 3]
            async with client_for(Cable(restarted)) as c2, c2.join("r") as r2:
                await r2.synced()
                await r2.publish("new", "after the restart")  # seq 1 of the new history
                cable.engine = restarted
                await cable.cut()
                event: RoomEvent = await events.__anext__()
                assert (event.seq, event.name, event.payload) == (1, "new", "after the restart")
                async for change in changes:
                    if isinstance(change, HistoryGap):
                        break
                assert change.since == 3
