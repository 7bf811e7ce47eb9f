"""/metrics over real sockets while a room fans out: the counters move by exactly what the
clients did. Raw WebSocket clients (trio_websocket and plait.protocol's codec) so that every
message and frame sent is known."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pycrdt
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from plait.engine import Engine, EngineConfig, PrometheusMetrics
from plait.protocol import Ack, Error, Event, Frame, Hello, Join, Joined, Publish, Update, Welcome, decode, encode


@asynccontextmanager
async def served(config: EngineConfig | None = None, **kwargs: Any) -> AsyncIterator[tuple[Engine, int]]:
    """An engine with Prometheus metrics at /metrics, on a free port of 127.0.0.1."""
    prometheus = PrometheusMetrics()
    async with Engine(config=config, metrics=prometheus, **kwargs) as engine, trio.open_nursery() as nursery:
        engine.router.add("/metrics", prometheus.route(engine.gauges))
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        yield engine, port
        nursery.cancel_scope.cancel()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class RawClient:
    """A native client that counts what it sends and keeps what it receives."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.frames: list[Frame] = []
        self.messages_sent = self.frames_sent = self.bytes_sent = 0
        self.channel = 0

    async def send(self, *frames: Frame) -> None:
        data = encode(frames[0]) if len(frames) == 1 else encode(list(frames))
        self.messages_sent += 1
        self.frames_sent += len(frames)
        self.bytes_sent += len(data)
        await self.ws.send_message(data)

    async def until(self, check: Callable[[list[Frame]], bool]) -> None:
        with trio.fail_after(10):
            while not check(self.frames):
                self.frames += decode(await self.ws.get_message())

    def count(self, kind: type[Frame]) -> int:
        return sum(isinstance(f, kind) for f in self.frames)


@asynccontextmanager
async def client(port: int) -> AsyncIterator[RawClient]:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        c = RawClient(ws)
        await c.send(Hello((1,), None, {}))
        await c.until(lambda fs: any(isinstance(f, Welcome) for f in fs))
        yield c


async def join(c: RawClient, room: str) -> None:
    await c.send(Join(1, room, None, None))
    await c.until(lambda fs: any(isinstance(f, Joined) for f in fs))
    c.channel = next(f.channel for f in c.frames if isinstance(f, Joined))


def edits(n: int) -> list[bytes]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    out = []
    for i in range(n):
        before = doc.get_state()
        text.insert(len(text), str(i % 10))
        out.append(doc.get_update(before))
    return out


UPDATES = 20


