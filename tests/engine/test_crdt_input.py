"""Document bytes from clients are untrusted (spec §5.3, §5.8, spec/notes/crdt-input.md).

Rules of this module: every state vector and update a client sends, on every path to pycrdt
(native join, sync_step1, update, sync_step2, a burst of updates; y-websocket sync steps 1, 2
and update), is read by `plait.protocol` first. What it refuses is INVALID_UPDATE at once: an
error frame on the native endpoint (the connection stays open), close 4001 on y-websocket. The
inputs here made pycrdt 0.14.13 spend up to 1 GiB and 2 s; each refusal is timed and its peak
RSS growth measured in this process, with bounds far above a refusal's cost and far below the
bomb's. Repeating such bytes closes a native connection (PROTOCOL_ERROR). And an update that
would nest shared types deeper than MAX_TYPE_DEPTH is refused, whether it builds the whole chain
or adds one level to what the document has; the deepest allowed nesting deletes safely.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, Hooks, Identity
from plait.engine.room._updatecheck import MAX_TYPE_DEPTH, UpdateCheck
from plait.protocol import (
    Access,
    Ack,
    CloseCode,
    Error,
    ErrorCode,
    Join,
    Ping,
    Pong,
    PresenceSnapshot,
    SyncStep1,
    SyncStep2,
    Update,
    YSyncStep,
    encode_sync,
    read_update,
)

from ..protocol.crdt_corpus import bombs, delete_set, nested_maps, root_item, update, varstring, varuint
from .client import DocClient, assert_engine_serves, edit, yjs_client
from .conftest import running_engine

ISSUE_STATE_VECTOR = bytes.fromhex("ece3c5baf359480059")
"""Issue 14: yrs reads a count of 928,084,972 entries and reserves a hash map for them."""
MAP_BOMB = bombs()["Any map claiming 2**27 entries"][1]
"""15 bytes of update that cost pycrdt 276 MiB and 0.3 s."""
REFUSAL_SECONDS = 1.0
"""Wall time a refusal may take, round trip included (it takes well under a millisecond)."""
REFUSAL_RSS_MIB = 64
"""Peak-RSS growth a refusal may cause; the bombs took 276 MiB to 1 GiB."""


def peak_rss_mib(reset: bool = False) -> float:
    """This process's peak RSS. Linux can start the peak over from the current RSS, so that
    an earlier test's peak (a large document's) does not hide this one's."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@contextmanager
def cheap() -> Iterator[None]:
    """The block takes less than REFUSAL_SECONDS and grows the peak RSS by less than
    REFUSAL_RSS_MIB."""
    rss, start = peak_rss_mib(reset=True), time.perf_counter()
    yield
    assert time.perf_counter() - start < REFUSAL_SECONDS
    assert peak_rss_mib() - rss < REFUSAL_RSS_MIB


async def member(engine: Engine, room: str = "r") -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello()
    await client.join(room)
    await client.wait_for(PresenceSnapshot)
    return client


async def answer(client: DocClient, ref: int) -> Ack | Error:
    for _ in range(100):
        frame = await client.receive()
        if isinstance(frame, (Ack, Error)) and frame.ref == ref:
            return frame
    raise AssertionError("no answer")


async def still_open(client: DocClient) -> None:
    await client.send(Ping(99))
    await client.wait_for(Pong)


def refused(frame: object, *words: str) -> None:
    assert isinstance(frame, Error) and frame.code == ErrorCode.INVALID_UPDATE, frame
    assert all(word in frame.message for word in words), frame.message


# -- state vectors: the issue's nine bytes on every path ---------------------------------------


async def test_the_issue_state_vector_in_a_join_is_refused_at_once(autojump_clock: MockClock) -> None:
    async with running_engine() as engine:
        client = DocClient(engine.connect_memory())
        await client.hello()
        with cheap():
            await client.send(Join(1, "r", ISSUE_STATE_VECTOR, None, None))
            refused(await answer(client, 1), "invalid state vector", "out of range")
        await still_open(client)
        await client.join("r")  # nothing of the refused join is left behind
        await client.wait_for(PresenceSnapshot)
        await assert_engine_serves(engine)


async def test_the_issue_state_vector_in_sync_step1_is_refused_at_once(autojump_clock: MockClock) -> None:
    async with running_engine() as engine:
        client = await member(engine)
        with cheap():
            await client.send(SyncStep1(1, ISSUE_STATE_VECTOR))
            error = await client.wait_for(Error)
        refused(error, "invalid state vector")
        assert error.channel == 1
        await client.send(SyncStep1(1, b"\x00"))  # the channel still syncs
        await client.wait_for(SyncStep2)
        await assert_engine_serves(engine)


