"""Workload: one room's events to many subscribers, over each transport a client can use: a
WebSocket (native protocol), an event stream (SSE, spec §14.2) and long-polling (§14.4). A
publisher (a WebSocket client) sends `--rate` events a second; every subscriber records each
event's latency (send to arrival, on the clock every process shares). Reports deliveries/s,
latency p50/p99, server CPU per delivery and server RSS per subscriber, one transport at a time
(with long-polling, also the round trip of a plain HTTP request to the server meanwhile, which
bounds what a long-poll's latency can be),
against a fresh `plait serve` (SQLite, as it runs by default).

    .venv/bin/python bench/events.py [--subscribers 1000] [--rate 20] [--seconds 20] [--transports ws sse poll]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _harness import BENCH, Load, machine, mib, percentile, plait_server, table  # type: ignore[import-not-found]

SCRIPT = BENCH / "js" / "events.mjs"


def run(transport: str, args: argparse.Namespace) -> list[object]:
    with plait_server() as server:
        base = server.rss()
        events = int(args.rate * args.seconds)
        config = {"transport": transport, "host": "127.0.0.1", "port": server.port, "room": "feed", "rate": args.rate,
                  "events": events, "drainMs": args.drain * 1000}
        load = Load(server, config, [(i, "feed") for i in range(args.subscribers)], args.processes, script=Path(SCRIPT))
        load.ready()
        subscribed = server.rss()
        measured = load.run(timeout=args.seconds + args.drain + 120)
    latencies = sorted(x for c in measured.clients for x in c["latencies"])
    trips = sorted(x for r in measured.results for x in r["roundTrips"])
    round_trip = f"{percentile(trips, 50):.1f} / {percentile(trips, 99):.1f} ms" if trips else "-"
    expected = args.subscribers * events
    per_delivery = 1e6 * measured.server_cpu / max(1, len(latencies))
    return [transport, args.subscribers, f"{len(latencies)} / {expected}", f"{len(latencies) / args.seconds:,.0f}",
            f"{percentile(latencies, 50):.1f} ms", f"{percentile(latencies, 99):.1f} ms", round_trip,
            f"{measured.server_cpu:.2f} s", f"{per_delivery:.1f} µs", f"{(subscribed - base) / args.subscribers / 1024:.1f} KiB",
            mib(measured.server_peak_rss), f"{measured.load_cpu:.1f} s", len(measured.errors)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to wait for the last events")
    parser.add_argument("--processes", type=int, default=2, help="load-generating processes")
    parser.add_argument("--transports", nargs="+", default=["ws", "sse", "poll"], choices=["ws", "sse", "poll"])
    args = parser.parse_args()
    rows = [run(t, args) for t in args.transports]
    print(f"Machine: {machine()}\n")
    print(table(["transport", "subscribers", "delivered / expected", "deliveries/s", "p50", "p99",
                 "HTTP round trip p50 / p99", "server CPU",
                 "CPU per delivery", "RSS per subscriber", "server peak RSS", "load generator CPU", "errors"], rows))


if __name__ == "__main__":
    main()
