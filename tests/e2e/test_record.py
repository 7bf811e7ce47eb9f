"""Recording real traffic (`plait serve --record`) and replaying it: a bug report as a trace."""

from __future__ import annotations

import io

import pycrdt
import pytest
import trio

from plait.client import PresenceChanged, connect
from plait.engine import Engine
from plait.engine._record import TraceRecorder
from plait.engine.testing import replay_trace, settings_from_config
from plait.protocol import Stored, Trace, read_trace
from plait.storage import MemoryStore

pytestmark = pytest.mark.slow


async def record_session(out: io.StringIO, store: MemoryStore | None = None) -> None:
    engine = Engine(store=store)
    engine.recorder = TraceRecorder(out, settings_from_config(engine.config))
    async with engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("bug") as room:
            changes = room.changes()
            await room.synced()
            for _ in range(2):  # the snapshot at join, then the tick's diff: no timer left pending
                while not isinstance(await changes.__anext__(), PresenceChanged):
                    pass
            room.text.insert(0, "steps to reproduce")
            await room.flushed()
            assert await room.publish("report", {"severity": "high"}) >= 1
        engine.recorder = None
        nursery.cancel_scope.cancel()


async def test_recorded_traffic_replays_and_a_changed_engine_fails_it() -> None:
    out = io.StringIO()
    await record_session(out)
    trace = read_trace(io.StringIO(out.getvalue()))
    kinds = [type(r.body).__name__ for r in trace.records]
    assert "Update" in kinds and "Event" in kinds and "Ack" in kinds
    result = await trio.to_thread.run_sync(replay_trace, trace)
    assert result.ok, result.report()
    # A trace whose expectation differs from what the engine does (the event dropped) fails,
    # naming the frame: this is how a recorded bug report fails until the bug is fixed.
    edited = [r for r in trace.records if not (r.dir == "out" and type(r.body).__name__ == "Event")]
    broken = await trio.to_thread.run_sync(replay_trace, Trace(trace.header, tuple(edited)))
    assert not broken.ok and "event" in broken.report()


async def test_a_recording_made_on_existing_data_replays() -> None:
    """The issue: `plait serve --record` on a room that already existed gave a trace that
    `plait replay` failed (head 1 vs 0). The trace now carries what the store held."""
    store = MemoryStore()
    async with Engine(store=store) as earlier, earlier.room("bug") as room:
        room.doc.get("text", type=pycrdt.Text).insert(0, "already here; ")
        await room.publish("opened", {"by": "someone"})
        await room.flushed()
    out = io.StringIO()
    await record_session(out, store)
    trace = read_trace(io.StringIO(out.getvalue()))
    (stored,) = [r.body for r in trace.records if isinstance(r.body, Stored)]
    assert stored.room == "bug" and len(stored.events) == 1
    result = await trio.to_thread.run_sync(replay_trace, trace)
    assert result.ok, result.report()
    without = Trace(trace.header, tuple(r for r in trace.records if not isinstance(r.body, Stored)))
    assert not (await trio.to_thread.run_sync(replay_trace, without)).ok
