"""The codec: two total functions between WebSocket message bytes and frames (spec §3).

A message is one or more msgpack-encoded frames, concatenated (spec §3.2). Decoding checks sizes
before msgpack allocates anything, then checks every field of every frame; whatever the input,
`decode` returns frames or raises RemoteProtocolError, and `encode` returns bytes or raises
LocalProtocolError. Anything else escaping is a bug.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._fields import to_wire
from ._frames import FRAME_TYPES, Frame

KiB: Final = 1024
MiB: Final = 1024 * KiB

MAX_MESSAGE_BYTES: Final = 16 * MiB
MAX_FRAMES_PER_MESSAGE: Final = 1024
MAX_VALUES_PER_MESSAGE: Final = 65_536
"""The reference server's bound on the values in one message it reads (spec §3.4)."""
MAX_HELLO_BYTES: Final = 64 * KiB
"""The reference server's bound on a `hello` message, read before it knows who sent it (spec §5.1)."""


@dataclass(frozen=True, slots=True)
class CodecLimits:
    """Limits a decoder enforces. The server announces the first two in `Welcome.limits`.

    `max_values_per_message` bounds the values a message holds (spec §3.4: every array
    element and map entry, a frame's own fields included, and an empty array or map counts
    one), checked while decoding; None leaves them bounded by the bytes alone. A server sets
    it: sixteen million one-byte values fit in a 16 MiB message and cost seconds to decode.
    """

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_frames_per_message: int = MAX_FRAMES_PER_MESSAGE
    max_values_per_message: int | None = None


DEFAULT_LIMITS: Final = CodecLimits()


def decode(data: bytes, limits: CodecLimits = DEFAULT_LIMITS) -> list[Frame]:
    """Decode one WebSocket message into its frames.

    Args:
        data: the message payload.
        limits: size limits to enforce.

    Returns:
        The frames, at least one, in order.

    Raises:
        RemoteProtocolError: the bytes are not a valid message; `.code` says why. Anything else
            is a bug.
    """
    if limits.max_values_per_message is None:
        _check_size(data, limits)
        return [_frame_from_array(a) for a in _unpack_all(bytes(data), limits.max_frames_per_message)]
    return decode_counted(data, limits)[0]


def decode_counted(data: bytes, limits: CodecLimits = DEFAULT_LIMITS) -> tuple[list[Frame], int]:
    """`decode`, and the values the message holds (spec §3.4), counted as msgpack builds them:
    what a server paces a connection's reading by (§5.8).

    Raises:
        RemoteProtocolError: as `decode`; FRAME_TOO_LARGE for more than
            `limits.max_values_per_message` values, found before they are all built.
    """
    _check_size(data, limits)
    counter = _ValueCounter(limits.max_values_per_message or UNLIMITED_VALUES)
    arrays = _unpack_all(bytes(data), limits.max_frames_per_message, counter)
    return [_frame_from_array(a) for a in arrays], counter.values


UNLIMITED_VALUES: Final = 2**62


class _TooManyValues(Exception):
    pass


class _ValueCounter:
    """msgpack's hooks, called as each array or map is complete: they count its values and stop
    the decoding once there are more than `limit`, so a message of a million empty arrays costs
    at most `limit` of them. A header that claims more than `limit` fails before any is built
    (max_array_len)."""

    __slots__ = ("values", "limit")

    def __init__(self, limit: int) -> None:
        self.values = 0
        self.limit = limit

    def count(self, container: Any) -> Any:
        self.values += len(container) or 1
        if self.values > self.limit:
            raise _TooManyValues
        return container

    def options(self, size: int) -> dict[str, Any]:
        most = min(self.limit, size)  # and never more than the bytes could hold (_unpack_all)
        return {"list_hook": self.count, "object_hook": self.count, "max_array_len": most, "max_map_len": most}

    def error(self) -> RemoteProtocolError:
        return RemoteProtocolError(f"a message holds more than {self.limit} values", ErrorCode.FRAME_TOO_LARGE)


def _check_size(data: bytes, limits: CodecLimits) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RemoteProtocolError(
            f"a message is binary, got {type(data).__name__}", ErrorCode.MALFORMED_FRAME
        )
    size = len(data)
    if size == 0:
        raise RemoteProtocolError("empty message", ErrorCode.MALFORMED_FRAME)
    if size > limits.max_message_bytes:
        raise RemoteProtocolError(
            f"message of {size} bytes exceeds {limits.max_message_bytes}",
            ErrorCode.FRAME_TOO_LARGE,
        )


