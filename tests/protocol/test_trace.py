"""The trace format (spec §10): exact round trips and clear errors on bad traces."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.protocol import (
    Close,
    Open,
    Raw,
    TraceError,
    TraceHeader,
    TraceRecord,
    Update,
    read_trace,
    write_trace,
)

from .strategies import frames

bodies = st.one_of(
    frames,
    st.binary(max_size=32).map(Raw),
    st.sampled_from(["/", "/yjs/room"]).map(Open),
    st.builds(Close, st.integers(1000, 4999), st.text(max_size=10)),
)
records = st.builds(
    TraceRecord,
    st.floats(0, 1e6, allow_nan=False),
    st.sampled_from(["a", "b"]),
    st.sampled_from(["in", "out"]),
    bodies,
)


def round_trip(header: TraceHeader, recs: list[TraceRecord]) -> tuple[TraceHeader, list[TraceRecord]]:
    out = io.StringIO()
    write_trace(out, header, recs)
    trace = read_trace(io.StringIO(out.getvalue()))
    return trace.header, list(trace.records)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(records, max_size=6))
def test_traces_round_trip_exactly(recs: list[TraceRecord]) -> None:
    header = TraceHeader(1, {"heartbeat_ms": 1000})
    assert round_trip(header, recs) == (header, recs)


def test_one_line_per_record_with_binary_explicit() -> None:
    out = io.StringIO()
    write_trace(out, TraceHeader(), [TraceRecord(0.5, "a", "in", Update(1, 2, b"\x00\x01"))])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert '"update": {"$b": "AAE="}' in lines[1]
    assert '"kind": "update"' in lines[1]


def test_tricky_values_survive() -> None:
    from plait.protocol import CursorMove

    tricky = {"$b": "not bytes", "big": 1e308, "x": [b"\xff", {"$map": 1}]}
    rec = TraceRecord(0.0, "a", "in", CursorMove(1, tricky))
    assert round_trip(TraceHeader(), [rec])[1] == [rec]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json\n",
        '{"plait_trace": 99, "protocol": 1}\n',
        '{"plait_trace": 1, "protocol": 1}\n{"t": -1, "conn": "a", "dir": "in", "open": "/"}\n',
        '{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "a", "dir": "up", "open": "/"}\n',
        '{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "a", "dir": "in"}\n',
        '{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "a", "dir": "in", "frame": {"kind": "nope"}}\n',
        '{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "a", "dir": "in", "frame": {"kind": "ping"}}\n',
        '{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "a", "dir": "in", "frame": {"kind": "ping", "nonce": -1}}\n',
        '{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "a", "dir": "in", "frame": {"kind": "ping", "nonce": 1, "x": 2}}\n',
        '{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "a", "dir": "in", "raw": {"$b": "!!"}}\n',
        '{"plait_trace": 1, "protocol": 1}\n[1, 2]\n',
    ],
)
def test_bad_traces_raise_trace_error_naming_the_line(text: str) -> None:
    with pytest.raises(TraceError) as info:
        read_trace(io.StringIO(text))
    if text.count("\n") > 1:
        assert "line 2" in str(info.value)


def test_stored_room_state_survives_a_round_trip() -> None:
    from plait.protocol import Stored

    records = [
        TraceRecord(0.0, "", "in", Stored("r", b"\x01\x02", (b"\x03",), ((1, b"\x93\xa1x"), (2, b"")))),
        TraceRecord(0.5, "", "in", Stored("empty-snapshot", None, (), ())),
    ]
    assert round_trip(TraceHeader(), records)[1] == records


@pytest.mark.parametrize(
    "stored",
    ['{"room": 1}', '{"room": "r", "snapshot": "not binary"}', '{"room": "r", "events": [[1]]}', '{"room": "r", "updates": {}}'],
)
def test_a_bad_stored_record_is_a_trace_error(stored: str) -> None:
    text = '{"plait_trace": 1, "protocol": 1}\n{"t": 0, "conn": "", "dir": "in", "stored": ' + stored + "}\n"
    with pytest.raises(TraceError, match="line 2"):
        read_trace(io.StringIO(text))
