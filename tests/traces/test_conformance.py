"""spec/traces: every conformance trace replays exactly, and together they cover the protocol."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import pytest

from plait.engine.testing import assert_replays, replay_trace
from plait.protocol import (
    ChannelClosed,
    Close,
    CloseCode,
    Error,
    ErrorCode,
    Frame,
    FrameKind,
    Trace,
    Update,
    read_trace,
    write_trace,
)

TRACES = Path(__file__).parents[2] / "spec" / "traces"
FILES = sorted(TRACES.glob("*.jsonl"))
SPEC = (TRACES.parent / "protocol.md").read_text()

NOT_ON_THE_WIRE = {
    ErrorCode.SLOW_CONSUMER: "a client too slow to read gets close 4006, not a frame it could not read",
    ErrorCode.SHUTTING_DOWN: "covered by tests/engine (a join racing shutdown); a trace ends before shutdown",
    ErrorCode.INTERNAL: "a server bug by definition; tests/engine checks the containment",
    ErrorCode.NOT_FOUND: "the server API's answer (spec/api.md), never a frame; tests/e2e/test_server_api.py",
}


def load(path: Path) -> Trace:
    with open(path, encoding="utf-8") as file:
        return read_trace(file)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_trace_replays_exactly(path: Path) -> None:
    assert_replays(path)


def test_every_frame_kind_appears_in_some_trace() -> None:
    seen = {type(r.body).KIND for path in FILES for r in load(path).records if isinstance(r.body, Frame)}
    assert set(FrameKind) - seen == set()


def test_every_error_and_close_code_appears_in_some_trace() -> None:
    errors, closes = set(), set()
    for path in FILES:
        for record in load(path).records:
            if isinstance(record.body, (Error, ChannelClosed)):
                errors.add(record.body.code)
            if isinstance(record.body, Close) and record.dir == "out":
                closes.add(record.body.code)
    missing = {c for c in ErrorCode if c not in errors and c not in NOT_ON_THE_WIRE}
    assert missing == set()
    missing_closes = {c for c in CloseCode if c not in closes}
    # NORMAL is the client's to send; GOING_AWAY/INTERNAL_ERROR need a shutdown or a bug;
    # FORBIDDEN and DOCUMENT_TOO_LARGE close only y-websocket connections (tests/engine,
    # tests/interop), which traces do not carry. MESSAGE_TOO_BIG is the WebSocket layer's
    # (tests/e2e/test_websocket_endpoint.py); a trace's transport has no message bound.
    y_websocket_only = {CloseCode.FORBIDDEN, CloseCode.DOCUMENT_TOO_LARGE}
    websocket_only = {CloseCode.MESSAGE_TOO_BIG}
    assert missing_closes <= {CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.INTERNAL_ERROR} | y_websocket_only | websocket_only


def test_the_spec_links_every_trace() -> None:
    for path in FILES:
        assert f"traces/{path.name}" in SPEC, f"spec/protocol.md does not link {path.name}"


@pytest.mark.slow
def test_replay_is_deterministic() -> None:
    trace = load(TRACES / "document-sync.jsonl")
    results = {replay_trace(trace).report() for _ in range(100)}
    assert results == {"trace replayed: every outbound frame matched"}


def test_a_changed_behaviour_fails_with_a_readable_diff() -> None:
    trace = load(TRACES / "document-sync.jsonl")
    records = list(trace.records)
    index = next(i for i, r in enumerate(records) if r.dir == "out" and isinstance(r.body, Update))
    wrong = dataclasses.replace(records[index].body, update=b"\x00\x00")  # type: ignore[type-var]
    records[index] = dataclasses.replace(records[index], body=wrong)
    result = replay_trace(Trace(trace.header, tuple(records)))
    assert not result.ok
    report = result.report()
    assert f"conn {records[index].conn}" in report
    assert '"update": {"$b": "AAA="}' in report  # the expected (edited) frame
    assert "expected:" in report and "actual:" in report


@pytest.mark.slow
def test_plait_replay_command(tmp_path: Path) -> None:
    good = subprocess.run(
        [sys.executable, "-m", "plait.engine._cli", "replay", str(TRACES / "handshake.jsonl")],
        capture_output=True, text=True, timeout=60,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok:" in good.stdout
    trace = load(TRACES / "handshake.jsonl")
    records = [r for r in trace.records if not (r.dir == "out" and type(r.body).__name__ == "Pong")]
    bad = tmp_path / "bad.jsonl"
    with open(bad, "w", encoding="utf-8") as file:
        write_trace(file, trace.header, records)
    result = subprocess.run(
        [sys.executable, "-m", "plait.engine._cli", "replay", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "MISMATCH" in result.stdout and "pong" in result.stdout


@pytest.mark.slow
def test_traces_are_what_the_generator_makes() -> None:
    """The committed traces are the generator's output for the current engine; if a behaviour
    changes on purpose, regenerate with `python spec/traces/generate.py` and review the diff."""
    sys.path.insert(0, str(TRACES))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(TRACES))
    scenarios = generate.scenarios()
    assert {p.stem for p in FILES} == set(scenarios)
    for name in ("presence-timeout", "late-joiner", "events"):
        fresh = read_trace(io.StringIO(generate.generate(name, scenarios[name])))
        assert by_connection(fresh) == by_connection(load(TRACES / f"{name}.jsonl")), (
            f"spec/traces/{name}.jsonl is stale: run python spec/traces/generate.py {name}"
        )


def by_connection(trace: Trace) -> dict[str, list[object]]:
    """Each connection's records in order. Records of different connections at the same
    instant may be written in either order; that order carries no meaning (spec §10)."""
    conns: dict[str, list[object]] = {}
    for record in trace.records:
        conns.setdefault(record.conn, []).append(record)
    return conns
