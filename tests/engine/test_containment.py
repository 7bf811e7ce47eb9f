"""Containment (style §3): an exception from application code (hooks, a store, a trace file) or
from one connection's background tasks fails that connection or request only. It is refused
with the internal-error code, the traceback is logged, and the engine keeps serving everyone
else: `async with Engine(...)` never exits because of it.

Each test runs its engine in its own `async with` block, so that an exception escaping into
the engine's nursery would fail the test rather than a fixture."""

from __future__ import annotations

import errno
import io
import logging
import math
from typing import Any

import pycrdt
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, Hooks, Identity, RoomUnavailable
from plait.engine._record import TraceRecorder
from plait.protocol import (
    ABNORMAL_CLOSURE,
    Access,
    Ack,
    ChannelClosed,
    CloseCode,
    Error,
    ErrorCode,
    Event,
    Hello,
    Join,
    Joined,
    Ping,
    Pong,
    PresenceSnapshot,
    Publish,
    SyncStep2,
    TransportClosed,
    Update,
)
from plait.storage import MemoryStore, RoomData

from .client import DocClient, YjsClient, assert_engine_serves, edit, until_text, yjs_client
from .conftest import CONFIG, counter_ids, make_engine, running_engine

HOOK_TIMEOUT = 10.0  # EngineConfig's default, which these tests keep


class AppAbort(BaseException):
    """Not an Exception: fresh-user pass 4 found one stopping the engine."""