async def test_a_scrape_during_a_fanout_counts_exactly_what_happened() -> None:
    config = EngineConfig(events_per_second=2)  # the third event of a burst is RATE_LIMITED
    async with served(config) as (_, port):
        before = await scrape(port)
        async with client(port) as a, client(port) as b, client(port) as c:
            for each in (a, b, c):
                await join(each, "room")
            for ref, update in enumerate(edits(UPDATES), start=10):
                await a.send(Update(a.channel, ref, update))
                await a.until(lambda fs, ref=ref: any(isinstance(f, Ack) and f.ref == ref for f in fs))  # durable
            # One message of three events: two pass, the third is over the rate (2/s, burst 2).
            await a.send(*(Publish(a.channel, 100 + i, "chat", {"n": i}, None) for i in range(3)))
            await a.until(lambda fs: any(isinstance(f, Error) and f.ref == 102 for f in fs))
            await a.send(Update(99, 200, b"\x00\x00"))  # a channel it never joined: refused, not fatal
            await a.until(lambda fs: any(isinstance(f, Error) and f.ref == 200 for f in fs))
            for each in (b, c):
                await each.until(lambda fs: sum(isinstance(f, Update) for f in fs) >= UPDATES)
                await each.until(lambda fs: sum(isinstance(f, Event) for f in fs) == 2)
            await a.until(lambda fs: sum(isinstance(f, Event) for f in fs) == 2)
            during = await scrape(port)
            received_by_clients = [(len(x.frames), x) for x in (a, b, c)]
        after_close = await _scrape_until(port, lambda s: value(s, "plait_connections", transport="websocket", protocol="native") == 0)

    def delta(name: str, **labels: str) -> float:
        return value(during, name, **labels) - value(before, name, **labels)

    clients = (a, b, c)
    assert delta("plait_sessions_opened_total", protocol="native") == 3
    assert value(during, "plait_connections", transport="websocket", protocol="native") == 3
    assert value(during, "plait_rooms", state="live") == 1
    assert delta("plait_rooms_loaded_total") == 1
    assert delta("plait_joins_total") == 3
    assert delta("plait_updates_applied_total") == UPDATES
    assert delta("plait_fanout_frames_total", kind="document") == UPDATES * 2  # to b and c, not back to a
    assert delta("plait_events_published_total") == 2
    assert delta("plait_fanout_frames_total", kind="event") == 2 * 3  # to every member, a too
    assert delta("plait_refusals_total", code="RATE_LIMITED") == 1
    assert delta("plait_refusals_total", code="UNKNOWN_CHANNEL") == 1
    assert delta("plait_commit_updates_sum") == UPDATES  # every update committed, whatever the batches
    assert delta("plait_commit_seconds_count") >= 1
    assert delta("plait_fanout_seconds_count") >= 1  # sampled: one message in 16 of the 22
    assert delta("plait_messages_received_total") == sum(x.messages_sent for x in clients)
    assert delta("plait_frames_received_total") == sum(x.frames_sent for x in clients)
    assert delta("plait_received_bytes_total") == sum(x.bytes_sent for x in clients)
    # What the clients have read so far the server has sent (it may have sent more since).
    assert delta("plait_messages_sent_total") >= 3 + 3  # a welcome and a join's answer each, at least
    assert delta("plait_sent_bytes_total") > 0
    assert sum(n for n, _ in received_by_clients) > 0
    assert value(during, "plait_outbox_lagging_sessions") == 0
    # After they close (1000): every session counted closed by its code, every membership ended.
    assert value(after_close, "plait_sessions_closed_total", code="1000") - value(before, "plait_sessions_closed_total", code="1000") == 3
    assert value(after_close, "plait_leaves_total", how="disconnected") == 3


async def _scrape_until(port: int, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until `check` holds (the server has noticed the clients went): bounded."""
    with trio.fail_after(10):
        while not check(samples := await scrape(port)):
            await trio.sleep(0.01)
        return samples


async def test_two_engines_in_one_process_keep_their_own_counts() -> None:
    async with served() as (_, one), served() as (_, two):
        async with client(one) as a:
            await join(a, "x")
        first, second = await scrape(one), await scrape(two)
    assert value(first, "plait_sessions_opened_total", protocol="native") == 1
    assert value(second, "plait_sessions_opened_total", protocol="native") == 0


async def test_the_page_names_no_room_and_no_user() -> None:
    async with served() as (_, port), client(port) as a:
        await join(a, "secret-room-name")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            page = (await http.get("/metrics")).text
    assert "secret-room-name" not in page
    assert all(line.startswith(("# ", "plait_", "process_")) for line in page.splitlines()), "plait_ series and the process's"
    assert "process_resident_memory_bytes " in page and "process_start_time_seconds " in page


async def test_connections_are_counted_by_transport_and_protocol() -> None:
    from .httpclients import HttpPeer

    async with served() as (_, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        peer = HttpPeer(http)
        await peer.open()  # a native session over the HTTP transports
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/yjs/room") as yjs:
            await yjs.get_message()  # the server's sync step 1: the session is open
            samples = await scrape(port)
    assert value(samples, "plait_connections", transport="http", protocol="native") == 1
    assert value(samples, "plait_connections", transport="websocket", protocol="yjs") == 1
    assert value(samples, "plait_sessions_opened_total", protocol="yjs") == 1
    assert value(samples, "plait_rooms", state="live") == 1


def test_the_scrape_bench_runs_small() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "bench" / "metrics_scrape.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rooms", "50", "--sessions", "20", "--scrapes", "3", "--cost-calls", "1000"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| during 3 scrapes of /metrics |" in done.stdout and "50 rooms live (50)" in done.stdout
