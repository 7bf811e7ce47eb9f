"""Storage workloads (issue 4): durably acknowledged updates per second with 1, 10 and 100
concurrent writers per backend, and the load time of a room with a 1 MB document plus 10k
updates since its snapshot.

    .venv/bin/python bench/storage.py [--seconds 3] [--backends memory sqlite files postgresql postgresql-shared]

`postgresql` runs a private PostgreSQL server (tests/servers.py; PostgreSQL 15's binaries, as
`.ci/run` installs them), a fresh database per run; `postgresql-shared` is the store as a
cluster's processes open it (shared mode: a lock per room written).

Each writer is a native client on an in-memory connection to one engine, in a room of its own
(fan-out is measured in bench/fanout.py; here only the path to the store). Like an editor, it
keeps sending one-character updates with refs without waiting for each ack, up to WINDOW in
flight; the engine acks only after the store committed. Every ack counted is durable.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pycrdt
import trio
from _writer import write_until  # type: ignore[import-not-found]

from plait.engine import Engine, EngineConfig
from plait.storage import FileStore, MemoryStore, PostgreSQLStore, SQLiteStore, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import postgres_server


async def writer(engine: Engine, room: str, client_id: int, stop_at: float, counts: list[int]) -> None:
    await write_until(engine.connect_memory(), room, client_id, 0.0, stop_at, counts)


async def acked_per_second(store: Store, writers: int, seconds: float) -> float:
    config = EngineConfig(updates_per_second=1_000_000, compact_after_updates=10_000)
    async with Engine(store=store, config=config) as engine:
        counts = [0]
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(writers):
                nursery.start_soon(writer, engine, f"bench-{i}", i + 1, start + seconds, counts)
        elapsed = trio.current_time() - start
    return counts[0] / elapsed


async def load_time(store: Store) -> tuple[float, int, int]:
    doc = pycrdt.Doc(client_id=1)
    text = doc.get("text", type=pycrdt.Text)
    text.insert(0, "y" * 1_000_000)
    await store.compact("big", doc.get_update(), 0)
    updates = []
    for _ in range(10_000):
        before = doc.get_state()
        text.insert(len(text), "z")
        updates.append(doc.get_update(before))
    for i in range(0, len(updates), 1000):
        await store.append("big", updates[i : i + 1000])
    async with Engine(store=store) as engine:
        start = time.perf_counter()
        async with engine.room("big") as room:
            elapsed = time.perf_counter() - start
            length = len(str(room.doc.get("text", type=pycrdt.Text)))
    data = await store.load("big")
    return elapsed, length, len(data.updates)


BACKENDS = ["memory", "sqlite", "files", "postgresql", "postgresql-shared"]


def backends(tmp: Path, names: list[str], stack: ExitStack) -> dict[str, Callable[[], Store]]:
    makers: dict[str, Callable[[], Store]] = {
        "memory": lambda: MemoryStore(),
        "sqlite": lambda: SQLiteStore(tmp / f"sqlite-{time.monotonic_ns()}.db"),
        "files": lambda: FileStore(tmp / f"files-{time.monotonic_ns()}"),
    }
    if any(name.startswith("postgresql") for name in names):
        postgres = stack.enter_context(postgres_server())
        makers["postgresql"] = lambda: PostgreSQLStore(postgres.fresh_dsn())
        makers["postgresql-shared"] = lambda: PostgreSQLStore(postgres.fresh_dsn(), shared=True)
    return {name: makers[name] for name in names}


async def main(seconds: float, names: list[str]) -> None:
    print(f"# storage bench: {platform.python_implementation()} {platform.python_version()}, {platform.machine()}")
    print("| backend | writers | acked updates/s |")
    print("| --- | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        makers = backends(Path(tmp), names, stack)
        for name, make in makers.items():
            for writers in (1, 10, 100):
                store = make()
                rate = await acked_per_second(store, writers, seconds)
                await store.aclose()
                print(f"| {name} | {writers} | {rate:,.0f} |", flush=True)
        print()
        print("| backend | load 1 MB doc + 10k updates | text length | updates after load |")
        print("| --- | ---: | ---: | ---: |")
        for name, make in makers.items():
            store = make()
            elapsed, length, left = await load_time(store)
            await store.aclose()
            print(f"| {name} | {elapsed * 1000:,.0f} ms | {length:,} | {left:,} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=BACKENDS)
    args = parser.parse_args()
    trio.run(main, args.seconds, args.backends)
