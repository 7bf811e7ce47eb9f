"""What the server refuses, and how it says so: the same input rules on every endpoint, a
y-websocket client told why it is closed with a code that says whether to retry (spec §9,
§13), NaN and the infinities refused wherever they enter (spec §3.3), stale frames for a
channel already left ignored (spec §5.2), and a hint for clients of the wrong protocol.

After every refusal the engine still serves: a new client connects, joins, edits and is acked."""

from __future__ import annotations

import logging
import urllib.parse

import msgpack
import pytest
from trio.testing import MockClock

from plait.engine import Engine
from plait.protocol import (
    Ack,
    AwarenessEntry,
    CloseCode,
    CursorMove,
    Error,
    ErrorCode,
    FrameKind,
    Join,
    Joined,
    Leave,
    Ping,
    Pong,
    PresenceDiff,
    PresencePatch,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    SyncStep1,
    SyncStep2,
    Typing,
    Update,
    YSyncStep,
    encode,
    encode_awareness,
    encode_sync,
)

from .client import DocClient, YjsClient, assert_engine_serves, edit, yjs_client
from .conftest import Connect, running_engine

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]
"""JSON numbers Python's json reads as non-finite floats (JavaScript's JSON.parse refuses the
first three, and reads the last two as ±Infinity, which JSON cannot carry back)."""


async def member(engine: Engine, room: str = "r") -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello()
    await client.join(room)
    await client.wait_for(PresenceSnapshot)
    return client


def refused_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- y-websocket: refusals with a reason and a non-retryable code -------------------------------


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (encode_sync(YSyncStep.UPDATE, b"\xff\xff\xff"), CloseCode.PROTOCOL_ERROR),
        (encode_sync(YSyncStep.STEP2, b"\x01\x02"), CloseCode.PROTOCOL_ERROR),
        (encode_awareness([AwarenessEntry(777, 1, "{not json")]), CloseCode.PROTOCOL_ERROR),
    ],
    ids=["update-that-does-not-apply", "step2-that-does-not-apply", "awareness-not-json"],
)
async def test_a_yjs_client_refused_for_a_bad_message_is_told_not_to_retry(
    autojump_clock: MockClock, message: bytes, code: CloseCode
) -> None:
    async with running_engine() as engine:
        y = await yjs_client(engine)
        await y.transport.send_message(message)
        closed = await y.wait_closed()
        assert closed.code == code and not CloseCode(closed.code).retryable
        assert closed.reason
        await assert_engine_serves(engine)


async def test_a_yjs_awareness_state_over_the_presence_limit_is_refused_and_not_shown(autojump_clock: MockClock) -> None:
    # JSON under 64 KiB, but over max_presence_bytes once msgpack-encoded (spec §5.4, §13):
    # every float takes 9 bytes in msgpack and 3 characters in JSON.
    async with running_engine(max_presence_bytes=4096) as engine:
        observer = await yjs_client(engine, client_id=222)
        await observer.say({"name": "observer"}, clock=1)
        bad = await yjs_client(engine, client_id=666)
        state = "[" + ",".join(["1.5"] * 1000) + "]"
        assert len(state) < 4096
        await bad.send_awareness_json(f'{{"floats": {state}}}', clock=1)
        closed = await bad.wait_closed()
        assert closed.code == CloseCode.PROTOCOL_ERROR and "4096" in closed.reason
        await observer.read_for(1)
        assert 666 not in observer.states
        await assert_engine_serves(engine)


async def test_a_yjs_client_over_the_update_rate_is_closed_rate_limited(autojump_clock: MockClock) -> None:
    async with running_engine(updates_per_second=20) as engine:
        y = await yjs_client(engine)
        for i in range(100):
            try:
                await y.edit(str(i))
            except Exception:  # the server closed while we were sending
                break
        closed = await y.wait_closed()
        assert closed.code == CloseCode.RATE_LIMITED and CloseCode(closed.code).retryable
        assert closed.reason
        await assert_engine_serves(engine)


LONE_SURROGATES = ['{"name": "\\ud800"}', '{"\\udc00": 1}', '{"list": ["ok", "\\ud83d"]}']
"""JSON escapes that decode to strings no UTF-8 (msgpack, a browser's TextEncoder) can carry: the
hostile-input run found one crashing its room (bench/README.md, 'Hostile input')."""


