"""`plait serve --store postgresql://...` when its database connection breaks (a PostgreSQL
restart, a failover, a dropped network): what was acknowledged stays, what was in flight is
not acknowledged, and editing goes on once the database answers again, with nothing lost."""

from __future__ import annotations

import pytest
import trio

from plait.client import StorageUnavailable, connect
from tests.servers import PostgresServer

from .serveprocess import plait_serve

pytestmark = pytest.mark.slow


async def test_edits_go_on_after_the_database_connection_breaks(postgres: PostgresServer) -> None:
    dsn = postgres.fresh_dsn()
    async with plait_serve("--port", "0", "--store", dsn) as served:
        url = f"ws://127.0.0.1:{served.port}/"
        async with connect(url) as client, client.join("notes") as room:
            await room.synced()
            room.text.insert(0, "before ")
            await room.flushed()
            assert await trio.to_thread.run_sync(postgres.terminate, served.process.pid) == 1
            room.text.insert(len(room.text), "after")
            with trio.fail_after(30):
                await room.flushed()  # the room waited for the database instead of failing
        # Every acknowledged edit is in the database, read back by a new server on it.
    async with plait_serve("--port", "0", "--store", dsn) as served:
        async with connect(f"ws://127.0.0.1:{served.port}/") as client, client.join("notes") as room:
            await room.synced()
            assert str(room.text) == "before after"


async def test_a_stalled_database_is_told_to_clients_and_service_resumes(postgres: PostgresServer) -> None:
    """PostgreSQL stops answering (paused: its connections stay open, nothing comes back).
    An edit made meanwhile is not acknowledged; its client is told STORAGE_UNAVAILABLE within
    the store's call timeout and the outage grace's last second (11 s; it was 20 s and more
    while the room's last try waited out another call timeout behind the stalled call) rather
    than waiting forever; once the database answers, a client joins again and finds every
    acknowledged edit."""
    dsn = postgres.fresh_dsn()
    async with plait_serve("--port", "0", "--store", dsn) as served:
        url = f"ws://127.0.0.1:{served.port}/"
        async with connect(url) as client, client.join("notes") as room:
            await room.synced()
            room.text.insert(0, "kept")
            await room.flushed()
            postgres.pause()
            try:
                room.text.insert(len(room.text), " maybe")
                started = trio.current_time()
                with trio.fail_after(15), pytest.raises(StorageUnavailable):
                    await room.flushed()
                assert trio.current_time() - started > 9  # the grace was waited out
            finally:
                postgres.resume()
        async with connect(url) as client, client.join("notes") as room:
            with trio.fail_after(30):
                await room.synced()
            assert str(room.text).startswith("kept")
            room.text.insert(0, "> ")
            with trio.fail_after(30):
                await room.flushed()
