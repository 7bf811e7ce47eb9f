"""A member that speaks JSON (spec §3.5) gets no message over max_message_bytes either, counted
in UTF-8 bytes: its frames are longer than msgpack's (base64 binary, escapes), and what the
room splits or refuses by size must fit in that form too (a fresh user saw 22 MB JSON messages
against a 16 MiB limit)."""

from __future__ import annotations

import pycrdt
import trio
from trio.testing import MockClock

from plait.engine import Engine
from plait.protocol import (
    Ack,
    Error,
    ErrorCode,
    Event,
    Frame,
    Hello,
    Join,
    Joined,
    PresenceDiff,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    SyncStep2,
    Update,
    decode_json,
    encode_json,
)

from .client import DocClient, edit
from .conftest import running_engine

LIMIT = 64 * 1024


class JsonMember:
    """A member reading JSON text messages off a memory connection, each checked against LIMIT."""

    def __init__(self, engine: Engine) -> None:
        self.transport = engine.connect_memory()
        self.doc = pycrdt.Doc()
        self.text = self.doc.get("text", type=pycrdt.Text)
        self.sizes: list[int] = []

    async def send(self, frame: Frame) -> None:
        await self.transport.send_message(encode_json(frame))

    async def receive(self) -> list[Frame]:
        message = await self.transport.receive_message()
        assert isinstance(message, str)
        self.sizes.append(len(message.encode()))
        return decode_json(message)

    async def join(self, room: str) -> None:
        await self.send(Hello((1,), None, {"name": "json"}))
        await self.receive()  # welcome
        await self.send(Join(1, room, b"\x00", None, None))
        while not any(isinstance(f, Joined) for f in await self.receive()):
            pass

    async def read_document_until(self, text: str, limit: int = 500) -> None:
        for _ in range(limit):
            if str(self.text) == text:
                return
            for frame in await self.receive():
                if isinstance(frame, (Update, SyncStep2)):
                    self.doc.apply_update(frame.update)
        raise AssertionError(f"{len(str(self.text))} of {len(text)} characters")


async def test_a_document_and_updates_larger_than_a_message_reach_a_json_member_in_messages_that_fit(
    autojump_clock: MockClock,
) -> None:
    async with running_engine(max_message_bytes=LIMIT, max_document_bytes=1 << 20) as engine:
        writer = DocClient(engine.connect_memory())
        await writer.hello()
        await writer.join("big")
        live = JsonMember(engine)
        await live.join("big")
        for i in range(4):  # 60 kB each: fits a msgpack message, 80 kB as JSON base64
            await writer.send(Update(1, writer.next_ref(), edit(writer.doc, str(i) * 60_000)))
            await writer.wait_for(Ack)
        expected = str(writer.text)
        with trio.fail_after(30):
            await live.read_document_until(expected)
            late = JsonMember(engine)  # the whole document, 240 kB, in its sync
            await late.join("big")
            await late.read_document_until(expected)
        assert max(live.sizes + late.sizes) <= LIMIT, (live.sizes, late.sizes)


async def test_an_event_too_long_in_json_is_refused_and_one_that_fits_reaches_a_json_member(
    autojump_clock: MockClock,
) -> None:
    async with running_engine(max_message_bytes=LIMIT) as engine:
        publisher = DocClient(engine.connect_memory())
        await publisher.hello()
        await publisher.join("chat")
        reader = JsonMember(engine)
        await reader.join("chat")
        # 50 kB of binary: a 50 kB msgpack frame, but 67 kB of base64 in JSON.
        await publisher.send(Publish(1, 5, "file", {"data": b"\x00" * 50_000}, None))
        refused = await publisher.wait_for(Error)
        assert (refused.ref, refused.code) == (5, ErrorCode.EVENT_REJECTED)
        assert "in JSON" in refused.message
        await publisher.send(Publish(1, 6, "file", {"data": b"\x00" * 40_000}, None))
        assert await publisher.wait_for(Ack) == Ack(6, 1)
        with trio.fail_after(10):
            events: list[Event] = []
            while not events:
                events = [f for f in await reader.receive() if isinstance(f, Event)]
        assert events[0].payload == {"data": b"\x00" * 40_000}
        assert max(reader.sizes) <= LIMIT


async def test_presence_is_measured_and_split_by_its_longer_form_so_a_json_joiner_gets_it_in_messages_that_fit(
    autojump_clock: MockClock,
) -> None:
    # A control character is 1 byte in msgpack and 6 in JSON ("\u0001"): ten states of 2,500
    # of them are 25 kB of msgpack, one snapshot by that measure, but 150 kB as JSON.
    async with running_engine(max_message_bytes=LIMIT) as engine:  # presence_limit: 16 KiB
        members = []
        for i in range(10):
            member = DocClient(engine.connect_memory())
            await member.hello()
            await member.join("crowd")
            await member.send(PresenceSet(1, 1, {"note": chr(1) * 2_500, "n": i}))
            assert await member.wait_for(Ack) == Ack(1, None)
            members.append(member)
        # 3,000 of them: 3 kB of msgpack, 18 kB of JSON, over the 16 KiB a state may take.
        await members[0].send(PresenceSet(1, 2, {"note": chr(1) * 3_000}))
        refused = await members[0].wait_for(Error)
        assert (refused.ref, refused.code) == (2, ErrorCode.PRESENCE_TOO_LARGE)
        joiner = JsonMember(engine)
        await joiner.join("crowd")
        seen: set[int] = set()
        with trio.fail_after(10):
            while len(seen) < 10:
                for frame in await joiner.receive():
                    if isinstance(frame, (PresenceSnapshot, PresenceDiff)):
                        entries = frame.entries if isinstance(frame, PresenceSnapshot) else frame.joined
                        seen |= {e.state["n"] for e in entries if "n" in e.state}
        assert max(joiner.sizes) <= LIMIT, joiner.sizes