@pytest.mark.parametrize(
    "awareness_state",
    [f'{{"name": "x", "score": {n}}}' for n in NON_FINITE] + ['{"deep": [[1e400]]}'] + LONE_SURROGATES,
)
async def test_values_no_protocol_can_carry_in_yjs_awareness_are_refused(
    autojump_clock: MockClock, awareness_state: str
) -> None:
    async with running_engine() as engine:
        watcher = await member(engine)
        observer = await yjs_client(engine, client_id=222)  # parses every state as JSON.parse does
        await observer.say({"name": "observer"}, clock=1)
        bad = await yjs_client(engine, client_id=666)
        await bad.send_awareness_json(awareness_state, clock=1)
        closed = await bad.wait_closed()
        assert closed.code == CloseCode.PROTOCOL_ERROR and closed.reason
        await observer.read_for(1)
        assert 666 not in observer.states
        # The native member saw the refused client join (with no state) and leave, nothing else.
        for _ in range(5):
            diff = await watcher.wait_for(PresenceDiff)
            states = [e.state for e in diff.joined] + [u.state for u in diff.updated]
            assert all("score" not in s for s in states)
            if "s3" in diff.left:
                break
        await assert_engine_serves(engine)


# -- the same room-name rule on every endpoint ------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/yjs/", "/yjs/" + "x" * 300, "/yjs/%00nul", "/yjs/a%7Fb", "/yjs/%ff"],
    ids=["empty", "300-characters", "nul", "del", "not-utf-8"],
)
async def test_a_yjs_connection_to_an_invalid_room_name_is_refused(autojump_clock: MockClock, path: str) -> None:
    async with running_engine() as engine:
        y = YjsClient(engine.connect_memory(path))
        closed = await y.wait_closed()
        assert closed.code == CloseCode.PROTOCOL_ERROR and "room name" in closed.reason
        assert engine.statistics()["rooms"] == 0
        await assert_engine_serves(engine)


async def test_the_longest_room_name_is_the_same_room_on_both_endpoints(autojump_clock: MockClock) -> None:
    name = "é" * 256  # 256 characters, 512 bytes of UTF-8
    async with running_engine() as engine:
        nat = await member(engine, name)
        y = await yjs_client(engine, "/yjs/" + urllib.parse.quote(name))
        await y.edit("from yjs")
        nat.apply((await nat.wait_for(Update)).update)
        assert str(nat.text) == "from yjs"


@pytest.mark.parametrize("name", ["\x00nul", "a\x7fb", "tab\there"])
async def test_a_native_join_of_a_name_with_a_control_character_is_refused(
    autojump_clock: MockClock, connect: Connect, engine: Engine, name: str
) -> None:
    a = await connect()
    await a.send(Join(1, name, None, None))
    err = await a.expect(Error, ref=1)
    assert err.code == ErrorCode.INVALID_ROOM_NAME
    assert (await a.join("fine")).channel == 1  # the connection carries on
    assert engine.statistics()["rooms"] == 1
    await assert_engine_serves(engine)


@pytest.mark.parametrize("name", ["", "x" * 257])
async def test_a_native_join_of_a_name_of_the_wrong_length_is_refused(
    autojump_clock: MockClock, connect: Connect, engine: Engine, name: str
) -> None:
    # spec §4: join's room is str1..256; a field out of its range is INVALID_FIELD (fatal).
    a = await connect()
    await a.send_raw(msgpack.packb([int(FrameKind.JOIN), 1, name, None, None, None]))
    err = await a.expect(Error)
    assert err.code == ErrorCode.INVALID_FIELD
    assert await a.wait_closed() == CloseCode.PROTOCOL_ERROR
    assert engine.statistics()["rooms"] == 0
    await assert_engine_serves(engine)


# -- NaN and the infinities in native frames ----------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        [int(FrameKind.PRESENCE_SET), 1, None, {"score": float("nan")}],
        [int(FrameKind.PRESENCE_SET), 1, 2, {"score": float("inf")}],
        [int(FrameKind.PRESENCE_PATCH), 1, 2, {"pos": [1.0, float("-inf")]}],
        [int(FrameKind.CURSOR_MOVE), 1, float("nan")],
        [int(FrameKind.PUBLISH), 1, 2, "chat", {"score": float("inf")}, None],
    ],
    ids=["presence-nan", "presence-inf", "patch-minus-inf", "cursor-nan", "publish-inf"],
)
async def test_non_finite_floats_in_native_frames_are_invalid_fields(autojump_clock: MockClock, frame: list[object]) -> None:
    async with running_engine() as engine:
        watcher = await member(engine)
        observer = await yjs_client(engine, client_id=222)  # parses every state as JSON.parse does
        bad = await member(engine)
        await bad.send_raw(msgpack.packb(frame))
        err = await bad.wait_for(Error)
        assert err.code == ErrorCode.INVALID_FIELD
        assert await bad.wait_closed() == CloseCode.PROTOCOL_ERROR
        await observer.read_for(1)
        assert all("score" not in s and "cursor" not in s for s in observer.states.values())
        for _ in range(5):
            diff = await watcher.wait_for(PresenceDiff)
            assert all(not u.state for u in diff.updated)
            if "s3" in diff.left:
                break
        await assert_engine_serves(engine)


