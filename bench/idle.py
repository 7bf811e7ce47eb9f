"""Workload 3, idle connections: 5,000 native connections that only keep their heartbeat, as
the SDKs do (the server pings a connection that has sent nothing for most of the heartbeat
interval H, 15 s by default; the client answers). Reports server RSS per connection and server
CPU per connection per second. `--heartbeat-seconds 25` compares at Centrifugo's default ping
interval.

    .venv/bin/python bench/idle.py [--connections 5000] [--seconds 30] [--heartbeat-seconds 15]
"""

from __future__ import annotations

import argparse

from _harness import Load, machine, mib, plait_server, table  # type: ignore[import-not-found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=30.0, help="idle time measured (two heartbeats by default)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--heartbeat-seconds", type=int, default=15, help="plait serve --heartbeat-seconds")
    args = parser.parse_args()
    with plait_server("--heartbeat-seconds", str(args.heartbeat_seconds)) as server:
        base = server.rss()
        load = Load(server, {"workload": "idle", "protocol": "native", "url": f"ws://127.0.0.1:{server.port}/",
                             "seconds": args.seconds}, [(i + 1, "") for i in range(args.connections)], args.processes)
        load.ready()
        connected = server.rss()
        measured = load.run(timeout=args.seconds + 120)
    n = args.connections
    print(f"Machine: {machine()}\n")
    print(table(["idle connections", "heartbeat", "server RSS (none -> all)", "RSS per connection", "server CPU",
                 "CPU per connection per second", "errors"], [
        [n, f"{args.heartbeat_seconds} s", f"{mib(base)} -> {mib(connected)}", f"{(connected - base) / n / 1024:.1f} KiB",
         f"{100 * measured.server_cpu / measured.wall:.1f} %",
         f"{1e6 * measured.server_cpu / measured.wall / n:.2f} µs", len(measured.errors)],
    ]))


if __name__ == "__main__":
    main()
