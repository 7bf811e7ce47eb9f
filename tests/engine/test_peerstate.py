"""The body processes exchange about their sessions' ephemeral state (engine/room/_peerstate.py):
it round-trips, and decoding is total (a PeerState or BadPeerState, for any bytes)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.engine.room._peerstate import (
    AwarenessClaim,
    BadPeerState,
    PeerState,
    PresenceRecord,
    decode_peer_state,
    encode_peer_state,
)

FULL = PeerState(
    full=True,
    presence=(
        PresenceRecord("a1", {"id": "ada"}, {"name": "Ada", "avatar": b"\x89PNG"}, False, False),
        PresenceRecord("a2", None, {"n": [1, 2.5, None]}, True, True),
        PresenceRecord("a3", None, None, True, False),
    ),
    left=("a4",),
    cursors=(("a1", {"index": 3}), ("a2", None)),
    typing=("a1",),
    awareness=(AwarenessClaim("a2", 111, 2**53 - 1, True),),
)


def test_a_body_round_trips() -> None:
    assert decode_peer_state(encode_peer_state(FULL)) == FULL
    assert decode_peer_state(encode_peer_state(PeerState())) == PeerState()
    assert not PeerState() and PeerState(typing=()) and PeerState(full=True)


def test_fields_a_body_leaves_out_mean_nothing_changed() -> None:
    assert decode_peer_state(msgpack.packb({"v": 1})) == PeerState()


@pytest.mark.parametrize("body", [
    {"v": 1, "p": [["a1", {"id": "x"}, {}, False]]},
    {"v": 1, "p": [["a1", "ada", {}, False, False]]},
    {"v": 1, "p": [["", None, None, False, False]]},
    {"v": 1, "c": [["a1"]]},
    {"v": 1, "c": [["a1", float("inf")]]},
    {"v": 1, "t": "a1"},
    {"v": 1, "a": [["a1", 1, 1, 0]]},
    {"v": 1, "a": [["a1", 2**53, 1, False]]},
    {"v": 1, "a": [["a1", True, 1, False]]},
    {"v": 1, "full": None},
    {"v": "1"},
])
def test_wrong_shapes_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(BadPeerState):
        decode_peer_state(msgpack.packb(body))


@settings(max_examples=100)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_are_refused(data: bytes) -> None:
    try:
        decode_peer_state(data)
    except BadPeerState:
        pass


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=5) | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["v", "full", "p", "l", "c", "t", "a"]), values, max_size=7))
def test_any_msgpack_map_decodes_or_is_refused(body: dict[str, Any]) -> None:
    try:
        data = msgpack.packb({"v": 1, **body} if "v" not in body else body)
    except (OverflowError, ValueError, TypeError):
        return
    try:
        decode_peer_state(data)
    except BadPeerState:
        pass
