"""Round trips and exact bytes for every frame kind and for batches (spec §3, §4)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.protocol import (
    FRAME_TYPES,
    CodecLimits,
    Error,
    ErrorCode,
    Frame,
    FrameKind,
    Hello,
    Join,
    LocalProtocolError,
    Ping,
    PresenceEntry,
    PresenceSnapshot,
    Publish,
    RemoteProtocolError,
    check_room_name,
    decode,
    encode,
    encode_frame,
    encode_trusted,
    join_encoded,
)

from .golden import GOLDEN
from .strategies import for_frame_type, frames


@pytest.mark.slow
@pytest.mark.parametrize("cls", list(FRAME_TYPES.values()), ids=lambda c: c.__name__)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_every_frame_kind_round_trips(cls: type[Frame], data: st.DataObject) -> None:
    frame = data.draw(for_frame_type(cls))
    assert decode(encode(frame)) == [frame]


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(frames, min_size=1, max_size=8))
def test_batches_round_trip_in_order(batch: list[Frame]) -> None:
    assert decode(encode(batch)) == batch


def test_every_frame_kind_has_a_golden_case() -> None:
    assert {type(frame).KIND for frame, _ in GOLDEN} == set(FrameKind)


@pytest.mark.parametrize(("frame", "hex_bytes"), GOLDEN, ids=lambda v: getattr(v, "KIND", None) and type(v).__name__)
def test_golden_bytes(frame: Frame, hex_bytes: str) -> None:
    wire = bytes.fromhex(hex_bytes)
    assert encode(frame) == wire, f"wire format of {type(frame).__name__} changed: {encode(frame).hex()}"
    assert decode(wire) == [frame]


def test_a_batch_is_the_concatenation_of_its_frames() -> None:
    parts = [bytes.fromhex(h) for _, h in GOLDEN[:5]]
    assert decode(b"".join(parts)) == [f for f, _ in GOLDEN[:5]]
    assert join_encoded(parts) == encode([f for f, _ in GOLDEN[:5]])


@pytest.mark.parametrize(("frame", "hex_bytes"), GOLDEN, ids=lambda v: getattr(v, "KIND", None) and type(v).__name__)
def test_every_truncation_is_malformed(frame: Frame, hex_bytes: str) -> None:
    wire = bytes.fromhex(hex_bytes)
    for cut in range(len(wire)):
        with pytest.raises(RemoteProtocolError) as info:
            decode(wire[:cut])
        assert info.value.code is ErrorCode.MALFORMED_FRAME, cut


def test_encode_refuses_what_a_decoder_would_refuse() -> None:
    from plait.protocol import Join, Ping

    with pytest.raises(LocalProtocolError) as info:
        encode(Join(ref=1, room="", state_vector=None, since=None))
    assert info.value.code is ErrorCode.INVALID_FIELD
    with pytest.raises(LocalProtocolError) as info:
        encode(Ping(nonce=-1))
    assert info.value.code is ErrorCode.INVALID_FIELD
    with pytest.raises(LocalProtocolError) as info:
        encode([])
    assert info.value.code is ErrorCode.MALFORMED_FRAME
    with pytest.raises(LocalProtocolError):
        encode("not a frame")  # type: ignore[arg-type]


LONE = "a\ud800"
"""A string Python holds but UTF-8 cannot carry (spec §3.3)."""


@pytest.mark.parametrize(
    "frame",
    [
        Join(ref=1, room=LONE, state_vector=None, since=None),
        Join(ref=1, room="r", state_vector=None, since=None, epoch=LONE),
        Hello(versions=(1,), token=LONE, client={}),
        Error(ref=None, channel=None, code=1001, message=LONE),
        Publish(channel=1, ref=2, name=LONE, payload=None, key=None),
        Publish(channel=1, ref=2, name="chat", payload=None, key=LONE),
        Publish(channel=1, ref=2, name="chat", payload={"text": LONE}, key=None),
        Publish(channel=1, ref=2, name="chat", payload={LONE: 1}, key=None),
        PresenceSnapshot(channel=1, entries=(PresenceEntry(LONE, {}, {}),)),
    ],
    ids=lambda f: type(f).__name__,
)
def test_a_lone_surrogate_in_any_string_is_a_local_protocol_error(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(frame)
    assert info.value.code is ErrorCode.INVALID_FIELD
    with pytest.raises(LocalProtocolError) as info:
        encode_trusted(frame)
    assert info.value.code is ErrorCode.INVALID_FIELD


def test_room_names_with_a_lone_surrogate_are_invalid_room_names() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        check_room_name(LONE)
    assert info.value.code is ErrorCode.INVALID_ROOM_NAME
    check_room_name("caf\u00e9 \U0001f600")  # other non-ASCII text is fine


def test_encode_enforces_message_limits() -> None:
    from plait.protocol import Ping, Update

    limits = CodecLimits(max_message_bytes=64, max_frames_per_message=3)
    with pytest.raises(LocalProtocolError) as info:
        encode([Ping(1)] * 4, limits)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(LocalProtocolError) as info:
        encode(Update(channel=1, ref=None, update=b"x" * 100), limits)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_kind_is_the_first_element_on_the_wire() -> None:
    for frame, hex_bytes in GOLDEN:
        array = msgpack.unpackb(bytes.fromhex(hex_bytes))
        assert array[0] == type(frame).KIND
        assert len(encode_frame(frame)) == len(bytes.fromhex(hex_bytes))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(frames, st.integers(0, 2**32 - 1))
def test_channel_frame_bytes_equal_encoding_with_that_channel(frame: Frame, channel: int) -> None:
    import dataclasses

    from plait.protocol import ChannelFrame

    if not frame.ROOM_SCOPED:
        with pytest.raises(LocalProtocolError):
            ChannelFrame(frame)
        return
    shared = ChannelFrame(frame)
    rechanneled = dataclasses.replace(frame, channel=channel)  # type: ignore[type-var]
    assert shared.for_channel(channel) == encode(rechanneled)
    assert shared.for_channel(channel) is shared.for_channel(channel)


@pytest.mark.parametrize("value", [{1: "a"}, {b"k": 1}, {None: 1}, {"ok": {2.5: 1}}], ids=["int", "bin", "nil", "nested-float"])
def test_a_map_key_that_is_not_a_string_is_invalid_field(value: dict[Any, Any]) -> None:
    # spec 3.4's table: "a non-string map key" is INVALID_FIELD (it was MALFORMED_FRAME,
    # "not valid msgpack: ValueError"), in a message of one frame and of several.
    frame = msgpack.packb([FrameKind.PRESENCE_SET, 1, None, value])
    for message in (frame, encode(Ping(1)) + frame):
        with pytest.raises(RemoteProtocolError) as refused:
            decode(message)
        assert refused.value.code == ErrorCode.INVALID_FIELD, refused.value
