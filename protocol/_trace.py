"""The trace format: a recorded (or hand-written) conversation, as JSON Lines (spec §10).

Line 1 is the header; each later line is one record: a connection opening, one frame in or out,
a raw message that is not valid frames, or a close. Frames are written as JSON objects named by
their fields, with binary written explicitly as {"$b": base64}, so a person can read and diff a
trace and `read_trace(write(x)) == x` exactly. No I/O here beyond the file objects passed in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Final, Literal

from ._errors import RemoteProtocolError
from ._frames import PROTOCOL_VERSION, Frame
from ._json import frame_from_json, frame_to_json, value_from_json, value_to_json

TRACE_FORMAT: Final = 1

Dir = Literal["in", "out"]
"""`in`: client to server. `out`: server to client. Always from the server's point of view."""


class TraceError(ValueError):
    """A trace file is not in the trace format; the message names the line."""


@dataclass(frozen=True, slots=True)
class Open:
    """A connection opened, on a transport path (`/` for the native protocol)."""

    path: str = "/"


@dataclass(frozen=True, slots=True)
class Close:
    """A connection closed with a WebSocket close code; `dir` says which side closed it."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Raw:
    """A message recorded as bytes because it is not valid frames (hostile input, mostly)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Stored:
    """What the server's store held for a room when the room first loaded during the trace
    (spec §10.1): a replay starts from it. Events are (seq, the store's opaque body)."""

    room: str
    snapshot: bytes | None = None
    updates: tuple[bytes, ...] = ()
    events: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """Something the server's operator did (spec §10, spec/api.md): `op` names it
    (`set_access`, `clear_access`, `disconnect`, `delete_room`, `publish`, `update`) and
    `args` are its arguments, as values (§3.3). Recorded with `conn` "" and `dir` "in"."""

    op: str
    args: dict[str, Any]


Body = Frame | Raw | Open | Close | Stored | Operation


@dataclass(frozen=True, slots=True)
class TraceHeader:
    protocol: int = PROTOCOL_VERSION
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TraceRecord:
    t: float
    """Seconds since the trace began (on the recorder's Trio clock)."""
    conn: str
    dir: Dir
    body: Body


@dataclass(frozen=True, slots=True)
class Trace:
    header: TraceHeader
    records: tuple[TraceRecord, ...]


# -- writing -------------------------------------------------------------------------------


def write_trace(out: IO[str], header: TraceHeader, records: Iterable[TraceRecord]) -> None:
    """Write a whole trace to a text file object."""
    writer = TraceWriter(out, header)
    for record in records:
        writer.write(record)


class TraceWriter:
    """Writes the header at once, then one line per `write`."""

    def __init__(self, out: IO[str], header: TraceHeader) -> None:
        self._out = out
        line = {"plait_trace": TRACE_FORMAT, "protocol": header.protocol, "settings": header.settings}
        self._line(line)

    def write(self, record: TraceRecord) -> None:
        obj: dict[str, Any] = {"t": record.t, "conn": record.conn, "dir": record.dir}
        body = record.body
        if isinstance(body, Frame):
            obj["frame"] = frame_to_json(body)
        elif isinstance(body, Raw):
            obj["raw"] = value_to_json(body.data)
        elif isinstance(body, Open):
            obj["open"] = body.path
        elif isinstance(body, Operation):
            obj["operation"] = {"op": body.op, "args": value_to_json(body.args)}
        elif isinstance(body, Stored):
            obj["stored"] = {
                "room": body.room,
                "snapshot": None if body.snapshot is None else value_to_json(body.snapshot),
                "updates": [value_to_json(u) for u in body.updates],
                "events": [[seq, value_to_json(data)] for seq, data in body.events],
            }
        else:
            obj["close"] = body.code
            if body.reason:
                obj["reason"] = body.reason
        self._line(obj)

    def _line(self, obj: dict[str, Any]) -> None:
        self._out.write(json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n")


# -- reading -------------------------------------------------------------------------------


def read_trace(lines: Iterable[str]) -> Trace:
    """Read a whole trace (a text file object or any iterable of lines).

    Raises:
        TraceError: the text is not a valid trace; the message names the line.
    """
    numbered = ((n, line) for n, line in enumerate(lines, 1) if line.strip())
    first = next(numbered, None)
    if first is None:
        raise TraceError("empty trace: the first line must be the header")
    header = _header(*first)
    return Trace(header, tuple(_records(numbered)))


def _records(numbered: Iterator[tuple[int, str]]) -> Iterator[TraceRecord]:
    for lineno, line in numbered:
        try:
            yield _record(_json(lineno, line))
        except (TraceError, RemoteProtocolError, KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"line {lineno}: {exc}") from exc


def _json(lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"line {lineno}: not JSON: {exc}") from exc


def _header(lineno: int, line: str) -> TraceHeader:
    obj = _json(lineno, line)
    if not isinstance(obj, dict) or obj.get("plait_trace") != TRACE_FORMAT:
        raise TraceError(f"line {lineno}: not a Plait trace header (format {TRACE_FORMAT})")
    protocol, settings = obj.get("protocol"), obj.get("settings", {})
    if type(protocol) is not int or not isinstance(settings, dict):
        raise TraceError(f"line {lineno}: header needs an integer protocol and a settings map")
    return TraceHeader(protocol, settings)


def _record(obj: Any) -> TraceRecord:
    if not isinstance(obj, dict):
        raise TraceError("a record is a JSON object")
    t, conn, direction = obj["t"], obj["conn"], obj["dir"]
    if type(t) not in (int, float) or t < 0:
        raise TraceError(f"t must be a non-negative number of seconds, got {t!r}")
    if not isinstance(conn, str) or direction not in ("in", "out"):
        raise TraceError("conn must be a string and dir 'in' or 'out'")
    body: Body
    if "frame" in obj:
        body = frame_from_json(obj["frame"])
    elif "raw" in obj:
        data = value_from_json(obj["raw"])
        if not isinstance(data, bytes):
            raise TraceError("raw must be binary ({'$b': base64})")
        body = Raw(data)
    elif "open" in obj:
        body = Open(str(obj["open"]))
    elif "close" in obj:
        body = Close(int(obj["close"]), str(obj.get("reason", "")))
    elif "stored" in obj:
        body = _stored(obj["stored"])
    elif "operation" in obj:
        body = _operation(obj["operation"])
    else:
        raise TraceError("a record holds one of frame, raw, open, close, stored, operation")
    return TraceRecord(float(t), conn, direction, body)


def _operation(obj: Any) -> Operation:
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise TraceError("an operation is {'op': name, 'args': {...}}")
    args = value_from_json(obj.get("args", {}))
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise TraceError("an operation's args are a map of names to values")
    return Operation(obj["op"], args)


def _stored(obj: Any) -> Stored:
    def binary(value: Any) -> bytes:
        data = value_from_json(value)
        if not isinstance(data, bytes):
            raise TraceError("stored data is binary ({'$b': base64})")
        return data

    if not isinstance(obj, dict) or not isinstance(obj.get("room"), str):
        raise TraceError("stored is an object with a room name")
    snapshot = obj.get("snapshot")
    events = obj.get("events", [])
    if not isinstance(obj.get("updates", []), list) or not isinstance(events, list):
        raise TraceError("stored updates and events are lists")
    if not all(isinstance(e, list) and len(e) == 2 and type(e[0]) is int for e in events):
        raise TraceError("a stored event is [seq, body]")
    return Stored(
        obj["room"],
        None if snapshot is None else binary(snapshot),
        tuple(binary(u) for u in obj.get("updates", [])),
        tuple((seq, binary(data)) for seq, data in events),
    )