async def test_the_issue_state_vector_in_yjs_sync_step1_closes_the_connection(autojump_clock: MockClock) -> None:
    async with running_engine() as engine:
        y = await yjs_client(engine)
        with cheap():
            await y.transport.send_message(encode_sync(YSyncStep.STEP1, ISSUE_STATE_VECTOR))
            closed = await y.wait_closed()
        assert closed.code == CloseCode.PROTOCOL_ERROR and "invalid state vector" in closed.reason
        await assert_engine_serves(engine)


# -- updates: alone, in a burst, read-only, y-websocket ----------------------------------------


@pytest.mark.parametrize("frame", [Update, SyncStep2])
async def test_a_bomb_update_is_refused_before_pycrdt_sees_it(autojump_clock: MockClock, frame: type[Update]) -> None:
    async with running_engine() as engine:
        client = await member(engine)
        with cheap():
            await client.send(frame(1, 1, MAP_BOMB))
            refused(await answer(client, 1), "invalid update", "ends early")
        await client.send(Update(1, 2, edit(client.doc, "fine")))
        assert isinstance(await answer(client, 2), Ack)
        await assert_engine_serves(engine)


async def test_a_bomb_in_a_burst_is_refused_and_the_rest_applied(autojump_clock: MockClock) -> None:
    # A burst of updates is merged by pycrdt before it is applied: each is read before that.
    async with running_engine() as engine:
        client, other = await member(engine), await member(engine)
        first = edit(client.doc, "a")
        second = edit(client.doc, "b")
        with cheap():
            await client.send(Update(1, 1, first), Update(1, 2, MAP_BOMB), Update(1, 3, second))
            answers = [await answer(client, ref) for ref in (1, 2, 3)]
        assert isinstance(answers[0], Ack) and isinstance(answers[2], Ack)
        refused(answers[1], "invalid update")
        for _ in range(2):
            other.apply((await other.wait_for(Update)).update)
        assert str(other.text) == "ab"


class ReadOnly(Hooks):
    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return Access.READ


async def test_a_read_only_member_s_malformed_update_is_refused_cheaply(autojump_clock: MockClock) -> None:
    # FORBIDDEN from its first item (spec §5.3: a read-only member's update that inserts is
    # refused unread); INVALID_UPDATE when what it begins with says nothing yet.
    async with running_engine(hooks=ReadOnly()) as engine:
        client = await member(engine)
        with cheap():
            await client.send(SyncStep2(1, 1, MAP_BOMB))
            bomb = await answer(client, 1)
            assert isinstance(bomb, Error) and bomb.code == ErrorCode.FORBIDDEN
            await client.send(SyncStep2(1, 4, b"\x01\x01\x05\x00\x0a"))  # a skip, then the bytes end
            refused(await answer(client, 4))
        await client.send(SyncStep2(1, 2, b"\x00\x00"))  # changes nothing: acked (spec §5.3)
        assert isinstance(await answer(client, 2), Ack)
        await client.send(Update(1, 3, edit(client.doc, "x")))
        forbidden = await answer(client, 3)
        assert isinstance(forbidden, Error) and forbidden.code == ErrorCode.FORBIDDEN


@pytest.mark.parametrize("step", [YSyncStep.STEP2, YSyncStep.UPDATE])
async def test_a_bomb_update_from_yjs_closes_the_connection(autojump_clock: MockClock, step: YSyncStep) -> None:
    async with running_engine() as engine:
        y = await yjs_client(engine)
        with cheap():
            await y.transport.send_message(encode_sync(step, MAP_BOMB))
            closed = await y.wait_closed()
        assert closed.code == CloseCode.PROTOCOL_ERROR and "invalid update" in closed.reason
        await assert_engine_serves(engine)


