"""Scraping /metrics of a busy engine: how long a scrape takes with thousands of rooms live
and sessions open, and how long the event loop stalls meanwhile (it must stay responsive: the
page is rendered in a worker thread; engine state is read on the Trio thread first).

In one process: an engine with Prometheus metrics (engine/_prometheus.py), `--rooms` rooms
live, `--sessions` in-memory sessions (one per room, round robin) that joined and sent an
update each, every label of the engine's counters filled; then `--scrapes` GETs of /metrics
over a real socket, one after another, while a task sleeping 1 ms at a time records how late
each wake-up is (the loop's stall). The same is measured with no scrape (the baseline) and
with the page rendered on the Trio thread instead (what the worker thread avoids).

    .venv/bin/python bench/metrics_scrape.py [--rooms 5000] [--sessions 2000] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Awaitable
from typing import Any

import httpx
import pycrdt
import trio

from plait.engine import Engine, EngineConfig, PrometheusMetrics
from plait.engine._metrics import ContainedMetrics, Traffic
from plait.engine._prometheus import METRICS
from plait.protocol import CloseCode, ErrorCode, Hello, Join, Update, decode, encode
from plait.storage import MemoryStore


class StallMeter:
    """The longest time the loop was late to wake a task sleeping 1 ms at a time."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.lates: list[float] = []

    def p99(self) -> float:
        return sorted(self.lates)[int(len(self.lates) * 0.99)] if self.lates else 0.0

    def reset(self) -> None:
        self.worst, self.lates = 0.0, []

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await trio.sleep(0.001)
            late = time.perf_counter() - before - 0.001
            self.lates.append(late)
            self.worst = max(self.worst, late)


async def open_sessions(engine: Engine, rooms: int, sessions: int) -> list[Any]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    text.insert(0, "x")
    update = doc.get_update()
    clients = []
    for i in range(sessions):
        c = engine.connect_memory()
        await c.send_message(encode(Hello((1,), None, {})))
        await c.receive_message()  # welcome
        await c.send_message(encode(Join(1, f"room-{i % rooms}", None, None)))
        channel = None
        while channel is None:
            for frame in decode(await _bytes(c.receive_message())):
                channel = getattr(frame, "channel", None) if type(frame).__name__ == "Joined" else channel
        await c.send_message(encode(Update(channel, None, update)))
        clients.append(c)
    return clients


async def _bytes(received: Awaitable[bytes | str]) -> bytes:
    data = await received
    assert isinstance(data, bytes)
    return data


async def drain(clients: list[Any]) -> None:
    """Read what each session is sent, so that no outbox fills."""
    async with trio.open_nursery() as nursery:
        for c in clients:
            nursery.start_soon(_read_forever, c)


async def _read_forever(c: Any) -> None:
    while True:
        await c.receive_message()


def fill_labels(prometheus: PrometheusMetrics) -> None:
    """Every series a long-running server would have: every close code, error code, kind."""
    for code in CloseCode:
        prometheus.add("sessions_closed", 0, str(int(code)))
    for error in ErrorCode:
        prometheus.add("refusals", 0, error.name)
    for name, spec in METRICS.items():
        if spec.buckets is not None:
            prometheus.observe(name, 0.001)


SCRAPER = """
import sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
urllib.request.urlopen(url).read()  # warm
print("go", flush=True)
sys.stdin.readline()
for _ in range(n):
    start = time.perf_counter()
    size = len(urllib.request.urlopen(url).read())
    print(time.perf_counter() - start, size, flush=True)
"""


