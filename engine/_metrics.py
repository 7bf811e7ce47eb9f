"""The metrics seam: what the engine reports as it runs, for an exporter to keep (Prometheus,
StatsD, a test). A no-op unless `Engine(metrics=...)` is given one.

Counters `add`, histograms `observe`; each report has at most one label, a short string, so a
report costs a call and nothing more. The names, their label and unit:

| name | kind | label | what |
| --- | --- | --- | --- |
| `sessions_opened` | counter | protocol: `native`, `yjs` | a connection passed its handshake |
| `sessions_closed` | counter | the close code (`"1000"`, `"4005"`, ...) | a connection ended |
| `refusals` | counter | the error code's name (`RATE_LIMITED`, ...) | a request or message refused (spec §8) |
| `rooms_loaded` | counter | none | a room was loaded |
| `rooms_unloaded` | counter | none | a room was stored and unloaded |
| `room_load_seconds` | histogram | none | loading a room from the store |
| `commit_seconds` | histogram | none | one group commit to the store |
| `commit_updates` | histogram | none | document updates in one group commit |
| `updates_applied` | counter | none | document updates applied to rooms |
| `events_published` | counter | none | events sequenced (spec §5.6) |
| `joins` | counter | none | a session became a member of a room |
| `leaves` | counter | `left` or `disconnected` | a membership ended |
| `fanout_frames` | counter | `document`, `event`, `ephemeral` | frames handed to members' queues by fan-out (one per recipient) |
| `fanout_seconds` | histogram | none | sampled: reading a message with an update or event, to writing it to a recipient (up to 8) |
| `slow_consumer_closes` | counter | none | a session closed TOO_SLOW (spec §9) |
| `http_refusals` | counter | the HTTP status (`"404"`, ...) | a plain HTTP request refused (engine/http/_server.py) |
| `store_errors` | counter | `load`, `commit`, `compact`, `ping` | a store call that failed (each try of a retried commit) |

Gauges (rooms by state, sessions by transport and protocol, bytes queued) and the traffic
counters (messages, frames and bytes in and out), read when scraped: `Engine.statistics()` and
`Engine.gauges()`. The traffic is counted in plain integers (`Traffic`), not reported: a report
per message would cost a call through the seam on the hottest path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from plait.protocol import APPLICATION_ERROR_RANGE, ErrorCode

from ._hooks import application_error

logger = logging.getLogger("plait.engine")


class Metrics(Protocol):
    def add(self, name: str, amount: float = 1.0, label: str = "") -> None:
        """Add `amount` to counter `name`."""
        ...

    def observe(self, name: str, value: float, label: str = "") -> None:
        """Record one observation of histogram `name`."""
        ...


class Traffic:
    """Messages, frames and bytes through every session, counted where they pass (an integer
    add, not a report: see above) and read when scraped. Frames in are counted per message
    (`len(frames)`), not by kind: a kind would cost a lookup per frame on the reader's path.
    Frames out are the fan-out's (`fanout_frames`, by kind) plus each session's own; the
    messages and bytes out count what was handed to the transport."""

    __slots__ = ("messages_in", "bytes_in", "frames_in", "messages_out", "bytes_out")

    def __init__(self) -> None:
        self.messages_in = 0
        self.bytes_in = 0
        self.frames_in = 0
        self.messages_out = 0
        self.bytes_out = 0

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Gauges:
    """What the engine holds at one moment, read on the Trio thread (`Engine.gauges()`), so
    that an exporter can render it in another thread."""

    connections: dict[tuple[str, str], int]
    """Sessions open (in their handshake included), by (transport, protocol): transport
    `websocket`, `http` or `memory`; protocol `native` or `yjs`."""
    rooms: dict[str, int]
    """Rooms by state: `loading`, `live`, `draining` (a room that failed is in none)."""
    queued_bytes: int
    """Bytes waiting in every session's outbox."""
    lagging_sessions: int
    """Sessions whose outbox is long enough that ephemeral frames coalesce (spec §9)."""
    memory_reclaims: int
    """Times memory was given back to the system (engine/_reclaim.py): a counter."""
    traffic: dict[str, int]
    """`Traffic.snapshot()`: counters."""


class NoMetrics:
    """Reports nowhere (the default)."""

    __slots__ = ()

    def add(self, name: str, amount: float = 1.0, label: str = "") -> None:
        pass

    def observe(self, name: str, value: float, label: str = "") -> None:
        pass


NO_METRICS = NoMetrics()


def code_name(code: int) -> str:
    """The label of a refusal: the error code's name (spec §8), APPLICATION for the codes
    4000-4999 an application's hook chose, else the number."""
    known = ErrorCode._value2member_map_.get(code)
    if isinstance(known, ErrorCode):
        return known.name
    return "APPLICATION" if code in APPLICATION_ERROR_RANGE else str(code)


class ContainedMetrics:
    """An application's Metrics, so that nothing it raises reaches the engine: a report that
    fails is dropped, and logged (the first failure of each name, not every one)."""

    __slots__ = ("_inner", "_failed")

    def __init__(self, inner: Metrics) -> None:
        self._inner = inner
        self._failed: set[str] = set()

    def add(self, name: str, amount: float = 1.0, label: str = "") -> None:
        try:
            self._inner.add(name, amount, label)
        except BaseException as exc:
            if not application_error(exc):
                raise
            self._log(name, exc)

    def observe(self, name: str, value: float, label: str = "") -> None:
        try:
            self._inner.observe(name, value, label)
        except BaseException as exc:
            if not application_error(exc):
                raise
            self._log(name, exc)

    def _log(self, name: str, exc: BaseException) -> None:
        if name not in self._failed:
            self._failed.add(name)
            logger.error("metrics: reporting %s failed (later failures of it are not logged)", name, exc_info=exc)
