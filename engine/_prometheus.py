"""Prometheus exposition of the engine's metrics (`/metrics`), with prometheus_client.

    prometheus = PrometheusMetrics()
    async with Engine(metrics=prometheus) as engine:
        engine.router.add("/metrics", prometheus.route(engine.gauges))

`PrometheusMetrics` is the engine's Metrics seam (engine/_metrics.py) kept in a registry of its
own, not prometheus_client's global one: two engines in one process keep their own counts.
The page is rendered in a worker thread: with thousands of series it takes milliseconds that
the event loop must not wait. What reads engine state (`Engine.gauges()`) is read on the Trio
thread first, then rendered with the rest.

Every name starts `plait_`; the table in METRICS (below) maps the engine's report names to
Prometheus names. Labels are bounded sets (a protocol, a close code, a state): no room, user or
session ever labels a series, so the page shows counts and nothing about who.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import h11
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from plait.protocol import CloseCode

from ._metrics import Gauges
from .http._exchange import Exchange, header
from .http._health import check_method
from .http._router import Route

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: a fan-out is sub-millisecond on an idle server; a commit waits for an fsync."""
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


@dataclass(frozen=True, slots=True)
class Spec:
    """How one of the engine's reports is exposed."""

    prom: str
    """The Prometheus name (a counter's without its `_total`, which prometheus_client adds)."""
    help: str
    label: str | None = None
    """The label's name, or None for a report without one."""
    buckets: Sequence[float] | None = None
    """A histogram's buckets; None: a counter."""


METRICS: dict[str, Spec] = {
    "sessions_opened": Spec("plait_sessions_opened", "Connections that passed their handshake.", "protocol"),
    "sessions_closed": Spec("plait_sessions_closed", "Connections that ended, by close code (spec §9).", "code"),
    "refusals": Spec("plait_refusals", "Requests or messages refused, by error code name (spec §8; RATE_LIMITED: rate limits).", "code"),
    "rooms_loaded": Spec("plait_rooms_loaded", "Rooms loaded from the store."),
    "rooms_unloaded": Spec("plait_rooms_unloaded", "Rooms stored and unloaded."),
    "room_load_seconds": Spec("plait_room_load_seconds", "Time to load a room from the store.", buckets=LATENCY_BUCKETS),
    "commit_seconds": Spec("plait_commit_seconds", "Time of one group commit of a room's updates and events.", buckets=LATENCY_BUCKETS),
    "commit_updates": Spec("plait_commit_updates", "Document updates in one group commit.", buckets=BATCH_BUCKETS),
    "updates_applied": Spec("plait_updates_applied", "Document updates applied to rooms."),
    "events_published": Spec("plait_events_published", "Events sequenced (spec §5.6)."),
    "joins": Spec("plait_joins", "Sessions that became members of a room."),
    "leaves": Spec("plait_leaves", "Memberships that ended: left, or disconnected.", "how"),
    "fanout_frames": Spec("plait_fanout_frames", "Frames queued for members by fan-out, one per recipient, by kind.", "kind"),
    "fanout_seconds": Spec(
        "plait_fanout_seconds",
        "Sampled (1 message in 16 with a document update or an event): from the message read to the fan-out written "
        "to up to 8 recipients' sockets, spread over the room.",
        buckets=LATENCY_BUCKETS,
    ),
    "slow_consumer_closes": Spec("plait_slow_consumer_closes", "Sessions closed because they could not keep up (TOO_SLOW, spec §9)."),
    "http_refusals": Spec("plait_http_refusals", "Plain HTTP requests refused on the engine's port, by status.", "status"),
    "store_errors": Spec("plait_store_errors", "Store calls that failed, by operation.", "operation"),
}

_CLOSE_CODES = frozenset(str(int(code)) for code in CloseCode) | {"1000", "1001", "1006"}


def _close_label(label: str) -> str:
    """A client may close with any code 1000-4999: only the codes spec §9 defines get a series
    of their own, the rest count as `other`."""
    return label if label in _CLOSE_CODES else "other"


