"""Workload 1, room fan-out: N clients in one room, each inserting `--edits` single characters
at random positions at 20 edits/s (`--edit-rate`) and moving its cursor 10 times/s. Measures the latency from
an insert to its arrival at every other client (an edit that never arrives within the drain
time counts as failed), deliveries/s, whether every client ends with the same text, and the
server's CPU (per delivery: the headline cost) and peak RSS. Runs in one invocation against
Plait's native protocol, Plait's y-websocket endpoint, pycrdt-websocket and Hocuspocus (in
memory, and with its SQLite extension: `(cd bench/peers/hocuspocus && npm ci)` first), with the
same load generator (bench/js/load.mjs). With `--writers W`, only W of the clients edit and
move their cursor and the others observe: `--clients 1501 --writers 1` is @y/hub's broadcast
workload (one writer, 1,500 observers).

    .venv/bin/python bench/fanout.py [--clients 2 10 50] [--targets plait-native plait-yjs pycrdt-websocket hocuspocus ...]
                                     [--writers W] [--edits 200] [--edit-rate 20]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from _harness import (  # type: ignore[import-not-found]
    Load,
    Measured,
    Server,
    hocuspocus_server,
    machine,
    mib,
    percentile,
    plait_server,
    pycrdt_websocket_server,
    table,
)


@dataclass(frozen=True)
class Target:
    start: Callable[[], AbstractContextManager[Server]]
    protocol: str
    path: str


TARGETS = {
    "plait-native": Target(plait_server, "native", "/"),
    "plait-native-memory": Target(lambda: plait_server("--store", "memory"), "native", "/"),
    "plait-yjs": Target(plait_server, "yjs", "/yjs/"),
    "pycrdt-websocket": Target(pycrdt_websocket_server, "yjs", "/"),
    "hocuspocus": Target(hocuspocus_server, "hocuspocus", "/"),
    "hocuspocus-sqlite": Target(lambda: hocuspocus_server(sqlite=True), "hocuspocus", "/"),
}


@dataclass
class Outcome:
    latencies: list[float]
    expected: int
    deliveries_per_second: float
    converged: bool
    measured: Measured

    @property
    def failed(self) -> int:
        return self.expected - len(self.latencies)


def analyse(measured: Measured, clients: int, edits: int, writers: int | None = None) -> Outcome:
    """Latencies, losses and convergence of a fan-out run in which the first `writers` clients
    (default all) made `edits` edits each."""
    writers = clients if writers is None else writers
    sent: dict[tuple[int, int], float] = {}
    for c in measured.clients:
        pairs = c["sends"]
        for i in range(0, len(pairs), 2):
            sent[(c["id"], pairs[i])] = pairs[i + 1]
    latencies, last_arrival = [], 0.0
    for c in measured.clients:
        arrivals = c["arrivals"]
        for i in range(0, len(arrivals), 3):
            sent_at = sent.get((arrivals[i], arrivals[i + 1]))
            if sent_at is not None and arrivals[i] != c["id"]:
                latencies.append(arrivals[i + 2] - sent_at)
                last_arrival = max(last_arrival, arrivals[i + 2])
    latencies.sort()
    span = (last_arrival - min(sent.values())) / 1000 if latencies else float("inf")
    final = {(c["length"], c["sha1"]) for c in measured.clients}
    converged = len(final) == 1 and next(iter(final))[0] == writers * edits
    return Outcome(latencies, writers * (clients - 1) * edits, len(latencies) / span, converged, measured)


def run(name: str, clients: int, args: argparse.Namespace) -> Outcome:
    target = TARGETS[name]
    with target.start() as server:
        room = f"fanout-{clients}"
        writers = min(clients, args.writers or clients)
        config: dict[str, Any] = {
            "workload": "fanout", "protocol": target.protocol, "url": f"ws://127.0.0.1:{server.port}{target.path}",
            "edits": args.edits, "editRate": args.edit_rate, "cursorRate": 10, "expectedEdits": writers * args.edits,
            "drainMs": args.drain * 1000, "connectWidth": 1 if clients <= 100 else 20,
        }
        if writers < clients:
            config["firstObserver"] = FIRST_ID + writers
        load = Load(server, config, [(FIRST_ID + i, room) for i in range(clients)], min(clients, args.processes))
        load.ready()
        measured = load.run(timeout=args.edits / args.edit_rate + args.drain + 60)
        return analyse(measured, clients, args.edits, writers)


FIRST_ID = 1000
"""Client ids (and Yjs client ids) are FIRST_ID, FIRST_ID + 1, ...; writers come first."""


def rows(results: dict[tuple[str, int], Outcome]) -> Iterator[list[Any]]:
    for (name, clients), o in results.items():
        m = o.measured
        yield [name, clients, *(f"{percentile(o.latencies, p):.1f}" for p in (50, 95, 99)),
               f"{o.latencies[-1]:.0f}" if o.latencies else "-", f"{o.failed:,} / {o.expected:,}",
               f"{o.deliveries_per_second:,.0f}", f"{len(o.latencies) / max(1, sum(c['messages'] for c in m.clients)):.1f}",
               "yes" if o.converged else "NO",
               f"{100 * m.server_cpu / m.wall:.0f} %", f"{cpu_per_delivery(o):.1f}", mib(m.server_peak_rss),
               f"{100 * m.load_cpu / m.wall:.0f} %", len(m.errors)]


def cpu_per_delivery(o: Outcome) -> float:
    """Server CPU time per edit delivered to a client, in µs: the headline cost figure, which
    the load generator's own limits (latency at 50 clients) do not hide."""
    return 1e6 * o.measured.server_cpu / max(1, len(o.latencies))


