"""`plait serve --store postgresql://...` when its database connection breaks (a PostgreSQL
restart, a failover, a dropped network): what was acknowledged stays, what was in flight is
not acknowledged, and editing goes on once the database answers again, with nothing lost."""

from __future__ import annotations

import psycopg
import pytest
import trio

from plait.client import connect
from tests.servers import PostgresServer

from .serveprocess import plait_serve

pytestmark = pytest.mark.slow


def terminate_plait_connections(server: PostgresServer) -> int:
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'plait %'"
        ).fetchall()
    return len(rows)


async def test_edits_go_on_after_the_database_connection_breaks(postgres: PostgresServer) -> None:
    dsn = postgres.fresh_dsn()
    async with plait_serve("--port", "0", "--store", dsn) as served:
        url = f"ws://127.0.0.1:{served.port}/"
        async with connect(url) as client, client.join("notes") as room:
            await room.synced()
            room.text.insert(0, "before ")
            await room.flushed()
            assert await trio.to_thread.run_sync(terminate_plait_connections, postgres) == 1
            room.text.insert(len(room.text), "after")
            with trio.fail_after(30):
                await room.flushed()  # the room waited for the database instead of failing
        # Every acknowledged edit is in the database, read back by a new server on it.
    async with plait_serve("--port", "0", "--store", dsn) as served:
        async with connect(f"ws://127.0.0.1:{served.port}/") as client, client.join("notes") as room:
            await room.synced()
            assert str(room.text) == "before after"
