"""Durably acknowledged updates per second against `plait serve` (SQLite by default) with the
load generator in a separate process, over real WebSockets on 127.0.0.1 (the rule for issue 8's
workloads). Each writer has a room of its own and keeps 16 updates in flight (bench/_writer.py).

    .venv/bin/python bench/storage_ws.py [--seconds 5] [--store sqlite]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import trio
from _writer import write_until  # type: ignore[import-not-found]

from plait.client._client import websocket_opener


WARMUP = 1.0
"""Seconds of load before counting starts (rooms load, SQLite and the JIT-less interpreter's
caches warm up), so the number is the steady state."""


async def writer(url: str, room: str, client_id: int, count_from: float, stop_at: float, counts: list[int]) -> None:
    async with trio.open_nursery() as nursery:
        await write_until(await websocket_opener(url, nursery)(), room, client_id, count_from, stop_at, counts)
        nursery.cancel_scope.cancel()


async def load(url: str, writers: int, seconds: float) -> float:
    counts = [0]
    count_from = trio.current_time() + WARMUP
    async with trio.open_nursery() as nursery:
        for i in range(writers):
            nursery.start_soon(writer, url, f"ws-bench-{writers}-{i}", i + 1, count_from, count_from + seconds, counts)
    return counts[0] / (trio.current_time() - count_from)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--store", default="sqlite")
    parser.add_argument("--load", nargs=3, metavar=("URL", "WRITERS", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:  # the load-generator process
        url, writers, seconds = args.load
        print(f"{trio.run(load, url, int(writers), float(seconds)):.0f}")
        return
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "plait.engine._cli", "serve", "--port", "0", "--data", data,
             "--store", args.store, "--log-level", "WARNING", "--updates-per-second", "1000000"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert server.stdout is not None
            port = None
            while port is None:
                line = server.stdout.readline()
                if not line:
                    raise SystemExit("server did not start")
                if match := re.search(r"ws://127.0.0.1:(\d+)/", line):
                    port = int(match.group(1))
            print("| backend | writers | acked updates/s (load in its own process, WebSocket) |")
            print("| --- | ---: | ---: |")
            for writers in (1, 10, 100):
                out = subprocess.run(
                    [sys.executable, __file__, "--load", f"ws://127.0.0.1:{port}/", str(writers), str(args.seconds)],
                    capture_output=True, text=True, check=True, timeout=120,
                )
                print(f"| {args.store} | {writers} | {int(out.stdout.strip()):,} |", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
