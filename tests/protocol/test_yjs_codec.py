"""The y-websocket codec: agrees with pycrdt's own encoder, and is total on hostile bytes."""

from __future__ import annotations

import random

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.protocol import (
    AwarenessEntry,
    ErrorCode,
    RemoteProtocolError,
    YAwareness,
    YQueryAwareness,
    YSync,
    YSyncStep,
    decode_y,
    encode_awareness,
    encode_sync,
    encode_y,
)


def test_sync_messages_match_pycrdt() -> None:
    doc = pycrdt.Doc(client_id=7)
    doc.get("text", type=pycrdt.Text).insert(0, "hello")
    step1 = pycrdt.create_sync_message(doc)
    assert decode_y(step1) == YSync(YSyncStep.STEP1, doc.get_state())
    assert encode_sync(YSyncStep.STEP1, doc.get_state()) == step1
    update = pycrdt.create_update_message(doc.get_update())
    assert decode_y(update) == YSync(YSyncStep.UPDATE, doc.get_update())
    assert encode_y(decode_y(update)) == update


def test_awareness_matches_pycrdt() -> None:
    entries = [AwarenessEntry(123456789, 3, '{"name":"ada"}'), AwarenessEntry(5, 1, "null")]
    message = encode_awareness(entries)
    body = message[1:]  # type 1, then the varbytes of the awareness update
    assert pycrdt.create_awareness_message(pycrdt.Decoder(body).read_message()) == message
    assert decode_y(message) == YAwareness(tuple(entries))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(AwarenessEntry, st.integers(0, 2**53 - 1), st.integers(0, 2**53 - 1), st.text(max_size=30)),
        max_size=5,
    )
)
@pytest.mark.slow
def test_awareness_round_trips(entries: list[AwarenessEntry]) -> None:
    assert decode_y(encode_awareness(entries)) == YAwareness(tuple(entries))


def test_query_awareness() -> None:
    assert decode_y(b"\x03") == YQueryAwareness()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.MALFORMED_FRAME),
        (b"\x09", ErrorCode.UNKNOWN_KIND),
        (b"\x00\x07\x00", ErrorCode.UNKNOWN_KIND),
        (b"\x00\x00\x05ab", ErrorCode.MALFORMED_FRAME),
        (b"\x00\x00\x00extra", ErrorCode.MALFORMED_FRAME),
        (b"\x01\x03\x02\x01\x01", ErrorCode.MALFORMED_FRAME),
        (b"\x01\x05\x01\x01\x01\x01\xff", ErrorCode.MALFORMED_FRAME),
        (b"\xff" * 12, ErrorCode.INVALID_FIELD),
        (b"\x80", ErrorCode.MALFORMED_FRAME),
    ],
)
def test_bad_messages_have_codes(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_y(data)
    assert info.value.code is code


@pytest.mark.slow
def test_fifty_thousand_mutated_messages_never_escape() -> None:
    rng = random.Random(13)
    doc = pycrdt.Doc(client_id=1)
    doc.get("t", type=pycrdt.Text).insert(0, "abc")
    seeds = [
        pycrdt.create_sync_message(doc),
        pycrdt.create_update_message(doc.get_update()),
        encode_awareness([AwarenessEntry(1, 2, '{"a":1}')]),
        b"\x03",
    ]
    for _ in range(50_000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data) + 1)
            op = rng.randrange(3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1:
                data.insert(pos, rng.randrange(256))
            else:
                del data[pos:]
        try:
            decode_y(bytes(data))
        except RemoteProtocolError:
            pass


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_escape(data: bytes) -> None:
    try:
        decode_y(data)
    except RemoteProtocolError:
        pass


def test_awareness_entries_are_counted_from_the_header() -> None:
    from plait.protocol import AwarenessEntry, YSyncStep, awareness_entries, encode_awareness, encode_sync

    for n in (0, 1, 300):
        assert awareness_entries(encode_awareness([AwarenessEntry(i, 1, "{}") for i in range(n)])) == n
    assert awareness_entries(encode_sync(YSyncStep.UPDATE, b"\x00\x00")) == 0
    assert awareness_entries(b"\x01\x80") == 0  # ends inside the length: nothing to say


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=16))
def test_awareness_entries_never_raises(data: bytes) -> None:
    from plait.protocol import awareness_entries

    assert awareness_entries(data) >= 0