# -- stale frames for a channel already left -------------------------------------------------


STALE_FRAMES = {
    "update": [Update(1, 5, b"\x00\x00")],
    "two-updates": [Update(1, 5, b"\x00\x00"), Update(1, 6, b"\x00\x00")],
    "sync-step1": [SyncStep1(1, b"\x00")],
    "sync-step2": [SyncStep2(1, 5, b"\x00\x00")],
    "presence-set": [PresenceSet(1, 5, {"name": "gone"})],
    "presence-patch": [PresencePatch(1, 5, {"name": "gone"})],
    "cursor": [CursorMove(1, 3)],
    "typing": [Typing(1, True)],
    "publish": [Publish(1, 5, "chat", "late", None)],
    "leave-again": [Leave(1, 5)],
}


@pytest.mark.parametrize("in_flight", [False, True], ids=["after-the-ack", "behind-the-leave"])
@pytest.mark.parametrize("stale", list(STALE_FRAMES), ids=list(STALE_FRAMES))
async def test_a_frame_for_a_channel_just_left_is_ignored(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, connect: Connect, engine: Engine, stale: str, in_flight: bool
) -> None:
    a = await connect()
    await a.join("r")
    await a.wait_for(PresenceSnapshot)
    frames = STALE_FRAMES[stale]
    if in_flight:  # sent before the client saw its leave acked
        await a.send_raw(encode([Leave(1, 9), *frames]))
    else:
        await a.send(Leave(1, 9))
        await a.wait_for(Ack)
        await a.send_raw(encode(frames))
    await a.send_raw(encode(Ping(77)))
    replies = []
    for _ in range(len(frames) + 2):  # bounded: an answer per request, the ack, the pong
        replies.append(await a.receive())
        if replies[-1] == Pong(77):
            break
    if in_flight:
        assert replies.pop(0) == Ack(9, None)
    # Nothing applied or relayed; a request among them is answered UNKNOWN_CHANNEL (spec §4.1:
    # every request exactly once), not fatal; the rest get nothing.
    requests = [f.ref for f in frames if getattr(f, "ref", None) is not None]
    assert [(r.ref, r.channel, r.code) for r in replies[:-1] if isinstance(r, Error)] == [
        (ref, 1, ErrorCode.UNKNOWN_CHANNEL) for ref in requests
    ], replies
    assert replies[-1] == Pong(77) and len(replies) == len(requests) + 1, replies
    assert not refused_errors(caplog)
    joined = await a.join("r")
    assert joined.channel == 2
    await a.wait_for(PresenceSnapshot)
    await a.send(Update(2, 10, edit(a.doc, "back")))
    assert (await a.wait_for(Ack)).ref == 10


async def test_a_join_refused_for_a_bad_state_vector_leaves_the_connection_working(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, connect: Connect, engine: Engine
) -> None:
    a = await connect()
    await a.send(Join(1, "r", b"\xff", None))
    err = await a.expect(Error, ref=1)
    assert err.code == ErrorCode.INVALID_UPDATE
    await a.send(Ping(1))
    assert await a.receive() == Pong(1)
    await a.send(Join(2, "r", b"\x00", None))
    joined = await a.expect(Joined, ref=2)
    await a.wait_for(PresenceSnapshot)
    await a.send(Update(joined.channel, 3, edit(a.doc, "ok")))
    assert (await a.wait_for(Ack)).ref == 3
    assert (await a.join("other")).channel == joined.channel + 1
    assert not refused_errors(caplog)
    await assert_engine_serves(engine)


# -- the wrong protocol on the native endpoint ---------------------------------------------------


async def test_a_yjs_client_on_the_native_endpoint_is_told_where_to_go(autojump_clock: MockClock, engine: Engine) -> None:
    lost = DocClient(engine.connect_memory("/"))
    await lost.send_raw(b"\x00\x00\x01\x00")  # y-websocket's sync step 1 for an empty document
    err = await lost.expect(Error)
    assert ErrorCode(err.code).fatal
    assert await lost.wait_closed() == CloseCode.PROTOCOL_ERROR
    assert lost.closed is not None and "/yjs/" in lost.closed.reason
    await assert_engine_serves(engine)


