"""/healthz, /readyz and /metrics as a load balancer, an orchestrator and a hostile client
reach them: real sockets on 127.0.0.1, every wait bounded."""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from typing import Any

import httpx
import pytest
import trio

from plait.engine import Engine
from plait.storage import MemoryStore, StorageUnavailable

from .test_http_hostile import conversation, exchange
from .test_metrics import client, edits, join, served

PATHS = ("/healthz", "/readyz", "/metrics")


async def test_alive_and_ready_answer_json() -> None:
    async with served() as (_, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        alive = await http.get("/healthz")
        ready = await http.get("/readyz?verbose=1")  # a query string is ignored
        assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert alive.headers["content-type"] == "application/json"
        assert alive.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
async def test_a_method_other_than_get_or_head_is_405_with_allow(path: str, method: str) -> None:
    async with served() as (_, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        response = await http.request(method, path, content=b"x")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert response.json()["status"] == 405
        assert (await http.get("/healthz")).status_code == 200  # the server goes on
        assert 'plait_http_refusals_total{status="405"} 1.0' in (await http.get("/metrics")).text


@pytest.mark.parametrize("path", PATHS)
async def test_head_is_the_head_alone(path: str) -> None:
    async with served() as (_, port):
        raw = await conversation(port, f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert body == b""
        assert int(_header(head, b"content-length")) > 0  # what GET would carry


@pytest.mark.parametrize("path", PATHS)
async def test_a_body_is_read_past_and_a_large_one_is_413(path: str) -> None:
    async with served() as (_, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        small = await http.request("GET", path, content=b"{}")
        assert small.status_code == 200
        large = await http.request("GET", path, content=b"x" * 4096)
        assert large.status_code == 413
        status, _ = await exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode())
        assert status == 400  # a chunk size that is not hex
        assert (await http.get(path)).status_code == 200


async def test_two_requests_on_one_kept_alive_connection() -> None:
    async with served() as (_, port):
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        raw = await conversation(port, request)
        assert raw.count(b"HTTP/1.1 200 OK") == 2, raw


async def test_metrics_gzip_and_openmetrics_when_asked() -> None:
    async with served() as (_, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        plain = await http.get("/metrics", headers={"Accept-Encoding": "identity"})
        zipped = await http.get("/metrics", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["vary"] == "Accept-Encoding"
        assert "plait_sessions_opened_total" in zipped.text  # httpx inflated it
        assert "plait_sessions_opened_total" in plain.text and "content-encoding" not in plain.headers
        om = await http.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        raw = await _raw_get(port, "/metrics", b"Accept-Encoding: gzip\r\n")
        assert b"plait_rooms" in gzip.decompress(raw)


class FlakyStore(MemoryStore):
    """A store whose ping fails or hangs on demand; `pings` counts the pings started."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.pings = 0
        self.release = trio.Event()
        self.appends_wait = False

    async def ping(self) -> None:
        self.pings += 1
        if self.mode == "raise":
            raise StorageUnavailable("/secret/path: disk gone")
        if self.mode == "hang":
            await trio.sleep_forever()

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        if self.appends_wait:
            await self.release.wait()
        await super().append(room, updates)


async def _ready(http: httpx.AsyncClient) -> tuple[int, Any]:
    response = await http.get("/readyz")
    return response.status_code, response.json()


async def test_readyz_is_503_while_the_store_fails_and_200_once_it_answers_again() -> None:
    store = FlakyStore()
    async with served(store=store) as (engine, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        engine.health.timeout = 0.2
        assert await _ready(http) == (200, {"status": "ready"})
        store.mode = "raise"
        status, body = await _ready(http)
        assert (status, body) == (503, {"status": "unready", "reason": "the store failed (StorageUnavailable)"})
        assert "/secret/path" not in json.dumps(body)  # the store's words go to the log only
        store.mode = "hang"
        with trio.fail_after(5):
            started = trio.current_time()
            async with trio.open_nursery() as nursery:  # probes at once share one ping
                for _ in range(5):
                    nursery.start_soon(_ready, http)
            status, body = await _ready(http)
        assert (status, body["reason"]) == (503, "the store did not answer within 0.2 s")
        assert trio.current_time() - started < 2
        assert store.pings == 1 + 1 + 1  # the hung ping is still the one every probe waits on
        assert (await http.get("/healthz")).status_code == 200  # alive, though not ready
        samples = (await http.get("/metrics")).text
        assert 'plait_store_errors_total{operation="ping"} 1.0' in samples


async def test_a_store_without_ping_is_always_reachable() -> None:
    class Plain:  # the Store protocol without the optional ping
        def __init__(self) -> None:
            self._inner = MemoryStore()

        def __getattr__(self, name: str) -> Any:
            if name == "ping":
                raise AttributeError(name)
            return getattr(self._inner, name)

    async with served(store=Plain()) as (_, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert await _ready(http) == (200, {"status": "ready"})


async def test_readyz_is_503_while_shutting_down_and_healthz_stays_200() -> None:
    store = FlakyStore()
    store.appends_wait = True  # the final flush waits: the shutdown lasts until released
    async with served(store=store) as (engine, port), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        async with client(port) as a:
            await join(a, "r")
            from plait.protocol import Update

            await a.send(Update(a.channel, 1, edits(1)[0]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.shutdown)
            with trio.fail_after(5):
                while (status := await _ready(http))[0] == 200:
                    await trio.sleep(0.01)
            assert status == (503, {"status": "unready", "reason": "shutting down"})
            response = await http.get("/readyz")
            assert response.headers["retry-after"] == "5"
            assert (await http.get("/healthz")).status_code == 200
            store.release.set()


async def test_a_metrics_exporter_that_raises_never_hurts_the_engine() -> None:
    class Broken:
        def add(self, name: str, amount: float = 1.0, label: str = "") -> None:
            raise RuntimeError("exporter bug")

        def observe(self, name: str, value: float, label: str = "") -> None:
            raise SystemExit(1)  # even this stays in the exporter

    async with Engine(metrics=Broken()) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with client(port) as a, client(port) as b:
            await join(a, "r")
            await join(b, "r")
            from plait.protocol import Ack, Update

            for ref, update in enumerate(edits(40), start=1):  # past the fan-out sample, 1 in 16
                await a.send(Update(a.channel, ref, update))
                await a.until(lambda fs, ref=ref: any(isinstance(f, Ack) and f.ref == ref for f in fs))
            await b.until(lambda fs: sum(type(f).__name__ == "Update" for f in fs) >= 40)
        nursery.cancel_scope.cancel()


async def test_gauges_that_raise_make_a_500_not_a_dead_server() -> None:
    from plait.engine import PrometheusMetrics

    prometheus = PrometheusMetrics()

    def broken() -> Any:
        raise RuntimeError("gauges bug")

    async with Engine(metrics=prometheus) as engine, trio.open_nursery() as nursery:
        engine.router.add("/metrics", prometheus.route(broken))
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/metrics")).status_code == 500
            assert (await http.get("/healthz")).status_code == 200
        nursery.cancel_scope.cancel()


async def test_a_route_that_fails_logs_its_path_without_the_query_and_a_client_gone_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A fresh QA helper: an event stream whose client reset mid-write logged an ERROR with a
    # traceback (the hang-up came from the route's nursery, in a group), and its line held the
    # session's key from the query.
    async def failing(ex: Any, request: Any) -> None:
        raise RuntimeError("route bug")

    async def client_gone(ex: Any, request: Any) -> None:
        raise ExceptionGroup("writer", [trio.BrokenResourceError("connection reset by peer")])

    async with Engine() as engine, trio.open_nursery() as nursery:
        engine.router.add("/failing", failing)
        engine.router.add("/gone", client_gone)
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            assert (await http.get("/failing?key=s3cret")).status_code == 500
            with pytest.raises(httpx.HTTPError):
                await http.get("/gone?key=s3cret")
            assert (await http.get("/healthz")).status_code == 200
        nursery.cancel_scope.cancel()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["GET /failing failed"]
    assert "s3cret" not in caplog.text


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} in {head!r}")


async def _raw_get(port: int, path: str, headers: bytes = b"") -> bytes:
    """The body of a GET exactly as the server sent it (httpx would inflate it)."""
    raw = await conversation(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + headers + b"\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(body) == int(_header(head, b"content-length"))
    return body


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("query", ["?x=1", "?%ff%fe", "?" + "a" * 8000, "?name[]=plait_rooms&format=json"])
async def test_a_query_string_is_ignored(path: str, query: str) -> None:
    async with served() as (_, port):
        raw = await conversation(port, f"GET {path}{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]
