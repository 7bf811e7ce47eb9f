"""Workload 2, many rooms: 1,000 rooms x 5 native clients, each making one edit and one
presence change every 5 s. Reports the server's RSS per connection and per room and its CPU.

The per-connection and per-room costs come from two runs: 1,000 rooms with one client each,
then with five each; the difference is 4,000 connections (and memberships) in the same rooms.

    .venv/bin/python bench/many_rooms.py [--rooms 1000] [--clients-per-room 5] [--seconds 20]
"""

from __future__ import annotations

import argparse

from _harness import Load, machine, mib, plait_server, table  # type: ignore[import-not-found]


def run(rooms: int, per_room: int, seconds: float, processes: int) -> tuple[int, int, float, int]:
    """(RSS before clients, RSS with every client synced, CPU % of one core, errors)."""
    with plait_server() as server:
        base = server.rss()
        clients = [(10_000 + r * per_room + i, f"room-{r}") for r in range(rooms) for i in range(per_room)]
        load = Load(server, {"workload": "rooms", "protocol": "native", "url": f"ws://127.0.0.1:{server.port}/",
                             "seconds": seconds, "periodMs": 5000}, clients, processes)
        load.ready()
        loaded = server.rss()
        measured = load.run(timeout=seconds + 120)
        return base, loaded, 100 * measured.server_cpu / measured.wall, len(measured.errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--clients-per-room", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args()
    rooms, per_room = args.rooms, args.clients_per_room
    base1, one, cpu1, errors1 = run(rooms, 1, args.seconds, args.processes)
    base, full, cpu, errors = run(rooms, per_room, args.seconds, args.processes)
    per_connection = (full - base - (one - base1)) / (rooms * (per_room - 1))
    per_room_cost = (one - base1) / rooms - per_connection
    print(f"Machine: {machine()}\n")
    print(table(["rooms x clients", "connections", "server RSS (idle -> loaded)", "RSS per connection",
                 "RSS per room", "server CPU", "errors"], [
        [f"{rooms} x 1", rooms, f"{mib(base1)} -> {mib(one)}", "", "", f"{cpu1:.0f} %", errors1],
        [f"{rooms} x {per_room}", rooms * per_room, f"{mib(base)} -> {mib(full)}", f"{per_connection / 1024:.1f} KiB",
         f"{per_room_cost / 1024:.1f} KiB", f"{cpu:.0f} %", errors],
    ]))
    print(f"\nActivity: every client one edit and one presence change per 5 s "
          f"({rooms * per_room / 5:,.0f} edits/s and as many presence changes in all).")


if __name__ == "__main__":
    main()
