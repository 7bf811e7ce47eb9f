"""A document larger than a message reaches native members in pieces (spec §3.2, §5.2, §5.3).

Rules of this module: the server never sends a native session a message longer than the
`max_message_bytes` its welcome announced, whatever the document's size: the join's sync, the
answer to a sync_step1 and the fan-out of a large edit (server-side, or from a y-websocket
client, whose messages may be larger) go as `update` frames then one `sync_step2` (sync) or as
several `update` frames (fan-out), in order, each integrating on top of the ones before. A
value that cannot fit in a message is refused with DOCUMENT_TOO_LARGE. Every test checks each
message's length as it arrives.
"""

from __future__ import annotations

import pycrdt
from trio.testing import MockClock

from plait.engine import Engine
from plait.protocol import (
    ChannelClosed,
    CloseCode,
    Error,
    ErrorCode,
    Frame,
    Join,
    PresenceSnapshot,
    SyncStep1,
    SyncStep2,
    Update,
    YSyncStep,
    decode,
    encode_sync,
)

from .client import DocClient
from .conftest import make_engine
from .test_large_documents import closed_code
from .test_yjs_session import yjs

LIMIT = 64 * 1024
"""max_message_bytes in these tests: the documents are several times larger."""


class SizedClient(DocClient):
    """A DocClient that checks every message against the limit its welcome announced."""

    largest = 0

    async def _fill(self) -> None:
        data = await self.transport.receive_message()
        assert isinstance(data, bytes)
        self.largest = max(self.largest, len(data))
        if self.welcome is not None:
            assert len(data) <= self.welcome.limits.max_message_bytes, len(data)
        self.inbox.extend(decode(data))

    async def sync_frames(self) -> list[Frame]:
        """Read up to and including the next sync_step2, applying every update on the way."""
        frames: list[Frame] = []
        for _ in range(10_000):
            frame = await self.receive()
            frames.append(frame)
            if isinstance(frame, (Update, SyncStep2)):
                self.apply(frame.update)
            if isinstance(frame, SyncStep2):
                return frames
        raise AssertionError("no sync_step2")


def grow(doc: pycrdt.Doc, chunks: int, chunk: str = "appended by one client 😀 ") -> None:
    """One client appending chunks: yrs merges them into one item (the issue's 17 MiB room)."""
    text = doc.get("text", type=pycrdt.Text)
    for _ in range(chunks):
        text += chunk * 200


async def sized(engine: Engine) -> SizedClient:
    client = SizedClient(engine.connect_memory())
    await client.hello()
    return client


def text_of(doc: pycrdt.Doc) -> str:
    return str(doc.get("text", type=pycrdt.Text))


