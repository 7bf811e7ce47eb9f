"""PostgreSQL as the shared store of a cluster (`PostgreSQLStore(dsn, shared=True)`).

Rules: a second store object in this process stands in for a second process (each store has a
connection, so a session, of its own: what PostgreSQL's locks see); each test uses a fresh
schema of the session's private server (tests/servers.py). Concurrency is real (worker threads
on separate connections), so every loop has a fixed bound instead of a time.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import psycopg
import pycrdt
import pytest
import trio

from plait.storage import PostgreSQLStore, StorageUnavailable, StoredEvent, StoreLocked
from plait.storage._postgres import ROOM_LOCK_CLASS, SCHEMA_VERSION, _room_key
from tests.servers import PostgresServer

pytestmark = pytest.mark.slow  # a real PostgreSQL server


@pytest.fixture
async def cluster(postgres: PostgresServer) -> AsyncIterator[Callable[..., PostgreSQLStore]]:
    """Makes stores on one fresh database (shared unless told otherwise), closed at the end."""
    dsn = postgres.fresh_dsn()
    made: list[PostgreSQLStore] = []

    def make(*, shared: bool = True, read_only: bool = False) -> PostgreSQLStore:
        made.append(PostgreSQLStore(dsn, shared=shared, read_only=read_only))
        return made[-1]

    yield make
    for store in made:
        await store.aclose()


def _insert(key: str) -> bytes:
    """A Yjs update that sets `key` in the map `m` of a doc of its own (a client of its own)."""
    doc = pycrdt.Doc()
    doc["m"] = m = pycrdt.Map()
    m[key] = True
    return doc.get_update()


def _keys(snapshot: bytes | None, updates: tuple[bytes, ...]) -> set[str]:
    doc = pycrdt.Doc()
    for update in (snapshot, *updates) if snapshot is not None else updates:
        doc.apply_update(update)
    return set(doc.get("m", type=pycrdt.Map).keys())


# -- who may open a database beside whom -------------------------------------------------------


async def test_shared_stores_write_one_database_side_by_side(cluster: Callable[..., PostgreSQLStore]) -> None:
    first, second = cluster(), cluster()
    await first.open()
    await second.open()
    await first.append("r", [b"a"])
    await second.append("r", [b"b"])
    await first.append_events("r", [StoredEvent(1, b"e")], keep=10)
    for store in (first, second):
        data = await store.load("r")
        assert (data.updates, data.events) == ((b"a", b"b"), (StoredEvent(1, b"e"),))


async def test_an_exclusive_store_cannot_open_a_database_a_cluster_uses(cluster: Callable[..., PostgreSQLStore]) -> None:
    first, second, single = cluster(), cluster(), cluster(shared=False)
    await first.open()
    await second.open()
    with pytest.raises(StoreLocked, match="in use by another open store in this process") as refused:
        await single.open()
    assert refused.value.pid == os.getpid()
    assert "a cluster's: plait serve --cluster" in str(refused.value)  # says who uses it
    await first.aclose()
    with pytest.raises(StoreLocked):  # one member of the cluster is enough to keep it out
        await single.append("r", [b"x"])
    await second.aclose()
    await single.append("r", [b"x"])
    assert (await single.load("r")).updates == (b"x",)


async def test_a_shared_store_cannot_open_a_database_a_single_server_uses(cluster: Callable[..., PostgreSQLStore]) -> None:
    single, shared = cluster(shared=False), cluster()
    await single.open()
    with pytest.raises(StoreLocked, match="in use by another open store in this process") as refused:
        await shared.open()
    assert refused.value.pid == os.getpid()
    assert "cluster" not in str(refused.value)
    await single.aclose()
    await shared.append("r", [b"x"])
    assert (await shared.load("r")).updates == (b"x",)


async def test_a_shared_store_cut_off_while_a_single_server_took_the_database_stops_writing(
    cluster: Callable[..., PostgreSQLStore], postgres: PostgresServer
) -> None:
    shared, single = cluster(), cluster(shared=False)
    await shared.open()
    postgres.terminate(os.getpid())
    await single.open()
    with pytest.raises(StorageUnavailable):  # the call that finds the connection dead
        await shared.append("r", [b"x"])
    with pytest.raises(StoreLocked):  # and every one after it
        await shared.append("r", [b"x"])
    assert (await single.load("r")).updates == ()


async def test_a_reader_beside_a_cluster(cluster: Callable[..., PostgreSQLStore]) -> None:
    shared, reader = cluster(), cluster(shared=False, read_only=True)
    await shared.append("r", [b"a"])
    assert (await reader.load("r")).updates == (b"a",)
    with pytest.raises(StorageUnavailable, match="read-only"):
        await reader.next_seq("r", 0)


def test_read_only_and_shared_is_a_contradiction() -> None:
    with pytest.raises(ValueError, match="read-only or shared"):
        PostgreSQLStore("postgresql://plait@127.0.0.1/plait", read_only=True, shared=True)


# -- a room's updates: ids in commit order, so compaction after a load loses nothing -----------

WRITER_STORES = 3
TASKS_PER_STORE = 2
APPENDS_PER_TASK = 60
MAX_COMPACTIONS = 10_000


class Writers:
    """WRITER_STORES processes x TASKS_PER_STORE tasks, each appending APPENDS_PER_TASK
    distinct inserts to one room; `running` counts the tasks not done yet."""

    def __init__(self, cluster: Callable[..., PostgreSQLStore], room: str) -> None:
        self.stores = [cluster() for _ in range(WRITER_STORES)]
        self.room = room
        self.running = WRITER_STORES * TASKS_PER_STORE
        self.expected = {f"{s}.{t}.{i}" for s in range(WRITER_STORES) for t in range(TASKS_PER_STORE)
                         for i in range(APPENDS_PER_TASK)}

    def start(self, nursery: trio.Nursery) -> None:
        for s, store in enumerate(self.stores):
            for t in range(TASKS_PER_STORE):
                nursery.start_soon(self._write, store, f"{s}.{t}")

    async def _write(self, store: PostgreSQLStore, name: str) -> None:
        try:
            for i in range(APPENDS_PER_TASK):
                await store.append(self.room, [_insert(f"{name}.{i}")])
        finally:
            self.running -= 1


async def test_compacting_what_a_load_read_never_drops_an_update_another_process_committed_meanwhile(
    cluster: Callable[..., PostgreSQLStore],
) -> None:
    """The cluster's compaction: load the room, merge its snapshot and the N updates read,
    compact(room, merged, N), while other processes append. If an update drawn an id before
    another's committed after it, a load between the two commits would miss it and the
    compaction would drop it unmerged (with the per-room append locks taken out, this test
    loses updates in most runs)."""
    room = "doc"
    writers = Writers(cluster, room)
    compactor = cluster()
    compactions = covered_total = 0

    async def compact() -> None:
        nonlocal compactions, covered_total
        for _ in range(MAX_COMPACTIONS):
            if not writers.running:
                return
            data = await compactor.load(room)
            if not data.updates:
                await trio.lowlevel.checkpoint()
                continue
            merged = pycrdt.merge_updates(*((data.snapshot,) if data.snapshot else ()), *data.updates)
            await compactor.compact(room, merged, len(data.updates))
            compactions += 1
            covered_total += len(data.updates)
        raise AssertionError(f"the writers did not finish within {MAX_COMPACTIONS} compactions")

    for store in (*writers.stores, compactor):
        await store.open()
    async with trio.open_nursery() as nursery:
        writers.start(nursery)
        nursery.start_soon(compact)

    data = await compactor.load(room)
    missing = writers.expected - _keys(data.snapshot, data.updates)
    assert not missing, f"{len(missing)} acknowledged updates lost by {compactions} compactions"
    assert compactions >= 5 and covered_total >= 5  # the compactions ran among the appends


async def test_two_processes_compacting_one_room_at_once_lose_nothing(cluster: Callable[..., PostgreSQLStore]) -> None:
    """What the engine does in a cluster: compact_stored, from two processes at the same time,
    while three others append. With load-then-compact from each, a compaction from an older
    load could replace a newer snapshot and drop updates it never read; compact_stored runs a
    room's compactions one after another, each folding in what the last one wrote."""
    room = "doc"
    writers = Writers(cluster, room)
    compactors = [cluster(), cluster()]
    folded = 0

    def merge(updates: list[bytes]) -> bytes:
        return pycrdt.merge_updates(*updates)

    async def compact(store: PostgreSQLStore) -> None:
        nonlocal folded
        for _ in range(MAX_COMPACTIONS):
            if not writers.running:
                return
            covered, snapshot = await store.compact_stored(room, merge)
            folded += covered
            assert (covered == 0) == (snapshot == b"")
            await trio.lowlevel.checkpoint()
        raise AssertionError(f"the writers did not finish within {MAX_COMPACTIONS} compactions")

    for store in (*writers.stores, *compactors):
        await store.open()
    async with trio.open_nursery() as nursery:
        writers.start(nursery)
        for store in compactors:
            nursery.start_soon(compact, store)

    data = await compactors[0].load(room)
    missing = writers.expected - _keys(data.snapshot, data.updates)
    assert not missing, f"{len(missing)} acknowledged updates lost"
    assert folded >= 5  # the compactions ran among the appends


