"""Large messages (a big document's first sync) and the clients that read them: one that takes
none of its large message is too slow like any other, and frees its large-send slot; one that
waits for a slot is neither closed for it nor left without a frame for a heartbeat interval
(spec §5.7, §9 TOO_SLOW); one that reads slowly is not too slow."""

from __future__ import annotations

import tracemalloc

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.protocol import (
    Ack,
    CloseCode,
    Join,
    Leave,
    Ping,
    Pong,
    SyncStep1,
    SyncStep2,
    TransportClosed,
    Update,
    YSyncStep,
    encode,
    encode_sync,
)

from .client import DocClient, assert_engine_serves, yjs_client
from .conftest import running_engine

LARGE = 64 * 1024
DOCUMENT_TEXT = "D" * (200 * 1024)  # one value: the join's sync_step2 is one large message


def text_update(text: str, client_id: int) -> bytes:
    doc = pycrdt.Doc(client_id=client_id)
    doc.get("text", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


async def large_room(engine: object, room: str = "big") -> DocClient:
    writer = DocClient(engine.connect_memory())  # type: ignore[attr-defined]
    await writer.hello()
    await writer.join(room)
    await writer.send(Update(1, 1, text_update(DOCUMENT_TEXT, client_id=5)))
    await writer.wait_for(Ack)
    return writer


async def keep_talking(client: DocClient, every: float) -> None:
    """A client that never reads still talks (pings), so it is never silent (spec §5.7)."""
    for nonce in range(10_000):
        try:
            await client.send(Ping(nonce))
        except TransportClosed:
            return
        await trio.sleep(every)


async def test_a_client_that_takes_none_of_a_large_message_is_too_slow_and_one_waiting_behind_it_is_served(
    autojump_clock: MockClock,
) -> None:
    # The engine sends one large message at a time (concurrent_large_sends=1) over a
    # transport that copies it to frame it. A client that joined a large room and reads
    # nothing held that slot for as long as it stayed connected: its sending time was never
    # lag. A client joining behind it waited with nothing sent to it (no ping), and was the
    # one closed TOO_SLOW for the wait. Found by a QA helper with four such clients and a
    # 6 MiB room.
    async with running_engine(large_message_bytes=LARGE, concurrent_large_sends=1) as engine:
        await large_room(engine)
        heartbeat, max_lag = engine.config.heartbeat, engine.config.outbox_max_lag
        stalled = DocClient(engine.connect_memory(buffer=1))
        await stalled.hello()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_talking, stalled, heartbeat / 2)
            stalled_since = trio.current_time()
            await stalled.send(Join(1, "big", b"\x00", None))
            await trio.sleep(1)  # its writer has the slot, and the socket takes nothing

            waiting = DocClient(engine.connect_memory())
            await waiting.hello()
            await waiting.send(Join(1, "big", b"\x00", None))
            last_heard, longest_gap, pings = trio.current_time(), 0.0, 0
            for _ in range(1000):  # it only answers the server's pings
                frame = await waiting.receive()
                now = trio.current_time()
                longest_gap, last_heard = max(longest_gap, now - last_heard), now
                if isinstance(frame, Ping):
                    pings += 1
                    await waiting.send(Pong(frame.nonce))
                elif isinstance(frame, SyncStep2):
                    break
            else:
                raise AssertionError("the waiting client never got the document")
            served_at = trio.current_time()
            waiting.apply(frame.update)
            assert str(waiting.text) == DOCUMENT_TEXT
            assert longest_gap <= heartbeat, "nothing was sent to the waiting client for a heartbeat interval"
            assert pings >= 2
            # It was served once the stalled client was closed: its lag bound, and the sweeps
            # that saw the large message begin, stop and stay stopped (H/8 apart).
            assert served_at - stalled_since <= max_lag + 3 * heartbeat / 8 + 0.1
            assert await stalled.wait_closed() == CloseCode.TOO_SLOW
            nursery.cancel_scope.cancel()
        await assert_engine_serves(engine)


