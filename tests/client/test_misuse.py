"""The SDK used the ways a new user gets wrong, under MockClock against an in-memory engine:
invalid room names, requests larger than the server accepts, a room used after its `join`
block, a client used after its `connect` block. Each mistake raises one documented exception
at once; none is sent anyway, none hangs, none is silently lost."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from plait.client import ClientState, ConnectionClosed, FrameTooLarge, InvalidRoomName, PlaitError, Room, RoomLeft
from plait.engine import MemoryTransport
from plait.protocol import LocalProtocolError, TransportClosed

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
        async with client_for(cable) as c, c.join("r") as room:
            await room.synced()
            with pytest.raises(ConnectionClosed):
                await room.publish("chat", {"blob": "x" * 2000})  # stops the client (1009)
            await _every_call_raises(room, ConnectionClosed)


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
            with pytest.raises(LocalProtocolError):
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