async def test_appends_to_several_rooms_from_several_stores_do_not_deadlock(cluster: Callable[..., PostgreSQLStore]) -> None:
    """Each store's batches take several rooms' locks; in opposite orders they would deadlock
    (PostgreSQL would abort one with an error)."""
    stores = [cluster() for _ in range(3)]
    rooms = [f"room-{i}" for i in range(8)]

    async def write(store: PostgreSQLStore, order: list[str]) -> None:
        for round_ in range(10):
            async with trio.open_nursery() as nursery:  # one batch of several rooms
                for room in order:
                    nursery.start_soon(store.append, room, [b"%d" % round_])

    async with trio.open_nursery() as nursery:
        for i, store in enumerate(stores):
            nursery.start_soon(write, store, rooms if i % 2 else rooms[::-1])
    for room in rooms:
        assert len((await stores[0].load(room)).updates) == 30


async def test_an_append_kept_waiting_by_a_stalled_process_fails_and_is_not_stored_later(postgres: PostgresServer) -> None:
    """A process stalled inside its append transaction holds the room's lock. Appends to the
    room elsewhere fail after the call timeout (not acknowledged) and give up the wait too, so
    they do not land in the database unacknowledged once the stalled process moves on."""
    dsn = postgres.fresh_dsn()
    store = PostgreSQLStore(dsn, shared=True, call_timeout=0.5)
    try:
        await store.open()
        with psycopg.connect(dsn, autocommit=True) as stalled:  # a session without the timeouts
            with stalled.transaction():
                stalled.execute("SELECT pg_advisory_xact_lock(%s, %s)", (ROOM_LOCK_CLASS, _room_key("r")))
                with pytest.raises(StorageUnavailable):  # the call timeout or the lock's, whichever is first
                    await store.append("r", [b"late"])
                for _ in range(100):  # the abandoned wait ends by lock_timeout, on the server
                    waiting = stalled.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = %s",
                        (ROOM_LOCK_CLASS,),
                    ).fetchone()
                    if waiting == (0,):
                        break
                    await trio.sleep(0.05)
                else:
                    raise AssertionError("the abandoned append still waits for the room's lock")
        await store.append("r", [b"next"])
        assert (await store.load("r")).updates == (b"next",)
    finally:
        await store.aclose()


