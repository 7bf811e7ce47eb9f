"""Issue 14 item 3 over real sockets: a room grown past max_message_bytes through acked edits
of one client (one long item) is opened by the SDK, and a client with more offline edits than a
message holds uploads them; everyone converges, and no client reconnects (the issue: the SDK
refused the server's one 17 MiB message and reconnected twice a second, forever)."""

from __future__ import annotations

import pycrdt
import pytest
import trio

from plait.client import connect
from plait.engine import Engine, EngineConfig

from .test_websocket import until

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


async def test_a_room_larger_than_a_message_opens_and_takes_large_offline_edits() -> None:
    config = EngineConfig(max_message_bytes=1 * MiB, max_document_bytes=16 * MiB)
    chunk = "grown by acked edits, one client 😀 " * 7000  # ~250 KB a chunk
    async with Engine(config=config) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{port}/"
        with trio.fail_after(60):
            async with connect(url) as writer, writer.join("big") as room:
                await room.synced()
                while len(room.doc.get_update()) < 3 * MiB:  # appended: yrs keeps one item
                    room.text.insert(len(room.text), chunk)
                    await room.flushed()
                grown = str(room.text)
                assert writer.attempts == 0
            async with connect(url) as reader, reader.join("big") as fresh:
                await fresh.synced()
                assert str(fresh.text) == grown
                async with connect(url) as offline:
                    async with offline.join("big") as other:
                        # Edits made before the connection opened: its first sync_step2.
                        for _ in range(12):
                            other.text.insert(len(other.text), "offline 🎉 " * 25_000)
                        mine = str(other.text)
                        await other.synced()
                        await other.flushed()
                        await until(fresh, lambda: len(str(fresh.text)) == len(grown) + len(mine))
                        assert str(fresh.text) == str(other.text)
                        assert offline.attempts == 0 and offline.delays == []
                async with engine.room("big") as handle:
                    assert str(handle.doc.get("text", type=pycrdt.Text)) == str(fresh.text)
                assert reader.attempts == 0 and reader.delays == []
        nursery.cancel_scope.cancel()