async def timed_scrapes(port: int, path: str, n: int, meter: StallMeter) -> tuple[list[float], int]:
    """`n` scrapes, one after another, by a process of its own (Prometheus is not in the
    server's process either): each one's time as the scraper saw it, and the page's size."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", SCRAPER, f"http://127.0.0.1:{port}{path}", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None and process.stdout is not None
    lines = await _lines(process.stdout, 1)
    assert lines == ["go"], lines
    meter.reset()
    await process.stdin.send_all(b"\n")
    results = await _lines(process.stdout, n)
    await process.wait()
    times = [float(line.split()[0]) for line in results]
    return times, int(results[-1].split()[1])


async def _lines(stream: trio.abc.ReceiveStream, n: int) -> list[str]:
    data = b""
    while data.count(b"\n") < n:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return data.decode().splitlines()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


async def main_async(args: argparse.Namespace) -> None:
    prometheus = PrometheusMetrics()
    config = EngineConfig(room_idle_grace=3600, heartbeat=3600)
    async with Engine(store=MemoryStore(), config=config, metrics=prometheus) as engine, trio.open_nursery() as nursery:
        engine.router.add("/metrics", prometheus.route(engine.gauges))

        async def metrics_inline(ex: Any, request: Any) -> None:  # the page rendered on the Trio thread
            body, content_type = prometheus.render(engine.gauges())
            await ex.respond(200, body, content_type)

        engine.router.add("/metrics-inline", metrics_inline)
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        started = time.perf_counter()
        for i in range(args.rooms):
            async with engine.room(f"room-{i}"):
                pass
        clients = await open_sessions(engine, args.rooms, args.sessions)
        nursery.start_soon(drain, clients)
        fill_labels(prometheus)
        setup = time.perf_counter() - started
        meter = StallMeter()
        nursery.start_soon(meter.run)
        await trio.sleep(1.0)
        idle_worst = meter.worst
        idle_p99 = meter.p99()
        gauges_times = []
        for _ in range(20):
            start = time.perf_counter()
            engine.gauges()
            gauges_times.append(time.perf_counter() - start)
        render_times = []
        snapshot = engine.gauges()
        for _ in range(10):
            start = time.perf_counter()
            prometheus.render(snapshot)
            render_times.append(time.perf_counter() - start)
        times, size = await timed_scrapes(port, "/metrics", args.scrapes, meter)
        scrape_worst, scrape_p99 = meter.worst, meter.p99()
        inline_times, _ = await timed_scrapes(port, "/metrics-inline", args.scrapes, meter)
        inline_worst, inline_p99 = meter.worst, meter.p99()
        stats = engine.statistics()
        print(f"{args.rooms:,} rooms live ({stats['rooms']}), {stats['sessions']:,} sessions open; set up in {setup:.1f} s; "
              f"page {size:,} bytes, {sum(1 for line in (await _page(port)).splitlines() if not line.startswith('#')):,} samples")
        print()
        print("| what | p50 ms | max ms |")
        print("| --- | ---: | ---: |")
        print(f"| Engine.gauges() on the Trio thread | {ms(statistics.median(gauges_times))} | {ms(max(gauges_times))} |")
        print(f"| rendering the page from them (in a worker thread) | {ms(statistics.median(render_times))} | {ms(max(render_times))} |")
        print(f"| GET /metrics, client's view ({args.scrapes} scrapes) | {ms(statistics.median(times))} | {ms(max(times))} |")
        print(f"| same, rendered on the Trio thread | {ms(statistics.median(inline_times))} | {ms(max(inline_times))} |")
        print()
        print("| event loop: a 1 ms sleep woken late by | p99 ms | max ms |")
        print("| --- | ---: | ---: |")
        print(f"| no scrape (1 s) | {ms(idle_p99)} | {ms(idle_worst)} |")
        print(f"| during {args.scrapes} scrapes of /metrics | {ms(scrape_p99)} | {ms(scrape_worst)} |")
        print(f"| during {args.scrapes} scrapes rendered on the Trio thread | {ms(inline_p99)} | {ms(inline_worst)} |")
        nursery.cancel_scope.cancel()


async def _page(port: int) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        return (await http.get("/metrics")).text


def report_costs(n: int) -> None:
    """What the hot paths pay: a report through the seam (ContainedMetrics around
    PrometheusMetrics, as Engine(metrics=...) wraps it), and the plain-integer traffic count a
    message pays instead (engine/_metrics.py Traffic)."""
    contained = ContainedMetrics(PrometheusMetrics())
    traffic = Traffic()

    def count_message(data: bytes = b"x" * 100) -> None:
        traffic.messages_in += 1
        traffic.bytes_in += len(data)

    rows = [
        ("a counter report, no label (`updates_applied`)", lambda: contained.add("updates_applied")),
        ("a counter report with a label (`fanout_frames`)", lambda: contained.add("fanout_frames", 9, "document")),
        ("a histogram observation (`fanout_seconds`)", lambda: contained.observe("fanout_seconds", 0.002)),
        ("a message's traffic count (two integer adds)", count_message),
    ]
    print("| what | ns per call |")
    print("| --- | ---: |")
    for what, call in rows:
        best = min(timeit.repeat(call, number=n, repeat=5)) / n
        print(f"| {what} | {best * 1e9:.0f} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--cost-calls", type=int, default=200_000, help="calls per timing of a report's cost")
    args = parser.parse_args()
    report_costs(args.cost_calls)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