# -- event sequence and epoch -------------------------------------------------------------------


async def test_next_seq_hands_out_each_number_once_across_processes(cluster: Callable[..., PostgreSQLStore]) -> None:
    stores = [cluster() for _ in range(3)]
    taken: list[int] = []

    async def take(store: PostgreSQLStore) -> None:
        for _ in range(20):
            taken.append(await store.next_seq("r", 0))

    async with trio.open_nursery() as nursery:
        for store in stores:
            for _ in range(2):
                nursery.start_soon(take, store)
    assert sorted(taken) == list(range(1, 121))
    assert await stores[0].next_seq("other", 0) == 1  # per room


async def test_next_seq_is_never_at_or_below_the_callers_head(cluster: Callable[..., PostgreSQLStore]) -> None:
    store = cluster()
    assert await store.next_seq("r", 41) == 42
    assert await store.next_seq("r", 0) == 43  # a caller behind still gets a new one
    assert await store.next_seq("r", 100) == 101  # a caller ahead (events from before the head)
    assert await store.next_seq("r", 50) == 102
    with pytest.raises(ValueError, match="0 or more"):
        await store.next_seq("r", -1)


async def test_next_seq_continues_after_events_stored_before_the_cluster(cluster: Callable[..., PostgreSQLStore]) -> None:
    single = cluster(shared=False)
    await single.append_events("r", [StoredEvent(7, b"a"), StoredEvent(8, b"b")], keep=10)
    await single.aclose()
    shared = cluster()
    assert await shared.next_seq("r", 0) == 9


