"""What a closed connection leaves behind: nothing the engine keeps alive (a sleeping task's
frame, a process-wide cache), so that its memory can go back once it is freed.

Rules: MockClock throughout.
"""

from __future__ import annotations

import gc
import urllib.parse
import weakref

import pytest
import trio
from trio.testing import MockClock

from .client import DocClient, yjs_client
from .conftest import CONFIG, running_engine


async def test_a_closed_connection_leaves_nothing_the_engine_keeps(autojump_clock: MockClock) -> None:
    async with running_engine() as engine:
        client = DocClient(engine.connect_memory())
        await client.hello()
        [session] = engine._sessions
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
