"""A room's life and what it leaves behind: unloaded rooms and their documents are freed,
rooms touched only from the server unload after the idle grace, a read-only member's
mandatory sync_step2 is acked when it changes nothing, and a client that stops reading is cut
off in bounded time, not only past a byte budget."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, Hooks, Identity
from plait.protocol import (
    Access,
    Ack,
    CloseCode,
    Error,
    ErrorCode,
    Join,
    Leave,
    Ping,
    Pong,
    PresenceSnapshot,
    SyncStep1,
    SyncStep2,
    Update,
)

from .client import DocClient, assert_engine_serves, edit, yjs_client
from .conftest import CONFIG, running_engine


async def member(engine: Engine, room: str, token: str | None = None) -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello(token)
    await client.join(room)
    await client.wait_for(PresenceSnapshot)
    return client


# -- unloading frees everything ---------------------------------------------------------------


@pytest.mark.parametrize("touched", ["joined", "server-side"])
async def test_unloaded_rooms_and_their_documents_are_freed(autojump_clock: MockClock, touched: str) -> None:
    refs: list[weakref.ref[Any]] = []
    async with running_engine() as engine:
        for i in range(4):
            name = f"{touched}-{i}"
            if touched == "joined":  # by a native and a y-websocket client, who then go
                native = await member(engine, name)
                await native.send(Update(1, 1, edit(native.doc, "x")))
                await native.wait_for(Ack)
                y = await yjs_client(engine, f"/yjs/{name}")
                await y.edit("y")
                async with engine.hold_room(name) as room:
                    refs += [weakref.ref(room), weakref.ref(room.doc)]
                del room
                await native.send(Leave(1, 2))
                await native.wait_for(Ack)
                await y.transport.aclose()
            else:  # only through engine.room()
                async with engine.room(name) as handle:
                    handle.doc.get("text", type=pycrdt.Text).insert(0, "server side")
                    await handle.flushed()
                    refs += [weakref.ref(handle._room), weakref.ref(handle.doc)]
                del handle
        await trio.sleep(CONFIG.presence_grace + CONFIG.room_idle_grace + 1)
        assert engine.statistics()["rooms"] == 0
        gc.collect()
        alive = [r() for r in refs if r() is not None]
        assert not alive, f"{len(alive)} of {len(refs)} rooms and documents still alive: {alive[:4]}"
        await assert_engine_serves(engine)


async def test_a_room_touched_only_from_the_server_unloads_after_the_idle_grace(autojump_clock: MockClock) -> None:
    async with running_engine() as engine:
        async with engine.room("server-only") as handle:
            handle.doc.get("text", type=pycrdt.Text).insert(0, "kept")
            await handle.flushed()
        released = trio.current_time()
        await trio.sleep(CONFIG.room_idle_grace - 0.5)
        assert engine.statistics()["rooms"] == 1  # not before the grace
        await trio.sleep(1)
        assert engine.statistics()["rooms"] == 0
        assert trio.current_time() - released <= CONFIG.room_idle_grace + 0.5
        async with engine.room("server-only") as handle:  # loads again, from the store
            assert str(handle.doc.get("text", type=pycrdt.Text)) == "kept"


# -- a read-only member's sync_step2 ------------------------------------------------------------


class Viewer(Hooks):
    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": token or "anon"}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return Access.READ if identity["id"] == "viewer" else Access.WRITE


def delete_set(doc: pycrdt.Doc) -> bytes:  # type: ignore[type-arg]
    """The update a client sends when it has nothing the server lacks: its whole delete set."""
    return doc.get_update(doc.get_state())


async def synced_viewer(engine: Engine) -> tuple[DocClient, bytes]:
    """A read-only member that joined with an empty document and applied the server's state;
    returns it with the server's state vector."""
    viewer = DocClient(engine.connect_memory())
    await viewer.hello("viewer")
    joined = await viewer.join("r", state_vector=b"\x00")
    assert joined.access == Access.READ
    step1 = await viewer.expect(SyncStep1)
    viewer.apply((await viewer.expect(SyncStep2)).update)
    await viewer.wait_for(PresenceSnapshot)
    return viewer, step1.state_vector


