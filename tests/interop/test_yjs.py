"""Real Yjs clients against Plait's y-websocket endpoint (spec §13): the official `yjs` and
`y-websocket` packages under Node.js, a native Plait client, and pycrdt's own y-protocols
helpers, all in the same rooms, over real sockets on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pycrdt
import pytest
import trio

from plait.client import connect
from plait.client._client import websocket_opener
from plait.engine import Engine
from plait.engine.testing import TokenHooks
from plait.protocol import TransportClosed

from ..e2e.test_websocket import until

pytestmark = pytest.mark.slow

JS = Path(__file__).parent / "js"


def node_ready() -> None:
    assert shutil.which("node"), "Node.js is required for the interop tests"
    assert (JS / "node_modules" / "y-websocket").exists(), (
        "run `npm ci` in tests/interop/js (CI does this in .ci/run)"
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[Engine, int]]:
    node_ready()
    async with Engine(hooks=TokenHooks()) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        yield engine, port
        nursery.cancel_scope.cancel()


async def run_js(port: int, room: str, **config: Any) -> list[dict[str, Any]]:
    config = {"url": f"ws://127.0.0.1:{port}/yjs", "room": room, **config}
    result = await trio.run_process(
        ["node", str(JS / "yclients.mjs"), json.dumps(config)], capture_stdout=True, capture_stderr=True, check=False
    )
    out = result.stdout.decode().strip().splitlines()
    assert result.returncode == 0 and out, f"node failed: {result.stdout.decode()} {result.stderr.decode()}"
    return json.loads(out[-1])["clients"]  # type: ignore[no-any-return]


async def test_two_yjs_clients_and_a_native_client_converge_and_see_each_other(server: tuple[Engine, int]) -> None:
    _, port = server
    results: dict[str, list[dict[str, Any]]] = {}
    expected_length = len("py;") + 2 * len("jsX;")
    async with connect(f"ws://127.0.0.1:{port}/", token="py-user") as native, native.join("shared") as room:
        await room.synced()
        await room.set_presence({"name": "py"})

        async def js(name: str) -> None:
            results[name] = await run_js(
                port, "shared", name=name, insert=f"{name};", expectLength=expected_length, waitAwareness=2, holdMs=300
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(js, "jsA")
            nursery.start_soon(js, "jsB")
            room.text.insert(0, "py;")
            await room.flushed()
            await until(room, lambda: len(str(room.text)) == expected_length)
            # Yjs awareness arrives as presence, with the identity the server stamped.
            await until(room, lambda: {e.state.get("name") for e in room.presence.values()} >= {"jsA", "jsB"})
        final = str(room.text)
        for entry in room.presence.values():
            if entry.state.get("name") in ("jsA", "jsB"):
                assert entry.identity["id"].startswith("anon-")
    for name in ("jsA", "jsB"):
        (client,) = results[name]
        assert client["text"] == final
        names = {state.get("name") for state in client["others"]}
        assert "py" in names and ({"jsA", "jsB"} - {name}) <= names
        py_state = next(s for s in client["others"] if s.get("name") == "py")
        assert py_state["identity"] == {"id": "py-user"}  # stamped by the server, not the client


async def test_a_late_yjs_joiner_sees_everyone_at_once(server: tuple[Engine, int]) -> None:
    _, port = server
    async with connect(f"ws://127.0.0.1:{port}/", token="ada") as native, native.join("late") as room:
        await room.synced()
        await room.set_presence({"name": "ada"})
        await room.move_cursor({"index": 0})
        room.text.insert(0, "already here")
        await room.flushed()
        (late,) = await run_js(port, "late", name="late")
    assert late["text"] == "already here"
    assert late["awarenessAtSync"] >= 1  # awareness came with the sync, not a tick later
    ada = next(s for s in late["others"] if s.get("name") == "ada")
    assert ada["cursor"] == {"index": 0} and ada["identity"] == {"id": "ada"}


async def test_join_storm_on_a_fresh_room(server: tuple[Engine, int]) -> None:
    _, port = server
    n = 30
    clients = await run_js(port, "storm", clients=n, name="c", insert="x", expectLength=sum(len(f"x{i};") for i in range(n)))
    texts = {c["text"] for c in clients}
    assert len(texts) == 1
    final = texts.pop()
    assert all(f"x{i};" in final for i in range(n))
    engine, _ = server
    async with engine.room("storm") as room:
        assert str(room.doc.get("text", type=pycrdt.Text)) == clients[0]["text"]


async def test_read_only_yjs_client_cannot_write(server: tuple[Engine, int]) -> None:
    engine, port = server
    (viewer,) = await run_js(port, "guarded", name="viewer", token="ro:viewer", insert="sneaky", holdMs=300)
    assert viewer["text"] == "sneaky"  # its own local edit...
    async with engine.room("guarded") as room:
        assert str(room.doc.get("text", type=pycrdt.Text)) == ""  # ...never reached the room


async def test_a_yjs_clients_update_comes_back_to_it_once_stored(server: tuple[Engine, int]) -> None:
    """Issue 23: y-websocket v4 shows local changes as synced only when they come back; Plait
    sends a Yjs client's update back to it once durable, within 0.5 s of the edit."""
    _, port = server
    (writer,) = await run_js(port, "confirmed", name="writer", insert="stored", watchConfirmation=True, holdMs=500)
    assert writer["confirmedMs"] is not None and writer["confirmedMs"] < 500, writer


async def test_a_refused_yjs_update_is_never_confirmed(server: tuple[Engine, int]) -> None:
    _, port = server
    (viewer,) = await run_js(
        port, "refused", name="viewer", token="ro:viewer", insert="sneaky", watchConfirmation=True, holdMs=1000
    )
    assert viewer["confirmedMs"] is None


@asynccontextmanager
async def raw_websocket(url: str) -> AsyncIterator[Any]:
    """A bare WebSocket (the client SDK's opener, which never leaks its socket)."""
    async with trio.open_nursery() as nursery:
        ws = await websocket_opener(url, nursery)()
        try:
            yield ws
        finally:
            await ws.aclose()
            nursery.cancel_scope.cancel()


async def test_no_access_closes_with_forbidden(server: tuple[Engine, int]) -> None:
    _, port = server
    async with raw_websocket(f"ws://127.0.0.1:{port}/yjs/secret?token=no:x") as ws:
        with pytest.raises(TransportClosed) as info:
            await ws.receive_message()
    assert info.value.code == 4010


async def test_pycrdt_y_protocol_helpers_as_an_independent_client(server: tuple[Engine, int]) -> None:
    _, port = server
    doc = pycrdt.Doc()
    async with connect(f"ws://127.0.0.1:{port}/") as native, native.join("py-yjs") as room:
        await room.synced()
        room.text.insert(0, "native ")
        await room.flushed()
        async with raw_websocket(f"ws://127.0.0.1:{port}/yjs/py-yjs") as ws:
            await ws.send_message(pycrdt.create_sync_message(doc))
            text = doc.get("text", type=pycrdt.Text)
            for _ in range(20):
                message = await ws.receive_message()
                assert isinstance(message, bytes)
                if message[0] == pycrdt.YMessageType.SYNC:
                    reply = pycrdt.handle_sync_message(message[1:], doc)
                    if reply is not None:
                        await ws.send_message(reply)
                if str(text) == "native ":
                    break
            assert str(text) == "native "
            before = doc.get_state()
            text.insert(len(text), "pycrdt")
            await ws.send_message(pycrdt.create_update_message(doc.get_update(before)))
            await until(room, lambda: str(room.text) == "native pycrdt")
