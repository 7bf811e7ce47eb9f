"""Text outside the BMP (emoji) between Yjs clients, native clients and the stored document:
the updates pycrdt would integrate differently from Yjs are refused before they touch the
room's document, so live, stored and Yjs text never differ (spec §5.3, spec/notes/unicode.md).

The Yjs updates below were written by yjs 13.6.33 (tests/interop/js) for the client ids shown;
tests/interop/test_unicode.py makes them live and checks the whole property against Yjs."""

from __future__ import annotations

import pycrdt
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.engine import Engine
from plait.engine.room._updatecheck import UpdateCheck
from plait.protocol import (
    Ack,
    CloseCode,
    Error,
    ErrorCode,
    PresenceSnapshot,
    RemoteProtocolError,
    SyncStep1,
    SyncStep2,
    TransportClosed,
    Update,
    YSyncStep,
    encode_sync,
    read_state_vector,
    read_update,
)
from plait.storage import MemoryStore

from .client import DocClient
from .conftest import Connect
from .test_yjs_session import yjs

# Yjs client 1: insert "a😎b" at 0.
YJS_INSERT = bytes.fromhex("01010100040104746578740661f09f988e6200")
# Yjs client 1 then deletes UTF-16 unit 2, the low half of 😎 (Yjs itself shows "a\ufffdb").
YJS_DELETE_HALF = bytes.fromhex("000101010201")
# Yjs client 1 instead inserts "X" at UTF-16 index 2, inside 😎 (Yjs shows "a\ufffdX\ufffdb").
YJS_INSERT_INSIDE = bytes.fromhex("01010104c401010102015800")
# The same with bit 4 of the info byte set: yrs reads only the low four bits as the content.
YJS_INSERT_INSIDE_BIT4 = bytes.fromhex("01010104d401010102015800")
# Yjs client 1 instead appends "Y" after the b.
YJS_APPEND = bytes.fromhex("01010104840103015900")
# Yjs client 1 instead deletes units 1..2: all of 😎.
YJS_DELETE_WHOLE = bytes.fromhex("000101010102")
# Yjs client 2, offline: "a😎b", then the same half delete; Yjs already split it into U+FFFD.
YJS_OFFLINE_SPLIT = bytes.fromhex("01030200040104746578740461efbfbd8102010184020201620102010201")


def text_of(doc: pycrdt.Doc) -> str:
    return str(doc.get("text", type=pycrdt.Text))


def rebuilt(update: bytes) -> str:
    doc = pycrdt.Doc()
    doc.apply_update(update)
    return text_of(doc)


async def joined(connect: Connect, room: str = "r") -> DocClient:
    client = await connect()
    await client.join(room)
    await client.expect(SyncStep1)
    client.apply((await client.expect(SyncStep2)).update)
    await client.wait_for(PresenceSnapshot)
    return client


async def send(client: DocClient, ref: int, update: bytes) -> Ack | Error:
    await client.send(Update(1, ref, update))
    for _ in range(100):
        frame = await client.receive()
        if isinstance(frame, (Ack, Error)) and frame.ref == ref:
            return frame
        if isinstance(frame, Update):
            client.apply(frame.update)
    raise AssertionError("no answer")


async def server_text(engine: Engine, room: str = "r") -> tuple[str, str]:
    """The room's live text, and the text of a document rebuilt from its whole state."""
    async with engine.room(room) as handle:
        return text_of(handle.doc), rebuilt(handle.doc.get_update())


async def stored_text(store: MemoryStore, room: str = "r") -> str:
    data = await store.load(room)
    doc = pycrdt.Doc()
    for update in ([data.snapshot] if data.snapshot else []) + list(data.updates):
        doc.apply_update(update)
    return text_of(doc)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (YJS_DELETE_HALF, "surrogate pair"),
        (YJS_INSERT_INSIDE, "surrogate pair"),
        # Yjs reads five bits of content kind (20: none), yrs four (4: a string): not well formed.
        (YJS_INSERT_INSIDE_BIT4, "content kind 20"),
    ],
    ids=["delete-half", "insert-inside", "info-bit-4"],
)
async def test_an_update_that_splits_an_emoji_is_refused_and_nothing_is_lost(
    bad: bytes, reason: str, autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine, store: MemoryStore
) -> None:
    a, b = await joined(connect), await joined(connect)
    assert isinstance(await send(a, 1, YJS_INSERT), Ack)
    refused = await send(a, 2, bad)
    assert isinstance(refused, Error) and refused.code == ErrorCode.INVALID_UPDATE
    assert reason in refused.message
    # Without the check pycrdt shows "a😎" (the b deleted in place of half the emoji) and
    # stores items whose lengths no longer match their text.
    assert await server_text(engine) == ("a😎b", "a😎b")
    assert await stored_text(store) == "a😎b"
    assert isinstance(await send(a, 3, YJS_APPEND), Ack)
    b.apply((await b.wait_for(Update)).update)
    b.apply((await b.wait_for(Update)).update)
    assert text_of(b.doc) == "a😎bY" == (await server_text(engine))[0]


async def test_yjs_text_already_split_by_yjs_is_accepted(
    autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine
) -> None:
    a = await joined(connect)
    assert isinstance(await send(a, 1, YJS_OFFLINE_SPLIT), Ack)
    assert await server_text(engine) == ("a\ufffdb", "a\ufffdb")  # what Yjs shows