class Misbehaving(Hooks):
    """Application hooks with bugs, chosen by the token, room or event name."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: list[str] = []

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        if token == "raise":
            raise RuntimeError("auth backend bug")
        if token == "exit":  # an application that calls sys.exit() in a hook
            raise SystemExit(3)
        if token == "base":  # an application's own BaseException
            raise AppAbort("abort")
        if token == "int-id":
            return {"id": 42}
        if token == "not-a-map":
            return "alice"  # type: ignore[return-value]
        if token == "nan-identity":
            return {"id": "alice", "score": math.nan}
        if token == "huge-identity":  # over max_presence_bytes: it goes in every presence entry
            return {"id": "alice", "groups": ["g" * 100] * 1000}
        if token == "hang":
            await trio.sleep_forever()
        return {"id": token or "anon"}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        if room == "authorize-raises":
            raise RuntimeError("acl bug")
        if room == "authorize-hangs":
            await trio.sleep_forever()
        if room == "authorize-says-yes":
            return "yes"  # type: ignore[return-value]
        return Access.WRITE

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: Any) -> Any:
        if name == "raise":
            raise RuntimeError("event hook bug")
        if name == "nan":
            return {"score": math.nan}
        if name == "hang":
            await trio.sleep_forever()
        return payload

    async def on_room_loaded(self, room: str, doc: pycrdt.Doc) -> None:  # type: ignore[type-arg]
        if room == "load-raises":
            raise RuntimeError("template bug")
        if room == "load-hangs":
            await trio.sleep_forever()

    async def on_room_stored(self, room: str, snapshot: bytes) -> None:
        self.stored.append(room)
        if room == "stored-raises":
            raise RuntimeError("mirror bug")
        if room == "stored-hangs":
            await trio.sleep_forever()


def traceback_logged(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    """An ERROR record carries the traceback of the RuntimeError(`message`) application code raised."""
    return any(
        r.levelno >= logging.ERROR and r.exc_info is not None and str(r.exc_info[1]) == message
        for r in caplog.records
    )


def error_logged(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(r.levelno >= logging.ERROR and all(w in r.getMessage() for w in words) for r in caplog.records)


async def native(engine: Engine, token: str | None = None) -> DocClient:
    client = DocClient(engine.connect_memory())
    await client.hello(token)
    return client


async def still_open(client: DocClient, nonce: int = 99) -> None:
    """The connection is open: a ping is answered."""
    await client.send(Ping(nonce))
    await client.wait_for(Pong)


# -- hooks ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["raise", "exit", "base", "int-id", "not-a-map", "nan-identity", "huge-identity"])
async def test_an_authenticate_hook_that_fails_refuses_only_that_hello(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, token: str
) -> None:
    async with running_engine(hooks=Misbehaving()) as engine:
        bad = DocClient(engine.connect_memory())
        await bad.send(Hello((1,), token, {"name": "test"}))
        assert (await bad.expect(Error)).code == ErrorCode.INTERNAL
        assert await bad.wait_closed() == CloseCode.INTERNAL_ERROR
        if token == "raise":
            assert traceback_logged(caplog, "auth backend bug")
        elif token in ("exit", "base"):
            assert error_logged(caplog, "authenticate")
        else:
            assert error_logged(caplog, "authenticate")
        await assert_engine_serves(engine)


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/yjs/r?token=raise", "auth backend bug"),
        ("/yjs/r?token=int-id", None),
        ("/yjs/authorize-raises", "acl bug"),
        ("/yjs/authorize-says-yes", None),
        ("/yjs/load-raises", "template bug"),
    ],
)
async def test_a_hook_that_fails_while_a_yjs_connection_is_set_up_refuses_only_it(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, path: str, logged: str | None
) -> None:
    async with running_engine(hooks=Misbehaving()) as engine:
        bad = YjsClient(engine.connect_memory(path))
        closed = await bad.wait_closed()
        assert closed.code == CloseCode.INTERNAL_ERROR and closed.reason
        if logged is not None:
            assert traceback_logged(caplog, logged)
        else:
            assert error_logged(caplog, "hook")
        await assert_engine_serves(engine)


@pytest.mark.parametrize("room", ["authorize-raises", "authorize-says-yes"])
async def test_an_authorize_hook_that_fails_refuses_that_join_and_the_connection_stays_open(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, room: str
) -> None:
    async with running_engine(hooks=Misbehaving()) as engine:
        a = await native(engine, "alice")
        await a.send(Join(1, room, None, None))
        err = await a.expect(Error, ref=1)
        assert err.code == ErrorCode.INTERNAL
        assert error_logged(caplog, "authorize")
        await still_open(a)
        await a.join("r")  # the next join of the same connection works
        await a.wait_for(PresenceSnapshot)
        await a.send(Update(1, 7, edit(a.doc, "x")))
        assert (await a.wait_for(Ack)).ref == 7
        await assert_engine_serves(engine)


async def joined(engine: Engine, token: str, room: str = "r") -> DocClient:
    client = await native(engine, token)
    await client.join(room)
    await client.wait_for(PresenceSnapshot)
    return client


@pytest.mark.parametrize("name", ["raise", "nan"])
async def test_an_on_event_hook_that_fails_refuses_that_publish_only(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    async with running_engine(hooks=Misbehaving()) as engine:
        a, b = await joined(engine, "alice"), await joined(engine, "bob")
        await a.send(Publish(1, 1, name, {"score": 1}, None))
        err = await a.wait_for(Error)
        assert (err.ref, err.code) == (1, ErrorCode.INTERNAL)
        if name == "raise":
            assert traceback_logged(caplog, "event hook bug")
        else:
            assert error_logged(caplog, "on_event")
        # The connection carries on, and the failed publish took no sequence number.
        await a.send(Publish(1, 2, "chat", {"text": "hi"}, None))
        ack = await a.wait_for(Ack)
        assert (ack.ref, ack.value) == (2, 1)
        event = await b.wait_for(Event)
        assert (event.seq, event.name, event.payload) == (1, "chat", {"text": "hi"})
        await assert_engine_serves(engine)


@pytest.mark.parametrize("hung", ["authorize", "on_event"])
async def test_a_hook_that_never_returns_fails_its_request_after_hook_timeout(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, hung: str
) -> None:
    async with running_engine(hooks=Misbehaving()) as engine:
        a, b = await joined(engine, "alice"), await joined(engine, "bob")
        start = trio.current_time()
        if hung == "authorize":
            await a.send(Join(1, "authorize-hangs", None, None))
        else:
            await a.send(Publish(1, 1, "hang", None, None))
        # Meanwhile the room serves everyone else.
        await b.send(Update(1, 5, edit(b.doc, "meanwhile")))
        assert (await b.wait_for(Ack)).ref == 5
        with trio.fail_after(3 * HOOK_TIMEOUT):
            err = await a.wait_for(Error)
        assert (err.ref, err.code) == (1, ErrorCode.INTERNAL)
        assert trio.current_time() - start == pytest.approx(HOOK_TIMEOUT)
        assert error_logged(caplog, hung, "longer")
        await still_open(a)
        await assert_engine_serves(engine)


@pytest.mark.parametrize("room", ["load-raises", "load-hangs"])
async def test_an_on_room_loaded_hook_that_fails_refuses_the_room_and_keeps_its_data(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, room: str
) -> None:
    store, precious = MemoryStore(), edit(pycrdt.Doc(), "precious")
    await store.append(room, [precious])
    async with running_engine(store=store, hooks=Misbehaving()) as engine:
        a = await native(engine)
        await a.send(Join(1, room, None, None))
        with trio.fail_after(3 * HOOK_TIMEOUT):
            err = await a.wait_for(Error)
        assert (err.ref, err.code) == (1, ErrorCode.STORAGE_UNAVAILABLE)  # Hooks.on_room_loaded's contract
        if room == "load-raises":
            assert traceback_logged(caplog, "template bug")
        else:
            assert error_logged(caplog, "on_room_loaded", "longer")
        await still_open(a)
        await assert_engine_serves(engine)
    assert store._rooms[room].updates == [precious]


@pytest.mark.parametrize("room", ["stored-raises", "stored-hangs"])
async def test_an_on_room_stored_hook_that_fails_does_not_hold_the_room(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture, room: str
) -> None:
    store, hooks = MemoryStore(), Misbehaving()
    async with running_engine(store=store, hooks=hooks) as engine:
        a = await joined(engine, "alice", room)
        await a.send(Update(1, 1, edit(a.doc, "kept")))
        await a.wait_for(Ack)
        await a.transport.aclose()
        await trio.sleep(CONFIG.presence_grace + CONFIG.room_idle_grace + 1)  # the room unloads
        # A new join waits for the unload to finish: the hook must not hold it forever.
        start = trio.current_time()
        b = DocClient(engine.connect_memory())
        await b.hello()
        await b.send(Join(1, room, b"\x00", None))
        with trio.fail_after(3 * HOOK_TIMEOUT):
            await b.wait_for(Joined)
        assert trio.current_time() - start <= HOOK_TIMEOUT + 0.1
        b.apply((await b.wait_for(SyncStep2)).update)
        assert str(b.text) == "kept"
        assert hooks.stored == [room]
        if room == "stored-raises":
            assert traceback_logged(caplog, "mirror bug")
        else:
            assert error_logged(caplog, "on_room_stored", "longer")
        await assert_engine_serves(engine)
    assert store._rooms[room].snapshot is not None  # stored whatever the hook did


# -- stores and trace files -----------------------------------------------------------------


class BrokenAppend(MemoryStore):
    """A store with a bug (not a StorageError) for rooms named broken*."""

    async def append(self, room: str, updates: Any) -> None:
        if room.startswith("broken"):
            raise RuntimeError("/srv/plait/secret.db: disk image is malformed")
        await super().append(room, updates)


async def test_a_store_that_raises_fails_the_room_with_storage_unavailable(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_engine(store=BrokenAppend()) as engine:
        a = await joined(engine, "alice", "broken")
        await a.send(Update(1, 5, edit(a.doc, "x")))
        err = await a.wait_for(Error)
        assert (err.ref, err.code) == (5, ErrorCode.STORAGE_UNAVAILABLE)
        closed = await a.wait_for(ChannelClosed)
        assert closed.code == ErrorCode.STORAGE_UNAVAILABLE
        # The store's own words (a path) are for the server's log, not for clients.
        assert "secret" not in err.message and "secret" not in closed.message
        assert traceback_logged(caplog, "/srv/plait/secret.db: disk image is malformed")
        await still_open(a)


async def test_flushed_raises_when_the_store_raises_instead_of_waiting_forever(autojump_clock: MockClock) -> None:
    async with running_engine(store=BrokenAppend()) as engine:
        async with engine.room("broken-handle") as room:
            room.doc.get("text", type=pycrdt.Text).insert(0, "lost?")
            with trio.fail_after(60), pytest.raises(RoomUnavailable):
                await room.flushed()
        await assert_engine_serves(engine)


class FullDisk(io.StringIO):
    """A trace file on a disk that fills up once `full` is set."""

    full = False

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)


async def test_a_trace_file_that_cannot_be_written_stops_recording_not_connections(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    out = FullDisk()
    recorder = TraceRecorder(out, {})
    with trio.fail_after(600):
        async with Engine(store=MemoryStore(), config=CONFIG, session_ids=counter_ids(), recorder=recorder) as engine:
            a = await joined(engine, "alice")
            out.full = True
            await a.send(Update(1, 3, edit(a.doc, "recorded?")))
            assert (await a.wait_for(Ack)).ref == 3
            await assert_engine_serves(engine)
            await still_open(a)
    failures = [r for r in caplog.records if r.name == "plait.record" and r.levelno >= logging.ERROR]
    assert len(failures) == 1 and isinstance(failures[0].exc_info and failures[0].exc_info[1], OSError)


# -- a connection's own background tasks ----------------------------------------------------


class NoPong:
    """The server's end of a y-websocket connection whose client does not answer the server's
    WebSocket ping and then drops its socket: ping() waits for a pong, then raises
    TransportClosed. Everything else is the memory transport's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.path = inner.path
        self.pinged = trio.Event()

    async def send_message(self, data: bytes) -> None:
        await self._inner.send_message(data)

    async def receive_message(self) -> bytes | str:
        return await self._inner.receive_message()  # type: ignore[no-any-return]

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        await self._inner.aclose(code, reason)

    async def ping(self) -> None:
        self.pinged.set()
        await trio.sleep(1)  # no pong comes...
        raise TransportClosed(ABNORMAL_CLOSURE)  # ...and the socket is gone


