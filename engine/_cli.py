"""The `plait` command: `plait serve` runs the standalone engine."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pycrdt
import trio
from plait.storage import FileStore, MemoryStore, SQLiteStore, StorageError, Store

from ._config import EngineConfig
from ._engine import Engine
from ._record import TraceRecorder

logger = logging.getLogger("plait")

DEFAULT_PORT = 8765


def open_store(url: str | None, data: Path) -> Store:
    """`memory`, `sqlite` (DATA/plait.db), `sqlite:PATH`, `files` (DATA/files) or `files:DIR`."""
    if url is None or url == "sqlite":
        return SQLiteStore(data / "plait.db")
    if url == "memory":
        return MemoryStore()
    if url == "files":
        return FileStore(data / "files")
    if url.startswith("sqlite:"):
        return SQLiteStore(Path(url.removeprefix("sqlite:")))
    if url.startswith("files:"):
        return FileStore(Path(url.removeprefix("files:")))
    raise SystemExit(f"plait: unknown --store {url!r} (use memory, sqlite, sqlite:PATH, files or files:DIR)")


async def inspect(store: Store, room: str, out: Any = sys.stdout) -> int:
    """Print a room's stored state without starting a server. Returns the exit status."""
    try:
        data = await store.load(room)
    except StorageError as exc:
        print(f"plait: {room!r} cannot be loaded: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.aclose()
    if data.snapshot is None and not data.updates and not data.events:
        print(f"plait: no room {room!r} in this store", file=sys.stderr)
        return 1
    doc = pycrdt.Doc()
    for update in ([data.snapshot] if data.snapshot else []) + list(data.updates):
        doc.apply_update(update)
    print(f"room: {room}")
    print(f"snapshot: {len(data.snapshot or b'')} bytes")
    print(f"updates since snapshot: {len(data.updates)} ({sum(map(len, data.updates))} bytes)")
    print(f"document: {len(doc.get_update())} bytes encoded")
    print(f"event history: {len(data.events)} events" + (f", seq {data.events[0].seq}..{data.events[-1].seq}" if data.events else ""))
    for name in sorted(doc.keys()):
        print(f"  {name}: {json.dumps(_root_value(doc, name), ensure_ascii=False, default=repr)}")
    return 0


def _root_value(doc: pycrdt.Doc, name: str) -> Any:
    # Root types carry no type tag in an update: show the first reading that holds anything.
    for kind in (pycrdt.Text, pycrdt.Map, pycrdt.Array):
        try:
            value = doc.get(name, type=kind)
        except Exception:
            continue
        shown = str(value) if kind is pycrdt.Text else value.to_py()
        if shown:
            return shown
    return None


def tune_gc() -> None:
    """A server holds many long-lived objects (rooms, sessions, documents) and allocates
    short-lived ones per frame. With the default thresholds the cycle collector runs every 700
    allocations and regularly walks the long-lived heap; a busy server spent a tenth of its time
    there (bench/README.md). Startup objects are frozen out of collection and collections made
    rarer; reference counting still frees everything that is not a cycle at once."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def serve(
    host: str,
    port: int,
    store: Store,
    config: EngineConfig,
    ready: trio.Event | None = None,
    record: Path | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully."""
    with contextlib.ExitStack() as files, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        recorder = None
        if record is not None:
            record.mkdir(parents=True, exist_ok=True)
            path = record / f"trace-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.jsonl"
            recorder = TraceRecorder(files.enter_context(open(path, "w", encoding="utf-8")), asdict(config))
            print(f"plait: recording to {path}", flush=True)
        try:
            async with Engine(store=store, config=config, recorder=recorder) as engine:
                async with trio.open_nursery() as nursery:
                    bound = await nursery.start(engine.serve_websocket, host, port)
                    print(f"plait: serving on ws://{host}:{bound}/ (Ctrl-C to stop)", flush=True)
                    if ready is not None:
                        ready.set()
                    async for signum in signals:
                        logger.info("received %s: shutting down", signal.Signals(signum).name)
                        break
                    nursery.cancel_scope.cancel()
                logger.info("draining rooms")
        finally:
            await store.aclose()
    print("plait: stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plait", description="Plait real-time collaboration engine")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the standalone server")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any)")
    serve_cmd.add_argument("--data", type=Path, default=Path("plait-data"), help="data folder (default ./plait-data)")
    serve_cmd.add_argument("--store", default=None, help="memory, sqlite (default), sqlite:PATH, files, files:DIR")
    serve_cmd.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    serve_cmd.add_argument("--updates-per-second", type=int, default=EngineConfig().updates_per_second,
                           help="document updates per connection per second (default %(default)s)")
    serve_cmd.add_argument("--events-per-second", type=int, default=EngineConfig().events_per_second,
                           help="published events per connection per second (default %(default)s)")
    serve_cmd.add_argument("--max-rooms", type=int, default=EngineConfig().max_rooms_per_connection,
                           help="rooms per connection (default %(default)s)")
    serve_cmd.add_argument("--record", type=Path, default=None, metavar="DIR",
                           help="write a trace of every connection to DIR/trace-<time>-<pid>.jsonl")
    replay_cmd = commands.add_parser("replay", help="replay trace files; exit 0 if all match")
    replay_cmd.add_argument("files", nargs="+", type=Path)
    replay_cmd.add_argument("--log-level", default="WARNING")
    inspect_cmd = commands.add_parser("inspect", help="print a room's stored state")
    inspect_cmd.add_argument("room")
    inspect_cmd.add_argument("--data", type=Path, default=Path("plait-data"), help="data folder (default ./plait-data)")
    inspect_cmd.add_argument("--store", default=None, help="memory, sqlite (default), sqlite:PATH, files, files:DIR")
    inspect_cmd.add_argument("--log-level", default="WARNING")
    client_cmd = commands.add_parser("client", help="join a room from the terminal")
    client_cmd.add_argument("url", help="server URL, e.g. ws://127.0.0.1:8765/")
    client_cmd.add_argument("room", help="room name")
    client_cmd.add_argument("--token", default=None, help="token for the server's authenticate hook")
    client_cmd.add_argument("--name", default=None, help="your presence name")
    client_cmd.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        store = open_store(args.store, args.data)
        config = EngineConfig(
            updates_per_second=args.updates_per_second,
            events_per_second=args.events_per_second,
            max_rooms_per_connection=args.max_rooms,
        )
        tune_gc()
        trio.run(serve, args.host, args.port, store, config, None, args.record)
    elif args.command == "inspect":
        return trio.run(inspect, open_store(args.store, args.data), args.room)
    elif args.command == "replay":
        from .testing import replay_files

        return 1 if replay_files(args.files) else 0
    elif args.command == "client":
        # The terminal client lives with the client SDK; only this command loads it.
        from plait.client._cli import main as client_main

        return client_main(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
