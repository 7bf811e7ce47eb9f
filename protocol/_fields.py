"""Field types: how each field of a frame is checked on the way in and on the way out.

A frame's fields are declared with `wire(FieldType)` (see _frames.py). Decoding runs `check` on
every field of every frame, so a field type is the single place where "what may this field hold"
is written down; spec/protocol.md §4 renders the same names (`uint32`, `str≤256`, `value`, ...).

Rule: `check` either returns the (possibly normalised) value or raises RemoteProtocolError with
INVALID_FIELD or TOO_DEEP. It never raises anything else, whatever it is given.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Final

from ._errors import ErrorCode, RemoteProtocolError

MAX_DEPTH: Final = 32
"""Deepest nesting of arrays/maps inside a `value` field (spec §3.3)."""

UINT32_MAX: Final = 2**32 - 1
UINT53_MAX: Final = 2**53 - 1  # sequence numbers: exact in a JavaScript number too
INT64_MIN: Final = -(2**63)
UINT64_MAX: Final = 2**64 - 1


def _invalid(what: str) -> RemoteProtocolError:
    return RemoteProtocolError(what, ErrorCode.INVALID_FIELD)


class FieldType:
    """One kind of field. Subclasses implement `check` and name themselves for the spec."""

    spec_name = "?"

    def check(self, value: object) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.spec_name


class UInt(FieldType):
    def __init__(self, maximum: int = UINT32_MAX) -> None:
        self.maximum = maximum
        names = {UINT32_MAX: "uint32", UINT53_MAX: "uint53"}
        self.spec_name = names.get(maximum, f"uint≤{maximum}")

    def check(self, value: object) -> int:
        # IntEnum members (ErrorCode, Access) are accepted and leave as plain integers.
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= self.maximum:
            raise _invalid(f"expected an integer in 0..{self.maximum}, got {_show(value)}")
        return int(value)


class Str(FieldType):
    def __init__(self, max_len: int, min_len: int = 0) -> None:
        self.max_len, self.min_len = max_len, min_len
        self.spec_name = f"str≤{max_len}" if min_len == 0 else f"str{min_len}..{max_len}"

    def check(self, value: object) -> str:
        if type(value) is not str or not self.min_len <= len(value) <= self.max_len:
            raise _invalid(
                f"expected a string of {self.min_len}..{self.max_len} characters, got {_show(value)}"
            )
        return value


class Bin(FieldType):
    spec_name = "bin"

    def check(self, value: object) -> bytes:
        if type(value) is not bytes:
            raise _invalid(f"expected binary, got {_show(value)}")
        return value


class Bool(FieldType):
    spec_name = "bool"

    def check(self, value: object) -> bool:
        if type(value) is not bool:
            raise _invalid(f"expected a boolean, got {_show(value)}")
        return value


class Optional(FieldType):
    def __init__(self, inner: FieldType) -> None:
        self.inner = inner
        self.spec_name = f"{inner.spec_name}?"

    def check(self, value: object) -> Any:
        return None if value is None else self.inner.check(value)


class Value(FieldType):
    """Any application value: nil, bool, int, float, str, bin, array, str-keyed map (spec §3.3)."""

    spec_name = "value"

    def check(self, value: object) -> Any:
        check_value(value, MAX_DEPTH)
        return value


class Map(FieldType):
    """A str-keyed map of application values (presence state, identity, client info)."""

    spec_name = "map"

    def check(self, value: object) -> dict[str, Any]:
        if type(value) is not dict:
            raise _invalid(f"expected a map, got {_show(value)}")
        check_value(value, MAX_DEPTH)
        return value


class ListOf(FieldType):
    """A bounded array of one field type; decoded as a tuple so frames stay immutable."""

    def __init__(self, item: FieldType, max_items: int) -> None:
        self.item, self.max_items = item, max_items
        self.spec_name = f"[{item.spec_name}]≤{max_items}"

    def check(self, value: object) -> tuple[Any, ...]:
        if type(value) not in (list, tuple):
            raise _invalid(f"expected an array, got {_show(value)}")
        assert isinstance(value, (list, tuple))
        if len(value) > self.max_items:
            raise _invalid(f"array of {len(value)} items exceeds {self.max_items}")
        return tuple(self.item.check(item) for item in value)


class Record(FieldType):
    """A small fixed-shape structure (a dataclass with `wire` fields) carried as an array."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.spec_name = cls.__name__
        self.types = field_types(cls)
        self.names = field_names(cls)

    def check(self, value: object) -> Any:
        if isinstance(value, self.cls):
            # Already built (encoding side): re-check its fields, keep the object.
            self.from_array(self.to_array(value))
            return value
        return self.from_array(value)

    def from_array(self, value: object) -> Any:
        if type(value) not in (list, tuple):
            raise _invalid(f"expected {self.spec_name} as an array, got {_show(value)}")
        assert isinstance(value, (list, tuple))
        if len(value) != len(self.types):
            raise _invalid(f"{self.spec_name} has {len(self.types)} fields, got {len(value)}")
        return self.cls(*[t.check(v) for t, v in zip(self.types, value, strict=True)])

    def to_array(self, obj: Any) -> list[Any]:
        return [to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)]


