"""Large documents over real sockets: a y-websocket client, which cannot split what it sends,
uploads a document larger than the native message limit (up to max_document_bytes)."""

from __future__ import annotations

import pycrdt
import pytest
import trio
import trio_websocket

from plait.engine import Engine, EngineConfig
from plait.protocol import YSyncStep, encode_sync

pytestmark = pytest.mark.slow


async def test_yjs_client_uploads_a_document_larger_than_the_native_message_limit() -> None:
    """The issue: a y-websocket client holding 17 MiB of offline text was closed with 1009 on
    every upload and retried forever; the room stayed empty."""
    config = EngineConfig(max_message_bytes=1024 * 1024, max_document_bytes=8 * 1024 * 1024)
    text = "offline " * (3 * 1024 * 1024 // 8)
    doc = pycrdt.Doc(client_id=5)
    doc.get("text", type=pycrdt.Text).insert(0, text)
    async with Engine(config=config) as engine:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
            url = f"ws://127.0.0.1:{port}/yjs/big"
            async with trio_websocket.open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws:
                await ws.send_message(encode_sync(YSyncStep.STEP2, doc.get_update()))
                async with engine.room("big") as room:
                    with trio.fail_after(20):
                        while len(str(room.doc.get("text", type=pycrdt.Text))) < len(text):
                            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
