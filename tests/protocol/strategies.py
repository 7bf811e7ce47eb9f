"""Hypothesis strategies for every frame, derived from the frames' own field types.

Deriving them from `Frame.FIELDS` means a new frame kind is covered by the round-trip and
hostile-input tests the moment it is declared.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from plait.protocol import FRAME_TYPES, Frame
from plait.protocol._fields import (
    INT64_MIN,
    UINT64_MAX,
    Bin,
    Bool,
    FieldType,
    ListOf,
    Map,
    Optional,
    Record,
    Str,
    UInt,
    Value,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, UINT64_MAX),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
maps = st.dictionaries(st.text(max_size=8), values, max_size=4)


def for_field(ftype: FieldType) -> st.SearchStrategy[Any]:
    if isinstance(ftype, UInt):
        return st.integers(0, ftype.maximum)
    if isinstance(ftype, Str):
        return st.text(min_size=ftype.min_len, max_size=min(ftype.max_len, 24))
    if isinstance(ftype, Bin):
        return st.binary(max_size=64)
    if isinstance(ftype, Bool):
        return st.booleans()
    if isinstance(ftype, Optional):
        return st.none() | for_field(ftype.inner)
    if isinstance(ftype, Map):
        return maps
    if isinstance(ftype, Value):
        return values
    if isinstance(ftype, ListOf):
        return st.lists(for_field(ftype.item), max_size=4).map(tuple)
    if isinstance(ftype, Record):
        return st.builds(ftype.cls, *[for_field(t) for t in ftype.types])
    raise AssertionError(f"no strategy for {ftype!r}")


def for_frame_type(cls: type[Frame]) -> st.SearchStrategy[Frame]:
    return st.builds(cls, *[for_field(t) for t in cls.FIELDS])


frames: st.SearchStrategy[Frame] = st.one_of(
    [for_frame_type(cls) for cls in FRAME_TYPES.values()]
)