async def test_whole_emoji_edits_and_cuts_inside_deleted_emoji_are_accepted(
    autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine, store: MemoryStore
) -> None:
    a = await joined(connect)
    assert isinstance(await send(a, 1, YJS_INSERT), Ack)
    assert isinstance(await send(a, 2, YJS_DELETE_WHOLE), Ack)
    # The emoji's text is gone from the document, so cutting where it was harms nothing.
    assert isinstance(await send(a, 3, YJS_DELETE_HALF), Ack)
    assert await server_text(engine) == ("ab", "ab")
    assert await stored_text(store) == "ab"


async def test_the_check_survives_an_unload_and_reload(
    autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine, store: MemoryStore
) -> None:
    a = await joined(connect)
    assert isinstance(await send(a, 1, YJS_INSERT), Ack)
    await a.transport.aclose()
    await trio.sleep(8)  # conftest's room_idle_grace is 7 s: the room unloads
    assert engine.statistics()["rooms"] == 0
    assert (await store.load("r")).snapshot is not None
    b = await joined(connect)
    refused = await send(b, 1, YJS_DELETE_HALF)
    assert isinstance(refused, Error) and refused.code == ErrorCode.INVALID_UPDATE
    assert await server_text(engine) == ("a😎b", "a😎b")


async def test_a_burst_with_one_bad_update_acks_the_good_ones(
    autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine
) -> None:
    a = await joined(connect)
    await a.send(Update(1, 1, YJS_INSERT), Update(1, 2, YJS_DELETE_HALF), Update(1, 3, YJS_APPEND))
    answers: dict[int, Ack | Error] = {}
    for _ in range(20):
        frame = await a.receive()
        if isinstance(frame, (Ack, Error)):
            answers[frame.ref] = frame  # type: ignore[assignment]
        if len(answers) == 3:
            break
    assert sorted(answers) == [1, 2, 3]
    assert isinstance(answers[1], Ack) and isinstance(answers[3], Ack)
    assert isinstance(answers[2], Error) and answers[2].code == ErrorCode.INVALID_UPDATE
    assert await server_text(engine) == ("a😎bY", "a😎bY")


async def test_a_native_insert_inside_a_character_is_refused_not_acked_and_lost(
    autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine, store: MemoryStore
) -> None:
    # pycrdt 0.14 counts Text indices in UTF-8 bytes; byte 2 of "aéb" is inside "é". pycrdt
    # shows "aébX" locally, but its update's item has itself as right origin: it integrates
    # nowhere, and without the check the server acked it and every later edit of that client.
    a = await joined(connect)
    before = a.doc.get_state()
    a.text.insert(0, "aéb")
    assert isinstance(await send(a, 1, a.doc.get_update(before)), Ack)
    before = a.doc.get_state()
    a.text.insert(2, "X")
    refused = await send(a, 2, a.doc.get_update(before))
    assert isinstance(refused, Error) and refused.code == ErrorCode.INVALID_UPDATE
    assert "does not have" in refused.message
    assert await server_text(engine) == ("aéb", "aéb")
    assert await stored_text(store) == "aéb"


async def test_a_yjs_client_that_splits_an_emoji_is_disconnected(
    autojump_clock: trio.testing.MockClock, connect: Connect, engine: Engine
) -> None:
    native = await joined(connect)
    y = await yjs(engine)
    await y.transport.send_message(encode_sync(YSyncStep.UPDATE, YJS_INSERT))
    native.apply((await native.wait_for(Update)).update)
    await y.transport.send_message(encode_sync(YSyncStep.UPDATE, YJS_DELETE_HALF))
    with pytest.raises(TransportClosed) as closed:
        for _ in range(20):
            await y.next()
    assert closed.value.code == CloseCode.PROTOCOL_ERROR  # INVALID_UPDATE's close code (spec §9)
    assert await server_text(engine) == ("a😎b", "a😎b")
    assert text_of(native.doc) == "a😎b"


# -- UpdateCheck on its own --------------------------------------------------------------------


def a_document_with_every_kind_of_content() -> pycrdt.Doc:
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    text.insert(0, "héllo 😎 wörld 漢字 e\u0301 🇫🇷", {"bold": True})
    text.insert_embed(3, {"image": "x.png"})
    text.format(0, 4, {"italic": True})
    doc["map"] = pycrdt.Map({"n": 1, "f": 1.5, "s": "😎", "b": b"\x00\xff", "l": [1, None, True], "m": {"k": "v"}})
    doc["array"] = pycrdt.Array([1, "two", pycrdt.Text("nested 🎉"), pycrdt.Map({"a": 1}), pycrdt.Array([2])])
    doc["xml"] = pycrdt.XmlFragment([pycrdt.XmlElement("p", {"class": "c"}, [pycrdt.XmlText("x 😎 y")])])
    del text[0:2]
    return doc


def test_it_reads_every_kind_of_content_pycrdt_writes() -> None:
    doc = a_document_with_every_kind_of_content()
    check = UpdateCheck()
    check.reset(doc.get_update())
    assert not check._off
    assert check._reach == read_state_vector(doc.get_state())
    copy = pycrdt.Doc()
    fresh = UpdateCheck()
    whole = doc.get_update()
    fresh.apply(whole, read_update(whole), copy.apply_update)  # a whole document integrates
    assert fresh._reach == check._reach and fresh._pairs == check._pairs and fresh._depths == check._depths


@pytest.mark.slow
@given(st.binary(max_size=64))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_are_checked_without_crashing(data: bytes) -> None:
    check = UpdateCheck()
    check.reset(YJS_INSERT)
    applied: list[bytes] = []
    try:
        check.apply(data, read_update(data), applied.append)
    except RemoteProtocolError as exc:
        assert exc.code == ErrorCode.INVALID_UPDATE
    except ValueError:
        assert not applied  # refused before anything was applied
    assert not check._off
