"""`plait client` as a person uses it: a terminal client and an SDK client in one room."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

import pytest
import trio

from plait.client import connect
from plait.engine import Engine, Hooks, Identity, Unauthenticated

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


async def open_terminal(*args: str) -> Terminal:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "plait.engine._cli", "client", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return Terminal(process)


async def test_terminal_client_sees_and_edits_the_room() -> None:
    async with Engine() as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{port}/"
        async with connect(url) as sdk, sdk.join("demo") as room:
            await room.synced()
            await room.set_presence({"name": "bob"})
            term = await open_terminal(url, "demo", "--name", "ada")
            process = term.process
            try:
                await term.wait_for("[connection] joined 'demo'")
                await term.wait_for("here: bob")
                events = room.events()
                room.text.insert(0, "abc")
                await room.flushed()
                await term.wait_for("[doc] 'abc'")
                await room.publish("chat", {"text": "hello"})
                await term.wait_for("[chat] bob: hello")
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


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_terminal_client_says_why_it_cannot_connect_and_keeps_trying() -> None:
    term = await open_terminal(f"ws://127.0.0.1:{closed_port()}/", "demo")
    try:
        await term.wait_for("[connection] attempt 1 failed: ")
        await term.wait_for("; retrying in ")
        await term.wait_for("[connection] attempt 2 failed: ")
    finally:
        term.process.kill()
        await term.process.wait()


class Refuses(Hooks):
    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        if token == "bad":
            raise Unauthenticated("unknown token")
        return {"id": token or "anon"}


async def test_terminal_client_stops_on_a_refusal_and_says_so() -> None:
    async with Engine(hooks=Refuses()) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        term = await open_terminal(f"ws://127.0.0.1:{port}/", "demo", "--token", "bad")
        try:
            with trio.fail_after(20):
                assert await term.process.wait() == 1
            assert term.process.stdout is not None
            while chunk := await term.process.stdout.receive_some(65536):
                term.seen += chunk.decode()
            assert "[error]" in term.seen and "4003" in term.seen and "unknown token" in term.seen
        finally:
            if term.process.returncode is None:
                term.process.kill()
                await term.process.wait()
        nursery.cancel_scope.cancel()
