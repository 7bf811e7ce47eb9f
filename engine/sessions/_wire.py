"""How a native session puts frames on its wire: msgpack (spec §3.1), JSON (§3.5) or
Server-Sent Events (§14).

Every frame is checked by the session's state machine first (`Connection.send`); a wire only
encodes it. A room's frames are encoded once per wire and channel however many members read
them (`ChannelFrame.for_channel`, `ChannelFrame.derived`). The outbox holds encoded frames;
`messages` turns a batch of them into what the transport sends.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from plait.protocol import (
    FRAME_NAMES,
    Ack,
    ChannelFrame,
    ErrorCode,
    Event,
    Frame,
    RemoteProtocolError,
    decode,
    decode_json,
    encode_frame,
    encode_json,
    encode_json_trusted,
    encode_trusted,
)

from ..transports import json_of_event, sse_message


class Wire:
    """msgpack (spec §3.1): a batch is one binary message, its frames back to back."""

    name: ClassVar[str] = "msgpack"

    def frame(self, frame: Frame) -> bytes:
        """One frame, its fields checked.

        Raises:
            LocalProtocolError: a field a peer would refuse.
        """
        return encode_frame(frame)

    def shared(self, shared: ChannelFrame, channel: int) -> bytes:
        """A room's frame (checked when it was made) for the member on `channel`."""
        return shared.for_channel(channel)

    def trusted(self, frame: Frame) -> bytes:
        """A frame a room built from values it checked when they came in (spec §3.3: presence
        states, event payloads), encoded without checking them again; one that holds what
        could not be encoded after all (a store's event, say) is checked, to say what.

        Raises:
            LocalProtocolError: a field a peer would refuse.
        """
        try:
            return self._trusted(frame)
        except (TypeError, ValueError, OverflowError):
            return self.frame(frame)

    def _trusted(self, frame: Frame) -> bytes:
        return encode_trusted(frame)

    def ack(self, ref: int, value: int | None) -> bytes:
        """An Ack for a request that was checked when it arrived."""
        return encode_trusted(Ack(ref, value))

    def messages(self, batch: list[bytes]) -> list[bytes | str]:
        return [b"".join(batch)]

    def decode(self, message: bytes | str) -> list[Frame]:
        """The frames of a message this wire made (a trace records them).

        Raises:
            RemoteProtocolError: not this wire's frames.
        """
        if isinstance(message, str):
            raise RemoteProtocolError("a text message on a msgpack wire", ErrorCode.MALFORMED_FRAME)
        return decode(message)


class JsonWire(Wire):
    """JSON (spec §3.5), for a WebSocket client whose hello was a text message: a batch is one
    text message, an array of frame objects (one frame alone is its object)."""

    name = "json"

    def frame(self, frame: Frame) -> bytes:
        return encode_json(frame).encode()

    def shared(self, shared: ChannelFrame, channel: int) -> bytes:
        return shared.derived_for_channel(self.name, channel, self._for_channel)

    def _for_channel(self, frame: Frame, channel: int) -> bytes:
        return self._trusted(dataclasses.replace(frame, channel=channel))  # type: ignore[type-var]

    def ack(self, ref: int, value: int | None) -> bytes:
        return self._trusted(Ack(ref, value))

    def _trusted(self, frame: Frame) -> bytes:
        return encode_json_trusted(frame).encode()

    def messages(self, batch: list[bytes]) -> list[bytes | str]:
        if len(batch) == 1:
            return [batch[0].decode()]
        return [(b"[" + b",".join(batch) + b"]").decode()]

    def decode(self, message: bytes | str) -> list[Frame]:
        return decode_json(message)


class JsonBytesWire(JsonWire):
    """JSON for a transport that sends UTF-8 bytes as text (TextBytesTransport): a batch of one
    frame is the frame's own bytes, shared by every member it was encoded for, however large."""

    def messages(self, batch: list[bytes]) -> list[bytes | str]:
        if len(batch) == 1:
            return [batch[0]]
        return [b"[" + b",".join(batch) + b"]"]


RESERVED_EVENT_TYPES = frozenset(FRAME_NAMES) | {"message", "open", "error", "close", "resumed", "session"}
"""Names a room event cannot have as its SSE `event:` type (spec §14.2): a frame kind's, the
ones a browser's EventSource fires itself, and the transport's own."""


NOT_IN_A_LINE = "\r\n\0\x85\u2028\u2029"
"""What an SSE line must not hold (CR, LF, NUL), and what many line readers also break at
(NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR: Python's str.splitlines, for one)."""


def sse_type(frame: Frame) -> str:
    """The SSE `event:` type of a frame: an event's own name, so a page can
    `addEventListener("chat", ...)`, unless that name is reserved or cannot be one line of
    an event stream; else the frame's kind."""
    if isinstance(frame, Event):
        name = frame.name
        if name not in RESERVED_EVENT_TYPES and not any(c in name for c in NOT_IN_A_LINE):
            return name
    return frame.KIND.name.lower()


class SseWire(JsonWire):
    """Server-Sent Events (spec §14): each frame is one event, `event:` its type (`sse_type`)
    and `data:` its JSON form on one line (JSON escapes every line break); the HTTP transport
    adds the `id:` and the blank line that ends it. Each frame is a message of its own."""

    name = "sse"

    def frame(self, frame: Frame) -> bytes:
        return _event(frame, encode_json(frame))

    def _trusted(self, frame: Frame) -> bytes:
        return _event(frame, encode_json_trusted(frame))

    def messages(self, batch: list[bytes]) -> list[bytes | str]:
        return list(batch)

    def decode(self, message: bytes | str) -> list[Frame]:
        data = message.encode() if isinstance(message, str) else message
        if b"\ndata: " not in data:
            raise RemoteProtocolError("not an event of this wire", ErrorCode.MALFORMED_FRAME)
        return decode_json(json_of_event(data))


def _event(frame: Frame, text: str) -> bytes:
    # JSON escapes CR and LF itself; the other line breaks only ever stand inside its strings,
    # where their escapes mean the same.
    if "\x85" in text or "\u2028" in text or "\u2029" in text:
        text = text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return sse_message(sse_type(frame), text)


MSGPACK = Wire()
JSON = JsonWire()
JSON_BYTES = JsonBytesWire()
SSE = SseWire()