async def test_a_client_that_reads_large_messages_slowly_is_not_too_slow(autojump_clock: MockClock) -> None:
    # Four large updates, read one every 20 s: behind for 80 s with never a moment caught up,
    # but each message moving while it is sent. The lag bound (30 s) is for a client that
    # takes nothing, not for a slow link.
    async with running_engine(large_message_bytes=LARGE) as engine:
        writer = await large_room(engine, "slow")
        reader = DocClient(engine.connect_memory(buffer=1))
        await reader.hello()
        await reader.join("slow")
        for i in range(4):
            update = text_update(f"{i}" * (100 * 1024), client_id=10 + i)
            await writer.send(Update(1, i + 2, update))
            await writer.wait_for(Ack)
        pace = 20.0
        assert pace < engine.config.outbox_max_lag < 4 * pace
        updates = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_talking, reader, engine.config.heartbeat / 2)
            for _ in range(100):  # a slow link: each large message takes 20 s to arrive
                frames = [await reader.receive()]  # a message: its frames
                while reader.inbox:
                    frames.append(await reader.receive())
                large = [f for f in frames if isinstance(f, (SyncStep2, Update))]
                for frame in large:
                    reader.apply(frame.update)
                updates += len(large)
                if updates == 5:  # the document's sync, then the four updates
                    break
                if large:
                    await trio.sleep(pace)
            nursery.cancel_scope.cancel()
        assert str(reader.text).count("3") == 100 * 1024
        await reader.send(Ping(123_456))  # still open
        for _ in range(100):
            if (await reader.wait_for(Pong)).nonce == 123_456:
                break
        else:
            raise AssertionError("no answer to the last ping")


@pytest.mark.parametrize("endpoint", ["native", "yjs"])
async def test_asking_for_a_large_document_again_and_again_queues_one_copy(autojump_clock: MockClock, endpoint: str) -> None:
    # A QA helper's clients each sent nine sync_step1 with an empty state vector on an 8 MiB
    # room and read slowly: each answer queued a copy of its own, 72 MiB a connection, 800 MiB
    # for ten. The answers now share the joins' one encoding.
    asks, size = 8, len(DOCUMENT_TEXT)
    async with running_engine(large_message_bytes=LARGE) as engine:
        await large_room(engine, "r")
        if endpoint == "native":
            client = DocClient(engine.connect_memory(buffer=1))
            await client.hello()
            await client.join("r", state_vector=None)  # nothing large with the join
            ask = encode([SyncStep1(1, b"\x00")])
        else:
            client = await yjs_client(engine, "/yjs/r", buffer=1)
            ask = encode_sync(YSyncStep.STEP1, b"\x00")
        await client.transport.send_message(ask)  # the first answer encodes the document
        await trio.sleep(1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(asks):
                await client.transport.send_message(ask)  # and reads nothing
            await trio.sleep(1)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < size, f"{grown} bytes held for {asks} more answers of a {size}-byte document"
        await client.transport.aclose()


async def test_joining_and_leaving_a_large_room_without_reading_is_too_slow_at_the_budget(autojump_clock: MockClock) -> None:
    # A join's catch-up is queued outside the outbox budget, and a state vector naming a
    # client the document lacks gets a copy of its own. A fresh QA helper's one connection
    # joined and left an 8 MiB room in a loop without reading: 4.6 GB of copies in 15 s, until
    # the lag bound (30 s). One catch-up at a time is exempt now; the next ones count.
    budget = 4 * len(DOCUMENT_TEXT)
    async with running_engine(outbox_max_bytes=budget, large_message_bytes=LARGE) as engine:
        await large_room(engine, "r")
        client = DocClient(engine.connect_memory(buffer=1))
        await client.hello()
        sessions = engine.statistics()["sessions"]
        unknown_client = b"\x01\x01\x00"  # client 1 at clock 0: the whole document is lacking
        for i in range(40):  # channels are numbered 1, 2, 3... in join order
            try:
                await client.send_raw(encode([Join(2 * i + 1, "r", unknown_client, None), Leave(i + 1, 2 * i + 2)]))
            except TransportClosed:
                break
        await trio.sleep(0.1)  # well inside outbox_max_lag
        assert engine.statistics()["sessions"] == sessions - 1, "the client that never reads is still there"
        assert await client.wait_closed() == CloseCode.TOO_SLOW
        await assert_engine_serves(engine)


async def test_joining_and_leaving_a_large_room_while_reading_does_not_grow_the_server(autojump_clock: MockClock) -> None:
    # The room keeps its document's sync frames encoded, and they kept their bytes for every
    # channel number asked: a fresh QA helper's client joined and left an 8 MiB room in a
    # loop, reading everything, on a new channel each time, and the server grew by 8 MiB a
    # join until the room unloaded.
    joins, size = 16, len(DOCUMENT_TEXT)
    async with running_engine(large_message_bytes=LARGE) as engine:
        writer = await large_room(engine, "r")
        client = DocClient(engine.connect_memory())
        await client.hello()
        await client.join("r")  # the first join encodes the document
        await client.wait_for(SyncStep2)
        await client.send(Leave(1, 99))
        await client.wait_for(Ack)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(joins):
                joined = await client.join("r")
                await client.wait_for(SyncStep2)
                await client.send(Leave(joined.channel, 1000 + i))
                await client.wait_for(Ack)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 6 * size, f"{grown} bytes kept after {joins} joins of a {size}-byte document"
        await writer.send(Ping(1))  # the room is still loaded: its writer is there
        await writer.wait_for(Pong)
