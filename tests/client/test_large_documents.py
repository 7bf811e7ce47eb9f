"""The SDK and documents larger than a message (spec §3.2, §5.3): it accepts messages up to the
limit the server's welcome announced, sends nothing larger (its offline edits' sync_step2 and
large local changes go in parts, each acknowledged), counts a part refused for rate as the
whole update to send again, and reports a value that cannot fit in any message as refused for
good. In-memory engine under MockClock; every message the client sends is measured."""

from __future__ import annotations

import dataclasses

import pycrdt
import pytest
from trio.testing import MockClock

from plait.client import DocumentReset, DocumentTooLarge
from plait.engine import MemoryTransport
from plait.protocol import CodecLimits, Error, ErrorCode, Welcome, decode, encode

from ..engine.conftest import make_engine
from .cable import Cable, client_for, until_text

LIMIT = 64 * 1024


class Measured:
    """Wraps a transport: fails the test if the client sends a message over the limit."""

    def __init__(self, transport: MemoryTransport, sent: list[tuple[int, list[str]]]) -> None:
        self._transport = transport
        self._sent = sent

    async def send_message(self, data: bytes) -> None:
        assert len(data) <= LIMIT, len(data)
        self._sent.append((len(data), [type(f).__name__ for f in decode(data, CodecLimits(LIMIT, 1024))]))
        await self._transport.send_message(data)

    async def receive_message(self) -> bytes | str:
        return await self._transport.receive_message()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self._transport.aclose(code, reason)


def big_text(chunks: int, chunk: str) -> str:
    return chunk * 200 * chunks


async def test_offline_edits_larger_than_a_message_upload_in_parts(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        sent: list[tuple[int, list[str]]] = []
        cable = Cable(engine, wrap=lambda t: Measured(t, sent))  # type: ignore[arg-type, return-value]
        async with client_for(cable) as client, client.join("r") as room:
            text = room.text
            for _ in range(60):  # offline: made before the connection opened
                text += "offline edit ✓ " * 200
            expected = str(text)
            await room.synced()
            await room.flushed()
            async with engine.room("r") as handle:
                assert str(handle.doc.get("text", type=pycrdt.Text)) == expected
            kinds = [k for _, ks in sent for k in ks]
            assert kinds.count("SyncStep2") == 1 and kinds.count("Update") >= 2
            assert client.attempts == 0


async def test_a_large_local_change_goes_in_parts_and_others_receive_it(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        sent: list[tuple[int, list[str]]] = []
        cable = Cable(engine, wrap=lambda t: Measured(t, sent))  # type: ignore[arg-type, return-value]
        async with client_for(cable) as c1, client_for(cable) as c2:
            async with c1.join("r") as r1, c2.join("r") as r2:
                await r1.synced()
                await r2.synced()
                r1.text.insert(0, big_text(20, "édition 😀 "))  # one transaction, ~500 KB
                values = [f"value {i} " * 8 for i in range(1500)]  # ~110 KB of array values
                r1.doc.get("array", type=pycrdt.Array).extend(values)
                await r1.flushed()
                await until_text(r2, str(r1.text))
                assert r2.doc.get("array", type=pycrdt.Array).to_py() == values
                assert max(size for size, _ in sent) > LIMIT // 2
                assert c1.attempts == 0 and c2.attempts == 0


@pytest.mark.slow
async def test_the_sdk_accepts_messages_up_to_the_announced_limit(autojump_clock: MockClock) -> None:
    """The issue: a 17 MiB room, one 17,825,824-byte message, the SDK's decoder refused it (16
    MiB) and reconnected forever. A server may announce more than 16 MiB; the SDK takes it."""
    async with make_engine(max_message_bytes=24 * 1024 * 1024, max_document_bytes=64 * 1024 * 1024) as engine:
        async with engine.room("r") as handle:
            text = handle.doc.get("text", type=pycrdt.Text)
            for _ in range(18):
                text += "x" * (1024 * 1024)  # one item of 18 MiB: one message of 18 MiB
            expected_length = len(str(text))
        async with client_for(Cable(engine)) as client, client.join("r") as room:
            await room.synced()
            assert len(str(room.text)) == expected_length
            assert client.attempts == 0


async def test_a_local_value_larger_than_a_message_is_refused_for_good(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT) as engine:
        async with client_for(Cable(engine)) as client, client.join("r") as room:
            await room.synced()
            room.text.insert(0, "kept")
            await room.flushed()
            changes = room.changes()
            room.doc.get("map", type=pycrdt.Map)["blob"] = "x" * (2 * LIMIT)  # one indivisible value
            try:
                await room.flushed()
            except DocumentTooLarge:
                pass
            else:
                raise AssertionError("flushed() did not raise DocumentTooLarge")
            reset = None
            for _ in range(10):
                change = await changes.__anext__()
                if isinstance(change, DocumentReset):
                    reset = change
                    break
            assert reset is not None and isinstance(reset.error, DocumentTooLarge)
            await room.synced()
            assert str(room.text) == "kept" and "blob" not in room.doc.get("map", type=pycrdt.Map)
            assert client.attempts == 0


class Understated(Measured):
    """A server that counts differently than it announced: its welcome says 1,000 updates a
    second, it takes 2. Counts the RATE_LIMITED errors the client receives."""

    refused = 0

    async def receive_message(self) -> bytes | str:
        data = await self._transport.receive_message()
        assert isinstance(data, bytes)
        frames = decode(data, CodecLimits(LIMIT, 1024))
        Understated.refused += sum(isinstance(f, Error) and f.code == ErrorCode.RATE_LIMITED for f in frames)
        if isinstance(frames[0], Welcome):
            limits = dataclasses.replace(frames[0].limits, updates_per_second=1000)
            return encode(dataclasses.replace(frames[0], limits=limits))
        return data


async def test_parts_refused_for_rate_send_the_whole_update_again(autojump_clock: MockClock) -> None:
    async with make_engine(max_message_bytes=LIMIT, updates_per_second=2, rate_violations_before_close=1000) as engine:
        sent: list[tuple[int, list[str]]] = []
        cable = Cable(engine, wrap=lambda t: Understated(t, sent))  # type: ignore[arg-type, return-value]
        async with client_for(cable) as client, client.join("r") as room:
            await room.synced()
            room.text.insert(0, big_text(60, "rate limited "))  # ~160 KB: 3 parts
            await room.flushed()
            async with engine.room("r") as handle:
                assert str(handle.doc.get("text", type=pycrdt.Text)) == str(room.text)
            assert Understated.refused > 0
            assert client.attempts == 0


async def test_an_edit_too_large_for_the_document_sends_nothing_of_it(autojump_clock: MockClock) -> None:
    # Fresh-user pass 3: one 50 MiB insert past the 64 MiB maximum raised DocumentTooLarge,
    # but 33.5 MiB of it stayed in the room: each part it went in was an update the server
    # took, until one did not fit. Now the SDK checks the whole edit against the server's
    # announced max_document_bytes before the first part goes.
    async with make_engine(max_message_bytes=LIMIT, max_document_bytes=256 * 1024) as engine:
        async with client_for(Cable(engine)) as c, c.join("r") as room:
            await room.synced()
            room.text.insert(0, "kept ")
            await room.flushed()
            room.text.insert(5, "x" * (300 * 1024))  # goes in parts; the whole does not fit
            with pytest.raises(DocumentTooLarge, match="max_document_bytes"):
                await room.flushed()
            async with engine.room("r") as handle:
                assert str(handle.doc.get("text", type=pycrdt.Text)) == "kept "  # nothing of it
            await until_text(room, "kept ")  # the local document was reset to the room's
