"""The JSON form of the protocol (spec §3.5), for clients that cannot send binary msgpack (a
browser's EventSource delivers text) and for traces (spec §10).

A frame is a JSON object: "kind" (the frame's name, §4) and each field by its name, in any
order; records are objects too. Binary is {"$b": base64}; a map with a key starting with "$"
is {"$map": [[key, value], ...]}, so that nothing a client sends can pass for binary. A message
is one frame object or an array of them (a batch, §3.2). Decoding is total, as for msgpack
(§3.4): every text becomes frames or a RemoteProtocolError with the same codes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable
from typing import Any, Final

from ._codec import DEFAULT_LIMITS, CodecLimits, encoded_size, frame_from_fields, frame_to_array
from ._errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from ._fields import MAX_DEPTH, FieldType, ListOf, Optional, Record
from ._frames import FRAME_NAMES, Frame

# -- writing --------------------------------------------------------------------------------


def frame_to_json(frame: Frame) -> dict[str, Any]:
    """The frame as a JSON-ready object (its fields are already valid: it is a Frame)."""
    obj: dict[str, Any] = {"kind": frame.KIND.name.lower()}
    for name, ftype in zip(frame.NAMES, frame.FIELDS, strict=True):
        obj[name] = _field_to_json(ftype, getattr(frame, name))
    return obj


def _field_to_json(ftype: FieldType, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(ftype, Optional):
        return _field_to_json(ftype.inner, value)
    if isinstance(ftype, ListOf):
        return [_field_to_json(ftype.item, v) for v in value]
    if isinstance(ftype, Record):
        return {name: _field_to_json(t, getattr(value, name)) for name, t in zip(ftype.names, ftype.types, strict=True)}
    return value_to_json(value)


def value_to_json(value: Any) -> Any:
    """JSON for an application value; binary and `$`-keys are escaped."""
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [value_to_json(v) for v in value]
    if isinstance(value, dict):
        if any(k.startswith("$") for k in value):
            return {"$map": [[k, value_to_json(v)] for k, v in value.items()]}
        return {k: value_to_json(v) for k, v in value.items()}
    return value


JSON_EXPANSION: Final = 8
"""How many times longer than its msgpack a value's JSON can be, at most (`false,` for one
byte is 6): a value within 1/JSON_EXPANSION of a limit fits it in JSON too, unmeasured."""


def wire_size(value: Any) -> int:
    """The bytes an application value takes in a frame on either wire: the longer of its
    msgpack (spec §3.1) and JSON (§3.5) forms. What the limits on presence count and what a
    room splits its presence frames by (§5.4), so that they fit a JSON member's messages too.
    `value` must already be valid (§3.3).

    Raises:
        LocalProtocolError: INVALID_FIELD, a string that is not Unicode text.
    """
    packed = encoded_size(value)
    try:
        # Most states hold no binary and no `$` key: their JSON is json's own, as it is.
        text = _COMPACT.encode(value)
    except (TypeError, ValueError):
        text = "$"  # binary inside: written as {"$b": ...}
    if "$" in text:
        text = _COMPACT.encode(value_to_json(value))
    return max(packed, len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass")))


_COMPACT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_json(frames: Frame | Iterable[Frame]) -> str:
    """One frame as an object, several as an array (spec §3.5), each checked as `encode_frame`
    checks it.

    Raises:
        LocalProtocolError: a frame a peer would refuse; `.code` says why.
    """
    batch = [frames] if isinstance(frames, Frame) else list(frames)
    if not batch:
        raise LocalProtocolError("a message holds at least one frame", ErrorCode.MALFORMED_FRAME)
    for frame in batch:  # the field checks of encode_frame, without packing msgpack for nothing
        try:
            frame_from_fields(type(frame), frame_to_array(frame)[1:])
        except RemoteProtocolError as exc:
            raise LocalProtocolError(f"{type(frame).__name__}: {exc.message}", exc.code) from exc
    objs = [frame_to_json(f) for f in batch]
    text = json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        text.encode("utf-8")  # a lone surrogate is not Unicode text (spec §3.3)
    except UnicodeEncodeError:
        raise LocalProtocolError("a string holds a lone surrogate, which is not Unicode text", ErrorCode.INVALID_FIELD) from None
    return text


def encode_json_trusted(frame: Frame) -> str:
    """One frame whose fields were already checked (a room's frame, encoded once for its
    members; an ack for a request that was checked when it arrived), without checking again."""
    return json.dumps(frame_to_json(frame), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


# -- reading --------------------------------------------------------------------------------


def decode_json(text: str | bytes, limits: CodecLimits = DEFAULT_LIMITS) -> list[Frame]:
    """`decode_json_counted` without the count."""
    return decode_json_counted(text, limits)[0]


def decode_json_counted(text: str | bytes, limits: CodecLimits = DEFAULT_LIMITS) -> tuple[list[Frame], int]:
    """The frames of a JSON message (spec §3.5).

    Raises:
        RemoteProtocolError: and only it, with the codes of spec §3.4: FRAME_TOO_LARGE for a
            message over `limits.max_message_bytes` (UTF-8 bytes) or over its frame count;
            MALFORMED_FRAME for text that is not JSON, not UTF-8, not a frame object or an
            array of them, or a frame with missing or unknown fields; UNKNOWN_KIND; TOO_DEEP;
            INVALID_FIELD for a field of the wrong type, a non-finite number, bad base64.
            FRAME_TOO_LARGE also for more values than `limits.max_values_per_message`
            (counted by `json_values`, before anything is parsed).

    Returns:
        The frames, and the values the message holds (`json_values`).
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > limits.max_message_bytes:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds {limits.max_message_bytes}", ErrorCode.FRAME_TOO_LARGE)
    values = json_values(data)
    if limits.max_values_per_message is not None and values > limits.max_values_per_message:
        raise RemoteProtocolError(f"a message holds more than {limits.max_values_per_message} values", ErrorCode.FRAME_TOO_LARGE)
    try:
        parsed = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except RemoteProtocolError:
        raise
    except RecursionError:  # the parser's own bound on nesting, far past §3.3's 32
        raise RemoteProtocolError(f"nested far deeper than {MAX_DEPTH} (spec §3.3)", ErrorCode.TOO_DEEP) from None
    except ValueError as exc:
        raise RemoteProtocolError(f"not valid JSON: {str(exc)[:200]}", ErrorCode.MALFORMED_FRAME) from None
    objs = parsed if isinstance(parsed, list) else [parsed]
    if not objs:
        raise RemoteProtocolError("empty message", ErrorCode.MALFORMED_FRAME)
    if len(objs) > limits.max_frames_per_message:
        raise RemoteProtocolError(f"more than {limits.max_frames_per_message} frames in one message", ErrorCode.FRAME_TOO_LARGE)
    return [frame_from_json(obj) for obj in objs], values