async def test_a_join_gets_a_large_document_as_updates_then_one_sync_step2(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        async with engine.room("r") as handle:
            grow(handle.doc, 60)
            size = len(handle.doc.get_update())
            expected = text_of(handle.doc)
        assert size > 5 * LIMIT
        client = await sized(engine)
        assert client.welcome is not None and client.welcome.limits.max_message_bytes == LIMIT
        await client.join("r")
        await client.expect(SyncStep1)
        frames = await client.sync_frames()
        # spec §5.2: the pieces come where sync_step2 comes, before the presence snapshot.
        assert len(frames) > 5 and all(isinstance(f, Update) for f in frames[:-1])
        assert all(f.ref is None for f in frames if isinstance(f, (Update, SyncStep2)))
        await client.expect(PresenceSnapshot)
        assert text_of(client.doc) == expected
        assert client.largest <= LIMIT


async def test_a_rejoin_with_a_state_vector_gets_what_it_lacks_in_pieces(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        async with engine.room("r") as handle:
            grow(handle.doc, 5)
            old = handle.doc.get_update()
            grow(handle.doc, 40)
            expected = text_of(handle.doc)
        client = await sized(engine)
        client.apply(old)
        await client.join("r", client.doc.get_state())
        await client.expect(SyncStep1)
        frames = await client.sync_frames()
        assert len(frames) > 3
        assert text_of(client.doc) == expected


async def test_a_sync_step1_is_answered_in_pieces(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        async with engine.room("r") as handle:
            grow(handle.doc, 30)
            expected = text_of(handle.doc)
        client = await sized(engine)
        await client.join("r", None)  # no state vector: no sync_step2 on join
        await client.expect(SyncStep1)
        await client.expect(PresenceSnapshot)
        await client.send(SyncStep1(1, b"\x00"))
        frames = await client.sync_frames()
        assert len(frames) >= 3
        assert text_of(client.doc) == expected


async def test_a_large_server_side_edit_fans_out_in_pieces(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        a, b = await sized(engine), await sized(engine)
        for c in (a, b):
            await c.join("r")
            await c.sync_frames()
        async with engine.room("r") as handle:
            grow(handle.doc, 40)  # one transaction per chunk...
            with handle.doc.transaction():  # ...and one large one
                handle.doc.get("text", type=pycrdt.Text).insert(0, "ü" * (3 * LIMIT))
            expected = text_of(handle.doc)
        for c in (a, b):
            for _ in range(1000):
                if text_of(c.doc) == expected:
                    break
                frame = await c.wait_for(Update)
                c.apply(frame.update)
            assert text_of(c.doc) == expected
            assert LIMIT // 2 < c.largest <= LIMIT


async def test_a_yjs_upload_larger_than_a_message_reaches_native_members_in_pieces(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        native = await sized(engine)
        await native.join("r")
        await native.sync_frames()
        y = await yjs(engine)
        doc = pycrdt.Doc(client_id=5)
        grow(doc, 40)
        await y.transport.send_message(encode_sync(YSyncStep.UPDATE, doc.get_update()))
        for _ in range(1000):
            if text_of(native.doc) == text_of(doc):
                break
            native.apply((await native.wait_for(Update)).update)
        assert text_of(native.doc) == text_of(doc)
        assert LIMIT // 2 < native.largest <= LIMIT


async def test_a_yjs_update_holding_a_value_larger_than_a_message_is_refused(autojump_clock: MockClock) -> None:
    """One map value can only travel whole: a y-websocket client may send it (its messages may
    be as large as a document), but then no native member could ever receive the room."""
    async with make_engine(max_message_bytes=LIMIT) as engine:
        y = await yjs(engine)
        doc = pycrdt.Doc(client_id=5)
        doc.get("map", type=pycrdt.Map)["blob"] = "x" * (2 * LIMIT)
        await y.transport.send_message(encode_sync(YSyncStep.UPDATE, doc.get_update()))
        closed = await closed_code(y)  # type: ignore[arg-type]
        assert closed.code == CloseCode.DOCUMENT_TOO_LARGE
        # Says what could not travel and what to do (second fresh-user pass: "a struct header
        # of 6 bytes with its first unit does not fit in pieces").
        assert "one value in a map or array" in closed.reason and "smaller values" in closed.reason
        async with engine.room("r") as handle:
            assert "blob" not in handle.doc.get("map", type=pycrdt.Map)


async def test_a_server_side_value_larger_than_a_message_closes_channels_and_refuses_joins(autojump_clock: MockClock) -> None:
    """Server-side code can put anything in the document; what cannot travel in a message
    ends memberships with DOCUMENT_TOO_LARGE (clear, not retried) instead of being sent."""
    async with make_engine(max_message_bytes=LIMIT) as engine:
        member = await sized(engine)
        await member.join("r")
        await member.sync_frames()
        async with engine.room("r") as handle:
            handle.doc.get("map", type=pycrdt.Map)["blob"] = "x" * (2 * LIMIT)
        closed = await member.wait_for(ChannelClosed)
        assert closed.code == ErrorCode.DOCUMENT_TOO_LARGE
        assert "one value in a map or array" in closed.message, closed.message
        late = await sized(engine)
        ref = late.next_ref()
        await late.send(Join(ref, "r", b"\x00", None, None))
        error = await late.expect(Error, ref=ref)
        assert error.code == ErrorCode.DOCUMENT_TOO_LARGE
        # The connection goes on: another room is fine.
        await late.join("other")
        assert isinstance(await late.expect(SyncStep1), SyncStep1)


async def test_a_malformed_yjs_update_larger_than_a_message_is_an_invalid_update(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        y = await yjs(engine)
        doc = pycrdt.Doc(client_id=5)
        grow(doc, 40)
        await y.transport.send_message(encode_sync(YSyncStep.UPDATE, doc.get_update()[:-3]))
        closed = await closed_code(y)  # type: ignore[arg-type]
        assert closed.code == CloseCode.PROTOCOL_ERROR