def _unpack_error(exc: Exception, counter: _ValueCounter | None) -> RemoteProtocolError:
    """What msgpack's failure means (spec §3.4): a map key that is not a string is well-formed
    msgpack with a field Plait does not allow (INVALID_FIELD); anything else is not msgpack."""
    if counter is not None and (
        isinstance(exc, _TooManyValues) or (isinstance(exc, ValueError) and "exceeds max_" in str(exc))
    ):
        return counter.error()
    if isinstance(exc, ValueError) and "not allowed for map key" in str(exc):
        return RemoteProtocolError("a map key is not a string", ErrorCode.INVALID_FIELD)
    if isinstance(exc, msgpack.StackError):  # nested deeper than msgpack's own stack (1024)
        return RemoteProtocolError("a value nested far deeper than 32", ErrorCode.TOO_DEEP)
    return RemoteProtocolError(f"not valid msgpack: {type(exc).__name__}", ErrorCode.MALFORMED_FRAME)


def _unpack_all(data: bytes, max_frames: int, counter: _ValueCounter | None = None) -> list[Any]:
    # msgpack's own limits (max_*_len) default to the buffer size, so a header that claims
    # 2**32 elements in a ten-byte message fails before anything is allocated for it.
    options = counter.options(len(data)) if counter is not None else {}
    try:  # most messages hold one frame: unpackb is eight times cheaper than an Unpacker
        return [msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, **options)]
    except msgpack.ExtraData:
        pass  # several frames
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise _unpack_error(exc, counter) from exc
    if counter is not None:
        counter.values = 0  # counted again, frame by frame
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, use_list=True, max_buffer_size=len(data), **options
    )
    unpacker.feed(data)
    arrays: list[Any] = []
    consumed = 0
    while True:
        try:
            item = unpacker.unpack()
        except msgpack.OutOfData:
            break
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise _unpack_error(exc, counter) from exc
        if len(arrays) == max_frames:
            raise RemoteProtocolError(
                f"more than {max_frames} frames in one message", ErrorCode.FRAME_TOO_LARGE
            )
        arrays.append(item)
        consumed = unpacker.tell()
    if consumed != len(data):
        raise RemoteProtocolError("message ends inside a frame", ErrorCode.MALFORMED_FRAME)
    return arrays


def _frame_from_array(array: Any) -> Frame:
    if type(array) is not list or not array:
        raise RemoteProtocolError(
            "a frame is a non-empty array starting with its kind", ErrorCode.MALFORMED_FRAME
        )
    kind = array[0]
    if type(kind) is not int:
        raise RemoteProtocolError("a frame's kind is an integer", ErrorCode.MALFORMED_FRAME)
    cls = FRAME_TYPES.get(kind)
    if cls is None:
        raise RemoteProtocolError(f"unknown frame kind {kind}", ErrorCode.UNKNOWN_KIND)
    return frame_from_fields(cls, array[1:])


def frame_from_fields(cls: type[Frame], values: list[Any]) -> Frame:
    """Build a frame of type `cls` from its wire field values, checking every one.

    Raises:
        RemoteProtocolError: wrong field count (MALFORMED_FRAME) or a bad field (INVALID_FIELD,
            TOO_DEEP).
    """
    types = cls.FIELDS
    if len(values) != len(types):
        raise RemoteProtocolError(
            f"{cls.__name__} has {len(types)} fields, got {len(values)}",
            ErrorCode.MALFORMED_FRAME,
        )
    return cls(*[t.check(v) for t, v in zip(types, values, strict=True)])


