"""The JSON form of the protocol (spec §3.5): the same frames as msgpack, and decoding as total
(§3.4): every text becomes frames or a RemoteProtocolError with a spec code."""

from __future__ import annotations

import json
from typing import Any

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


# -- values per message (spec §3.4) ----------------------------------------------------------


def _count(value: Any) -> int:
    if isinstance(value, list):
        return (len(value) or 1) + sum(_count(v) for v in value)
    if isinstance(value, dict):
        return (len(value) or 1) + sum(_count(v) for v in value.values())
    return 0


_tricky_text = st.text(alphabet=st.sampled_from('ab,[]{}"\\:é\n'), max_size=12)
_json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10), _tricky_text),
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(_tricky_text, inner, max_size=6)),
    max_leaves=80,
)


@settings(max_examples=400, deadline=None)
@given(_json_values, st.booleans())
def test_json_values_counts_as_spec_defines_exactly_past_64(value: Any, ascii_only: bool) -> None:
    from plait.protocol import json_values

    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    counted, exact = json_values(text), _count(value)
    assert counted >= exact  # never fewer: the limit cannot be dodged
    if counted > 64:
        assert counted == exact  # strings' own commas and brackets left out


def test_a_json_message_of_more_values_than_the_limit_is_frame_too_large_before_parsing() -> None:
    from plait.protocol import decode_json_counted

    limits = CodecLimits(max_values_per_message=1000)
    head = '{"kind":"publish","channel":1,"ref":7,"name":"x","key":null,"payload":'
    frames, values = decode_json_counted(head + json.dumps([None] * 994) + "}", limits)
    assert values == 1000 and len(frames) == 1
    for payload in ([None] * 995, [[]] * 995, {str(i): 0 for i in range(995)}, "[" * 1001):
        text = head + (payload if isinstance(payload, str) else json.dumps(payload)) + "}"
        with pytest.raises(RemoteProtocolError) as caught:
            decode_json(text, limits)
        assert caught.value.code is ErrorCode.FRAME_TOO_LARGE
    # a string's commas are not values
    text = head + json.dumps(["a," * 5000, "[{" * 5000]) + "}"
    assert decode_json_counted(text, limits)[1] == 8