async def test_a_yjs_client_that_drops_while_pinged_ends_only_its_session(autojump_clock: MockClock) -> None:
    from plait.engine import memory_transport_pair

    async with running_engine() as engine:
        client_end, server_end = memory_transport_pair("/yjs/r")
        transport = NoPong(server_end)
        engine.nursery.start_soon(engine.serve_transport, transport)
        y = YjsClient(client_end)
        await y.next()  # sync step 1: it is in the room
        with trio.fail_after(2 * CONFIG.heartbeat):
            await transport.pinged.wait()
        await trio.sleep(2)
        assert engine.statistics()["sessions"] == 0
        await assert_engine_serves(engine)


# -- shutdown -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "token"),
    [("/", None), ("/", "hang"), ("/yjs/r?token=hang", None)],
    ids=["native-no-hello", "native-authenticate-hangs", "yjs-authenticate-hangs"],
)
async def test_shutdown_does_not_wait_for_a_handshake(autojump_clock: MockClock, path: str, token: str | None) -> None:
    with trio.fail_after(600):
        async with make_engine(hooks=Misbehaving(), handshake_timeout=10) as engine:
            stuck = engine.connect_memory(path)
            if token is not None:
                await DocClient(stuck).send(Hello((1,), token, {}))
            await trio.sleep(1)
            start = trio.current_time()
    assert trio.current_time() - start < 1  # not the 10 s handshake timeout, nor the hook's
    with pytest.raises(TransportClosed) as closed:
        for _ in range(10):
            await stuck.receive_message()
    assert closed.value.code == CloseCode.GOING_AWAY