def frame_to_array(frame: Frame) -> list[Any]:
    """The wire array of a frame: `[kind, field1, ...]`, records as nested arrays."""
    if frame.FLAT:
        return [int(frame.KIND), *[getattr(frame, name) for name in frame.NAMES]]
    array: list[Any] = to_wire(frame)
    array.insert(0, int(frame.KIND))
    return array


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame, checking its fields exactly as a decoder will.

    Raises:
        LocalProtocolError: the frame could not be decoded by a peer; `.code` says why.
    """
    if not isinstance(frame, Frame):
        raise LocalProtocolError(f"not a frame: {type(frame).__name__}", ErrorCode.MALFORMED_FRAME)
    array = frame_to_array(frame)
    try:
        frame_from_fields(type(frame), array[1:])
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"{type(frame).__name__}: {exc.message}", exc.code) from exc
    return _pack(frame, array)


def _pack(frame: Frame, array: list[Any]) -> bytes:
    # spec §3.3: strings are Unicode text. Values are checked above, but a str field (a room
    # name, an event name) is checked only for its length; msgpack finds a lone surrogate as
    # it encodes, which costs nothing extra on the hot path.
    try:
        return msgpack.packb(array, use_bin_type=True)  # type: ignore[no-any-return]
    except UnicodeEncodeError:
        raise LocalProtocolError(
            f"{type(frame).__name__}: a string holds a lone surrogate, which is not Unicode text",
            ErrorCode.INVALID_FIELD,
        ) from None


def encoded_size(value: Any) -> int:
    """The bytes `value` takes in a frame, msgpack-encoded (spec §3.1): what the limits on a
    presence state or cursor position count (spec §5.4). `value` must already be valid (§3.3).

    Raises:
        LocalProtocolError: INVALID_FIELD, a string that is not Unicode text.
    """
    try:
        return len(msgpack.packb(value, use_bin_type=True))
    except UnicodeEncodeError:
        raise LocalProtocolError("a string holds a lone surrogate, which is not Unicode text", ErrorCode.INVALID_FIELD) from None


def encode_trusted(frame: Frame) -> bytes:
    """Encode a frame built from values that were already checked (an ack for a decoded ref,
    say), skipping the field checks `encode_frame` makes. For the engine's hot path only.

    Raises:
        LocalProtocolError: a string holds a lone surrogate (INVALID_FIELD).
    """
    return _pack(frame, frame_to_array(frame))


def encode(frames: Frame | Iterable[Frame], limits: CodecLimits = DEFAULT_LIMITS) -> bytes:
    """Encode a frame, or several as one batched message (spec §3.2).

    Raises:
        LocalProtocolError: a frame is invalid, there are no frames, or the message would break
            `limits`.
    """
    if isinstance(frames, Frame):
        frames = (frames,)
    parts = [encode_frame(f) for f in frames]
    return join_encoded(parts, limits)


def join_encoded(parts: list[bytes], limits: CodecLimits = DEFAULT_LIMITS) -> bytes:
    """Batch already-encoded frames into one message. Fan-out encodes a frame once and then
    joins the same bytes into each recipient's message.

    Raises:
        LocalProtocolError: no parts, too many, or too many bytes for `limits`.
    """
    if not parts:
        raise LocalProtocolError("a message holds at least one frame", ErrorCode.MALFORMED_FRAME)
    if len(parts) > limits.max_frames_per_message:
        raise LocalProtocolError(
            f"{len(parts)} frames exceed {limits.max_frames_per_message}", ErrorCode.FRAME_TOO_LARGE
        )
    message = b"".join(parts)
    if len(message) > limits.max_message_bytes:
        raise LocalProtocolError(
            f"message of {len(message)} bytes exceeds {limits.max_message_bytes}",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return message



CACHED_CHANNELS = 4
"""Channel numbers a ChannelFrame keeps its bytes for, per wire. Most members share small
channel numbers; the frames a room keeps (a large document's sync) would otherwise hold a
copy per channel number ever asked for: a client that joined and left a large room in a loop,
each time on a new channel, grew a server by 8 MiB a join, for as long as the room stayed."""


class ChannelFrame:
    """A room-scoped frame encoded once for many recipients (spec §3.2, fan-out).

    Recipients know the room by their own channel numbers, so the bytes differ only in the
    channel field. The rest of the frame is encoded (and checked) once; `for_channel` splices
    in the channel, and caches the result for up to CACHED_CHANNELS channel numbers.
    """

    __slots__ = ("frame", "_head", "_tail", "_by_channel", "_derived", "_derived_by_channel")

    def __init__(self, frame: Frame) -> None:
        if not frame.ROOM_SCOPED:
            raise LocalProtocolError(f"{type(frame).__name__} is not room-scoped", ErrorCode.UNEXPECTED_FRAME)
        encode_frame(frame)  # checks every field once
        self.frame = frame
        array = frame_to_array(frame)
        packer = msgpack.Packer(use_bin_type=True)
        self._head = packer.pack_array_header(len(array)) + packer.pack(array[0])
        self._tail = b"".join(packer.pack(v) for v in array[2:])
        self._by_channel: dict[int, bytes] = {}
        self._derived: dict[str, bytes] | None = None
        self._derived_by_channel: dict[str, dict[int, bytes]] | None = None

    def derived(self, name: str, make: Callable[[Frame], bytes]) -> bytes:
        """Bytes made from the frame for another wire (the y-websocket encoding, say), made
        once however many recipients speak it."""
        if self._derived is None:
            self._derived = {}
        data = self._derived.get(name)
        if data is None:
            data = self._derived[name] = make(self.frame)
        return data

    def derived_for_channel(self, name: str, channel: int, make: Callable[[Frame, int], bytes]) -> bytes:
        """Like `derived`, for bytes that carry the recipient's channel (the JSON form, say):
        made once per channel, as `for_channel` makes the msgpack form."""
        if self._derived_by_channel is None:
            self._derived_by_channel = {}
        by_channel = self._derived_by_channel.get(name)
        if by_channel is None:
            by_channel = self._derived_by_channel[name] = {}
        data = by_channel.get(channel)
        if data is None:
            data = make(self.frame, channel)
            if len(by_channel) < CACHED_CHANNELS:
                by_channel[channel] = data
        return data

    def for_channel(self, channel: int) -> bytes:
        data = self._by_channel.get(channel)
        if data is None:
            data = self._head + msgpack.packb(channel) + self._tail
            if len(self._by_channel) < CACHED_CHANNELS:
                self._by_channel[channel] = data
        return data