def wire(field_type: FieldType, default: Any = dataclasses.MISSING) -> Any:
    """Declare a dataclass field's wire type: `name: int = wire(UInt())`. A default only
    saves typing in Python; on the wire every field is always present."""
    return dataclasses.field(default=default, metadata={"wire": field_type})


def field_types(cls: type) -> tuple[FieldType, ...]:
    return tuple(f.metadata["wire"] for f in dataclasses.fields(cls))


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def to_wire(value: Any) -> Any:
    """Turn nested records into arrays for msgpack; everything else passes through."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)]
    if type(value) is tuple:
        return [to_wire(v) for v in value]
    return value


_PLAIN: Final = frozenset((type(None), bool, bytes))
_CONTAINERS: Final = frozenset((list, tuple, dict))


def check_value(value: object, depth: int) -> None:
    """Raise unless `value` is an application value nested at most `depth` levels.

    Iterative, so hostile nesting cannot exhaust the Python stack whatever `depth` is; only
    containers go on its stack, so a flat array of a million elements costs no object each.
    """
    if type(value) not in _CONTAINERS:
        _check_scalar(value)
        return
    if depth == 0:
        raise _too_deep()
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        container, room = stack.pop()
        if type(container) is dict:
            for key in container:
                if type(key) is not str:
                    raise _invalid(f"map keys must be strings, got {_show(key)}")
                if not key.isascii():
                    _check_text(key)
            items = container.values()
        else:
            items = container
        for item in items:
            kind = type(item)
            if kind in _PLAIN:
                continue
            if kind in _CONTAINERS:
                if room == 1:
                    raise _too_deep()
                if item:  # an empty one holds nothing to check
                    stack.append((item, room - 1))
            elif kind is str:
                if not item.isascii():
                    _check_text(item)
            else:
                _check_scalar(item)


def _too_deep() -> RemoteProtocolError:
    return RemoteProtocolError(f"value nested deeper than {MAX_DEPTH}", ErrorCode.TOO_DEEP)


def _check_scalar(item: object) -> None:
    kind = type(item)
    if kind is str:
        _check_text(item)  # type: ignore[arg-type]
    elif kind is int:
        assert isinstance(item, int)
        if not INT64_MIN <= item <= UINT64_MAX:
            raise _invalid("integer out of the 64-bit range")
    elif kind is float:
        assert isinstance(item, float)
        if not math.isfinite(item):
            # NaN and the infinities have no JSON form: a Yjs client (awareness) or an
            # EventSource (the JSON mapping) could not receive the value (spec §3.3).
            raise _invalid(f"{item} is not a finite number")
    elif kind not in _PLAIN:
        raise _invalid(f"{kind.__name__} is not an application value")


def _check_text(text: str) -> None:
    """Strings are Unicode text that UTF-8 can carry: a lone surrogate (which JSON's \\ud800
    escapes, Python and JavaScript strings can hold) could not be sent to anyone (spec §3.3)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid("a string holds a lone surrogate, which is not Unicode text") from None


def _show(value: object) -> str:
    """A short description of a bad value for an error message (never the whole value)."""
    if isinstance(value, (bool, int)) or value is None:
        return repr(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, (str, bytes)):
        return f"{type(value).__name__} of length {len(value)}"
    return type(value).__name__


