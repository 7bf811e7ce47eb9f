"""Every value the server accepts reaches every member in every protocol it speaks (spec §3.3,
§13): what `check_value` accepts can be sent in a native frame and as Yjs awareness JSON, and
every awareness state accepted from a Yjs client can be sent to native members. NaN and the
infinities, which have no JSON form, are refused on the way in."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from plait.engine import EngineConfig, Hooks
from plait.engine._errors import RequestError
from plait.engine.room import Room
from plait.engine.sessions._yjs import _parse_state
from plait.protocol import (
    MAX_DEPTH,
    MAX_PRESENCE_BYTES,
    Access,
    CursorPosition,
    Cursors,
    Join,
    PresenceEntry,
    PresenceSnapshot,
    ProtocolError,
    check_value,
    decode,
    encode,
)
from plait.storage import MemoryStore

from .client import parse_js_json

INT_RANGE = 2**70  # past both ends of the 64-bit range values may use


def nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"k": leaf}
    return leaf


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-INT_RANGE, INT_RANGE),
    st.floats(),  # NaN and the infinities included
    st.text(max_size=8),
    st.binary(max_size=8),
)
values: st.SearchStrategy[Any] = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
        max_leaves=10,
    ),
    st.builds(nested, st.integers(28, 36), scalars),  # around the depth limit
)


class _Session:
    """The least a room needs of a connection to admit it."""

    OWN_AWARENESS = False

    def __init__(self) -> None:
        self.id = "s1"
        self.identity = {"id": "ada"}

    def deliver_frames(self, member: object, frames: object) -> None:
        pass

    def deliver(self, member: object, shared: object) -> None:
        pass


def as_json(value: Any) -> Any:
    """What a value looks like in awareness JSON: binary as {"$b": base64} (spec §13)."""
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode()}
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def awareness_json(state: dict[str, Any], cursor: Any) -> str:
    """The awareness state the room shows Yjs clients for a native member with this presence
    state and cursor."""

    async def shown() -> str:  # a room keeps time on Trio's clock
        room = Room("r", MemoryStore(), Hooks(), EngineConfig(), lambda room: None)
        member = room.add_member(_Session(), 1, Access.WRITE, Join(1, "r", None, None))  # type: ignore[arg-type]
        room.set_presence(member, state, None)
        room.move_cursor(member, cursor)
        entry = room.awareness_entry("s1")
        assert entry is not None
        return entry.state_json

    return trio.run(shown)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(values)
@example(math.nan)
@example(math.inf)
@example([1.0, -math.inf])
@example(b"\x00bytes")
def test_a_value_the_server_accepts_can_be_sent_in_every_protocol(value: Any) -> None:
    state = {"v": value}
    try:
        check_value(state, MAX_DEPTH)
    except ProtocolError:
        return  # refused on the way in: nobody will be sent it
    # A native member receives it (and its decoder accepts it)...
    snapshot = PresenceSnapshot(1, (PresenceEntry("s1", {"id": "ada"}, state),))
    assert decode(encode(snapshot)) == [snapshot]
    # ...and a Yjs client receives it as awareness JSON that JSON.parse reads.
    shown = parse_js_json(awareness_json(state, value))
    expected = {"v": as_json(value), "identity": {"id": "ada"}}
    if value is not None:
        expected["cursor"] = as_json(value)
    assert shown == expected


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-INT_RANGE, INT_RANGE), st.floats(), st.text(max_size=8))
json_values: st.SearchStrategy[Any] = st.one_of(
    st.recursive(
        json_scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
        max_leaves=10,
    ),
    st.builds(nested, st.integers(28, 36), json_scalars),
)
awareness_texts = st.one_of(
    json_values.map(json.dumps),  # NaN and the infinities written as Python does, not JSON
    json_values.map(lambda v: json.dumps({"name": "x", "cursor": v})),
    st.sampled_from(["NaN", "1e400", '{"a": -1e400}', '{"a": [1E999]}', "123", '"text"', "[]", "null", "true"]),
    st.integers(30, 34).map(lambda d: "[" * d + "]" * d),
    st.integers(30, 34).map(lambda d: '{"a":' * d + "1" + "}" * d),
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(awareness_texts)
def test_an_awareness_state_the_server_accepts_can_be_sent_to_native_members(text: str) -> None:
    try:
        state, _size = _parse_state(text, MAX_PRESENCE_BYTES)
    except RequestError:
        return  # refused: the y-websocket client is closed, nobody is sent it
    if state is None:
        return  # a null state: the member shows no presence
    snapshot = PresenceSnapshot(1, (PresenceEntry("s1", {"id": "ada"}, state),))
    assert decode(encode(snapshot)) == [snapshot]
    if state.get("cursor") is not None:
        cursors = Cursors(1, (CursorPosition("s1", state["cursor"]),))
        assert decode(encode(cursors)) == [cursors]


@pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}', '{"a": 1e400}', "1e400"])
def test_non_finite_awareness_numbers_are_refused(text: str) -> None:
    with pytest.raises(RequestError):
        _parse_state(text, MAX_PRESENCE_BYTES)