async def written(engine: Engine) -> DocClient:
    """A writer who typed "hello brave new world" and deleted " brave" and "new ", in separate
    transactions: the server's document has a delete set of several ranges."""
    writer = await member(engine, "r", "writer")
    text = writer.doc.get("text", type=pycrdt.Text)
    changes = [
        lambda: text.insert(0, "hello brave new world"),
        lambda: text.__delitem__(slice(5, 11)),
        lambda: text.__delitem__(slice(6, 10)),
    ]
    for ref, change in enumerate(changes, 1):
        before = writer.doc.get_state()
        change()
        await writer.send(Update(1, ref, writer.doc.get_update(before)))
        await writer.wait_for(Ack)
    assert str(text) == "hello world"
    return writer


async def server_doc(engine: Engine) -> tuple[str, bytes]:
    async with engine.room("r") as room:
        return str(room.doc.get("text", type=pycrdt.Text)), delete_set(room.doc)


@pytest.mark.parametrize("what", ["empty", "whole-delete-set"])
async def test_a_read_only_members_sync_step2_that_changes_nothing_is_acked(autojump_clock: MockClock, what: str) -> None:
    async with running_engine(hooks=Viewer()) as engine:
        writer = await written(engine)
        viewer, server_sv = await synced_viewer(engine)
        before = await server_doc(engine)
        update = b"\x00\x00" if what == "empty" else viewer.doc.get_update(server_sv)
        await viewer.send(SyncStep2(1, 5, update))
        assert await viewer.wait_for(Ack) == Ack(5, None)
        assert await server_doc(engine) == before
        await writer.send(Ping(1))
        await writer.wait_for(Pong)
        assert not [f for f in writer.inbox if isinstance(f, Update)]  # nothing was fanned out


UNKNOWN_CLIENT_DELETES = bytes([0, 1, 5, 1, 0, 3])
"""A Yjs v1 update with no structs and a delete set for client 5, which the server never saw:
one range, clocks [0, 3)."""


@pytest.mark.parametrize("what", ["insert", "delete-more", "delete-a-range-partly-deleted", "delete-unknown-client"])
async def test_a_read_only_members_sync_step2_that_changes_something_is_forbidden(autojump_clock: MockClock, what: str) -> None:
    async with running_engine(hooks=Viewer()) as engine:
        await written(engine)
        viewer, server_sv = await synced_viewer(engine)
        before = await server_doc(engine)
        text = viewer.doc.get("text", type=pycrdt.Text)
        if what == "insert":
            text.insert(0, "sneaky ")
        elif what == "delete-more":
            del text[0:1]  # "h": the server still has it
        elif what == "delete-a-range-partly-deleted":
            del text[4:6]  # "o " around the deleted " brave": the union with it is new
        update = UNKNOWN_CLIENT_DELETES if what == "delete-unknown-client" else viewer.doc.get_update(server_sv)
        await viewer.send(SyncStep2(1, 5, update))
        err = await viewer.wait_for(Error)
        assert (err.ref, err.code) == (5, ErrorCode.FORBIDDEN)
        assert await server_doc(engine) == before
        await assert_engine_serves(engine)


# -- a client that stops reading ----------------------------------------------------------------


@pytest.mark.parametrize("quiet_heartbeats", [0, 0.25], ids=["busy-at-once", "quiet-first"])
async def test_a_client_that_never_reads_is_closed_too_slow_within_the_lag_bound(
    autojump_clock: MockClock, quiet_heartbeats: float
) -> None:
    # A room producing a modest 4 small updates a second, for a client that keeps sending
    # (so it is not a heartbeat timeout) but never reads: well under a megabyte in total,
    # so only the time bound (outbox_max_lag) can end it, not outbox_max_bytes. Quiet first:
    # the heartbeat sweep has filed it for its next ping when it begins to fall behind.
    async with running_engine() as engine:
        stalled = DocClient(engine.connect_memory(buffer=2))
        await stalled.hello()
        await stalled.send(Join(1, "busy", None, None))
        await trio.sleep(quiet_heartbeats * engine.config.heartbeat)
        writer = await member(engine, "busy")
        start = trio.current_time()
        bound = engine.config.outbox_max_lag + engine.config.heartbeat / 4
        closed_at = None
        for i in range(int(3 * bound / 0.25)):
            await writer.send(Update(1, None, edit(writer.doc, "x")))
            if i % 20 == 0:
                await stalled.send(Ping(i))  # it talks, it just does not listen
            await trio.sleep(0.25)
            if engine.statistics()["sessions"] == 1:
                closed_at = trio.current_time()
                break
        assert closed_at is not None, "the client that never reads was never closed"
        assert closed_at - start <= bound + 0.25
        with trio.fail_after(5):
            assert await stalled.wait_closed() == CloseCode.TOO_SLOW
        await assert_engine_serves(engine)
