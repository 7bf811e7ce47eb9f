"""What the PostgreSQL store adds to the contract (tests/storage/test_contract.py runs that on
it too): one writer per database, read-only readers beside it, a connection that breaks or a
server that cannot be reached, a newer schema, passwords kept out of messages. Each test uses a
fresh schema of the session's private server (tests/servers.py)."""

from __future__ import annotations

import os
import threading
import time

import psycopg
import pytest
import trio
import trio.testing

from plait.storage import PostgreSQLStore, StorageUnavailable, StoredEvent, StoreLocked
from tests.servers import PostgresServer, free_port

pytestmark = pytest.mark.slow  # a real PostgreSQL server (started once per run, ~2 s)


def _terminate(server: PostgresServer) -> int:
    """End every backend this process's stores opened (what a server restart or a dropped
    network does to a connection); how many."""
    return server.terminate(os.getpid())


async def test_one_writer_per_database(postgres: PostgresServer) -> None:
    dsn = postgres.fresh_dsn()
    first, second = PostgreSQLStore(dsn), PostgreSQLStore(dsn)
    await first.open()
    try:
        with pytest.raises(StoreLocked, match="in use by another open store in this process"):
            await second.open()
        with pytest.raises(StoreLocked):
            await second.append("r", [b"x"])
    finally:
        await first.aclose()
    await second.append("r", [b"x"])  # the lock went with the first store's connection
    assert (await second.load("r")).updates == (b"x",)
    await second.aclose()


async def test_a_reader_beside_the_writer_cannot_write(postgres: PostgresServer) -> None:
    dsn = postgres.fresh_dsn()
    writer, reader = PostgreSQLStore(dsn), PostgreSQLStore(dsn, read_only=True)
    try:
        await writer.append("r", [b"a"])
        await writer.append_events("r", [StoredEvent(1, b"e")], keep=10)
        data = await reader.load("r")
        assert (data.updates, data.events) == ((b"a",), (StoredEvent(1, b"e"),))
        with pytest.raises(StorageUnavailable, match="read-only"):
            await reader.append("r", [b"b"])
        assert (await writer.load("r")).updates == (b"a",)
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_a_reader_of_a_database_plait_never_wrote(postgres: PostgresServer) -> None:
    reader = PostgreSQLStore(postgres.fresh_dsn(), read_only=True)
    with pytest.raises(StorageUnavailable, match="not a Plait database"):
        await reader.load("r")
    await reader.aclose()


async def test_a_broken_connection_fails_the_call_and_the_next_one_reconnects(postgres: PostgresServer) -> None:
    store = PostgreSQLStore(postgres.fresh_dsn())
    try:
        await store.append("r", [b"a"])
        assert _terminate(postgres) >= 1  # (a closed store's backend may still be exiting)
        with pytest.raises(StorageUnavailable):
            await store.append("r", [b"lost?"])  # not acknowledged: the caller keeps it
        await store.append("r", [b"b"])
        assert (await store.load("r")).updates[0] == b"a"
        assert (await store.load("r")).updates[-1] == b"b"
    finally:
        await store.aclose()


async def test_a_read_on_a_connection_that_died_meanwhile_goes_again_on_a_new_one(postgres: PostgresServer) -> None:
    """The server restarted, or an operator terminated the backend, while the store was idle:
    a join's load must not be refused for it (a write is: whether it committed is unknown)."""
    store = PostgreSQLStore(postgres.fresh_dsn())
    try:
        await store.append("r", [b"a"])
        await store.append_events("r", [StoredEvent(1, b"e")], keep=10)
        for read in (lambda: store.load("r"), lambda: store.events_since("r", 0), store.list_rooms):
            assert _terminate(postgres) >= 1
            assert await read()
        assert (await store.load("r")).updates == (b"a",)
    finally:
        await store.aclose()


async def test_a_writer_whose_lock_was_taken_while_it_was_cut_off_stops_writing(postgres: PostgresServer) -> None:
    """Its connection died (and the lock with it); another server started on the database.
    Two writers would both hand out event seq 1: the first must not write again."""
    dsn = postgres.fresh_dsn()
    first, second = PostgreSQLStore(dsn), PostgreSQLStore(dsn)
    try:
        await first.open()
        _terminate(postgres)
        await second.open()
        with pytest.raises(StorageUnavailable):  # the call that finds the connection dead
            await first.append("r", [b"x"])
        with pytest.raises(StoreLocked):  # and every one after it
            await first.append("r", [b"x"])
        assert (await second.load("r")).updates == ()
    finally:
        await first.aclose()
        await second.aclose()


async def test_an_unreachable_server_is_unavailable_and_the_password_is_never_shown() -> None:
    store = PostgreSQLStore(f"postgresql://plait:hunter2-secret@127.0.0.1:{free_port()}/plait")
    assert "hunter2" not in store.name
    with pytest.raises(StorageUnavailable) as caught:
        await store.open()
    assert "hunter2" not in str(caught.value) and "127.0.0.1" in str(caught.value)
    with pytest.raises(StorageUnavailable):
        await store.ping()
    await store.aclose()


async def test_a_database_of_a_newer_plait_is_refused_not_rewritten(postgres: PostgresServer) -> None:
    dsn = postgres.fresh_dsn()
    store = PostgreSQLStore(dsn)
    await store.append("r", [b"a"])
    await store.aclose()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE plait_meta SET value = '99' WHERE key = 'schema_version'")
    again = PostgreSQLStore(dsn)
    with pytest.raises(StorageUnavailable, match="schema version 99"):
        await again.load("r")
    await again.aclose()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM plait_updates").fetchone() == (1,)


