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

Gauges (rooms live, sessions open, bytes queued) are read when scraped: `Engine.statistics()`.
"""

from __future__ import annotations

import logging
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
