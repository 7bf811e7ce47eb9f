"""The seams given to Engine(...) (Fanout, SequenceAuthority, CompactionLease) are contained
like every hook: one that raises costs a request or a resync, never the room or the engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig
from plait.engine.room import LocalFanout, LocalSequence, Member, Refresh
from plait.protocol import Ack, ChannelClosed, ChannelFrame, Error, ErrorCode, Publish, Update
from plait.storage import MemoryStore

from .client import DocClient, assert_engine_serves, edit


class BreaksOnce(LocalFanout):
    """In-process, but the first document fan-out raises (a pub/sub that is down)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.broken = True

    def _maybe(self, kind: str) -> None:
        if kind == self.kind and self.broken:
            self.broken = False
            raise ConnectionError("pub/sub is down")

    def document(self, room: str, members: Sequence[Member], frames: Sequence[ChannelFrame]) -> None:
        self._maybe("document")
        super().document(room, members, frames)

    def event(self, room: str, members: Sequence[Member], frame: ChannelFrame) -> None:
        self._maybe("event")
        super().event(room, members, frame)

    def ephemeral(
        self, room: str, members: Sequence[Member], frames: Sequence[ChannelFrame], refresh: Callable[[Member], Refresh]
    ) -> None:
        self._maybe("ephemeral")
        super().ephemeral(room, members, frames, refresh)


async def _two(engine: Engine) -> tuple[DocClient, DocClient]:
    a, b = DocClient(engine.connect_memory()), DocClient(engine.connect_memory())
    for c in (a, b):
        await c.hello()
        await c.join("r")
    return a, b


async def test_a_document_fan_out_that_fails_keeps_the_update_and_makes_the_others_resync(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), fanout=BreaksOnce("document")) as engine:
        a, b = await _two(engine)
        await a.send(Update(1, 2, edit(a.doc, "kept")))
        ack = await a.wait_for(Ack)  # applied, stored and acknowledged: not INVALID_UPDATE
        assert ack.ref == 2
        closed = await b.wait_for(ChannelClosed)
        assert closed.code == ErrorCode.INTERNAL and "join again" in closed.message
        await b.join("r")  # rejoin: the sync brings what the fan-out did not
        async with engine.room("r") as handle:
            assert str(handle.doc.get("text", type=pycrdt.Text)) == "kept"
        await assert_engine_serves(engine)


@pytest.mark.parametrize("kind", ["event", "ephemeral"])
async def test_an_event_or_ephemeral_fan_out_that_fails_stops_nothing(autojump_clock: MockClock, kind: str) -> None:
    async with Engine(store=MemoryStore(), fanout=BreaksOnce(kind)) as engine:
        a, b = await _two(engine)
        await a.send(Publish(1, 2, "chat", {"t": 1}, None))
        closed = await b.wait_for(ChannelClosed)  # told to join again, not left to miss frames
        assert closed.code == ErrorCode.INTERNAL
        await trio.sleep(1)
        await assert_engine_serves(engine)
        await assert_engine_serves(engine, "r")  # the room itself still works


class DownSequence(LocalSequence):
    async def next_seq(self, room: str, head: int) -> int:
        raise ConnectionError("redis is down")


async def test_a_sequence_authority_that_fails_refuses_that_publish_only(autojump_clock: MockClock) -> None:
    async with Engine(store=MemoryStore(), sequence=DownSequence()) as engine:
        a, _ = await _two(engine)
        await a.send(Publish(1, 2, "chat", None, None))
        error = await a.wait_for(Error)
        assert (error.ref, error.code) == (2, ErrorCode.INTERNAL)
        await a.send(Update(1, 3, edit(a.doc, "still here")))  # the session goes on
        assert (await a.wait_for(Ack)).ref == 3


class DownLease:
    async def may_compact(self, room: str) -> bool:
        raise ConnectionError("lease service is down")


async def test_a_compaction_lease_that_fails_means_no_compaction_not_a_crashed_room(autojump_clock: MockClock) -> None:
    store = MemoryStore()
    config = EngineConfig(compact_after_updates=2)
    async with Engine(store=store, config=config, lease=DownLease()) as engine:
        a, _ = await _two(engine)
        for i in range(6):
            await a.send(Update(1, 10 + i, edit(a.doc, str(i))))
            await a.wait_for(Ack)
        await assert_engine_serves(engine, "r")
    data = await store.load("r")
    assert data.snapshot is None and len(data.updates) >= 6  # nothing compacted, nothing lost
