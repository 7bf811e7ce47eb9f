"""`plait client` as a person uses it: a terminal client and an SDK client in one room."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from plait.client import connect
from plait.engine import Engine

from .test_websocket import until

pytestmark = pytest.mark.slow


class Terminal:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.seen = ""

    async def wait_for(self, text: str) -> None:
        assert self.process.stdout is not None
        while text not in self.seen:
            chunk = await self.process.stdout.receive_some(4096)
            assert chunk, f"terminal client exited before printing {text!r}; it printed:\n{self.seen}"
            self.seen += chunk.decode()

    async def type(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")


async def test_terminal_client_sees_and_edits_the_room() -> None:
    async with Engine() as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{port}/"
        async with connect(url) as sdk, sdk.join("demo") as room:
            await room.synced()
            await room.set_presence({"name": "bob"})
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "plait.engine._cli", "client", url, "demo", "--name", "ada"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            term = Terminal(process)
            try:
                await term.wait_for("[connection] joined 'demo'")
                await term.wait_for("here: bob")
                events = room.events()
                room.text.insert(0, "abc")
                await room.flushed()
                await term.wait_for("[doc] 'abc'")
                await room.publish("chat", {"text": "hello"})
                await term.wait_for(": hello")
                await term.type("/append XYZ")
                await until(room, lambda: str(room.text) == "abcXYZ")
                await term.type("hi there")
                async for event in events:
                    if event.payload == {"text": "hi there"}:
                        break
                await until(room, lambda: any(e.state.get("name") == "ada" for e in room.presence.values()))
                await term.type("/quit")
                assert await process.wait() == 0
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        nursery.cancel_scope.cancel()
