"""Crash safety: `kill -9` the server at a random moment while clients edit; after a restart on
the same data every acknowledged edit is there (architecture: Durability)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from plait.client import Backoff, connect

pytestmark = pytest.mark.slow


async def start_server(data: Path, store: str) -> tuple[trio.Process, int]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "plait.engine._cli", "serve", "--port", "0", "--data", str(data), "--store", store],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    seen = b""
    while not (match := re.search(rb"serving on ws://127.0.0.1:(\d+)/", seen)):
        chunk = await process.stdout.receive_some(1024)
        assert chunk, f"server exited: {seen!r}"
        seen += chunk
    return process, int(match.group(1))


async def editor(url: str, name: str, acked: list[str]) -> None:
    """Insert tokens one by one; a token counts as acknowledged once flushed() returns."""
    async with connect(url, backoff=Backoff(base=0.05, cap=0.2)) as client, client.join("crash") as room:
        await room.synced()
        for k in range(10_000):
            token = f"<{name}.{k}>"
            room.text.insert(len(room.text), token)
            await room.flushed()
            acked.append(token)


def store_flag(store: str, request: pytest.FixtureRequest) -> str:
    """`--store` for a parametrized backend: `postgresql` is a fresh schema of the session's
    private PostgreSQL server (tests/servers.py)."""
    return request.getfixturevalue("postgres").fresh_dsn() if store == "postgresql" else store


@pytest.mark.parametrize("backend", ["sqlite", "files", "postgresql"])
async def test_every_acknowledged_edit_survives_kill_9(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    store = store_flag(backend, request)
    rng = random.Random(f"crash-{backend}")
    acked: list[str] = []
    for cycle in range(3):
        process, port = await start_server(tmp_path, store)
        url = f"ws://127.0.0.1:{port}/"
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(editor, url, f"c{cycle}-{i}", acked)
            await trio.sleep(rng.uniform(0.2, 0.8))  # the random kill point
            process.send_signal(signal.SIGKILL)
            await process.wait()
            nursery.cancel_scope.cancel()
        assert process.returncode == -signal.SIGKILL
    assert len(acked) > 30, "too few edits were acknowledged to prove anything"
    process, port = await start_server(tmp_path, store)
    try:
        async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("crash") as room:
            await room.synced()
            text = str(room.text)
        missing = [token for token in acked if token not in text]
        assert missing == []
        result = await trio.run_process(
            [sys.executable, "-m", "plait.engine._cli", "inspect", "crash", "--data", str(tmp_path), "--store", store],
            capture_stdout=True,
        )
        assert acked[0] in result.stdout.decode()
    finally:
        process.send_signal(signal.SIGINT)
        await process.wait()
