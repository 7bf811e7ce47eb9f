"""The SDK used the ways a new user gets wrong, under MockClock against an in-memory engine:
invalid room names, requests larger than the server accepts, a room used after its `join`
block, a client used after its `connect` block. Each mistake raises one documented exception
at once; none is sent anyway, none hangs, none is silently lost."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.client import (
    AlreadyJoined,
    ClientState,
    ConnectionClosed,
    EditsNotAcknowledged,
    FrameTooLarge,
    InvalidField,
    InvalidRoomName,
    OfflineQueueFull,
    PlaitError,
    PresenceTooLarge,
    Room,
    RoomLeft,
    TooDeep,
    connect,
)
from plait.engine import Hooks, Identity, MemoryTransport
from plait.protocol import Access, LocalProtocolError, TransportClosed

from ..engine.conftest import make_engine
from .cable import Cable, client_for


@pytest.mark.parametrize("name", ["a\nb", "", "r" * 257, "a\ud800"], ids=["control", "empty", "257", "surrogate"])
async def test_every_invalid_room_name_raises_invalid_room_name(autojump_clock: MockClock, name: str) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c:
            with pytest.raises(InvalidRoomName) as info:
                async with c.join(name):
                    pass
            assert isinstance(info.value, PlaitError)
            async with c.join("fine") as room:  # the client is unharmed
                await room.synced()


async def test_a_room_name_that_is_not_a_string_raises_invalid_room_name(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        async with client_for(Cable(engine)) as c:
            with pytest.raises(InvalidRoomName):
                async with c.join(7):  # type: ignore[arg-type]
                    pass


async def test_joining_through_a_closed_client_raises_connection_closed(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        async with client_for(Cable(engine)) as c:
            pass
        with pytest.raises(ConnectionClosed):
            async with c.join("r"):
                raise AssertionError("entered a room of a closed client")


LIMIT = 64 * 1024
"""The server's max_message_bytes in these tests; BIG does not fit in one message."""
BIG = "x" * (LIMIT + 1)


