"""The client SDK through a server restart and a slow, flaky network: every acknowledged and
every offline edit ends up in every client's document, and no event is delivered twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from plait.client import Backoff, ClientState, Room, RoomEvent, connect
from plait.engine import Engine
from plait.storage import SQLiteStore

from .proxy import proxy_to
from .test_websocket import until

pytestmark = pytest.mark.slow
FAST = Backoff(base=0.05, cap=0.3)


async def run_server(
    db: Path, port: int, stop: trio.Event, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    store = SQLiteStore(db)
    try:
        async with Engine(store=store) as engine, trio.open_nursery() as nursery:
            task_status.started(await nursery.start(engine.serve_websocket, "127.0.0.1", port))
            await stop.wait()
            nursery.cancel_scope.cancel()
    finally:
        await store.aclose()  # its lock too: the restarted server opens the same database
    # Leaving the engine closed every session with GOING_AWAY and flushed every room.


async def type_tokens(room: Room, name: str, count: int, acked: list[str]) -> None:
    for k in range(count):
        token = f"<{name}{k}>"
        room.text.insert(len(room.text), token)
        await room.flushed()
        acked.append(token)


async def collect(events: object, into: list[RoomEvent], count: int) -> None:
    async for event in events:  # type: ignore[attr-defined]
        into.append(event)
        if len(into) == count:
            return


async def test_server_restart_loses_no_acked_or_offline_edit_or_publish(tmp_path: Path) -> None:
    db = tmp_path / "plait.db"
    acked: list[str] = []
    async with trio.open_nursery() as nursery:
        first = trio.Event()
        port = await nursery.start(run_server, db, 0, first)
        url = f"ws://127.0.0.1:{port}/"
        async with connect(url, backoff=FAST) as c1, connect(url, backoff=FAST) as c2:
            async with c1.join("doc") as r1, c2.join("doc") as r2:
                await r1.synced()
                await r2.synced()
                seen: list[RoomEvent] = []
                r2_events = r2.events()
                await type_tokens(r1, "a", 5, acked)
                await type_tokens(r2, "b", 5, acked)
                assert await r1.publish("before", 1) == 1

                first.set()  # the server stops
                await c1.wait_state(ClientState.RECONNECTING)
                await c2.wait_state(ClientState.RECONNECTING)
                r1.text.insert(len(r1.text), "<offline1>")
                r2.text.insert(0, "<offline2>")
                offline_seq: list[int] = []
                async with trio.open_nursery() as publishing:
                    publishing.start_soon(lambda: _publish(r1, offline_seq))
                    await trio.sleep(0.3)  # the publish waits in the offline queue meanwhile
                    assert offline_seq == []
                    second = trio.Event()
                    await nursery.start(run_server, db, port, second)  # back, same port, same data
                assert offline_seq == [2]
                await r1.flushed()
                await r2.flushed()
                expected = set(acked) | {"<offline1>", "<offline2>"}
                await until(r1, lambda: all(t in str(r1.text) for t in expected))
                await until(r2, lambda: str(r2.text) == str(r1.text))
                await collect(r2_events, seen, 2)
                assert [(e.seq, e.name) for e in seen] == [(1, "before"), (2, "offline")]
        second.set()


async def _publish(room: Room, into: list[int]) -> None:
    into.append(await room.publish("offline", {"n": 1}))


async def test_slow_flaky_link_converges_and_delivers_each_event_once(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        port = await nursery.start(run_server, tmp_path / "plait.db", 0, stop)
        async with proxy_to(port, delay=0.02) as proxy:
            flaky_url, direct_url = f"ws://127.0.0.1:{proxy.port}/", f"ws://127.0.0.1:{port}/"
            async with connect(flaky_url, backoff=FAST) as flaky, connect(direct_url) as steady:
                async with flaky.join("r") as fr, steady.join("r") as sr:
                    await fr.synced()
                    await sr.synced()
                    got: list[RoomEvent] = []
                    steady_events = sr.events()
                    seqs = []
                    for i in range(12):
                        fr.text.insert(len(fr.text), f"[{i}]")
                        seqs.append(await fr.publish("n", i))
                        if i % 4 == 3:
                            proxy.cut()  # the link drops mid-stream, again and again
                    await fr.flushed()
                    await collect(steady_events, got, 12)
                    assert [e.payload for e in got] == list(range(12))  # each once, in order
                    assert seqs == list(range(1, 13))
                    await until(sr, lambda: str(sr.text) == "".join(f"[{i}]" for i in range(12)))
                    assert proxy.connections >= 3  # the cuts after items 3 and 7 forced two reconnects
        stop.set()