async def test_a_hello_with_no_version_in_common_keeps_its_own_reason(autojump_clock: MockClock, engine: Engine) -> None:
    # The hint is for a first message that is not a hello at all; a hello with no version in
    # common is answered as before.
    from plait.protocol import Hello

    old = DocClient(engine.connect_memory("/"))
    await old.send(Hello((7,), None, {}))
    assert (await old.expect(Error)).code == ErrorCode.UNSUPPORTED_VERSION
    assert await old.wait_closed() == CloseCode.UNSUPPORTED_VERSION
    assert old.closed is not None and "/yjs/" not in old.closed.reason


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (msgpack.packb([FrameKind.HELLO, list(range(1, 18)), None, {}]), ErrorCode.INVALID_FIELD),  # 17 versions
        (msgpack.packb([FrameKind.HELLO, [1], None, {1: "a"}]), ErrorCode.INVALID_FIELD),  # a non-string key
        (encode(Join(1, "r", b"\x00", None)), ErrorCode.UNEXPECTED_FRAME),  # join before hello
    ],
    ids=["versions-17-items", "client-non-str-key", "join-before-hello"],
)
async def test_a_plait_frame_with_a_mistake_is_closed_with_its_own_reason_not_the_yjs_hint(
    autojump_clock: MockClock, engine: Engine, first: bytes, code: ErrorCode
) -> None:
    # Fresh-eyes run: every fatal first message was closed "not a Plait hello; Yjs clients
    # connect to /yjs/ROOM", even a hello with a bad field.
    client = DocClient(engine.connect_memory("/"))
    await client.send_raw(first)
    assert (await client.expect(Error)).code == code
    assert await client.wait_closed() == CloseCode.PROTOCOL_ERROR
    assert client.closed is not None and "/yjs/" not in client.closed.reason, client.closed.reason
    await assert_engine_serves(engine)


@pytest.mark.parametrize("burst", [False, True], ids=["alone", "in-a-burst"])
async def test_a_bad_update_without_a_ref_gets_the_same_error_alone_or_in_a_burst(autojump_clock: MockClock, burst: bool) -> None:
    # Review of the restructure: alone it got INVALID_UPDATE, in a burst of updates nothing.
    async with running_engine() as engine:
        c = DocClient(engine.connect_memory())
        await c.hello()
        await c.join("r")
        good = edit(c.doc, "ok")
        frames = [Update(1, None, good), Update(1, None, b"\xff\xff\xff")] if burst else [Update(1, None, b"\xff\xff\xff")]
        await c.send(*frames)
        error = await c.wait_for(Error)
        assert (error.code, error.ref, error.channel) == (ErrorCode.INVALID_UPDATE, None, 1)
        await assert_engine_serves(engine)


async def test_others_entries_in_a_yjs_awareness_update_cost_no_parse_and_a_flood_of_them_is_refused(
    autojump_clock: MockClock,
) -> None:
    # Fresh-user pass 4: one 20 MiB awareness update of 3 M entries for other clients' ids
    # froze the server for 25 s.
    import time

    async with running_engine() as engine:
        y = await yjs_client(engine, client_id=777)
        await y.say({"name": "me"}, clock=1)  # binds 777 to this session
        junk = "[" + "1," * 30_000 + "1]"  # 60 KB of JSON each: parsed, they would cost seconds
        echoes = [AwarenessEntry(1000 + i, 1, junk) for i in range(2_000)]
        start = time.perf_counter()
        await y.transport.send_message(encode_awareness(echoes))
        await y.say({"name": "still me"}, clock=2)
        await assert_engine_serves(engine)
        assert time.perf_counter() - start < 2  # the 2,000 foreign entries were not parsed
        too_many = [AwarenessEntry(5000 + i, 1, "null") for i in range(10_001)]
        await y.transport.send_message(encode_awareness(too_many))
        closed = await y.wait_closed()
        assert closed.code == CloseCode.PROTOCOL_ERROR and "10000" in closed.reason
        await assert_engine_serves(engine)


async def test_an_update_refused_in_a_burst_is_answered_after_those_before_it(autojump_clock: MockClock) -> None:
    """Two updates in one message, the second over the update rate: spec §4.1 orders the
    channel's answers as the requests came, so the first's ack (after its commit) comes first."""
    async with running_engine(updates_per_second=1) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.join("r")
        await a.wait_for(PresenceSnapshot)
        await a.send(Update(1, 1, edit(a.doc, "a")), Update(1, 2, edit(a.doc, "b")), Update(1, 3, edit(a.doc, "c")))
        got = []
        for _ in range(50):  # bounded
            frame = await a.receive()
            if isinstance(frame, (Ack, Error)):
                got.append(frame)
                if len(got) == 3:
                    break
        assert [(f.ref, type(f).__name__) for f in got] == [(1, "Ack"), (2, "Error"), (3, "Error")], got
