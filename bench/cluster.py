"""Workload: a cluster (issue 20). The room fan-out (bench/fanout.py) and the many-rooms load
(bench/many_rooms.py) on one `plait serve` process and on two `plait serve --cluster`
processes sharing a private Redis and PostgreSQL (both started here, under a temporary
folder: tests/servers.py), with the clients of every room spread over the processes (client id
modulo 2: the worst case, every room on both); the many-rooms load also with every room's
clients on one process (what a balancer routing by room gives), and the same on two plain
processes that are not a cluster, each with a database of its own (what two processes cost on
this machine without the cluster: the baseline for the "by room" row). Reports server CPU per
delivery (the Plait processes, and Redis + PostgreSQL apart), latency, and for two processes the
latency of deliveries within one process and across the two (the cross-process hop).

The one-process runs use the same PostgreSQL store (`--store postgresql://...`), so the
comparison is of the cluster, not of SQLite against PostgreSQL.

    .venv/bin/python bench/cluster.py [--clients 50] [--edits 200] [--rooms 1000] [--seconds 20]
        [--skip-fanout | --skip-rooms]

PLAIT_BENCH_LOG_DIR=DIR keeps the servers' logs (WARNING and up) in DIR.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil
from _harness import Load, Measured, Server, free_port, machine, mib, percentile, table  # type: ignore[import-not-found]
from fanout import analyse, cpu_per_delivery  # type: ignore[import-not-found]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.servers import postgres_server, redis_server


class Servers:
    """Several `plait serve` processes measured as one server (what Load asks of a Server),
    and the Redis and PostgreSQL processes beside them."""

    def __init__(self, servers: Sequence[Server], backing: Sequence[int]) -> None:
        self.servers = list(servers)
        self.port = servers[0].port
        self.popen = servers[0].popen  # the profiler's target: the first process
        self._backing = [psutil.Process(pid) for pid in backing]

    def urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{s.port}/" for s in self.servers]

    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers)

    def backing_cpu_seconds(self) -> float:
        """Redis and PostgreSQL (the postmaster and its backends)."""
        total = 0.0
        for top in self._backing:
            for process in [top, *top.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
        return total

    def rss(self) -> int:
        return sum(s.rss() for s in self.servers)

    def reset_peak_rss(self) -> None:
        for s in self.servers:
            s.reset_peak_rss()

    def peak_rss(self) -> int:
        return sum(s.peak_rss() for s in self.servers)


@contextmanager
def backing() -> Iterator[tuple[Any, str, list[int]]]:
    """A private PostgreSQL and Redis: (the PostgreSQL server, the Redis URL, their pids)."""
    with postgres_server() as postgres, redis_server() as redis:
        yield postgres, redis.url, [postgres.process.pid, redis.process.pid]  # type: ignore[misc]


_runs = itertools.count(1)


@contextmanager
def plait_processes(count: int, postgres: Any, redis_url: str, pids: list[int], *, apart: bool = False) -> Iterator[Servers]:
    """`count` processes on one fresh database: one plain server, or a cluster on `redis_url`;
    `apart`: plain servers, each on a database of its own (what the cluster costs is the
    difference)."""
    cluster = ["--cluster", redis_url] if count > 1 and not apart else []
    dsn = postgres.fresh_dsn()
    with tempfile.TemporaryDirectory(prefix="plait-bench-") as scratch, ExitStack() as stack:
        servers = []
        for i in range(count):
            port = free_port()
            argv = [sys.executable, "-m", "plait.engine._cli", "serve", "--port", str(port),
                    "--store", postgres.fresh_database() if apart and i else dsn, "--log-level", "WARNING", "--no-demo", *cluster]
            logs = Path(os.environ.get("PLAIT_BENCH_LOG_DIR") or scratch)  # kept there if set
            server = Server(argv, port, logs / f"server-{next(_runs)}.log")
            stack.callback(server.stop)
            servers.append(server)
        yield Servers(servers, pids)


def fanout(count: int, clients: int, args: argparse.Namespace, backing_of: Any) -> list[Any]:
    postgres, redis_url, pids = backing_of
    with plait_processes(count, postgres, redis_url, pids) as servers:
        config: dict[str, Any] = {
            "workload": "fanout", "protocol": "native", "urls": servers.urls(),
            "edits": args.edits, "editRate": 20, "cursorRate": 10, "expectedEdits": clients * args.edits,
            "drainMs": 10_000, "connectWidth": 1,
        }
        load = Load(servers, config, [(1000 + i, "fanout") for i in range(clients)], min(clients, args.processes))
        load.ready()
        backing0 = servers.backing_cpu_seconds()
        measured: Measured = load.run(timeout=args.edits / 20 + 70)
        backing_cpu = servers.backing_cpu_seconds() - backing0
        outcome = analyse(measured, clients, args.edits)
        within, across = split_latencies(measured, count)
        deliveries = max(1, len(outcome.latencies))
        return [
            f"{count} process{'es' if count > 1 else ''}", clients,
            *(f"{percentile(outcome.latencies, p):.1f}" for p in (50, 99)),
            f"{percentile(within, 50):.1f} / {percentile(across, 50):.1f}" if count > 1 else "-",
            f"{outcome.failed:,}", "yes" if outcome.converged else "NO",
            f"{cpu_per_delivery(outcome):.1f}", f"{1e6 * backing_cpu / deliveries:.1f}",
            mib(measured.server_peak_rss), len(measured.errors),
        ]


def split_latencies(measured: Measured, count: int, sent_from: float = float("-inf")) -> tuple[list[float], list[float]]:
    """Latencies of deliveries between clients of one process, and across processes (client
    id modulo `count` is its process, as load.mjs picks its URL), of the edits sent at
    `sent_from` (the load's clock, ms) or later."""
    sent: dict[tuple[int, int], float] = {}
    for c in measured.clients:
        pairs = c["sends"]
        for i in range(0, len(pairs), 2):
            if pairs[i + 1] >= sent_from:
                sent[(c["id"], pairs[i])] = pairs[i + 1]
    within: list[float] = []
    across: list[float] = []
    for c in measured.clients:
        arrivals = c["arrivals"]
        for i in range(0, len(arrivals), 3):
            sender = arrivals[i]
            sent_at = sent.get((sender, arrivals[i + 1]))
            if sent_at is not None and sender != c["id"]:
                (within if sender % count == c["id"] % count else across).append(arrivals[i + 2] - sent_at)
    return sorted(within), sorted(across)


def many_rooms(count: int, args: argparse.Namespace, backing_of: Any, by_room: bool = False, apart: bool = False) -> list[Any]:
    """`by_room`: every client of a room on one process (room index modulo `count`), as a
    balancer that routes by room would place them (HAProxy `balance uri` for `/yjs/ROOM`);
    otherwise spread (client id modulo `count`: every room on every process). `apart`: by room,
    on processes that are not a cluster, each with a database of its own."""
    postgres, redis_url, pids = backing_of
    by_room = by_room or apart
    with plait_processes(count, postgres, redis_url, pids, apart=apart) as servers:
        # load.mjs picks a client's process by its id modulo `count`.
        clients = [(10_000 + ((r * args.clients_per_room + i) * count + r % count if by_room else r * args.clients_per_room + i),
                    f"room-{r}") for r in range(args.rooms) for i in range(args.clients_per_room)]
        load = Load(servers, {"workload": "rooms", "protocol": "native", "urls": servers.urls(),
                              "seconds": args.seconds, "periodMs": 5000}, clients, args.processes)
        load.ready()
        backing0 = servers.backing_cpu_seconds()
        measured = load.run(timeout=args.seconds + 120)
        backing_cpu = servers.backing_cpu_seconds() - backing0
        return [
            f"{count} process{'es' if count > 1 else ''}{', no cluster' if apart else ''}{', by room' if by_room else ''}",
            f"{args.rooms} x {args.clients_per_room}",
            f"{100 * measured.server_cpu / measured.wall:.0f} %", f"{100 * backing_cpu / measured.wall:.0f} %",
            f"{100 * measured.load_cpu / measured.wall:.0f} %", mib(servers.rss()), len(measured.errors),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[50])
    parser.add_argument("--edits", type=int, default=200, help="edits per client (at 20/s)")
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--clients-per-room", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, default=2, help="load-generating processes")
    parser.add_argument("--skip-rooms", action="store_true", help="only the fan-out")
    parser.add_argument("--skip-fanout", action="store_true", help="only the many-rooms load")
    args = parser.parse_args()
    with backing() as backing_of:
        fan = [] if args.skip_fanout else [fanout(count, clients, args, backing_of) for clients in args.clients for count in (1, 2)]
        rooms = [] if args.skip_rooms else [
            many_rooms(1, args, backing_of), many_rooms(2, args, backing_of), many_rooms(2, args, backing_of, by_room=True),
            many_rooms(2, args, backing_of, apart=True),
        ]
    print(f"Machine: {machine()}\n")
    if fan:
        print(table(["server", "clients", "p50 ms", "p99 ms", "p50 within / across processes", "edits lost", "converged",
                     "Plait CPU µs/delivery", "Redis+PostgreSQL CPU µs/delivery", "peak RSS (sum)", "errors"], fan))
    if rooms:
        print()
        print(table(["server", "rooms x clients", "Plait CPU (all processes)", "Redis+PostgreSQL CPU", "load CPU",
                     "RSS (sum)", "errors"], rooms))


if __name__ == "__main__":
    main()
