"""`plait serve` as people run it, when something is in the way: a port in use, a second server
on the same data, Ctrl-C in the terminal client. Real processes and sockets on 127.0.0.1; every
wait is bounded. The in-process cases of the same rule are in tests/engine/test_cli.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from plait.client import connect
from plait.engine import Engine
from plait.storage import MemoryStore

from .test_crash import start_server, store_flag

pytestmark = pytest.mark.slow
PLAIT = [sys.executable, "-m", "plait.engine._cli"]


async def plait(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(60):
        return await trio.run_process([*PLAIT, *args], capture_stdout=True, capture_stderr=True, check=False)


async def test_a_port_in_use_is_one_line_and_status_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await plait("serve", "--port", str(port), "--data", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.decode() == f"plait serve: --port {port}: address already in use\n"
    assert b"serving" not in result.stdout


@pytest.mark.parametrize(("backend", "where"), [("sqlite", "plait.db"), ("files", "files"), ("postgresql", None)])
async def test_a_second_server_on_the_same_data_refuses_to_start(
    tmp_path: Path, backend: str, where: str | None, request: pytest.FixtureRequest
) -> None:
    # The issue: two servers on one folder both ran, both handed out event seq 1, and one
    # acknowledged edit and one event were lost. Now the second refuses, naming the first.
    store = store_flag(backend, request)
    first, port = await start_server(tmp_path, store)
    try:
        async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("notes") as room:
            await room.synced()
            room.text.insert(0, "kept")
            await room.flushed()
            assert await room.publish("chat", {"text": "hi"}) == 1

        second = await plait("serve", "--port", "0", "--data", str(tmp_path), "--store", store)
        assert second.returncode == 1
        if where is not None:
            assert second.stderr.decode() == (
                f"plait serve: --data {tmp_path}: {tmp_path / where} is in use by process {first.pid}; one server per store\n"
            )
        else:
            assert second.stderr.decode().startswith(f"plait serve: --store {store}: user=plait")
            assert second.stderr.decode().endswith(f" is in use by process {first.pid}; one server per store\n")
        assert b"serving" not in second.stdout

        shown = await plait("inspect", "notes", "--data", str(tmp_path), "--store", store)  # read-only, while it runs
        assert shown.returncode == 0, shown.stderr
        assert 'text: "kept"' in shown.stdout.decode() and "event history: 1 events, seq 1..1" in shown.stdout.decode()
    finally:
        first.send_signal(signal.SIGKILL)
        with trio.fail_after(30):
            await first.wait()

    # The kernel dropped the lock with the killed process: the next server starts and goes on
    # from the first one's data and event sequence.
    third, port = await start_server(tmp_path, store)
    try:
        async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("notes") as room:
            await room.synced()
            assert str(room.text) == "kept"
            assert await room.publish("chat", {"text": "again"}) == 2
    finally:
        third.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            assert await third.wait() == 0


async def test_ctrl_c_in_the_terminal_client_exits_130_quietly() -> None:
    async with Engine(store=MemoryStore()) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        client = await trio.lowlevel.open_process(
            [*PLAIT, "client", f"ws://127.0.0.1:{port}/", "notes"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert client.stdout is not None and client.stderr is not None
        seen = b""
        with trio.fail_after(30):
            while b"[connection] joined" not in seen:
                chunk = await client.stdout.receive_some(1024)
                assert chunk, f"client exited: {seen!r}"
                seen += chunk
            client.send_signal(signal.SIGINT)
            assert await client.wait() == 130
            errors = b""
            while chunk := await client.stderr.receive_some(4096):
                errors += chunk
        assert b"Traceback" not in errors, errors.decode()
        nursery.cancel_scope.cancel()
