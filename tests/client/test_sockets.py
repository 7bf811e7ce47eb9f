"""The SDK over real sockets on 127.0.0.1 against an embedded Engine, many clients at once.
Real time here: every wait is on an event, bounded by the suite's deadline."""

from __future__ import annotations

import pycrdt
import pytest
import trio

from plait.client import connect
from plait.engine import Engine

pytestmark = pytest.mark.slow

CLIENTS, ROUNDS = 40, 4


async def test_leaving_at_once_still_sends_the_last_edit_and_the_leave() -> None:
    # Each client types a marker and leaves `async with connect(...)` straight away, without
    # `flushed()`: what it queued must still reach the server, the leave included (a lost
    # leave would keep a ghost member in the room for the presence grace period).
    async with Engine() as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{port}/"
        typed: list[str] = []

        async def type_and_leave(marker: str) -> None:
            async with connect(url) as client, client.join("marks") as room:
                await room.synced()
                room.text.insert(0, marker)
            typed.append(marker)

        for round_ in range(ROUNDS):
            async with trio.open_nursery() as clients:
                for i in range(CLIENTS):
                    clients.start_soon(type_and_leave, f"<{round_}.{i}>")
            async with engine.room("marks") as handle:
                text = str(handle.doc.get("text", type=pycrdt.Text))
                missing = [m for m in typed if m not in text]
                assert missing == [], f"round {round_}: {len(missing)} of {len(typed)} edits never arrived"
                ghosts = handle.presence()
                assert ghosts == (), f"round {round_}: {len(ghosts)} members still present after leaving"
        nursery.cancel_scope.cancel()