async def test_nothing_a_peer_sends_is_left_pending(autojump_clock: MockClock) -> None:
    # pycrdt keeps what it cannot integrate yet (structs whose dependencies are missing, deleted
    # ranges it does not have) and retries it on every later update: 4,000 one-range deletes
    # of unknown clocks made each update after them cost ~1 ms, and growing.
    async with running_engine() as engine:
        client = await member(engine)
        await client.send(Update(1, 1, edit(client.doc, "hello")))
        assert isinstance(await answer(client, 1), Ack)
        mine = client.doc.client_id
        cases = [
            (update([], delete_set({424242: [(5, 1)]})), "does not have"),  # an unknown client
            (update([], delete_set({mine: [(3, 5)]})), "does not have"),  # past the clocks it has
            (update([(mine, 6, [root_item(4, varstring("x"))])]), "skips clocks 5..6"),
            (update([(77, 0, [b"\x84" + varuint(78) + varuint(0) + varstring("y")])]), "does not have"),
            (
                update([
                    (77, 0, [b"\x84" + varuint(78) + varuint(0) + varstring("y")]),
                    (78, 0, [b"\x84" + varuint(77) + varuint(0) + varstring("z")]),
                ]),
                "wait for each other",
            ),
        ]
        for ref, (data, reason) in enumerate(cases, start=2):
            await client.send(Update(1, ref, data))
            refused(await answer(client, ref), reason)
        await client.send(Update(1, 10, update([], delete_set({mine: [(3, 2)]}))))  # "lo": known
        assert isinstance(await answer(client, 10), Ack)
        async with engine.room("r") as handle:
            assert str(handle.doc.get("text", type=pycrdt.Text)) == "hel"


# -- repeating them closes the connection (spec §5.8) -----------------------------------------


@pytest.mark.parametrize("path", ["join", "sync_step1", "update", "burst"])
async def test_a_client_that_keeps_sending_bad_crdt_bytes_is_closed(autojump_clock: MockClock, path: str) -> None:
    async with running_engine(rate_violations_before_close=5) as engine:
        client = await member(engine)
        rooms = iter(range(1000))

        async def offend(ref: int) -> None:
            if path == "join":
                await client.send(Join(ref, f"room-{next(rooms)}", ISSUE_STATE_VECTOR, None, None))
            elif path == "sync_step1":
                await client.send(SyncStep1(1, ISSUE_STATE_VECTOR))
            elif path == "update":
                await client.send(Update(1, ref, MAP_BOMB))
            else:
                await client.send(Update(1, ref, MAP_BOMB), Update(1, ref + 1000, MAP_BOMB))

        for ref in range(1, 6 if path != "burst" else 3):  # five refusals: tolerated
            await offend(ref)
            refused(await client.wait_for(Error))
            if path == "burst":
                refused(await client.wait_for(Error))
        await still_open(client)
        await offend(10)
        refused(await client.wait_for(Error))  # the last refusal is still answered...
        assert await client.wait_closed() == CloseCode.PROTOCOL_ERROR  # ...then the close
        assert client.closed is not None and "repeatedly" in client.closed.reason
        await assert_engine_serves(engine)


async def test_refusals_for_good_reasons_do_not_count(autojump_clock: MockClock) -> None:
    async with running_engine(rate_violations_before_close=2, max_document_bytes=64) as engine:
        client = await member(engine)
        for ref in range(1, 6):
            await client.send(Update(1, ref, edit(pycrdt.Doc(), "x" * 100)))
            error = await answer(client, ref)
            assert isinstance(error, Error) and error.code == ErrorCode.DOCUMENT_TOO_LARGE
        await still_open(client)


# -- nesting depth of shared types -------------------------------------------------------------


def one_level(level: int) -> bytes:
    """Client 1's map nested `level + 1` deep: in root map "t" for level 0, else in the map of
    the level before (whose id is 1:level-1)."""
    if level == 0:
        return update([(1, 0, [bytes([7 | 0x20]) + varuint(1) + varstring("t") + varstring("k") + b"\x01"])])
    struct = bytes([7 | 0x20]) + varuint(0) + varuint(1) + varuint(level - 1) + varstring("k") + b"\x01"
    return update([(1, level, [struct])])


@pytest.mark.slow
async def test_one_update_may_nest_types_max_type_depth_deep_and_no_deeper(autojump_clock: MockClock) -> None:
    async with running_engine() as engine:
        client = await member(engine)
        await client.send(Update(1, 1, nested_maps(MAX_TYPE_DEPTH + 1, False)))
        refused(await answer(client, 1), f"nests shared types deeper than {MAX_TYPE_DEPTH}")
        await client.send(Update(1, 2, nested_maps(35_000, True)))  # deleting it killed the process
        refused(await answer(client, 2), "deeper than")
        await client.send(Update(1, 3, nested_maps(MAX_TYPE_DEPTH, False)))
        assert isinstance(await answer(client, 3), Ack)
        await client.send(Update(1, 4, update([], delete_set({1: [(0, 1)]}))))  # delete it all
        assert isinstance(await answer(client, 4), Ack)
        async with engine.room("r") as handle:
            assert handle.doc.get("t", type=pycrdt.Map).to_py() == {}
        await assert_engine_serves(engine)


