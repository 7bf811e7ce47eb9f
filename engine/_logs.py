"""Which session, room and identity a log line is about, and `plait serve --log-format`.

The engine logs from many places (sessions, rooms, the HTTP side, the persister) and so may an
application's hooks, which run in the same tasks. Rather than an `extra=` at every call (which
a hook's own log calls would lack), what the current task serves lives in a context variable
(`LOG_SUBJECT`) set once at the root of each task that serves one thing: a session's task (the
session itself, so its identity shows once known, without setting anything again), a room's
task (the room). Trio gives each task a copy of its parent's context, so the tasks a session
or a room starts inherit it, and setting it in one task never reaches another. A task that
serves many things (the engine's shared flush) clears it. Only once a ContextFilter exists
(`--log-format json`, or an application's own handler): a set costs an idle connection's task
about 0.1 KiB (bench/idle.py), which readable text, which never shows the ids, need not pay.

`ContextFilter` copies them onto each record (as `session`, `room`, `identity`; absent where
unknown, and never overriding an `extra=` of the call); the text format ignores them, the JSON
format (python-json-logger) prints them as fields.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, Final, Protocol, TextIO

from pythonjsonlogger.json import JsonFormatter


class LogSubject(Protocol):
    def log_ids(self) -> tuple[str | None, str | None, str | None]:
        """(session, room, identity) ids, None where unknown."""
        ...


LOG_SUBJECT: ContextVar[LogSubject | None] = ContextVar("plait_log_subject", default=None)
"""What the current task serves (a session, a room), or None."""
_FIELDS: Final = ("session", "room", "identity")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS: Final = ("text", "json")


_tracking = False
"""Whether a ContextFilter was made: until then nobody reads LOG_SUBJECT."""


def log_subject(subject: LogSubject | None) -> None:
    """What the current task (and the tasks it starts from now on) serves; None: nothing.
    Does nothing until a ContextFilter is made (see above)."""
    if _tracking:
        LOG_SUBJECT.set(subject)


class Ids:
    """Fixed ids as a LogSubject (a test's, or a task of an application's own)."""

    __slots__ = ("_ids",)

    def __init__(self, session: str | None = None, room: str | None = None, identity: str | None = None) -> None:
        self._ids = (session, room, identity)

    def log_ids(self) -> tuple[str | None, str | None, str | None]:
        return self._ids


class ContextFilter(logging.Filter):
    """Puts the ids of what the current task serves (LOG_SUBJECT) on each record that has none
    of its own (an `extra=` of the call wins). Making one starts the tracking (log_subject)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        global _tracking
        _tracking = True

    def filter(self, record: logging.LogRecord) -> bool:
        subject = LOG_SUBJECT.get()
        if subject is not None:
            for name, value in zip(_FIELDS, subject.log_ids(), strict=True):
                if value is not None and not hasattr(record, name):
                    setattr(record, name, value)
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per line: `time` (ISO 8601, UTC), `level`, `logger`, `message`, then
    `session`, `room`, `identity` where known, any `extra=` fields, and `exc_info` (the
    traceback as text) when there is one."""
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )
    formatter.converter = _utc
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def _utc(secs: float | None) -> Any:
    import time

    return time.gmtime(secs)


def configure_logging(level: str, log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Log to `stream` (stderr) at `level`, as readable text or as JSON lines, unless the root
    logger has handlers already (as logging.basicConfig: a test's capture stays). Returns the
    handler made.

    Raises:
        ValueError: a format other than LOG_FORMATS.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(json_formatter())
        handler.addFilter(ContextFilter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    # coredis logs a failed connection attempt as an ERROR with an empty traceback ("NoneType:
    # None", a second line); the cluster says what failed itself, once (engine/cluster).
    logging.getLogger("coredis").setLevel(logging.CRITICAL)
    return handler