_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_EXACT_ABOVE: Final = 64


def json_values(data: bytes) -> int:
    """The values in a JSON text as spec §3.4 counts them: every array element and object
    member, and an empty array or object, counts one. In JSON that is one per comma, `[` and
    `{` outside strings, found without parsing anything: a count of at most 64 is taken with
    the strings' own commas and brackets in it (an over-count of a few), a larger one is made
    exact first. The text need not be valid JSON; the count is then an upper bound."""
    values = data.count(b",") + data.count(b"[") + data.count(b"{")
    if values > _EXACT_ABOVE:
        bare = _JSON_STRING.sub(b"", data)
        values = bare.count(b",") + bare.count(b"[") + bare.count(b"{")
    return values


def _no_constant(name: str) -> Any:
    raise RemoteProtocolError(f"{name} is not a finite number (spec §3.3)", ErrorCode.INVALID_FIELD)


def frame_from_json(obj: Any) -> Frame:
    """Build a frame from its JSON form, checking every field as the msgpack decoder does.

    Raises:
        RemoteProtocolError: MALFORMED_FRAME (not a frame object, a missing or unknown field),
            UNKNOWN_KIND, or what a field's check raises.
    """
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise RemoteProtocolError("a frame is an object with a 'kind' name", ErrorCode.MALFORMED_FRAME)
    cls = FRAME_NAMES.get(obj["kind"])
    if cls is None:
        raise RemoteProtocolError(f"unknown frame kind {obj['kind'][:64]!r}", ErrorCode.UNKNOWN_KIND)
    names = cls.NAMES
    missing = [n for n in names if n not in obj]
    extra = set(obj) - set(names) - {"kind"}
    if missing or extra:
        problem = f"missing field(s) {missing}" if missing else f"no field(s) {sorted(extra)[:8]}"
        raise RemoteProtocolError(f"{obj['kind']}: {problem}", ErrorCode.MALFORMED_FRAME)
    values = [_field_from_json(t, obj[name]) for name, t in zip(names, cls.FIELDS, strict=True)]
    return frame_from_fields(cls, values)


def _field_from_json(ftype: FieldType, obj: Any) -> Any:
    if obj is None:
        return None
    if isinstance(ftype, Optional):
        return _field_from_json(ftype.inner, obj)
    if isinstance(ftype, ListOf):
        if not isinstance(obj, list):
            raise RemoteProtocolError(f"expected a list for {ftype.spec_name}", ErrorCode.INVALID_FIELD)
        return [_field_from_json(ftype.item, v) for v in obj]
    if isinstance(ftype, Record):
        if not isinstance(obj, dict) or set(obj) != set(ftype.names):
            raise RemoteProtocolError(f"expected an object with {list(ftype.names)} for {ftype.spec_name}", ErrorCode.INVALID_FIELD)
        return [_field_from_json(t, obj[n]) for n, t in zip(ftype.names, ftype.types, strict=True)]
    return value_from_json(obj)


def value_from_json(obj: Any) -> Any:
    """An application value from its JSON form: {"$b": base64} is binary, {"$map": [[k, v]]}
    a map whose keys start with "$".

    Raises:
        RemoteProtocolError: INVALID_FIELD, bad base64 or a malformed `$map`.
    """
    if isinstance(obj, list):
        return [value_from_json(v) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            ((key, inner),) = obj.items()
            if key == "$b":
                if not isinstance(inner, str):
                    raise RemoteProtocolError("$b holds a base64 string", ErrorCode.INVALID_FIELD)
                try:
                    return base64.b64decode(inner, validate=True)
                except binascii.Error as exc:
                    raise RemoteProtocolError(f"bad base64 in $b: {exc}", ErrorCode.INVALID_FIELD) from None
            if key == "$map":
                if not isinstance(inner, list) or not all(
                    isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in inner
                ):
                    raise RemoteProtocolError("$map holds [key, value] pairs with string keys", ErrorCode.INVALID_FIELD)
                return {k: value_from_json(v) for k, v in inner}
        return {k: value_from_json(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):  # 1e400 parses as inf
        raise RemoteProtocolError("a number that is not finite (spec §3.3)", ErrorCode.INVALID_FIELD)
    return obj