async def test_ping_answers_while_the_server_does(postgres: PostgresServer) -> None:
    store = PostgreSQLStore(postgres.fresh_dsn())
    await store.open()
    try:
        await store.ping()
    finally:
        await store.aclose()


@pytest.mark.parametrize("room", ["it's", 'a"b', "x; DROP TABLE plait_updates; --", "ünïcødé 🎉", "%s %(x)s", "a\\b"])
async def test_room_names_are_data_never_sql(postgres: PostgresServer, room: str) -> None:
    store = PostgreSQLStore(postgres.fresh_dsn())
    try:
        await store.append(room, [b"u"])
        await store.append_events(room, [StoredEvent(1, b"e")], keep=3)
        await store.compact(room, b"S", 1)
        assert await store.list_rooms() == [room]
        data = await store.load(room)
        assert (data.snapshot, data.updates, data.events) == (b"S", (), (StoredEvent(1, b"e"),))
        await store.delete(room)
        assert await store.list_rooms() == []
    finally:
        await store.aclose()


async def test_calls_queued_behind_others_that_are_answered_wait_their_turn_past_the_timeout(
    postgres: PostgresServer,
) -> None:
    """A storm of calls on one connection, far longer together than the call timeout. The
    database answers each in turn, so none fails (they all did past the first timeout when it
    counted the wait for the connection). Each call takes a tenth of the timeout, so that a
    loaded machine's slower thread switches do not fail the test."""
    store = PostgreSQLStore(postgres.fresh_dsn(), call_timeout=0.5)
    try:
        await store.append("r", [b"a"])
        loaded: list[tuple[bytes, ...]] = []

        async def slow_load() -> None:
            await store._run(lambda conn: conn.execute("SELECT pg_sleep(0.05)"))
            loaded.append((await store.load("r")).updates)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(slow_load)
        assert loaded == [(b"a",)] * 30
        assert trio.current_time() - started > 1.0  # twice the timeout, else this proves nothing
    finally:
        await store.aclose()


async def test_a_stalled_server_fails_calls_after_the_timeout_and_they_work_once_it_answers(
    postgres: PostgresServer,
) -> None:
    store = PostgreSQLStore(postgres.fresh_dsn(), call_timeout=0.5)
    try:
        await store.append("r", [b"a"])
        postgres.pause()
        try:
            with pytest.raises(StorageUnavailable, match=r"no answer within 0\.5 s"):
                await store.append("r", [b"b"])
            with pytest.raises(StorageUnavailable, match=r"no answer within 0\.5 s"):
                await store.load("r")  # waits behind the stalled call, and gives up too
        finally:
            postgres.resume()
        await store.append("r", [b"c"])
        # The stalled append went through once the server woke: not acknowledged, but not
        # harmful (a Yjs update applies once however often it is stored).
        assert (await store.load("r")).updates in ((b"a", b"c"), (b"a", b"b", b"c"))
    finally:
        await store.aclose()


async def test_calls_made_while_an_earlier_one_has_no_answer_fail_at_once_not_after_another_timeout(
    postgres: PostgresServer,
) -> None:
    """A stalled database: once a call got no answer within the call timeout, the calls behind
    it are refused within a second (they waited a whole call timeout each, and a room's retry
    after its first refusal took twice the timeout to fail). Once it answers, calls work at once."""
    store = PostgreSQLStore(postgres.fresh_dsn(), call_timeout=2.0)
    try:
        await store.append("r", [b"a"])
        postgres.pause()
        try:
            with pytest.raises(StorageUnavailable, match=r"no answer within 2 s"):
                await store.append("r", [b"b"])
            for call in (lambda: store.append("r", [b"c"]), lambda: store.load("r")):
                started = trio.current_time()
                with pytest.raises(StorageUnavailable, match=r"no answer within 2 s"):
                    await call()
                assert trio.current_time() - started < 1.5
        finally:
            postgres.resume()
        await store.append("r", [b"d"])  # right away: the stalled call's answer is waited for
        assert (await store.load("r")).updates in ((b"a", b"d"), (b"a", b"b", b"d"))
    finally:
        await store.aclose()


async def test_calls_whose_deadline_passed_while_the_process_was_paused_are_not_failed(
    postgres: PostgresServer,
) -> None:
    """The process stops (SIGSTOP, a frozen VM, its loop held up) with a call under way and
    others queued, and the database answers only after the process runs again: their
    deadlines have passed by then, but the database was there: the call under way brings its
    answer, the queued ones go after it, none fails."""
    store = PostgreSQLStore(postgres.fresh_dsn(), call_timeout=1.0)
    try:
        await store.append("r", [b"a"])
        loaded: list[tuple[bytes, ...]] = []

        async def load() -> None:
            loaded.append((await store.load("r")).updates)

        postgres.pause()
        answers = threading.Timer(2.7, postgres.resume)  # after this process runs again
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(load)
                await trio.testing.wait_all_tasks_blocked()  # the first call is under way
                answers.start()
                time.sleep(2.5)  # noqa: ASYNC251 -- the point: nothing in this process runs
        finally:
            answers.join()
        assert loaded == [(b"a",)] * 3
    finally:
        await store.aclose()
