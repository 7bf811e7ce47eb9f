"""Workload 3, idle connections: 5,000 native connections that only keep their heartbeat, as
the SDKs do (the server pings a connection that has sent nothing for most of the heartbeat
interval H, 15 s by default; the client answers). Reports server RSS per connection and server
CPU per connection per second. `--heartbeat-seconds 25` compares at Centrifugo's default ping
interval.

The CPU is measured over exactly a whole number of ping periods (3 by default: 33.75 s at
H = 15 s). Each connection is pinged once per period (0.75 H: six sweeps of H/8), and these
connections open together, so their pings come in bursts: a window of 30 s, measured until the
load reported back, held two or three bursts depending on how long the connecting took, and the
figure moved by a fifth between runs. A window of exactly N periods holds N pings of each.

    .venv/bin/python bench/idle.py [--connections 5000] [--periods 3] [--heartbeat-seconds 15]
"""

from __future__ import annotations

import argparse
import threading
import time

from _harness import Load, machine, mib, plait_server, table  # type: ignore[import-not-found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--periods", type=int, default=3, help="ping periods measured (0.75 H each)")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--heartbeat-seconds", type=int, default=15, help="plait serve --heartbeat-seconds")
    args = parser.parse_args()
    seconds = args.periods * 0.75 * args.heartbeat_seconds
    with plait_server("--heartbeat-seconds", str(args.heartbeat_seconds)) as server:
        base = server.rss()
        load = Load(server, {"workload": "idle", "protocol": "native", "url": f"ws://127.0.0.1:{server.port}/",
                             "seconds": seconds + 3}, [(i + 1, "") for i in range(args.connections)], args.processes)
        load.ready()
        connected = server.rss()
        window: dict[str, float] = {}

        def measure() -> None:
            cpu0, t0 = server.cpu_seconds(), time.monotonic()
            time.sleep(seconds)
            window.update(cpu=server.cpu_seconds() - cpu0, wall=time.monotonic() - t0)

        sampler = threading.Thread(target=measure, daemon=True)
        measured = load.run(timeout=seconds + 120, before_go=sampler.start)
        sampler.join()
    n = args.connections
    print(f"Machine: {machine()}\n")
    print(table(["idle connections", "heartbeat", "measured", "server RSS (none -> all)", "RSS per connection", "server CPU",
                 "CPU per connection per second", "errors"], [
        [n, f"{args.heartbeat_seconds} s", f"{window['wall']:.2f} s", f"{mib(base)} -> {mib(connected)}",
         f"{(connected - base) / n / 1024:.1f} KiB",
         f"{100 * window['cpu'] / window['wall']:.1f} %",
         f"{1e6 * window['cpu'] / window['wall'] / n:.2f} µs", len(measured.errors)],
    ]))


if __name__ == "__main__":
    main()
