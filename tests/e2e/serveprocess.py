"""`plait serve` as a process of its own, for the tests that need the real command: started on
a free port of 127.0.0.1, ready once it says it serves, stopped by a signal to its pid."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

SERVING = re.compile(rb"serving on ws://127.0.0.1:(\d+)/.*\n")


@dataclass
class Served:
    port: int
    process: trio.Process
    line: str
    """The line it printed when it began to serve."""


@asynccontextmanager
async def plait_serve(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stderr: int = subprocess.DEVNULL,
    stop: signal.Signals = signal.SIGINT,
) -> AsyncIterator[Served]:
    """`plait serve ARGS` (give `--port 0` or PLAIT_PORT=0); the port it bound and its process.
    On leaving, `stop` is sent to it unless it has ended, and it must end within 30 s with
    status 0, a graceful shutdown (else it is killed, and the test fails)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "plait.engine._cli", "serve", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        assert process.stdout is not None
        seen = b""
        with trio.fail_after(60):
            while not (found := SERVING.search(seen)):
                chunk = await process.stdout.receive_some(1024)
                assert chunk, f"server exited: {seen!r}"
                seen += chunk
        yield Served(int(found.group(1)), process, found.group(0).decode().strip())
        if process.returncode is None:
            process.send_signal(stop)
            with trio.fail_after(30):
                assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
