"""examples/fastapi_app.py (the README's "Embedding in an ASGI app") as a user runs it: a real
`hypercorn -k trio` process on a free port of 127.0.0.1, started and stopped by its pid. A
native client (the Python SDK), a Yjs client (y-websocket under Node) and an SSE client share a
room through the app's /collab mount; the app's own routes still answer; a shutdown stores
what was acknowledged, and a restart on the same SQLite file serves it. Under an asyncio
server (uvicorn, hypercorn without -k trio) a user is told to use `hypercorn -k trio`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from plait.client import connect
from plait.protocol import Join, Publish, decode_json, encode_json

from ..interop.test_yjs import JS, node_ready
from .httpclients import event_stream

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[2] / "examples"
HYPERCORN = [sys.executable, "-m", "hypercorn", "-c", "python:fastapi_app.hypercorn", "-b", "127.0.0.1:0", "--error-logfile", "-"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@asynccontextmanager
async def served(cwd: Path) -> AsyncIterator[int]:
    """`hypercorn -k trio ... fastapi_app:app` in `cwd` (its plait.db); the port. Stopped with
    SIGTERM to its pid (a graceful shutdown), which must end it within 30 s, cleanly. As the
    README runs it: `python -m hypercorn` in the example's folder (here a copy of it)."""
    shutil.copy(EXAMPLES / "fastapi_app.py", cwd)
    process = await trio.lowlevel.open_process(
        [*HYPERCORN, "-k", "trio", "--graceful-timeout", "2", "fastapi_app:app"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd, env=environment(),
    )
    assert process.stderr is not None
    seen = b""
    try:
        with trio.fail_after(60):
            while not (match := re.search(rb"Running on http://127\.0\.0\.1:(\d+)", seen)):
                chunk = await process.stderr.receive_some(4096)
                assert chunk, f"hypercorn exited: {seen.decode()}"
                seen += chunk
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            while chunk := await process.stderr.receive_some(4096):
                seen += chunk
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, seen.decode()
    assert b"Traceback" not in seen, seen.decode()


async def yjs_client(port: int, room: str, insert: str, expect_length: int) -> list[dict[str, object]]:
    # holdMs: Hypercorn negotiates permessage-deflate, and `ws` compresses off the main thread,
    # so a client that exits right after its edit may exit before the edit is written.
    config = {"url": f"ws://127.0.0.1:{port}/collab/yjs", "room": room, "insert": insert, "expectLength": expect_length, "holdMs": 300}
    result = await trio.run_process(
        ["node", str(JS / "yclients.mjs"), json.dumps(config)], capture_stdout=True, capture_stderr=True, check=False
    )
    out = result.stdout.decode().strip().splitlines()
    assert result.returncode == 0 and out, f"node failed: {result.stdout.decode()} {result.stderr.decode()}"
    return json.loads(out[-1])["clients"]  # type: ignore[no-any-return]


async def test_the_fastapi_example_serves_native_yjs_and_sse_clients_in_one_room_and_keeps_what_was_acked(tmp_path: Path) -> None:
    node_ready()
    ada = {"Authorization": "Bearer secret-ada"}
    async with served(tmp_path) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert (await http.get("/me", headers=ada)).json() == {"user": "ada"}  # the app's own route and auth
        async with event_stream(port, "/collab/v1/events?room=notes", ada) as (status, _, events):
            assert status == 200
            async with connect(f"ws://127.0.0.1:{port}/collab/") as client, client.join("notes") as room:
                await room.synced()
                room.text.insert(0, "py;")
                await room.flushed()  # acknowledged: stored
                js = await yjs_client(port, "notes", "js;", len("py;js;"))
                assert sorted(js[0]["text"]) == sorted("py;js;")  # type: ignore[arg-type]
                with trio.fail_after(10):
                    while len(str(room.text)) < len("py;js;"):
                        await trio.sleep(0.01)
                await room.publish("chat", {"text": "from python"})
                # An HTTP session of the app's user ada (its Bearer token, checked by the app's
                # middleware) publishes: the room stamps it with ada, not an anonymous id.
                heard = room.events()
                created = (await http.post("/collab/v1/sessions", headers=ada)).json()
                frames = "/collab" + created["frames"]
                joined = (await http.post(frames, content=encode_json([Join(1, "notes", None, None)]))).json()
                await http.post(frames, content=encode_json([Publish(joined[0]["channel"], 2, "chat", {"text": "from ada"}, None)]))
                with trio.fail_after(10):
                    async for event in heard:
                        if event.payload == {"text": "from ada"}:
                            assert event.user == "ada"
                            break
            # The SSE client, the app's user ada, saw the others' edits and the event.
            kinds: list[str] = []
            with trio.fail_after(10):
                async for event in events:
                    kinds.append(event.type)
                    if event.type == "chat":
                        (frame,) = decode_json(event.data)
                        assert frame.payload == {"text": "from python"}  # type: ignore[attr-defined]
                        break
            assert "update" in kinds or "sync_step2" in kinds, kinds
        text = (await http.get("/notes/notes")).json()["text"]
        assert sorted(text) == sorted("py;js;")
    # Stopped: the room was flushed to plait.db. A new server on the same file serves it.
    async with served(tmp_path) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert (await http.get("/notes/notes")).json()["text"] == text


@pytest.mark.parametrize(
    ("command", "fails"),
    [
        pytest.param([sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", "0", "fastapi_app:app"], True, id="uvicorn"),
        # Hypercorn's parent process exits 0 when its worker fails to start; the worker stops.
        pytest.param([*HYPERCORN, "fastapi_app:app"], False, id="hypercorn-asyncio"),
    ],
)
async def test_an_asyncio_server_stops_at_startup_saying_to_use_hypercorn_k_trio(tmp_path: Path, command: list[str], fails: bool) -> None:
    shutil.copy(EXAMPLES / "fastapi_app.py", tmp_path)
    with trio.fail_after(60):  # it stops by itself: it does not serve without the engine
        result = await trio.run_process(command, cwd=tmp_path, env=environment(), capture_stdout=True, capture_stderr=True, check=False)
    output = result.stdout.decode() + result.stderr.decode()
    assert (result.returncode != 0) is fails, output
    assert "Plait runs on Trio, and this ASGI server runs the application on asyncio" in output, output
    assert "Serve it with Hypercorn's Trio worker: hypercorn -k trio MODULE:APP" in output, output
