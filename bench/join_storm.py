"""Workload 4, join storm: 100 native clients, already connected, all join at the same instant
a room whose document is 5 MB (stored in SQLite, not yet loaded: the first join loads it).
Reports the time until every client has the whole document, the server's peak RSS, and the
CPU seconds the server and the load generator spent (they share the machine's cores).
`--clients 150 --megabytes 20` is @y/hub's join workload.

    .venv/bin/python bench/join_storm.py [--clients 100] [--megabytes 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pycrdt
import trio
from _harness import Load, machine, mib, plait_server, table  # type: ignore[import-not-found]

from plait.storage import SQLiteStore

ROOM = "join-storm"


async def seed(path: Path, megabytes: float) -> tuple[int, int]:
    """Store a document of `megabytes` of text as the room's snapshot; returns its encoded
    size and its text's length."""
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    chunk = "lorem ipsum dolor sit amet, " * 2340  # 65,520 characters
    while len(text) < megabytes * 1_000_000:
        text += chunk
    snapshot = doc.get_update()
    store = SQLiteStore(path)
    try:
        await store.compact(ROOM, snapshot, 0)
    finally:
        await store.aclose()
    return len(snapshot), len(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--megabytes", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plait-join-") as data:
        size, length = trio.run(seed, Path(data) / "plait.db", args.megabytes)
        with plait_server(data=Path(data)) as server:
            load = Load(server, {"workload": "join_storm", "protocol": "native", "url": f"ws://127.0.0.1:{server.port}/",
                                 "drainMs": 60_000}, [(i + 1, ROOM) for i in range(args.clients)], args.processes)
            load.ready()
            base = server.rss()
            measured = load.run(timeout=120)
    synced = [c for c in measured.clients if c["synced"]]
    whole = all(c["length"] == length for c in synced)
    go = min(r["goAt"] for r in measured.results)
    slowest = max((c["syncedAt"] - go for c in synced), default=float("nan")) / 1000
    print(f"Machine: {machine()}\n")
    print(table(["clients", "document", "all synced after", "synced / whole text", "server RSS before",
                 "server peak RSS", "server CPU", "load CPU", "errors"], [
        [args.clients, f"{size / 1e6:.1f} MB", f"{slowest:.2f} s",
         f"{len(synced)} / {'yes' if whole else 'NO'}",
         mib(base), mib(measured.server_peak_rss), f"{measured.server_cpu:.1f} s", f"{measured.load_cpu:.1f} s",
         len(measured.errors)],
    ]))


if __name__ == "__main__":
    main()
