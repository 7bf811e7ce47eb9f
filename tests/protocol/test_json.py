"""The JSON form of the protocol (spec §3.5): the same frames as msgpack, and decoding as total
(§3.4): every text becomes frames or a RemoteProtocolError with a spec code."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.protocol import (
    CodecLimits,
    ErrorCode,
    LocalProtocolError,
    Ping,
    Publish,
    RemoteProtocolError,
    decode_json,
    encode_json,
)

from .golden import GOLDEN


@pytest.mark.parametrize("frame", [f for f, _ in GOLDEN], ids=[type(f).__name__ for f, _ in GOLDEN])
def test_every_frame_survives_its_json_form(frame: object) -> None:
    assert decode_json(encode_json(frame)) == [frame]  # type: ignore[arg-type]


def test_the_json_form_is_named_fields_and_tagged_binary() -> None:
    assert encode_json(Ping(7)) == '{"kind":"ping","nonce":7}'
    publish = Publish(1, 2, "chat", {"blob": b"\x00\x01", "$x": 1}, None)
    obj = json.loads(encode_json(publish))
    assert obj["payload"] == {"$map": [["blob", {"$b": "AAE="}], ["$x", 1]]}
    assert decode_json(encode_json([Ping(1), publish])) == [Ping(1), publish]  # a batch is an array


def test_encoding_checks_frames_as_the_binary_form_does() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_json(Publish(1, 2, "chat", float("nan"), None))
    assert info.value.code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", ErrorCode.MALFORMED_FRAME),
        ("[]", ErrorCode.MALFORMED_FRAME),
        ("42", ErrorCode.MALFORMED_FRAME),
        ('{"nonce": 1}', ErrorCode.MALFORMED_FRAME),
        ('{"kind": "nope"}', ErrorCode.UNKNOWN_KIND),
        ('{"kind": "ping"}', ErrorCode.MALFORMED_FRAME),
        ('{"kind": "ping", "nonce": 1, "extra": 2}', ErrorCode.MALFORMED_FRAME),
        ('{"kind": "ping", "nonce": "one"}', ErrorCode.INVALID_FIELD),
        ('{"kind": "ping", "nonce": -1}', ErrorCode.INVALID_FIELD),
        ('{"kind": "cursor_move", "channel": 1, "position": NaN}', ErrorCode.INVALID_FIELD),
        ('{"kind": "cursor_move", "channel": 1, "position": Infinity}', ErrorCode.INVALID_FIELD),
        ('{"kind": "cursor_move", "channel": 1, "position": 1e400}', ErrorCode.INVALID_FIELD),
        ('{"kind": "cursor_move", "channel": 1, "position": 123456789012345678901234567890}', ErrorCode.INVALID_FIELD),
        ('{"kind": "cursor_move", "channel": 1, "position": "\\ud800"}', ErrorCode.INVALID_FIELD),
        ('{"kind": "update", "channel": 1, "ref": null, "update": {"$b": "!!"}}', ErrorCode.INVALID_FIELD),
        ('{"kind": "update", "channel": 1, "ref": null, "update": {"$b": 7}}', ErrorCode.INVALID_FIELD),
        ('{"kind": "update", "channel": 1, "ref": null, "update": "not binary"}', ErrorCode.INVALID_FIELD),
        ('{"kind": "cursor_move", "channel": 1, "position": {"$map": [[1, 2]]}}', ErrorCode.INVALID_FIELD),
        ('{"kind": "cursor_move", "channel": 1, "position": ' + "[" * 40 + "]" * 40 + "}", ErrorCode.TOO_DEEP),
        ("[" * 100_000, ErrorCode.TOO_DEEP),
        ('{"kind": "presence_snapshot", "channel": 1, "entries": [{"session": "s"}]}', ErrorCode.INVALID_FIELD),
    ],
)
def test_bad_json_messages_get_the_spec_codes(text: str, code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_json(text)
    assert info.value.code is code, info.value.message


def test_limits_bound_a_json_message_before_it_is_parsed() -> None:
    limits = CodecLimits(max_message_bytes=64, max_frames_per_message=2)
    with pytest.raises(RemoteProtocolError) as info:
        decode_json('{"kind": "ping", "nonce": 1, "pad": "' + "x" * 100 + '"}', limits)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(RemoteProtocolError) as info:
        decode_json('[{"kind":"ping","nonce":1},{"kind":"ping","nonce":2},{"kind":"ping","nonce":3}]', CodecLimits(4096, 2))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_bytes_that_are_not_utf8_are_malformed() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_json(b'{"kind": "ping", "nonce": 1}\xff')
    assert info.value.code is ErrorCode.MALFORMED_FRAME


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_decoding_is_total(data: str | bytes) -> None:
    try:
        decode_json(data)
    except RemoteProtocolError as exc:
        assert exc.code in {ErrorCode.MALFORMED_FRAME, ErrorCode.UNKNOWN_KIND, ErrorCode.FRAME_TOO_LARGE,
                            ErrorCode.INVALID_FIELD, ErrorCode.TOO_DEEP}