async def test_requests_over_the_servers_message_limit_raise_frame_too_large_at_once(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            await room.set_presence({"name": "ada"})
            start = trio.current_time()
            with pytest.raises(FrameTooLarge) as info:
                await room.publish("chat", {"blob": BIG})
            assert str(LIMIT) in str(info.value)
            with pytest.raises(FrameTooLarge):
                await room.set_presence({"blob": BIG})
            with pytest.raises(FrameTooLarge):
                await room.move_cursor(BIG)
            assert trio.current_time() == start  # at once, not after a round trip
            # Nothing was sent: the connection is the first one, and it still works.
            assert await room.publish("chat", {"text": "small"}) == 1
            assert cable.opened == 1 and c.state is ClientState.OPEN


async def test_a_publish_of_more_values_than_a_server_reads_raises_frame_too_large_at_once(autojump_clock: MockClock) -> None:
    # spec §3.4: a server bounds the values of a message it reads (65,536 by default), and
    # going over is fatal: the connection would close. Servers do not announce the bound, so
    # the client checks the reference server's before it sends.
    from plait.protocol import MAX_VALUES_PER_MESSAGE

    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            start = trio.current_time()
            with pytest.raises(FrameTooLarge) as info:
                await room.publish("rows", [0] * MAX_VALUES_PER_MESSAGE)
            assert "values" in str(info.value) and trio.current_time() == start
            assert await room.publish("rows", [0] * (MAX_VALUES_PER_MESSAGE - 100)) == 1
            assert cable.opened == 1 and c.state is ClientState.OPEN


async def test_a_publish_queued_offline_that_the_server_cannot_take_fails_on_connect(autojump_clock: MockClock) -> None:
    # Before the first welcome the client knows only the default limit (16 MiB).
    async with make_engine(max_message_bytes=LIMIT) as engine:
        cable = Cable(engine)
        cable.down = True
        async with client_for(cable) as c, c.join("r") as room:
            async with trio.open_nursery() as nursery:

                async def publish() -> None:
                    with pytest.raises(FrameTooLarge):
                        await room.publish("chat", {"blob": BIG})

                nursery.start_soon(publish)
                await trio.sleep(1)
                cable.down = False
            await room.synced()
            assert cable.opened == 1 and c.state is ClientState.OPEN


class ClosesOnBigMessages:
    """A server whose WebSocket takes less than its welcome announced: it closes with 1009."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner

    async def send_message(self, data: bytes) -> None:
        if len(data) > 1000:
            await self.inner.aclose(1009, "frame exceeds limit")
            raise TransportClosed(1009, "frame exceeds limit")
        await self.inner.send_message(data)

    async def receive_message(self) -> bytes | str:
        return await self.inner.receive_message()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.aclose(code, reason)


async def test_a_close_1009_is_not_retried_with_the_same_message(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine, wrap=ClosesOnBigMessages)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            with pytest.raises(ConnectionClosed) as info:
                await room.publish("chat", {"blob": "x" * 2000})
            assert info.value.code == 1009 and not info.value.retryable
            await trio.sleep(60)
            assert cable.opened == 1  # no reconnect that would send it again, forever
            assert c.state is ClientState.CLOSED


async def _every_call_raises(room: Room, error: type[BaseException]) -> None:
    start = trio.current_time()
    with pytest.raises(error):
        await room.publish("chat", {"text": "hi"})
    with pytest.raises(error):
        await room.set_presence({"name": "ada"})
    with pytest.raises(error):
        await room.move_cursor(3)
    with pytest.raises(error):
        await room.set_typing(True)
    with pytest.raises(error):
        await room.synced()
    if error is RoomLeft:  # a stopped client's room with every edit acknowledged is flushed
        with pytest.raises(error):
            await room.flushed()
    room.text.insert(0, "LOST? ")
    with pytest.raises(error):
        await room.flushed()  # never "acknowledged": it was never sent
    assert trio.current_time() == start  # each at once, none hangs


async def test_a_room_used_after_its_join_block_raises_room_left(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c:
            async with c.join("r") as room:
                await room.synced()
                room.text.insert(0, "kept")
                await room.flushed()
            await _every_call_raises(room, RoomLeft)
            async with c.join("r") as again:  # joining again gives a live room
                await again.synced()
                assert str(again.text) == "kept"
                await again.publish("chat", {"text": "hi"})


async def test_a_room_used_after_the_client_closed_raises_room_left(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
        await _every_call_raises(room, RoomLeft)
        with pytest.raises(ConnectionClosed):
            await c.wait_state(ClientState.OPEN)  # it never will be


async def test_a_room_of_a_stopped_client_raises_connection_closed(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine, wrap=ClosesOnBigMessages)
        async with client_for(cable) as c:
            with pytest.raises(EditsNotAcknowledged) as info:  # leaving says the edit is lost too
                async with c.join("r") as room:
                    await room.synced()
                    with pytest.raises(ConnectionClosed):
                        await room.publish("chat", {"blob": "x" * 2000})  # stops the client (1009)
                    await _every_call_raises(room, ConnectionClosed)
            assert info.value.edits == 1


async def test_leaving_a_room_with_unacknowledged_edits_says_so(autojump_clock: MockClock) -> None:
    # Fresh-user pass 3: leaving a join block while an edit was still going out raised
    # nothing; the only sign was a line on stderr (and the server kept part of the edit).
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, close_timeout=1) as c:
            with pytest.raises(EditsNotAcknowledged, match="close_timeout") as info:
                async with c.join("r") as room:
                    await room.synced()
                    cable.down = True
                    await cable.cut()
                    room.text.insert(0, "typed offline, then left")
            assert info.value.edits == 1
            async with c.join("r") as again:  # the client is fine; an acknowledged block raises nothing
                cable.down = False
                await again.synced()
                again.text.insert(0, "saved")
                await again.flushed()


async def test_a_publish_waiting_when_its_room_is_left_raises_room_left(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, trio.open_nursery() as nursery:
            async with c.join("r") as room:
                await room.synced()
                await cable.cut()
                cable.down = True

                async def publish() -> None:
                    with pytest.raises(RoomLeft):
                        await room.publish("chat", {"text": "queued offline"})

                nursery.start_soon(publish)
                await trio.sleep(0.1)


@pytest.mark.parametrize("on", ["yes", 1, None])
async def test_set_typing_with_a_non_bool_raises_at_once(autojump_clock: MockClock, on: object) -> None:
    # Second fresh-eyes run: set_typing("yes") returned and sent nothing, with a log line only.
    async with make_engine() as engine:
        async with client_for(Cable(engine)) as c, c.join("r") as room:
            await room.synced()
            with pytest.raises(InvalidField):
                await room.set_typing(on)  # type: ignore[arg-type]
            await room.set_typing(True)  # the room still works


async def test_events_and_changes_end_once_the_client_stopped_for_good(autojump_clock: MockClock) -> None:
    # Second fresh-eyes run: after a close the server said not to retry, `async for e in
    # room.events()` waited forever (after leaving, the same loop ends).
    async with make_engine() as engine:
        cable = Cable(engine, wrap=ClosesOnBigMessages)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            events, changes = room.events(), room.changes()
            with pytest.raises(ConnectionClosed):
                await room.publish("chat", {"blob": "x" * 2000})  # stops the client (1009)
            with trio.fail_after(5):
                assert [e async for e in events] == []
                async for _ in changes:  # bounded: the feed is closed, what is queued drains
                    pass


def _nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda room: room.publish("chat", {"x": float("nan")}), InvalidField),
        (lambda room: room.publish("chat", {1: "a non-string key"}), InvalidField),
        (lambda room: room.publish("a\ud800", None), InvalidField),
        (lambda room: room.set_presence({"name": "\ud800"}), InvalidField),
        (lambda room: room.move_cursor(_nested(33)), TooDeep),
        (lambda room: room.set_presence({"score": float("inf")}), InvalidField),
    ],
    ids=["nan", "int-key", "surrogate-name", "surrogate-presence", "deep-cursor", "inf"],
)
async def test_invalid_values_raise_the_typed_plait_error_at_once(
    autojump_clock: MockClock, call: Callable[[Room], Awaitable[object]], error: type[PlaitError]
) -> None:
    # Second fresh-user pass: these raised plait.protocol.LocalProtocolError, which is not a
    # PlaitError, so `except PlaitError` let them through.
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            with pytest.raises(error) as info:
                await call(room)
            assert isinstance(info.value, PlaitError) and not isinstance(info.value, LocalProtocolError)
            assert await room.publish("chat", {"ok": 1}) == 1  # nothing was sent; still usable
            assert cable.opened == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"close_timeout": -1}, ValueError, "close_timeout must be at least 0"),
        ({"close_timeout": float("nan")}, ValueError, "close_timeout must be a finite number"),
        ({"heartbeat_timeout": -1}, ValueError, "heartbeat_timeout must be above 0"),
        ({"heartbeat_timeout": 0}, ValueError, "heartbeat_timeout must be above 0"),
        ({"offline_queue": -1}, ValueError, "offline_queue must be at least 0"),
        ({"offline_queue": 2.5}, ValueError, "offline_queue must be an int"),
        ({"client_info": {"blob": "x" * (17 * 1024 * 1024)}}, FrameTooLarge, "a server reads of one"),
        ({"client_info": {"blob": "x" * (64 * 1024)}}, FrameTooLarge, "client_info is too large"),  # spec §5.1
        ({"client_info": ["not", "a", "map"]}, InvalidField, "connect"),
        ({"token": "t" * 9000}, InvalidField, "8192"),
        ({"backoff": 3}, ValueError, "backoff must be a plait.client.Backoff"),
    ],
    ids=["close-negative", "close-nan", "heartbeat-negative", "heartbeat-zero", "queue-negative", "queue-float",
         "client-info-17mib", "client-info-64kib", "client-info-list", "token-too-long", "backoff-not-a-backoff"],
)
async def test_connect_refuses_arguments_it_could_never_use_at_once(
    autojump_clock: MockClock, kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    # Second fresh-user pass: close_timeout=-1 let an ExceptionGroup out when the block ended,
    # heartbeat_timeout=-1 failed later with Trio's text, a 17 MiB client_info raised
    # LocalProtocolError from a background task.
    async with make_engine() as engine:
        cable = Cable(engine)
        with pytest.raises(error, match=words):
            async with connect(open_transport=cable.open, **kwargs):  # type: ignore[arg-type]
                raise AssertionError("entered with arguments it cannot use")
        assert cable.opened == 0


async def test_joining_a_room_twice_at_once_raises_already_joined(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        async with client_for(Cable(engine)) as c, c.join("r") as room:
            with pytest.raises(AlreadyJoined, match="already joined 'r'"):
                async with c.join("r"):
                    raise AssertionError("joined twice")
            await room.synced()  # the first membership is unharmed
            assert await room.publish("chat", None) == 1


async def test_offline_queue_bounds_only_publishes_waiting_for_a_connection(autojump_clock: MockClock) -> None:
    # Second fresh-user pass: offline_queue=0 made every publish raise OfflineQueueFull, online too.
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, offline_queue=0) as c, c.join("r") as room:
            await room.synced()
            assert await room.publish("chat", {"n": 1}) == 1
            cable.down = True
            await cable.cut()
            await c.wait_state(ClientState.RECONNECTING)
            with pytest.raises(OfflineQueueFull, match="offline_queue"):
                await room.publish("chat", {"n": 2})
            cable.down = False
            await c.wait_state(ClientState.OPEN)
            for _ in range(100):  # the rejoin's answer
                if room.channel is not None:
                    break
                await trio.sleep(0.05)
            assert await room.publish("chat", {"n": 3}) == 2


async def test_presence_over_the_announced_limit_raises_presence_too_large_at_once(autojump_clock: MockClock) -> None:
    async with make_engine(max_presence_bytes=1024) as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            await room.set_presence({"name": "ada"})
            start = trio.current_time()
            with pytest.raises(PresenceTooLarge, match="1024"):
                await room.set_presence({"name": "ada", "bio": "b" * 1100})
            with pytest.raises(PresenceTooLarge):
                await room.move_cursor({"path": "p" * 1100})
            assert trio.current_time() == start
            async with client_for(cable) as other, other.join("r") as seen:
                await seen.synced()
                assert [e.state for e in seen.presence.values()] == [{"name": "ada"}]
            assert cable.opened == 2 and c.state is ClientState.OPEN


class FakeServer:
    """A transport whose 'server' answers hello with `answer`, then waits."""

    def __init__(self, answer: bytes | str) -> None:
        self.answer = answer
        self.answered = False

    async def send_message(self, data: bytes) -> None:
        pass

    async def receive_message(self) -> bytes | str:
        if not self.answered:
            self.answered = True
            return self.answer
        await trio.sleep_forever()
        raise AssertionError

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        pass


def _welcome(version: int = 1, **limits: int) -> bytes:
    from plait.protocol import Limits, Welcome, encode

    base = {"max_message_bytes": 1 << 20, "max_frames_per_message": 1024, "max_rooms": 64, "events_per_second": 50,
            "updates_per_second": 200, "max_presence_bytes": 65536, "frames_per_second": 200,
            "max_document_bytes": 64 << 20}
    return encode(Welcome(version, "s1", 15000, Limits(**{**base, **limits})))


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (_welcome(version=9), "did not offer"),
        ("welcome", "text message"),
        (_welcome(max_message_bytes=0), "limits no client can work within"),
        (_welcome(events_per_second=0), "limits no client can work within"),
    ],
    ids=["version-not-offered", "text", "zero-message-limit", "zero-event-rate"],
)
async def test_a_welcome_the_client_cannot_work_with_stops_it_with_the_reason(
    autojump_clock: MockClock, answer: bytes | str, words: str
) -> None:
    # Fresh-user pass 3: a welcome for version 9 was taken; a text answer waited 10 s and
    # retried; max_message_bytes 0 made synced() wait forever.
    opened: list[FakeServer] = []

    async def open_fake() -> FakeServer:
        opened.append(FakeServer(answer))
        return opened[-1]

    async with connect(open_transport=open_fake) as c:  # type: ignore[arg-type]
        with pytest.raises(ConnectionClosed, match=words) as info:
            async with c.join("r") as room:
                await room.synced()
        assert not info.value.retryable
    assert len(opened) == 1  # not retried


async def test_connect_with_a_url_that_is_not_a_string_raises_value_error() -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        async with connect(5):  # type: ignore[arg-type]
            pass


async def test_publishing_in_a_loop_stays_under_the_announced_event_rate(autojump_clock: MockClock) -> None:
    # Fresh-user pass 3: a plain loop of `await room.publish()` got RateLimited at the 54th
    # call; 300 at once got 80 refusals and eight 4007 closes.
    async with make_engine(events_per_second=50) as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            start = trio.current_time()
            seqs = [await room.publish("chat", {"n": i}) for i in range(120)]
            assert seqs == list(range(1, 121))
            assert trio.current_time() - start >= (120 - 50) / 50  # paced, not refused
            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(room.publish, "chat", {"n": i})
            assert cable.opened == 1 and c.state is ClientState.OPEN


async def test_a_publish_whose_event_would_not_fit_raises_frame_too_large_at_once(autojump_clock: MockClock) -> None:
    # Fresh-user pass 3: a publish that fit, but whose event (with session and user) did not,
    # came back as EventRejected after a round trip, like a hook's refusal.
    from plait.protocol import Publish, encode_frame

    async with make_engine(max_message_bytes=LIMIT) as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            base = len(encode_frame(Publish(1, 1, "chat", "", "k" * 32)))
            payload = "x" * (LIMIT - base - 100)  # the publish fits by 100 bytes; its event would not
            start = trio.current_time()
            with pytest.raises(FrameTooLarge):
                await room.publish("chat", payload)
            assert trio.current_time() == start


async def test_cursor_moves_faster_than_the_frame_rate_are_sent_latest_wins(autojump_clock: MockClock) -> None:
    # An app that moves the cursor on every mouse event must not be closed RATE_LIMITED: what
    # the frame rate (spec §5.8) holds back is coalesced, and the last position arrives.
    async with make_engine(frames_per_second=20) as engine:
        cable = Cable(engine)
        async with client_for(cable) as c, c.join("r") as room, client_for(cable) as o, o.join("r") as other:
            await room.synced()
            await other.synced()
            for i in range(2000):
                await room.move_cursor({"x": i})
                if i % 100 == 0:
                    await trio.sleep(0.1)
            for _ in range(100):
                if {"x": 1999} in other.cursors.values():
                    break
                await trio.sleep(0.1)
            assert list(other.cursors.values()) == [{"x": 1999}]
            assert cable.opened == 2 and c.state is ClientState.OPEN


async def test_wait_state_takes_a_state_or_its_name_and_refuses_anything_else(autojump_clock: MockClock) -> None:
    # Fresh-user pass 4: wait_state("open") hung forever on an open client.
    async with make_engine() as engine:
        async with client_for(Cable(engine)) as c:
            with trio.fail_after(5):
                await c.wait_state("open")
                await c.wait_state(ClientState.OPEN)
            for bad in ("bogus", 3):
                with pytest.raises(ValueError, match="not a client state"):
                    await c.wait_state(bad)  # type: ignore[arg-type]


async def test_leaving_a_room_while_reconnecting_waits_for_the_reconnect_within_close_timeout(autojump_clock: MockClock) -> None:
    # Fresh-user pass 4: with close_timeout=10, leaving while reconnecting raised at once
    # (saying it had waited 10 s); the server came back 0.7 s later.
    async with make_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, close_timeout=10) as c:
            async with c.join("r") as room:
                await room.synced()
                cable.down = True
                await cable.cut()
                room.text.insert(0, "made while the network was down")

                async def network_back() -> None:
                    await trio.sleep(1)
                    cable.down = False

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(network_back)
            async with engine.room("r") as handle:
                assert str(handle.doc.get("text", type=pycrdt.Text)) == "made while the network was down"


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"cap": float("nan")}, {"base": 5, "cap": 1}, {"factor": 0.5}])
def test_a_backoff_that_could_never_wait_properly_is_refused_when_made(kwargs: dict[str, float]) -> None:
    # Fresh-user pass 4: Backoff(base=-1) was accepted, then failed at the first reconnect
    # with Trio's own ValueError.
    from plait.client import Backoff

    with pytest.raises(ValueError, match="Backoff"):
        Backoff(**kwargs)


class SlowAcl(Hooks):
    async def authorize(self, identity: Identity, room: str) -> Access | None:
        await trio.sleep(0.05)  # an access-control service 50 ms away
        return Access.WRITE


async def test_a_room_left_before_the_server_answered_its_join_can_be_joined_again(autojump_clock: MockClock) -> None:
    """The app leaves the block before `joined` came (a user who clicks away): the server
    must not keep that membership, or the room stays in presence and is refused when joined
    again on this connection (ALREADY_JOINED)."""
    async with make_engine(hooks=SlowAcl()) as engine:
        async with client_for(Cable(engine)) as c:
            async with c.join("doc"):
                await trio.sleep(0.01)
            with trio.fail_after(5):
                while engine.presence("doc"):  # bounded by the deadline
                    await trio.sleep(0.05)
            async with c.join("doc") as room:
                with trio.fail_after(5):
                    await room.synced()
                assert len(engine.presence("doc")) == 1


async def test_a_room_left_before_its_join_was_answered_does_not_count_against_the_limit(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=SlowAcl(), max_rooms_per_connection=2) as engine:
        async with client_for(Cable(engine)) as c, c.join("doc") as doc:
            await doc.synced()
            async with c.join("left"):
                await trio.sleep(0.01)  # left before the server answered
            async with c.join("chat") as chat:  # the app holds two rooms: within the limit
                with trio.fail_after(5):
                    await chat.synced()
                assert engine.presence("left") == ()
