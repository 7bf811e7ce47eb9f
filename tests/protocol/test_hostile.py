"""Hostile input: whatever bytes arrive, `decode` returns frames or raises RemoteProtocolError
with the right code (spec §3.4). Nothing else may escape, and nothing may allocate much more
than the input's size.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.protocol import (
    FRAME_TYPES,
    MAX_DEPTH,
    CodecLimits,
    ErrorCode,
    Frame,
    RemoteProtocolError,
    decode,
)
from plait.protocol._codec import frame_to_array
from plait.protocol._fields import (
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

from .golden import GOLDEN
from .strategies import frames

FUZZ_CASES = 100_000


def decode_or_code(data: bytes, limits: CodecLimits | None = None) -> list[Frame] | ErrorCode:
    """Decode; turn the one allowed failure into its code. Any other exception fails the test."""
    try:
        return decode(data) if limits is None else decode(data, limits)
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return exc.code


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert a random byte
            buf.insert(pos, rng.randrange(256))
        elif op == 2 and buf:  # delete a byte
            del buf[rng.randrange(len(buf))]
        elif op == 3:  # truncate
            del buf[pos:]
        elif op == 4 and buf:  # a byte that starts a big container or string
            buf[rng.randrange(len(buf))] = rng.choice([0xDC, 0xDD, 0xDE, 0xDF, 0xC6, 0xDB, 0xC9])
        else:  # splice another golden frame in
            other = bytes.fromhex(rng.choice(GOLDEN)[1])
            buf[pos:pos] = other[: rng.randrange(len(other) + 1)]
    return bytes(buf)


@pytest.mark.slow
def test_one_hundred_thousand_mutated_messages_never_escape() -> None:
    rng = random.Random(20261123)
    seeds = [bytes.fromhex(h) for _, h in GOLDEN]
    outcomes: dict[str, int] = {}
    for _ in range(FUZZ_CASES):
        result = decode_or_code(mutate(rng, rng.choice(seeds)))
        key = "frames" if isinstance(result, list) else result.name
        outcomes[key] = outcomes.get(key, 0) + 1
    # The mutator reaches the decoder's interesting paths, not just "not msgpack".
    for expected in ("frames", "MALFORMED_FRAME", "UNKNOWN_KIND", "INVALID_FIELD"):
        assert outcomes.get(expected, 0) > 100, outcomes


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_escape(data: bytes) -> None:
    decode_or_code(data)


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(frames, st.data())
def test_mutated_valid_frames_never_escape(frame: Frame, data: st.DataObject) -> None:
    from plait.protocol import encode

    seed = data.draw(st.integers(0, 2**32))
    decode_or_code(mutate(random.Random(seed), encode(frame)))


def test_empty_message_is_malformed() -> None:
    assert decode_or_code(b"") is ErrorCode.MALFORMED_FRAME


def test_non_bytes_is_malformed() -> None:
    assert decode_or_code("text") is ErrorCode.MALFORMED_FRAME  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "array",
    [5, "x", {}, [], [None], ["1"], [1.0], [True, 1]],
    ids=["int", "str", "map", "empty", "nil-kind", "str-kind", "float-kind", "bool-kind"],
)
def test_a_frame_must_be_an_array_led_by_an_integer_kind(array: Any) -> None:
    assert decode_or_code(msgpack.packb(array)) is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize("kind", [0, 9, 15, 60, 99, 127, 255, 2**32, -1])
def test_unknown_kinds(kind: int) -> None:
    assert decode_or_code(msgpack.packb([kind, 1, 2])) is ErrorCode.UNKNOWN_KIND


@pytest.mark.parametrize("cls", list(FRAME_TYPES.values()), ids=lambda c: c.__name__)
def test_wrong_field_count(cls: type[Frame]) -> None:
    frame = next(f for f, _ in GOLDEN if type(f) is cls)
    array = frame_to_array(frame)
    assert decode_or_code(msgpack.packb(array[:-1])) is ErrorCode.MALFORMED_FRAME
    assert decode_or_code(msgpack.packb([*array, 0])) is ErrorCode.MALFORMED_FRAME


def wrong_values(ftype: FieldType) -> list[Any]:
    """Values of the wrong type or range for a field, written out per field type."""
    if isinstance(ftype, Optional):
        return [v for v in wrong_values(ftype.inner) if v is not None]
    if isinstance(ftype, UInt):
        return [-1, ftype.maximum + 1, "1", 1.5, True, b"\x01", [1], {"a": 1}, None]
    if isinstance(ftype, Str):
        bad = [1, b"x", "x" * (ftype.max_len + 1), None, ["x"], {"a": "x"}, 1.0]
        return bad + ([""] if ftype.min_len else [])
    if isinstance(ftype, Bin):
        return ["x", 1, [], None, {"a": b""}]
    if isinstance(ftype, Bool):
        return [0, 1, "true", None, []]
    if isinstance(ftype, Map):
        return [[], "x", 1, None, b"", True]
    if isinstance(ftype, ListOf):
        return ["x", 1, None, {"a": 1}, [None] * (ftype.max_items + 1)]
    if isinstance(ftype, Record):
        return [1, "x", None, [], [None] * (len(ftype.types) + 1)]
    assert isinstance(ftype, Value)
    return []  # any value is fine; depth and ext types are tested below


CASES = [
    (cls, index, bad)
    for cls in FRAME_TYPES.values()
    for index, ftype in enumerate(cls.FIELDS)
    for bad in wrong_values(ftype)
]


@pytest.mark.parametrize(("cls", "index", "bad"), CASES, ids=lambda v: repr(v)[:30])
def test_wrong_type_in_every_field(cls: type[Frame], index: int, bad: Any) -> None:
    frame = next(f for f, _ in GOLDEN if type(f) is cls)
    array = frame_to_array(frame)
    array[index + 1] = bad
    assert decode_or_code(msgpack.packb(array, use_bin_type=True)) is ErrorCode.INVALID_FIELD


def test_maps_with_non_string_keys_are_rejected() -> None:
    for key in (1, b"k", 1.5):
        packed = msgpack.packb([30, 1, None, {key: 1}], use_bin_type=True)
        assert decode_or_code(packed) in (ErrorCode.MALFORMED_FRAME, ErrorCode.INVALID_FIELD)


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_at_the_limit_is_accepted_and_beyond_is_too_deep() -> None:
    ok = msgpack.packb([40, 1, nested(MAX_DEPTH)])
    assert isinstance(decode_or_code(ok), list)
    too_deep = msgpack.packb([40, 1, nested(MAX_DEPTH + 1)])
    assert decode_or_code(too_deep) is ErrorCode.TOO_DEEP


def test_absurd_nesting_is_refused_without_recursion() -> None:
    # 200k nested arrays in 200 kB: msgpack's own stack limit, never RecursionError, and
    # reported as what it is (spec §3.4), as 10,000 deep is (fresh-user pass 3: MALFORMED_FRAME).
    for depth in (10_000, 200_000):
        data = b"\x93\x28\x01" + b"\x91" * depth + b"\xc0"
        assert decode_or_code(data) is ErrorCode.TOO_DEEP


@pytest.mark.parametrize(
    "payload",
    [
        msgpack.ExtType(5, b"xx"),
        msgpack.Timestamp(1, 0),
    ],
    ids=["ext", "timestamp"],
)
def test_extension_types_are_not_values(payload: Any) -> None:
    packed = msgpack.packb([40, 1, payload], use_bin_type=True)
    assert decode_or_code(packed) is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    "header",
    [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"],
    ids=["array32", "map32", "bin32", "str32"],
)
def test_huge_length_headers_fail_before_allocating(header: bytes) -> None:
    assert decode_or_code(b"\x93\x28\x01" + header) is ErrorCode.MALFORMED_FRAME


def test_message_size_limit_is_checked_before_decoding() -> None:
    limits = CodecLimits(max_message_bytes=100)
    big = msgpack.packb([22, 1, None, b"x" * 200], use_bin_type=True)
    assert decode_or_code(big, limits) is ErrorCode.FRAME_TOO_LARGE
    assert decode_or_code(b"\xff" * 101, limits) is ErrorCode.FRAME_TOO_LARGE


def test_too_many_frames_in_one_message() -> None:
    limits = CodecLimits(max_frames_per_message=10)
    ping = msgpack.packb([3, 1])
    assert isinstance(decode_or_code(ping * 10, limits), list)
    assert decode_or_code(ping * 11, limits) is ErrorCode.FRAME_TOO_LARGE


def test_a_bad_frame_after_good_ones_rejects_the_message() -> None:
    good = msgpack.packb([3, 1])
    assert decode_or_code(good + msgpack.packb([3, "x"])) is ErrorCode.INVALID_FIELD
    assert decode_or_code(good + b"\xc1") is ErrorCode.MALFORMED_FRAME


def test_invalid_utf8_is_malformed() -> None:
    assert decode_or_code(b"\x94\x0a\x01\xa2\xff\xfe\xc0\xc0") is ErrorCode.MALFORMED_FRAME


# -- values per message (spec §3.4) ----------------------------------------------------------


def _count(value: Any) -> int:
    """spec §3.4's count, by its definition: every array element and map entry, an empty
    array or map one."""
    if isinstance(value, list):
        return (len(value) or 1) + sum(_count(v) for v in value)
    if isinstance(value, dict):
        return (len(value) or 1) + sum(_count(v) for v in value.values())
    return 0


def _publish(payload: Any) -> bytes:
    return msgpack.packb([50, 1, 7, "x", payload, None], use_bin_type=True)


@settings(max_examples=300, deadline=None)
@given(frames, st.integers(1, 4))
def test_decode_counted_counts_every_value_of_a_batch(frame: Frame, copies: int) -> None:
    from plait.protocol import decode_counted, encode

    frames_back, values = decode_counted(encode([frame] * copies))
    assert frames_back == [frame] * copies
    assert values == copies * _count(msgpack.unpackb(encode(frame), raw=False))


@pytest.mark.parametrize(
    "payload",
    [
        [None] * 1001,  # one flat array
        [[None] * 500, [None] * 500],  # split over two
        [[] for _ in range(1001)],  # empty arrays count one each
        {str(i): None for i in range(1001)},  # map entries
        [[[None] * 10] * 10] * 11,  # nested
    ],
    ids=["flat", "two", "empties", "map", "nested"],
)
def test_more_values_than_the_limit_is_frame_too_large(payload: Any) -> None:
    limits = CodecLimits(max_values_per_message=1000)
    data = _publish(payload)
    assert decode_or_code(data, limits) is ErrorCode.FRAME_TOO_LARGE
    assert decode_or_code(msgpack.packb([3, 1]) + data, limits) is ErrorCode.FRAME_TOO_LARGE  # in a batch
    assert isinstance(decode_or_code(data), list)  # without the limit it is a valid publish


def test_a_message_at_the_value_limit_decodes() -> None:
    from plait.protocol import decode_counted

    limits = CodecLimits(max_values_per_message=1000)
    data = _publish([None] * 994)  # and the frame's six fields
    assert decode_counted(data, limits)[1] == 1000


def test_a_value_bomb_is_refused_before_it_is_built() -> None:
    # QA: 16 MiB of one-byte values (16 M nils, or empty arrays) took seconds of CPU and over
    # a GiB to decode and check, before any rate counted it: now the array header that claims
    # them, or the arrays once past the limit, end the decoding.
    limits = CodecLimits(max_values_per_message=256 * 1024)
    n = 16 * 1024 * 1024 - 64
    head = b"\x96" + msgpack.packb(50) + b"\x01\x07\xa1x"
    nils = head + b"\xdd" + n.to_bytes(4, "big") + b"\xc0" * n + b"\xc0"
    empties = head + b"\xdc\x00\x10" + (b"\xdc\xff\xff" + b"\x90" * 0xFFFF) * 16 + b"\xc0"
    for data in (nils, empties):
        assert decode_or_code(data, limits) is ErrorCode.FRAME_TOO_LARGE


@pytest.mark.slow
def test_mutated_messages_never_escape_a_value_limit() -> None:
    rng = random.Random(20261203)
    seeds = [bytes.fromhex(h) for _, h in GOLDEN]
    limits = CodecLimits(max_values_per_message=6)
    outcomes: dict[str, int] = {}
    for _ in range(FUZZ_CASES // 5):
        result = decode_or_code(mutate(rng, rng.choice(seeds)), limits)
        key = "frames" if isinstance(result, list) else result.name
        outcomes[key] = outcomes.get(key, 0) + 1
    assert outcomes.get("frames", 0) > 100 and outcomes.get("FRAME_TOO_LARGE", 0) > 100, outcomes
