"""Recording real traffic (`plait serve --record`) and replaying it: a bug report as a trace."""

from __future__ import annotations

import io

import pytest
import trio

from plait.client import PresenceChanged, connect
from plait.engine import Engine
from plait.engine._record import TraceRecorder
from plait.engine.testing import replay_trace, settings_from_config
from plait.protocol import Trace, read_trace

pytestmark = pytest.mark.slow


async def record_session(out: io.StringIO) -> None:
    engine = Engine()
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
            assert await room.publish("report", {"severity": "high"}) == 1
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
