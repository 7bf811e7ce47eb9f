"""Giving memory back (engine/_reclaim.py): once many rooms and sessions have gone and the load
has stayed low for a whole interval, the engine collects what they left, reference cycles
included whatever the collector's thresholds, and trims the heap; not while the load stays
near its peak, not for a few sessions, and not more often than its pauses allow. Nothing the
engine serves keeps a closed connection's objects alive meanwhile.

Rules: MockClock throughout; where a test checks what a reclaim freed, the collector's own
collections are disabled for its duration (gc.disable), so only the reclaim can free a cycle.
"""

from __future__ import annotations

import gc
import itertools
import os
import urllib.parse
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from plait.engine._reclaim import RECLAIM_DUTY, Reclaimer, glibc_malloc_trim
from plait.protocol import PresenceSnapshot

from .client import DocClient, yjs_client
from .conftest import CONFIG, running_engine

INTERVAL = 5.0


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def no_automatic_collection() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_a_quiet_engine_frees_the_cycles_its_rooms_and_sessions_left(
    autojump_clock: MockClock, no_automatic_collection: None
) -> None:
    async with running_engine(reclaim_interval=INTERVAL, reclaim_after=20) as engine:
        clients: list[Any] = []
        for i in range(6):  # 12 sessions in 12 rooms: 24 rooms and sessions end
            native = DocClient(engine.connect_memory())
            await native.hello()
            await native.join(f"native-{i}")
            await native.wait_for(PresenceSnapshot)
            clients += [native, await yjs_client(engine, f"/yjs/yjs-{i}")]
        sessions = [weakref.ref(session) for session in engine._sessions.values()]
        left = Cycle()  # garbage only a collection frees
        collected = weakref.ref(left)
        del left
        await trio.sleep(6 * INTERVAL)  # at its peak load: the memory is in use
        assert engine.statistics()["memory_reclaims"] == 0
        assert collected() is not None

        for client in clients:
            await client.transport.aclose()
        await trio.sleep(CONFIG.presence_grace + CONFIG.room_idle_grace + 1)
        assert engine.statistics()["rooms"] == engine.statistics()["sessions"] == 0
        await trio.sleep(2 * INTERVAL + 1)  # quiet at two looks in a row
        assert engine.statistics()["memory_reclaims"] == 1
        assert collected() is None
        assert [s for s in sessions if s() is not None] == []
        await trio.sleep(4 * INTERVAL)  # nothing more has ended: no more
        assert engine.statistics()["memory_reclaims"] == 1


async def test_closed_sessions_and_unloaded_rooms_are_freed_without_waiting_for_a_collection(
    autojump_clock: MockClock, no_automatic_collection: None
) -> None:
    # plait serve makes collections rare: a session or a room in a reference cycle would keep
    # its memory (socket buffers, the document) long after it ended.
    async with running_engine() as engine:
        native = DocClient(engine.connect_memory())
        await native.hello()
        await native.join("native")
        await native.wait_for(PresenceSnapshot)
        y = await yjs_client(engine, "/yjs/yjs")
        await y.edit("x")
        refs: list[weakref.ref[Any]] = [weakref.ref(session) for session in engine._sessions.values()]
        for name in ("native", "yjs"):
            async with engine.hold_room(name) as room:
                refs += [weakref.ref(room), weakref.ref(room.doc)]
            del room
        await native.transport.aclose()
        await y.transport.aclose()
        await trio.sleep(CONFIG.presence_grace + CONFIG.room_idle_grace + 1)
        assert engine.statistics()["rooms"] == engine.statistics()["sessions"] == 0
        alive = [r() for r in refs if r() is not None]
        assert alive == []


async def test_a_closed_connection_leaves_nothing_the_engine_keeps(autojump_clock: MockClock) -> None:
    async with running_engine() as engine:
        client = DocClient(engine.connect_memory())
        await client.hello()
        [session] = engine._sessions.values()
        closed = weakref.ref(session)
        del session
        await trio.sleep(CONFIG.heartbeat / 4)  # the heartbeat sweep has seen it
        await client.transport.aclose()
        await trio.sleep(CONFIG.heartbeat / 4)  # and swept again, without it
        gc.collect()
        assert closed() is None


async def test_connection_paths_do_not_go_into_urllibs_cache(autojump_clock: MockClock) -> None:
    # urlsplit keeps its last answers (128 on Python 3.11): a path a client chose would stay alive
    # there, in whatever memory it was allocated in, long after its connection closed.
    info = getattr(urllib.parse.urlsplit, "cache_info", None)
    if info is None:
        pytest.skip("this Python's urlsplit keeps no cache")
    async with running_engine() as engine:
        before = info().currsize
        for i in range(3):
            client = await yjs_client(engine, f"/yjs/room-{i}?token=t")
            await client.transport.aclose()
        assert info().currsize == before


# -- when: the policy, with a fake collection -------------------------------------------------


class Recorder:
    def __init__(self, clock: MockClock, pause: float = 0.0) -> None:
        self.clock, self.pause = clock, pause
        self.at: list[float] = []
        self.trims = 0

    def collect(self) -> int:
        self.at.append(trio.current_time())
        self.clock.jump(self.pause)  # the time a collection of a big heap takes
        return 0

    def trim(self, pad: int) -> int:
        self.trims += 1
        return 1


async def test_only_once_the_load_has_fallen_to_half_and_enough_ended(autojump_clock: MockClock) -> None:
    seen = Recorder(autojump_clock)
    reclaimer = Reclaimer(INTERVAL, 100, collect=seen.collect, trim=seen.trim)
    load = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reclaimer.run, lambda: load)
        for load in range(1, 201):
            reclaimer.started(load)
        for _ in range(150):
            reclaimer.ended()
        load = 180  # 150 ended, but the load is near its peak (200)
        await trio.sleep(3.5 * INTERVAL)  # (changes half way between looks)
        load = 150  # 150 ended, as many as are live, but above half the peak
        await trio.sleep(3 * INTERVAL)
        load = 90
        began = trio.current_time()
        await trio.sleep(3 * INTERVAL)
        assert len(seen.at) == 1 and seen.trims == 1
        assert began + INTERVAL < seen.at[0] <= began + 2 * INTERVAL  # at the second quiet look
        for _ in range(99):  # fewer than `after`, with 90 live
            reclaimer.ended()
        await trio.sleep(3 * INTERVAL)
        assert len(seen.at) == 1
        load = 0  # empty: what ended is worth giving back, however little
        await trio.sleep(3 * INTERVAL)
        assert len(seen.at) == 2
        nursery.cancel_scope.cancel()


async def test_a_slow_collection_spaces_out_the_next(autojump_clock: MockClock) -> None:
    pause = 0.008  # 8 ms: nothing for the next 8 s, though the engine is quiet at every look
    seen = Recorder(autojump_clock, pause=pause)
    reclaimer = Reclaimer(1.0, 1, collect=seen.collect)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reclaimer.run, lambda: 0)
        for _ in range(30):
            reclaimer.started(1)
            reclaimer.ended()
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    gaps = [b - a for a, b in itertools.pairwise(seen.at)]
    assert len(seen.at) >= 3 and all(pause / RECLAIM_DUTY <= gap <= pause / RECLAIM_DUTY + 2 for gap in gaps), gaps


def test_the_heap_trim_is_glibcs_where_there_is_one() -> None:
    trim = glibc_malloc_trim()
    try:
        glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        glibc = False
    assert (trim is not None) == glibc
    if trim is not None:
        assert trim(0) in (0, 1)
