"""Durably acknowledged updates per second against `plait serve` (SQLite by default), over real
WebSockets on 127.0.0.1, with the load generator in separate processes (bench/js/load.mjs, the
`writers` workload): each writer has a room of its own and keeps 16 one-character updates in
flight; an ack comes only once the store has committed the update. Two kinds of client: one
that sends each update in a WebSocket message of its own (a y-websocket-style client), and one
that sends the updates it made in one turn of its event loop together (Plait's Python client
does this; the protocol allows several frames per message).

The server runs with `--updates-per-second 1000000` so the per-connection rate limit (200/s by
default) does not cap the measurement.

    .venv/bin/python bench/storage_ws.py [--seconds 5] [--store sqlite] [--writers 1 10 100]
"""

from __future__ import annotations

import argparse

from _harness import Load, machine, plait_server, table  # type: ignore[import-not-found]

WARMUP_MS = 1000
"""Load before counting starts (rooms load, SQLite's and the interpreter's caches warm up), so
the number is the steady state."""

WINDOW = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--store", default="sqlite", choices=["sqlite", "memory", "files"])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    rows = []
    with plait_server("--store", args.store, "--updates-per-second", "1000000") as server:
        for batch, writers in [(batch, writers) for batch in (False, True) for writers in args.writers]:
            load = Load(server, {"workload": "writers", "protocol": "native", "url": f"ws://127.0.0.1:{server.port}/",
                                 "seconds": args.seconds, "warmupMs": WARMUP_MS, "window": WINDOW, "batch": batch},
                        [(i + 1, f"writers-{batch}-{writers}-{i}") for i in range(writers)], args.processes)
            load.ready()
            measured = load.run(timeout=args.seconds + 60)
            acked = sum(c["counted"] for c in measured.clients)
            rows.append([args.store, writers, "batched" if batch else "one", f"{acked / args.seconds:,.0f}",
                         f"{100 * measured.server_cpu / measured.wall:.0f} %",
                         f"{100 * measured.load_cpu / measured.wall:.0f} %", len(measured.errors)])
    print(f"Machine: {machine()}\n")
    print(table(["backend", "writers", "updates per message", "acked updates/s", "server CPU", "load CPU", "errors"], rows))


if __name__ == "__main__":
    main()
