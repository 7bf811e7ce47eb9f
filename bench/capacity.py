"""Workload: what two cluster processes carry against one, at the same p99 (issue 20's goal:
at least 1.6x the many-rooms load).

On a machine where the load generator, Redis and PostgreSQL need the cores too, two saturated
servers cannot be measured beside them. So each Plait process here runs capped at `--share` of
one core (a CFS quota on a cgroup of its own; needs root and the cgroup `cpu` controller, v1 or
v2), and the rest of the machine is left to everything else. That stands for "a core each"
scaled down: what is compared is the load a capped process carries, alone and in pairs.

The load is bench/many_rooms.py's (rooms of `--clients-per-room` native clients, each making
an edit and a presence change every `--period` seconds), routed by room as a balancer routing
by room would place it (every client of a room on one process). It runs at increasing numbers
of rooms, first on one process (`--rooms`), then on two `--cluster` processes sharing a private
Redis and PostgreSQL at multiples of the most rooms one process served (`--factors`); each run
reports the edits' delivery latency (send to arrival at the room's other clients), what was
lost, and the processes' CPU against their cap. A setup's capacity is the most rooms it served
with p99 at most `--p99-ms` and nothing lost. The first `--warmup` seconds of load are not
measured: a few seconds in, the first cycle collection after the joins walks every object they
made (60-75 ms of CPU at 1,200 connections a process, 200-250 ms of wall time under the cap),
and whether it fell inside a run or not decided that run's p99 (bench/README.md).

    sudo .venv/bin/python bench/capacity.py [--share 0.3] [--p99-ms 100] [--rooms 100 200 300]
        [--factors 1.4 1.6 1.8 2.0] [--seconds 20] [--warmup 15] [--spread]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _harness import Load, machine, mib, percentile, table  # type: ignore[import-not-found]
from cluster import backing, plait_processes, split_latencies  # type: ignore[import-not-found]

PERIOD_US = 10_000
"""The quota's period: short, so that a capped process is held back in slices of at most
this long rather than for most of the default 100 ms."""

_groups = itertools.count(1)


class CpuCap:
    """One process held to `share` of a core: a cgroup of its own with a CFS quota."""

    def __init__(self, pid: int, share: float) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists() and "cpu" in v2.read_text().split():
            self.root = Path("/sys/fs/cgroup")
            self.group = self.root / f"plait-bench-{os.getpid()}-{next(_groups)}"
            self.group.mkdir()
            (self.group / "cpu.max").write_text(f"{round(share * PERIOD_US)} {PERIOD_US}")
        else:
            self.root = Path("/sys/fs/cgroup/cpu")
            if not (self.root / "cpu.cfs_quota_us").exists():
                raise SystemExit("no cgroup cpu controller at /sys/fs/cgroup (v2) or /sys/fs/cgroup/cpu (v1)")
            self.group = self.root / f"plait-bench-{os.getpid()}-{next(_groups)}"
            self.group.mkdir()
            (self.group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.group / "cpu.cfs_quota_us").write_text(str(round(share * PERIOD_US)))
        (self.group / "cgroup.procs").write_text(str(pid))  # all its threads, and those it starts

    def throttled_seconds(self) -> float:
        """How long the quota held the process back (cpu.stat)."""
        stat = dict(line.split() for line in (self.group / "cpu.stat").read_text().splitlines())
        if "throttled_usec" in stat:
            return int(stat["throttled_usec"]) / 1e6
        return int(stat.get("throttled_time", 0)) / 1e9

    def remove(self) -> None:
        for pid in (self.group / "cgroup.procs").read_text().split():
            try:
                (self.root / "cgroup.procs").write_text(pid)
            except OSError:
                pass  # exited meanwhile
        self.group.rmdir()


@contextmanager
def capped(pids: list[int], share: float) -> Iterator[list[CpuCap]]:
    caps: list[CpuCap] = []
    try:
        for pid in pids:
            try:
                caps.append(CpuCap(pid, share))
            except OSError as exc:
                raise SystemExit(f"cannot cap a process's CPU: {exc} (this needs root and a writable cgroup cpu controller)") from None
        yield caps
    finally:
        for cap in caps:
            cap.remove()


def run(count: int, rooms: int, args: argparse.Namespace, backing_of: Any) -> dict[str, Any]:
    """The many-rooms load on `count` capped processes (a cluster when 2+), routed by room
    unless `args.spread`."""
    postgres, redis_url, pids = backing_of
    per_room = args.clients_per_room
    with plait_processes(count, postgres, redis_url, pids) as servers:
        # load.mjs picks a client's process by its id modulo `count`: by room, every client
        # of room r gets an id congruent to r.
        clients = [(10_000 + ((r * per_room + i) * count + r % count if not args.spread else r * per_room + i), f"room-{r}")
                   for r in range(rooms) for i in range(per_room)]
        load = Load(servers, {"workload": "rooms", "protocol": "native", "urls": servers.urls(), "seconds": args.warmup + args.seconds,
                              "periodMs": round(args.period * 1000), "drainMs": 3000}, clients, args.processes)
        load.ready()
        with capped([s.popen.pid for s in servers.servers], args.share) as caps:
            throttled0 = sum(c.throttled_seconds() for c in caps)
            backing0 = servers.backing_cpu_seconds()
            measured = load.run(timeout=args.warmup + args.seconds + 120)
            throttled = sum(c.throttled_seconds() for c in caps) - throttled0
            backing_cpu = servers.backing_cpu_seconds() - backing0
        # The first edit is sent within a period of the start: the earliest is about when it was
        # (none sent, as in a run shorter than a period: nothing to leave out).
        first_sent = min((t for c in measured.clients for t in c["sends"][1::2]), default=-math.inf)
        measured_from = first_sent + args.warmup * 1000
        within, across = split_latencies(measured, count, measured_from)
        latencies = sorted(within + across)
        sent = sum(t >= measured_from for c in measured.clients for t in c["sends"][1::2])
        lost = sent * (per_room - 1) - len(latencies)
        p99 = percentile(latencies, 99)
        return {
            "count": count, "rooms": rooms, "p50": percentile(latencies, 50), "p99": p99, "lost": lost,
            "errors": len(measured.errors), "deliveries": len(latencies),
            "cpu": measured.server_cpu / measured.wall / (count * args.share), "throttled": throttled / measured.wall / count,
            "backing": backing_cpu / measured.wall, "load": measured.load_cpu / measured.wall, "rss": servers.rss(),
            "ok": p99 <= args.p99_ms and lost <= 0 and not measured.errors,
        }


def row(result: dict[str, Any], args: argparse.Namespace) -> list[Any]:
    name = "1 process" if result["count"] == 1 else f"{result['count']} processes, cluster, {'spread' if args.spread else 'by room'}"
    return [
        name, f"{result['rooms']} x {args.clients_per_room}", f"{result['rooms'] * args.clients_per_room / args.period:,.0f}",
        f"{result['p50']:.1f}", f"{result['p99']:.1f}", f"{result['lost']:,}", f"{100 * result['cpu']:.0f} %",
        f"{100 * result['throttled']:.0f} %", f"{100 * result['backing']:.0f} %", f"{100 * result['load']:.0f} %",
        mib(result["rss"]), result["errors"], "yes" if result["ok"] else "no",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--share", type=float, default=0.3, help="each Plait process's cap, in cores")
    parser.add_argument("--p99-ms", type=float, default=100.0)
    parser.add_argument("--rooms", type=int, nargs="+", default=[100, 150, 200, 250, 300, 350, 400],
                        help="rooms for one process, tried in order until one fails")
    parser.add_argument("--factors", type=float, nargs="+", default=[1.4, 1.6, 1.8, 2.0],
                        help="two processes: multiples of one process's capacity, tried in order until one fails")
    parser.add_argument("--clients-per-room", type=int, default=5)
    parser.add_argument("--period", type=float, default=5.0, help="seconds between a client's edits")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds measured, after the warm-up")
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="seconds of load before the measured ones (the first collection of the joins' objects falls there)")
    parser.add_argument("--processes", type=int, default=2, help="load-generating processes")
    parser.add_argument("--spread", action="store_true", help="two processes: every room's clients on both")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with backing() as backing_of:
        one = 0
        for rooms in args.rooms:
            results.append(run(1, rooms, args, backing_of))
            if not results[-1]["ok"]:
                break
            one = rooms
        two = 0
        for factor in args.factors if one else ():
            results.append(run(2, round(factor * one), args, backing_of))
            if not results[-1]["ok"]:
                break
            two = results[-1]["rooms"]
    print(f"Machine: {machine()}\n")
    print(f"Each Plait process capped at {args.share:g} of a core; every client one edit and one presence change "
          f"per {args.period:g} s; a run passes with p99 <= {args.p99_ms:g} ms, nothing lost, no error.\n")
    print(table(["server", "rooms x clients", "edits/s", "p50 ms", "p99 ms", "deliveries lost", "Plait CPU (of its cap)",
                 "throttled", "Redis+PostgreSQL CPU", "load CPU", "RSS (sum)", "errors", "passes"],
                [row(r, args) for r in results]))
    ratio = f"{two / one:.2f}x" if one else "-"
    print(f"\nCapacity: one process {one} rooms, two processes {two} rooms ({ratio}; "
          f"the goal is at least 1.6x). A capacity at the last step tried may be higher.")


if __name__ == "__main__":
    main()