async def test_updates_of_one_level_each_nest_no_deeper_than_max_type_depth(autojump_clock: MockClock) -> None:
    async with running_engine(updates_per_second=10_000) as engine:
        client = await member(engine)
        for level in range(MAX_TYPE_DEPTH):
            await client.send(Update(1, level + 1, one_level(level)))
            assert isinstance(await answer(client, level + 1), Ack)
        await client.send(Update(1, 1000, one_level(MAX_TYPE_DEPTH)))
        refused(await answer(client, 1000), "deeper than")
        # Depth comes through origins too: a map set under the deepest one's key (its origin
        # that one, so it shares its parent) is as deep, and a map inside it one deeper.
        beside = bytes([7 | 0x80]) + varuint(1) + varuint(MAX_TYPE_DEPTH - 1) + b"\x01"
        await client.send(Update(1, 1001, update([(1, MAX_TYPE_DEPTH, [beside])])))
        assert isinstance(await answer(client, 1001), Ack)
        inside = bytes([7 | 0x20]) + varuint(0) + varuint(1) + varuint(MAX_TYPE_DEPTH) + varstring("k") + b"\x01"
        await client.send(Update(1, 1002, update([(1, MAX_TYPE_DEPTH + 1, [inside])])))
        refused(await answer(client, 1002), "deeper than")
        await client.send(Update(1, 1003, update([], delete_set({1: [(0, 1)]}))))
        assert isinstance(await answer(client, 1003), Ack)
        await assert_engine_serves(engine)


async def test_the_depth_survives_an_unload_and_reload(autojump_clock: MockClock) -> None:
    async with running_engine(room_idle_grace=1) as engine:
        client = await member(engine)
        await client.send(Update(1, 1, nested_maps(MAX_TYPE_DEPTH, False)))
        assert isinstance(await answer(client, 1), Ack)
        await client.transport.aclose()
        for _ in range(10):  # the room unloads after its grace
            await trio.sleep(1)
            if not engine.statistics()["rooms"]:
                break
        client = await member(engine)
        await client.send(Update(1, 2, one_level(MAX_TYPE_DEPTH)))
        refused(await answer(client, 2), "deeper than")


def test_depths_are_learned_from_what_pycrdt_writes() -> None:
    # The room's own edits (server-side code) reach the check through learn(); a peer's edits
    # from a copy of the document carry origins and parents as pycrdt encodes them.
    server, check = pycrdt.Doc(), UpdateCheck()
    server.observe(lambda event: check.learn(event.update))
    level = server.get("t", type=pycrdt.Map)
    for _ in range(MAX_TYPE_DEPTH):
        level["k"] = pycrdt.Map()
        level = level["k"]
    peer = pycrdt.Doc()
    peer.apply_update(server.get_update())
    deepest = peer.get("t", type=pycrdt.Map)
    for _ in range(MAX_TYPE_DEPTH):
        deepest = deepest["k"]

    def peer_edit(change: Callable[[], None]) -> bytes:
        before = peer.get_state()
        change()
        return peer.get_update(before)

    value = peer_edit(lambda: deepest.__setitem__("n", 1))
    check.apply(value, read_update(value), server.apply_update)  # a value at the bottom: fine
    deeper = peer_edit(lambda: deepest.__setitem__("k", pycrdt.Map()))
    with pytest.raises(ValueError, match="deeper than"):
        check.apply(deeper, read_update(deeper), server.apply_update)
    bottom = server.get("t", type=pycrdt.Map).to_py()
    for _ in range(MAX_TYPE_DEPTH):
        bottom = bottom["k"]
    assert bottom == {"n": 1.0}  # nothing of the refused update applied...
    assert not check._off  # ...and the check stays on


@pytest.mark.slow
def test_deleting_the_deepest_allowed_nesting_does_not_crash_a_small_stack() -> None:
    # yrs deletes nested types recursively: on a 128 KiB thread stack (musl's default) 400
    # levels pass and 500 kill the process; on an 8 MiB stack, about 35,000.
    script = (
        "import sys, threading, pycrdt\n"
        "def run():\n"
        "    doc = pycrdt.Doc()\n"
        "    doc.apply_update(bytes.fromhex(sys.argv[1]))\n"
        "    doc.apply_update(bytes.fromhex(sys.argv[2]))\n"
        "    doc.get_update()\n"
        "    print(doc.get('t', type=pycrdt.Map).to_py())\n"
        "threading.stack_size(128 * 1024)\n"
        "thread = threading.Thread(target=run)\n"
        "thread.start()\n"
        "thread.join()\n"
    )
    build, delete = nested_maps(MAX_TYPE_DEPTH, False), update([], delete_set({1: [(0, 1)]}))
    result = subprocess.run(
        [sys.executable, "-c", script, build.hex(), delete.hex()],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent, check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "{}", result