async def test_the_first_epoch_proposed_is_the_rooms_for_every_process(cluster: Callable[..., PostgreSQLStore]) -> None:
    stores = [cluster() for _ in range(3)]
    answers: dict[str, str] = {}

    async def propose(store: PostgreSQLStore, mine: str) -> None:
        answers[mine] = await store.epoch("r", mine)

    async with trio.open_nursery() as nursery:
        for i, store in enumerate(stores):
            nursery.start_soon(propose, store, f"epoch-{i}")
    (winner,) = set(answers.values())
    assert winner in answers
    assert await stores[0].epoch("r", "late") == winner
    await stores[1].next_seq("r", 0)  # the head and the epoch share a row: neither clears the other
    assert await stores[2].epoch("r", "later") == winner
    assert await stores[0].epoch("s", "other room") == "other room"


async def test_a_deleted_room_starts_a_new_history(cluster: Callable[..., PostgreSQLStore]) -> None:
    store = cluster()
    assert await store.epoch("r", "old") == "old"
    await store.append("r", [b"u"])
    for _ in range(3):
        await store.next_seq("r", 0)
    await store.delete("r")
    assert await store.list_rooms() == []
    assert await store.epoch("r", "new") == "new"
    assert await store.next_seq("r", 0) == 1


async def test_a_room_with_only_an_epoch_is_not_listed(cluster: Callable[..., PostgreSQLStore]) -> None:
    store = cluster()
    await store.epoch("joined", "e")
    await store.next_seq("joined", 0)
    assert await store.list_rooms() == []


# -- the schema -----------------------------------------------------------------------------------

_VERSION_1 = (
    "CREATE TABLE plait_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE plait_snapshots (room TEXT PRIMARY KEY, data BYTEA NOT NULL)",
    "CREATE TABLE plait_updates (id BIGSERIAL PRIMARY KEY, room TEXT NOT NULL, data BYTEA NOT NULL)",
    "CREATE INDEX plait_updates_by_room ON plait_updates (room, id)",
    "CREATE TABLE plait_events (room TEXT NOT NULL, seq BIGINT NOT NULL, body BYTEA NOT NULL, PRIMARY KEY (room, seq))",
    "INSERT INTO plait_meta VALUES ('schema_version', '1')",
    "INSERT INTO plait_snapshots VALUES ('r', 'S')",
    "INSERT INTO plait_updates (room, data) VALUES ('r', 'u')",
    "INSERT INTO plait_events VALUES ('r', 5, 'e')",
)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "exclusive"])
async def test_a_version_1_database_is_migrated_and_keeps_its_data(postgres: PostgresServer, shared: bool) -> None:
    dsn = postgres.fresh_dsn()
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        for statement in _VERSION_1:
            conn.execute(statement)  # type: ignore[arg-type]
    reader = PostgreSQLStore(dsn, read_only=True)  # a reader reads version 1 as it is
    assert (await reader.load("r")).updates == (b"u",)
    await reader.aclose()
    store = PostgreSQLStore(dsn, shared=shared)
    try:
        data = await store.load("r")
        assert (data.snapshot, data.updates, data.events) == (b"S", (b"u",), (StoredEvent(5, b"e"),))
        assert await store.next_seq("r", 5) == 6
        assert await store.epoch("r", "e1") == "e1"
    finally:
        await store.aclose()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT value FROM plait_meta").fetchall() == [(str(SCHEMA_VERSION),)]
