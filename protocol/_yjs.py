"""The y-websocket wire protocol (y-protocols sync + awareness), sans-I/O (spec §13).

Yjs editors connect to `/yjs/<room>` unchanged; this module turns their messages into values
and back. Decoding is total like the native codec: any bytes give a message or a
RemoteProtocolError. Encoding follows lib0: unsigned varints of 7 bits per byte, little endian,
and byte strings / strings prefixed with their length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, final

from ._errors import ErrorCode, RemoteProtocolError

YJS_PATH: Final = "/yjs/"
"""The y-websocket endpoint's path prefix: `/yjs/<room>` (spec §2, §13). Every other path on
the port is the native protocol's."""

MAX_VARUINT: Final = 2**53 - 1  # lib0 reads varuints into JavaScript numbers
MAX_AWARENESS_ENTRIES: Final = 10_000
"""Entries one awareness update may hold (a Yjs client sends its own, and echoes others')."""


class YMessageKind(IntEnum):
    SYNC = 0
    AWARENESS = 1
    AUTH = 2
    QUERY_AWARENESS = 3


class YSyncStep(IntEnum):
    STEP1 = 0
    STEP2 = 1
    UPDATE = 2


@final
@dataclass(frozen=True, slots=True)
class YSync:
    step: YSyncStep
    payload: bytes
    """A state vector (STEP1) or a Yjs v1 update (STEP2, UPDATE)."""


@final
@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state_json: str
    """The client's awareness state as JSON text; "null" means the client is gone."""
    wire: bytes = field(init=False, repr=False, compare=False)
    """The entry as it goes into an awareness message, encoded once: a busy room sends the
    same entries to every Yjs member each tick."""

    def __post_init__(self) -> None:
        wire = _varuint(self.client_id) + _varuint(self.clock) + _varbytes(self.state_json.encode("utf-8"))
        object.__setattr__(self, "wire", wire)


@final
@dataclass(frozen=True, slots=True)
class YAwareness:
    entries: tuple[AwarenessEntry, ...]


@final
@dataclass(frozen=True, slots=True)
class YQueryAwareness:
    pass


@final
@dataclass(frozen=True, slots=True)
class YAuth:
    payload: bytes


YMessage = YSync | YAwareness | YQueryAwareness | YAuth


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def varuint(self) -> int:
        value, shift = 0, 0
        while True:
            if self.pos >= len(self.data):
                raise RemoteProtocolError("y-message ends inside a number", ErrorCode.MALFORMED_FRAME)
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if value > MAX_VARUINT:
                raise RemoteProtocolError("y-message number out of range", ErrorCode.INVALID_FIELD)
            if byte < 0x80:
                return value
            shift += 7

    def varbytes(self) -> bytes:
        length = self.varuint()
        if length > len(self.data) - self.pos:
            raise RemoteProtocolError("y-message ends inside a byte string", ErrorCode.MALFORMED_FRAME)
        chunk = self.data[self.pos : self.pos + length]
        self.pos += length
        return chunk

    def varstring(self) -> str:
        raw = self.varbytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError("y-message string is not UTF-8", ErrorCode.MALFORMED_FRAME) from exc

    def done(self) -> bool:
        return self.pos == len(self.data)


def awareness_entries(data: bytes) -> int:
    """How many entries an awareness message says it holds, read from its first bytes alone
    (0 for another message, or bytes too short to say): what a server counts before it
    decodes them (spec §13).
    """
    reader = _Reader(data)
    try:
        if reader.varuint() != YMessageKind.AWARENESS:
            return 0
        reader.varuint()  # the update's length
        return reader.varuint()
    except RemoteProtocolError:
        return 0


def decode_y(data: bytes) -> YMessage:
    """Decode one y-websocket message.

    Raises:
        RemoteProtocolError: the bytes are not a y-websocket message. Anything else is a bug.
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise RemoteProtocolError("empty or non-binary y-message", ErrorCode.MALFORMED_FRAME)
    reader = _Reader(bytes(data))
    kind = reader.varuint()
    message: YMessage
    if kind == YMessageKind.SYNC:
        step = reader.varuint()
        if step not in YSyncStep._value2member_map_:
            raise RemoteProtocolError(f"unknown sync step {step}", ErrorCode.UNKNOWN_KIND)
        message = YSync(YSyncStep(step), reader.varbytes())
    elif kind == YMessageKind.AWARENESS:
        inner = _Reader(reader.varbytes())
        count = inner.varuint()
        if count > MAX_AWARENESS_ENTRIES:
            raise RemoteProtocolError(
                f"an awareness update of {count} entries (at most {MAX_AWARENESS_ENTRIES})", ErrorCode.FRAME_TOO_LARGE
            )
        entries = []
        for _ in range(count):
            if inner.done():
                raise RemoteProtocolError("awareness update ends early", ErrorCode.MALFORMED_FRAME)
            entries.append(AwarenessEntry(inner.varuint(), inner.varuint(), inner.varstring()))
        if not inner.done():
            raise RemoteProtocolError("bytes after the awareness update", ErrorCode.MALFORMED_FRAME)
        message = YAwareness(tuple(entries))
    elif kind == YMessageKind.QUERY_AWARENESS:
        message = YQueryAwareness()
    elif kind == YMessageKind.AUTH:
        message = YAuth(reader.data[reader.pos :])
        reader.pos = len(reader.data)
    else:
        raise RemoteProtocolError(f"unknown y-message type {kind}", ErrorCode.UNKNOWN_KIND)
    if not reader.done():
        raise RemoteProtocolError("bytes after the y-message", ErrorCode.MALFORMED_FRAME)
    return message


def _varuint(value: int) -> bytes:
    if not 0 <= value <= MAX_VARUINT:
        raise ValueError(f"varuint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _varbytes(data: bytes) -> bytes:
    return _varuint(len(data)) + data


def encode_sync(step: YSyncStep, payload: bytes) -> bytes:
    return _varuint(YMessageKind.SYNC) + _varuint(step) + _varbytes(payload)


def encode_awareness(entries: list[AwarenessEntry] | tuple[AwarenessEntry, ...]) -> bytes:
    body = _varuint(len(entries)) + b"".join([e.wire for e in entries])
    return _varuint(YMessageKind.AWARENESS) + _varbytes(body)


def encode_y(message: YMessage) -> bytes:
    match message:
        case YSync(step=step, payload=payload):
            return encode_sync(step, payload)
        case YAwareness(entries=entries):
            return encode_awareness(entries)
        case YQueryAwareness():
            return _varuint(YMessageKind.QUERY_AWARENESS)
        case YAuth(payload=payload):
            return _varuint(YMessageKind.AUTH) + payload
    raise TypeError(f"not a y-message: {message!r}")  # pragma: no cover