PEERS = ("pycrdt-websocket", "hocuspocus", "hocuspocus-sqlite")


def ratios(results: dict[tuple[str, int], Outcome], sizes: list[int]) -> Iterator[list[Any]]:
    for clients in sizes:
        for peer_name in PEERS:
            peer = results.get((peer_name, clients))
            if peer is None:
                continue
            for name in ("plait-yjs", "plait-native"):
                ours = results.get((name, clients))
                if ours is None:
                    continue
                p99 = percentile(ours.latencies, 99), percentile(peer.latencies, 99)
                yield [f"{name} / {peer_name}", clients, f"{p99[0] / p99[1]:.2f}",
                       f"{ours.deliveries_per_second / peer.deliveries_per_second:.2f}",
                       f"{cpu_per_delivery(ours) / cpu_per_delivery(peer):.2f}",
                       f"{ours.measured.server_peak_rss / peer.measured.server_peak_rss:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 10, 50])
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=["plait-native", "plait-yjs", "pycrdt-websocket"])
    parser.add_argument("--edits", type=int, default=200, help="edits per writing client")
    parser.add_argument("--edit-rate", type=float, default=20.0, help="edits per second of each writing client")
    parser.add_argument("--writers", type=int, default=None,
                        help="how many of the clients edit (default all); the others only observe: "
                             "--clients 1500 --writers 1 is @y/hub's one writer and 1,500 observers")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for late edits")
    parser.add_argument("--processes", type=int, default=2,
                        help="load-generating processes (default 2: more processes than cores only adds scheduling delay)")
    args = parser.parse_args()
    results: dict[tuple[str, int], Outcome] = {}
    for clients in args.clients:
        for name in args.targets:
            results[(name, clients)] = outcome = run(name, clients, args)
            for error in outcome.measured.errors[:5]:
                print(f"  {name} N={clients}: {error}")
    print(f"Machine: {machine()}\n")
    print(table(["server", "clients", "p50 ms", "p95 ms", "p99 ms", "max ms", "edits lost", "deliveries/s",
                 "edits per message", "converged", "server CPU", "server CPU µs/delivery", "server peak RSS", "load CPU",
                 "errors"], list(rows(results))))
    ratio_rows = list(ratios(results, args.clients))
    if ratio_rows:
        print()
        print(table(["ratio (lower p99/CPU/RSS, higher deliveries is better for Plait)", "clients", "p99", "deliveries/s",
                     "server CPU per delivery", "server peak RSS"], ratio_rows))


if __name__ == "__main__":
    main()