class _HangingStore(MemoryStore):
    async def append(self, room: str, updates: Any) -> None:
        await trio.sleep_forever()


async def test_shutdown_gives_up_on_a_store_that_hangs(autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A graceful shutdown is bounded: a store whose append never returns is given up on after
    shutdown_timeout, and the rooms it left are named in the log."""
    with trio.fail_after(600):
        async with make_engine(store=_HangingStore(), shutdown_timeout=20) as engine:
            a = DocClient(engine.connect_memory())
            await a.hello()
            await a.join("stuck-room")
            await a.send(Update(1, 1, edit(a.doc, "never stored")))
            await trio.sleep(1)
            start = trio.current_time()
    assert 19 < trio.current_time() - start < 22
    assert any("shutdown gave up" in r.getMessage() and "stuck-room" in r.getMessage() for r in caplog.records)


async def test_an_error_raised_while_the_connection_is_closing_stays_with_that_connection(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The hostile-input run: a room crashed, which closed its y-websocket members, and one of
    them then failed on the next message of the same batch. The error came out of the reader's
    nursery together with the Cancelled of the close, as one group that `except Exception`
    does not catch, and stopped the engine."""
    from plait.engine.sessions._yjs import YjsSession

    def handle_then_fail(self: YjsSession, message: object) -> None:
        self.close(CloseCode.INTERNAL_ERROR, "room failed")
        raise KeyError("a member the room no longer has")

    async with running_engine() as engine:
        victim = await yjs_client(engine)
        monkeypatch.setattr(YjsSession, "_handle", handle_then_fail)
        await victim.say({"name": "x"}, clock=1)
        closed = await victim.wait_closed()
        assert closed.code == CloseCode.INTERNAL_ERROR
        monkeypatch.undo()
        await assert_engine_serves(engine)


async def test_a_frame_the_state_machine_refuses_closes_that_session_not_the_room(autojump_clock: MockClock) -> None:
    # Every frame goes out through the session's state machine; one it refuses (a bug) must
    # not raise into the room's fan-out, which serves everyone else.
    from plait.protocol import SessionState, Update

    async with running_engine() as engine:
        victim, other = DocClient(engine.connect_memory()), DocClient(engine.connect_memory())
        for c in (victim, other):
            await c.hello()
            await c.join("r")
        [session] = [s for s in engine._sessions.values() if s.id == victim.welcome.session]
        session.conn.state = SessionState.AWAIT_WELCOME  # a bug: the state machine refuses room frames now
        async with engine.room("r") as handle:
            handle.doc.get("text", type=pycrdt.Text).insert(0, "x")
        assert await victim.wait_closed() == CloseCode.INTERNAL_ERROR
        other.apply((await other.wait_for(Update)).update)
        assert str(other.text) == "x"
        await assert_engine_serves(engine)


class _LoadHangsOnce(MemoryStore):
    """A store whose first load of room "stuck" never returns (a lock never released, a network
    call without a timeout); later loads work."""

    def __init__(self) -> None:
        super().__init__()
        self.hung = False

    async def load(self, room: str) -> RoomData:
        if room == "stuck" and not self.hung:
            self.hung = True
            await trio.sleep_forever()
        return await super().load(room)


async def test_a_load_that_never_returns_refuses_its_join_in_time_and_holds_up_nothing_after_it(
    autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The join waits store_load_timeout, not forever: it is refused STORAGE_UNAVAILABLE, the
    connection's next join is answered, and joining the room again loads it (nothing lost)."""
    store, precious = _LoadHangsOnce(), edit(pycrdt.Doc(), "precious")
    await store.append("stuck", [precious])
    async with running_engine(store=store, store_load_timeout=30, heartbeat=600) as engine:  # the test clients do not ping
        a = await native(engine)
        start = trio.current_time()
        await a.send(Join(1, "stuck", None, None))
        await a.send(Join(2, "other", None, None))
        err = await a.wait_for(Error)
        assert (err.ref, err.code) == (1, ErrorCode.STORAGE_UNAVAILABLE)
        assert 30 <= trio.current_time() - start < 31
        assert (await a.wait_for(Joined)).ref == 2
        assert any("failed to load" in r.getMessage() and "within 30 s" in r.getMessage() for r in caplog.records)
        b = DocClient(engine.connect_memory())
        await b.hello()
        await b.join("stuck")
        await until_text(b, "precious")
        await assert_engine_serves(engine)
