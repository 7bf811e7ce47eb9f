"""Large documents (issue: "Large documents open and upload, over every endpoint, whatever
their size up to a configured maximum"): max_document_bytes is enforced with a clear code on
both endpoints, and y-websocket clients, which cannot split what they send, may upload a whole
document up to that size even when native messages are limited to less."""

from __future__ import annotations

from collections.abc import Callable

import pycrdt
from trio.testing import MockClock

from plait.protocol import Ack, CloseCode, Error, ErrorCode, SyncStep1, SyncStep2, TransportClosed, Update, YSyncStep, encode_sync

from .client import DocClient, until_text
from .conftest import make_engine
from .test_yjs_session import YClient, yjs


def text_update(text: str, client_id: int = 5) -> bytes:
    doc = pycrdt.Doc(client_id=client_id)
    doc.get("text", type=pycrdt.Text).insert(0, text)
    return doc.get_update()


async def closed_code(y: YClient) -> TransportClosed:
    for _ in range(20):
        try:
            await y.next()
        except TransportClosed as exc:
            return exc
    raise AssertionError("not closed")


async def test_native_update_past_the_maximum_is_refused_and_changes_nothing(autojump_clock: MockClock) -> None:
    async with make_engine(max_document_bytes=4096) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.join("r")
        await a.send(Update(1, 1, text_update("x" * 3000)))
        await a.wait_for(Ack)
        await a.send(Update(1, 2, text_update("y" * 3000, client_id=6)))
        error = await a.wait_for(Error)
        assert (error.ref, error.code) == (2, ErrorCode.DOCUMENT_TOO_LARGE)
        # The document is what it was, and the connection goes on.
        await a.send(SyncStep1(1, b"\x00"))
        step2 = await a.wait_for(SyncStep2)
        check = pycrdt.Doc()
        check.apply_update(step2.update)
        assert str(check.get("text", type=pycrdt.Text)) == "x" * 3000


async def test_the_maximum_counts_the_document_not_the_history(autojump_clock: MockClock) -> None:
    """Overwriting one map key many times stores many updates but keeps the document small:
    the estimate is corrected by measuring, so such a room is not refused."""
    async with make_engine(max_document_bytes=2048) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.join("r")
        doc = pycrdt.Doc(client_id=9)
        config = doc.get("config", type=pycrdt.Map)
        for i in range(40):
            before = doc.get_state()
            config["value"] = "v" * 100 + str(i)
            await a.send(Update(1, i + 1, doc.get_update(before)))
            frame = await a.receive()
            while not isinstance(frame, (Error, Ack)):
                frame = await a.receive()
            assert not isinstance(frame, Error), frame


async def test_yjs_upload_past_the_maximum_closes_4011_without_retry(autojump_clock: MockClock) -> None:
    async with make_engine(max_document_bytes=4096) as engine:
        y = await yjs(engine)
        await y.transport.send_message(encode_sync(YSyncStep.STEP2, text_update("z" * 5000)))
        closed = await closed_code(y)
        assert closed.code == CloseCode.DOCUMENT_TOO_LARGE
        assert not CloseCode(closed.code).retryable
        async with engine.room("r") as room:
            assert str(room.doc.get("text", type=pycrdt.Text)) == ""


def test_a_connection_can_queue_the_first_sync_of_the_largest_document_allowed() -> None:
    """Otherwise joining a document near max_document_bytes is TOO_SLOW, and the client
    resyncs in a loop."""
    from plait.engine import EngineConfig

    config = EngineConfig()
    assert config.outbox_max_bytes >= config.max_document_bytes + config.max_message_bytes


async def test_a_document_over_the_maximum_takes_deletions_until_it_is_under(autojump_clock: MockClock) -> None:
    """A document can end up past the maximum (server-side code, or edits made at the same
    moment on two processes of a cluster, each within it): it is not stuck. Updates that only
    delete are taken; inserts are refused until it is under again."""
    async with make_engine(max_document_bytes=4096) as engine:
        a = DocClient(engine.connect_memory())
        await a.hello()
        await a.join("r")
        async with engine.room("r") as room:
            room.doc.get("text", type=pycrdt.Text).insert(0, "s" * 6000)  # server-side: past it
        await until_text(a, "s" * 6000)
        await a.send(Update(1, 1, text_update("more", client_id=77)))
        error = await a.wait_for(Error)
        assert (error.ref, error.code) == (1, ErrorCode.DOCUMENT_TOO_LARGE)
        await a.send(Update(1, 2, edit_after(a, lambda text: text.__delitem__(slice(0, 5000)))))
        ack = await a.wait_for(Ack)
        assert ack.ref == 2
        await a.send(Update(1, 3, edit_after(a, lambda text: text.insert(0, "fits again"))))
        ack = await a.wait_for(Ack)
        assert ack.ref == 3
        async with engine.room("r") as room:
            assert str(room.doc.get("text", type=pycrdt.Text)) == "fits again" + "s" * 1000


def edit_after(client: DocClient, change: Callable[[pycrdt.Text], object]) -> bytes:
    before = client.doc.get_state()
    change(client.text)
    return client.doc.get_update(before)
