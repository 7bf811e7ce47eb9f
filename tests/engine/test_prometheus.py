"""The new reports (joins, leaves, fan-out frames, TOO_SLOW closes, store errors), the
Prometheus exporter's own rules, and the log ids (engine/_logs.py). MockClock, memory
transports."""

from __future__ import annotations

import io
import json
import logging

import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig, PrometheusMetrics
from plait.engine._logs import ContextFilter, Ids, json_formatter, log_subject
from plait.engine._metrics import ContainedMetrics
from plait.protocol import Ack, CloseCode, Error, ErrorCode, Join, Leave, Ping, Update
from plait.storage import MemoryStore, RoomData, StorageUnavailable

from .client import DocClient, edit
from .test_metrics import Recording


async def _member(engine: Engine, room: str) -> DocClient:
    c = DocClient(engine.connect_memory())
    await c.hello()
    await c.join(room)
    return c


async def test_joins_leaves_and_fanout_frames_are_reported(autojump_clock: MockClock) -> None:
    metrics = Recording()
    async with Engine(store=MemoryStore(), metrics=metrics) as engine:
        a, b, c = [await _member(engine, "r") for _ in range(3)]
        await a.send(Update(1, 2, edit(a.doc, "x")))
        await a.wait_for(Ack)
        await b.wait_for(Update)
        await c.send(Leave(1, 9))
        await c.wait_for(Ack)
        await trio.sleep(1)
        await b.transport.aclose()
        await trio.sleep(1)
        assert metrics.counts["joins", ""] == 3
        assert metrics.counts["fanout_frames", "document"] == 2  # to b and c
        assert metrics.counts["leaves", "left"] == 1 and metrics.counts["leaves", "disconnected"] == 1
        assert metrics.counts["fanout_frames", "ephemeral"] > 0  # presence of the joins


async def test_a_client_too_slow_is_counted_once(autojump_clock: MockClock) -> None:
    metrics = Recording()
    config = EngineConfig(outbox_max_bytes=64 * 1024)
    async with Engine(store=MemoryStore(), config=config, metrics=metrics) as engine:
        stalled = DocClient(engine.connect_memory(buffer=1))
        await stalled.hello()
        await stalled.send(Join(1, "r", None, None))
        writer = await _member(engine, "r")
        for i in range(400):  # ~1 KiB each, never read by the stalled one
            await writer.send(Update(1, None, edit(writer.doc, "y" * 1000)))
            if i % 50 == 0:
                await stalled.send(Ping(i))
            await trio.sleep(0.01)
            if engine.statistics()["sessions"] == 1:
                break
        assert await stalled.wait_closed() == CloseCode.TOO_SLOW
    assert metrics.counts["slow_consumer_closes", ""] == 1
    assert metrics.counts["sessions_closed", str(CloseCode.TOO_SLOW)] == 1


class FailingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_load = True
        self.appends = 0

    async def load(self, room: str) -> RoomData:
        if self.fail_load:
            raise StorageUnavailable("disk on fire")
        return await super().load(room)

    async def append(self, room: str, updates: object) -> None:
        self.appends += 1
        raise StorageUnavailable("disk full")


async def test_store_errors_are_counted_by_operation(autojump_clock: MockClock) -> None:
    metrics = Recording()
    store = FailingStore()
    async with Engine(store=store, metrics=metrics) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.send(Join(1, "r", None, None))
        assert (await a.expect(Error, ref=1)).code == ErrorCode.STORAGE_UNAVAILABLE
        store.fail_load = False
        await a.join("s")
        await a.send(Update(1, 5, edit(a.doc, "x")))
        assert (await a.wait_for(Error)).code == ErrorCode.STORAGE_UNAVAILABLE
    assert metrics.counts["store_errors", "load"] == 1
    # Every refused try of the commit (retried for the store outage grace) counts once.
    assert metrics.counts["store_errors", "commit"] == store.appends > 1


def _page(prometheus: PrometheusMetrics) -> str:
    return prometheus.render(None)[0].decode()


def test_a_close_code_a_client_chose_is_other_not_a_series_of_its_own() -> None:
    prometheus = PrometheusMetrics()
    for code in range(4000, 4999):
        prometheus.add("sessions_closed", 1, str(code))
    prometheus.add("sessions_closed", 1, str(CloseCode.TOO_SLOW.value))
    page = _page(prometheus)
    assert f'plait_sessions_closed_total{{code="{CloseCode.TOO_SLOW.value}"}}' in page
    assert 'plait_sessions_closed_total{code="other"}' in page
    assert sum(line.startswith("plait_sessions_closed_total{") for line in page.splitlines()) <= 30


def test_a_name_the_table_does_not_know_is_still_kept() -> None:
    prometheus = PrometheusMetrics()
    prometheus.add("widgets_made", 2, "blue")
    prometheus.observe("widget_seconds", 0.5)
    page = _page(prometheus)
    assert 'plait_widgets_made_total{label="blue"} 2.0' in page
    assert 'plait_widget_seconds_count{label=""} 1.0' in page


def test_a_counter_observed_as_a_histogram_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    contained = ContainedMetrics(PrometheusMetrics())
    contained.observe("joins", 1.0)  # a counter: refused by the exporter, not raised
    contained.add("joins")
    assert "metrics: reporting joins failed" in caplog.text


def test_two_exporters_do_not_share_a_registry() -> None:
    one, two = PrometheusMetrics(), PrometheusMetrics()  # no "Duplicated timeseries"
    one.add("joins")
    assert "plait_joins_total 1.0" in _page(one) and "plait_joins_total 0.0" in _page(two)


# -- log ids ----------------------------------------------------------------------------------


def _json_logger() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(ContextFilter())
    log = logging.getLogger("plait.test-logs")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log, stream


async def test_log_ids_follow_a_task_and_its_children_and_no_other() -> None:
    log, stream = _json_logger()

    async def session() -> None:
        log_subject(Ids(session="s-1", identity="ada"))
        log.info("in the session")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: _log(log, "in its writer"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session)
    log.info("in the engine")
    log.info("with its own", extra={"room": "explicit"})
    log_subject(Ids(room="r"))
    log.info("given extra", extra={"room": "wins"})
    log_subject(None)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_message = {line["message"]: line for line in lines}
    assert (by_message["in the session"]["session"], by_message["in the session"]["identity"]) == ("s-1", "ada")
    assert by_message["in its writer"]["session"] == "s-1"
    assert "session" not in by_message["in the engine"]
    assert by_message["with its own"]["room"] == "explicit"
    assert by_message["given extra"]["room"] == "wins"


async def _log(log: logging.Logger, message: str) -> None:
    log.info(message)
