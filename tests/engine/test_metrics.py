"""The metrics seam (engine/_metrics.py): what an exporter is told, under MockClock."""

from __future__ import annotations

from collections import Counter

import pytest
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig
from plait.protocol import Ack, CloseCode, Error, ErrorCode, Publish, TransportClosed, Update
from plait.storage import MemoryStore

from .client import DocClient, assert_engine_serves, edit


class Recording:
    """A Metrics that keeps everything it is told."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.observed: dict[str, list[float]] = {}

    def add(self, name: str, amount: float = 1.0, label: str = "") -> None:
        self.counts[name, label] += amount

    def observe(self, name: str, value: float, label: str = "") -> None:
        self.observed.setdefault(name, []).append(value)


async def test_sessions_rooms_commits_updates_events_and_refusals_are_reported(autojump_clock: MockClock) -> None:
    metrics = Recording()
    async with Engine(store=MemoryStore(), config=EngineConfig(room_idle_grace=1), metrics=metrics) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.join("r")
        await a.send(Update(1, 2, edit(a.doc, "hi")), Publish(1, 3, "chat", {"t": 1}, None))
        await a.wait_for(Ack)
        await a.wait_for(Ack)
        await a.send(Update(1, 4, b"\xff\xff\xff"))  # not an update: INVALID_UPDATE
        assert (await a.wait_for(Error)).code == ErrorCode.INVALID_UPDATE
        y = engine.connect_memory("/yjs/%00")  # an invalid room name: refused, closed
        with pytest.raises(TransportClosed):
            for _ in range(10):
                await y.receive_message()
        await a.transport.aclose()
        await engine.shutdown()
    assert metrics.counts["sessions_opened", "native"] == 1
    assert metrics.counts["sessions_closed", str(CloseCode.PROTOCOL_ERROR)] == 1  # the yjs refusal
    assert metrics.counts["refusals", "INVALID_UPDATE"] == 1 and metrics.counts["refusals", "INVALID_ROOM_NAME"] == 1
    assert metrics.counts["rooms_loaded", ""] == 1 and metrics.counts["rooms_unloaded", ""] == 1
    assert metrics.counts["updates_applied", ""] == 1 and metrics.counts["events_published", ""] == 1
    assert sum(metrics.observed["commit_updates"]) == 1 and len(metrics.observed["commit_seconds"]) >= 1
    assert len(metrics.observed["room_load_seconds"]) == 1


class Broken:
    """An exporter with a bug."""

    def add(self, name: str, amount: float = 1.0, label: str = "") -> None:
        raise RuntimeError("exporter bug")

    def observe(self, name: str, value: float, label: str = "") -> None:
        raise ValueError("exporter bug")


async def test_an_exporter_that_raises_stops_nothing(autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    async with Engine(metrics=Broken()) as engine:
        await assert_engine_serves(engine)
        await assert_engine_serves(engine, "another")
    failures = [r for r in caplog.records if "metrics: reporting" in r.getMessage()]
    assert failures and len(failures) == len({r.getMessage() for r in failures})  # each name logged once
