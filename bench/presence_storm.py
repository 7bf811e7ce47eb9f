"""Workload 5, presence storm: 500 native clients in one room, each replacing its presence
state once per second; every change reaches the other 499 in the room's per-tick presence
diffs. Reports the server's CPU.

    .venv/bin/python bench/presence_storm.py [--clients 500] [--seconds 20]
"""

from __future__ import annotations

import argparse

from _harness import Load, machine, mib, plait_server, table  # type: ignore[import-not-found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    with plait_server() as server:
        load = Load(server, {"workload": "presence", "protocol": "native", "url": f"ws://127.0.0.1:{server.port}/",
                             "seconds": args.seconds, "periodMs": 1000},
                    [(i + 1, "presence-storm") for i in range(args.clients)], args.processes)
        load.ready()
        measured = load.run(timeout=args.seconds + 120)
    print(f"Machine: {machine()}\n")
    print(table(["clients in one room", "presence changes/s", "server CPU (one core = 100 %)", "server peak RSS",
                 "load CPU", "errors"], [
        [args.clients, args.clients, f"{100 * measured.server_cpu / measured.wall:.0f} %", mib(measured.server_peak_rss),
         f"{100 * measured.load_cpu / measured.wall:.0f} %", len(measured.errors)],
    ]))


if __name__ == "__main__":
    main()