class PrometheusMetrics:
    """The engine's Metrics, kept for Prometheus in `registry` (a new CollectorRegistry unless
    given). Thread-safe as prometheus_client is: reports come from the Trio thread, the page
    is rendered in a worker thread.

    A report of a name not in METRICS (a newer engine's) is kept as `plait_<name>_total` (or a
    histogram `plait_<name>` when observed), labelled `label`. A registry made here also has
    the process's own series (`process_resident_memory_bytes`, CPU seconds, open files, start
    time: prometheus_client's ProcessCollector, read from /proc as the page renders)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry = registry
        self._metrics: dict[str, Counter | Histogram] = {}
        self._adders: dict[tuple[str, str], Callable[[float], None]] = {}
        self._observers: dict[tuple[str, str], Callable[[float], None]] = {}
        self._snapshot: Gauges | None = None
        self._render_lock = threading.Lock()
        self._scrape_lock = trio.Lock()
        self.registry.register(_GaugeCollector(self))
        for name in METRICS:
            self._metric(name, histogram=METRICS[name].buckets is not None)

    def _metric(self, name: str, *, histogram: bool) -> Counter | Histogram:
        metric = self._metrics.get(name)
        if metric is None:
            spec = METRICS.get(name) or Spec(f"plait_{name}", f"{name} (reported by the engine)", "label")
            labels = (spec.label,) if spec.label else ()
            if histogram:
                buckets = spec.buckets or LATENCY_BUCKETS
                metric = Histogram(spec.prom, spec.help, labels, registry=self.registry, buckets=buckets)
            else:
                metric = Counter(spec.prom, spec.help, labels, registry=self.registry)
            self._metrics[name] = metric
        return metric

    def _child(self, name: str, label: str, histogram: bool) -> Callable[[float], None]:
        metric = self._metric(name, histogram=histogram)
        if isinstance(metric, Histogram) is not histogram:
            raise TypeError(f"metric {name!r} was reported both as a counter and as a histogram")
        if name == "sessions_closed":
            label = _close_label(label)
        spec = METRICS.get(name)
        labelled = spec is None or spec.label is not None
        child = metric.labels(label) if labelled else metric
        return child.observe if isinstance(child, Histogram) else child.inc

    def add(self, name: str, amount: float = 1.0, label: str = "") -> None:
        # One dict lookup and prometheus_client's own increment: bound methods are cached
        # per name and label (at most a few dozen).
        inc = self._adders.get((name, label))
        if inc is None:
            inc = self._adders[(name, label)] = self._child(name, label, histogram=False)
        inc(amount)

    def observe(self, name: str, value: float, label: str = "") -> None:
        observe = self._observers.get((name, label))
        if observe is None:
            observe = self._observers[(name, label)] = self._child(name, label, histogram=True)
        observe(value)

    # -- the page ---------------------------------------------------------------------------

    def render(self, gauges: Gauges | None, accept: str = "", gzipped: bool = False) -> tuple[bytes, str]:
        """The exposition page (Prometheus text, or OpenMetrics if `accept` asks for it) with
        `gauges`, and its content type. Blocking: call it in a worker thread."""
        encoder, content_type = choose_encoder(accept)
        with self._render_lock:  # the gauges belong to this page
            self._snapshot = gauges
            try:
                body = encoder(self.registry)
            finally:
                self._snapshot = None
        return (gzip.compress(body, compresslevel=5) if gzipped else body), content_type

    def route(self, gauges: Callable[[], Gauges] | None = None) -> Route:
        """The `/metrics` route (engine/http/_router.py): GET or HEAD (405 otherwise; 413 for a
        body over a kilobyte; a query string is ignored); gzip when the client accepts it.
        `gauges`: read on the Trio thread at each scrape (`Engine.gauges`). Scrapes run one at
        a time."""

        async def metrics(ex: Exchange, request: h11.Request) -> None:
            await check_method(ex, request)
            accept = header(request, b"accept") or ""
            gzipped = "gzip" in (header(request, b"accept-encoding") or "").lower()
            async with self._scrape_lock:
                snapshot = gauges() if gauges is not None else None  # engine state: on the Trio thread
                body, content_type = await trio.to_thread.run_sync(self.render, snapshot, accept, gzipped)
            headers = (("Vary", "Accept-Encoding"),) + ((("Content-Encoding", "gzip"),) if gzipped else ())
            await ex.respond(200, body, content_type, headers)

        return metrics


class _GaugeCollector:
    """The page's gauges and scrape-time counters, from the snapshot read for this page."""

    def __init__(self, owner: PrometheusMetrics) -> None:
        self._owner = owner

    def describe(self) -> list[Metric]:
        return []  # not read at registration: there is no snapshot then

    def collect(self) -> Iterator[Metric]:
        gauges = self._owner._snapshot
        if gauges is None:
            return
        connections = GaugeMetricFamily(
            "plait_connections", "Connections open, by transport and protocol.", labels=["transport", "protocol"]
        )
        for (transport, protocol), count in sorted(gauges.connections.items()):
            connections.add_metric([transport, protocol], count)
        yield connections
        rooms = GaugeMetricFamily("plait_rooms", "Rooms by state: loading, live, draining (storing before unload).", labels=["state"])
        for state, count in sorted(gauges.rooms.items()):
            rooms.add_metric([state], count)
        yield rooms
        yield GaugeMetricFamily("plait_outbox_queued_bytes", "Bytes waiting in every session's outbox.", value=gauges.queued_bytes)
        yield GaugeMetricFamily(
            "plait_outbox_lagging_sessions", "Sessions behind enough that their ephemeral frames coalesce (spec §9).",
            value=gauges.lagging_sessions,
        )
        yield CounterMetricFamily("plait_memory_reclaims", "Times memory was given back to the system.", value=gauges.memory_reclaims)
        traffic = gauges.traffic
        for key, name, what in (
            ("messages_in", "plait_messages_received", "WebSocket messages or HTTP-posted batches received from clients."),
            ("frames_in", "plait_frames_received", "Frames received from clients (a message carries one or more)."),
            ("bytes_in", "plait_received_bytes", "Bytes of the messages received from clients."),
            ("messages_out", "plait_messages_sent", "Messages handed to clients' transports."),
            ("bytes_out", "plait_sent_bytes", "Bytes of the messages handed to clients' transports."),
        ):
            yield CounterMetricFamily(name, what, value=traffic.get(key, 0))
