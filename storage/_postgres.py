"""The PostgreSQL store: rooms in a PostgreSQL database, through psycopg 3.

- Every call runs in a worker thread (trio.to_thread) on the store's one connection, serialised
  by a limiter, as SQLite's store does; appends from every room are group-committed
  (storage/_group.py), so a busy server pays one commit per batch.
- A commit is durable when PostgreSQL says so (`synchronous_commit` as the server has it; its
  default, `on`, waits for the WAL flush).
- A connection that breaks (the server restarted, the network dropped) fails the call in flight
  with StorageUnavailable; the next call connects again. Nothing is retried behind the
  caller's back: the engine decides (a room's persister keeps the updates and refuses acks).
- The schema (tables prefixed `plait_`) has a version in `plait_meta`; a database from a newer
  Plait is refused, not rewritten. Creating it takes a transaction-level advisory lock, so
  servers starting together on an empty database do not race.
- One writer, as for every store: a writable store holds a session-level advisory lock on the
  database while open (spec/notes/storage.md). PostgreSQL drops it when the connection ends,
  also when the process dies, so a crash leaves no stale lock. If the connection breaks and
  another store took the lock meanwhile, this one stops writing (StoreLocked).

Shared mode (`shared=True`, scale-out: several `plait serve` processes on one database):
- Every shared store holds the same advisory lock in *shared* mode: shared stores open side by
  side, and a shared store and an exclusive one exclude each other (StoreLocked, naming a
  holder), so a single-process server never starts on a database a cluster uses, nor the
  reverse. A shared store that reconnects after an exclusive one took the lock stops writing.
- Within one room, update ids are in commit order: an append transaction takes a
  transaction-level advisory lock per room it writes (ROOM_LOCK_CLASS, the room's hash), in
  ascending key order so two transactions never deadlock, before it draws ids from the
  sequence, and holds them until it commits. So a load that sees a room's update also sees
  every update of that room with a smaller id, and `compact(room, snapshot, covered)` after a
  load that read `covered` updates drops exactly those, whatever other processes append
  meanwhile (without it, an id drawn before another transaction's but committed after it
  could be dropped unmerged). Two rooms whose hashes collide only share a lock.
- A shared store's sessions wait for a lock, and leave a transaction idle, no longer than
  `call_timeout` (`lock_timeout`, `idle_in_transaction_session_timeout`; the caller has given
  up by then): a stalled process cannot hold a room's lock, and with it every other process's
  appends to that room, for longer than that.
- `next_seq` (a room's event sequence numbers) and `epoch` (its history's id) are atomic
  across processes (table `plait_heads`, one row per room; any writable store may use them).
  `delete` forgets both: a deleted room starts a new history.
- Everything else is the Store contract, unchanged; a compaction is the caller's to
  coordinate (two processes compacting one room at once would each replace the snapshot).

psycopg is imported on first use: `plait.storage` does not need it installed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import trio

from ._errors import StorageError, StorageUnavailable, StoreLocked
from ._group import GroupCommit
from ._store import RoomData, StoredEvent

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION: Final = 3
"""1: snapshots, updates, events. 2: plait_heads (event sequence and epoch per room). 3: an
event's idempotency key beside it (add_event)."""
LOCK_KEY: Final = 0x706C616974
"""The advisory lock ('plait' in ASCII) a writable store holds (shared stores in shared mode);
its schema migration takes LOCK_KEY + 1 for the length of one transaction."""
ROOM_LOCK_CLASS: Final = 0x706C6169
COMPACT_LOCK_CLASS: Final = ROOM_LOCK_CLASS + 1
KEY_LOCK_CLASS: Final = ROOM_LOCK_CLASS + 2
"""A room's keyed events (add_event) take this one: one key, one event."""
"""A room's compactions (compact_stored) take this one, so they run one after another
without holding up its appends."""
"""The first key ('plai') of the transaction-level advisory lock a shared store's append takes
per room, the second being `_room_key(room)`. Two-key advisory locks never collide with the
one-key LOCK_KEY (pg_locks tells them apart by objsubid)."""
_ROWS = "unnest(%s::text[], %s::bytea[]) WITH ORDINALITY AS u(room, data, n)"
_INSERT = f"INSERT INTO plait_updates (room, data) SELECT u.room, u.data FROM {_ROWS} ORDER BY u.n"
_INSERT_LOCKED = (
    "INSERT INTO plait_updates (room, data) SELECT u.room, u.data FROM"
    " (SELECT count(pg_advisory_xact_lock(%s::int, k.key)) FROM unnest(%s::int[]) AS k(key)) AS locked,"
    f" {_ROWS} ORDER BY u.n"
)
"""A batch of updates in one statement: its rows in order (so ids in order); `_INSERT_LOCKED`
takes the rooms' locks (keys sorted by the caller, taken in that order) before any row."""

CONNECT_TIMEOUT: Final = 5
"""Seconds to wait for a connection before the call fails with StorageUnavailable."""
CALL_TIMEOUT: Final = 10.0
"""Seconds a call may wait for the database (a stalled server, a network that drops packets
silently) before it fails with StorageUnavailable. Its worker thread is left to finish on its
own, holding the connection: the calls after it wait for it (and time out) until the server
answers again."""
LATE: Final = 1.0
"""Seconds past a call's deadline that this process woke up to find it passed: it was not
running (paused, frozen), so the database gets another call_timeout (PostgreSQLStore._run)."""
T = TypeVar("T")

_META: Final = "CREATE TABLE IF NOT EXISTS plait_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_HEADS: Final = (
    "CREATE TABLE IF NOT EXISTS plait_heads (room TEXT PRIMARY KEY, seq BIGINT NOT NULL DEFAULT 0, epoch TEXT)"
)
_EVENT_KEYS: Final = (
    "ALTER TABLE plait_events ADD COLUMN IF NOT EXISTS key TEXT",
    "CREATE INDEX IF NOT EXISTS plait_events_by_key ON plait_events (room, key) WHERE key IS NOT NULL",
)
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS plait_snapshots (room TEXT PRIMARY KEY, data BYTEA NOT NULL)",
    # Ids order a room's updates. The sequence keeps its default CACHE 1, so ids are drawn in
    # time order across sessions: what shared mode's per-room locks rely on.
    "CREATE TABLE IF NOT EXISTS plait_updates (id BIGSERIAL PRIMARY KEY, room TEXT NOT NULL, data BYTEA NOT NULL)",
    "CREATE INDEX IF NOT EXISTS plait_updates_by_room ON plait_updates (room, id)",
    "CREATE TABLE IF NOT EXISTS plait_events (room TEXT NOT NULL, seq BIGINT NOT NULL, body BYTEA NOT NULL, PRIMARY KEY (room, seq))",
    _HEADS,
    *_EVENT_KEYS,
)
"""The schema at SCHEMA_VERSION, for an empty database."""
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (_HEADS,),
    2: _EVENT_KEYS,
}
"""From version N to N + 1, in the migration's transaction."""


def redact(dsn: str) -> str:
    """The connection string without its password, for messages and logs."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # psycopg.ProgrammingError: not a connection string; say nothing of it
        return "the PostgreSQL database (unreadable connection string)"
    params.pop("password", None)
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


class PostgreSQLStore:
    """Args:
    dsn: a libpq connection string or URL: `postgresql://USER:PASSWORD@HOST:PORT/DB` or
        `host=... dbname=...` (libpq's environment variables fill in what it leaves out).
    read_only: read without taking the writer's lock (`plait inspect` while a server runs);
        writes raise StorageUnavailable.
    shared: one of several writers of this database, in as many processes (module docstring:
        shared mode). Not with read_only (ValueError).
    call_timeout: seconds the database may go without answering any of this store's calls
        before the calls waiting on it fail (CALL_TIMEOUT). A call queued behind others waits
        its turn as long as those are answered (a storm of room loads: each waits behind the
        rest), and runs for call_timeout at most. Once a call got no answer in that time, the
        database is taken for stalled: until that call's answer comes, later calls wait LATE
        for it and fail (not call_timeout each, behind it).

    Raises (from every method): StoreLocked when another writable store holds the database
    (for a shared store: an exclusive one; for an exclusive store: any other),
    StorageUnavailable when the database cannot be reached or refuses a statement (the message
    names the server, never the password), StorageError when a compaction covers more updates
    than are stored.
    """

    def __init__(
        self, dsn: str, *, read_only: bool = False, shared: bool = False, call_timeout: float = CALL_TIMEOUT
    ) -> None:
        if read_only and shared:
            raise ValueError("a PostgreSQL store is read-only or shared, not both (a reader takes no lock)")
        self.dsn = dsn
        self.read_only = read_only
        self.shared = shared
        self.call_timeout = call_timeout
        self.name = redact(dsn)
        self._limiter = trio.CapacityLimiter(1)
        self._waiting: set[trio.CancelScope] = set()
        """The deadlines of the calls under way or queued: each answer moves them on."""
        self._unanswered: _Call[Any] | None = None
        """A call given up with no answer whose thread still waits for one on the connection:
        the database is not answering, so the calls after it wait LATE for that answer, not
        call_timeout each."""
        self._conn: psycopg.Connection[Any] | None = None
        self._opened = False
        self._appends = GroupCommit(self._insert_updates)

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        app = f"plait {os.getpid()}@{socket.gethostname()}"[:63]  # names the lock's holder (_holder)
        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name=app)
        try:
            if self.read_only:
                conn.execute("SET default_transaction_read_only = on")
            else:
                take = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
                locked = conn.execute(f"SELECT {take}(%s)", (LOCK_KEY,)).fetchone()
                if locked is None or not locked[0]:
                    holder, cluster = _holder(conn)
                    what = f"{self.name} (a cluster's: plait serve --cluster)" if cluster else self.name
                    raise StoreLocked(what, holder)
            if self.shared:
                # Locks shared with other processes are held (and waited for) no longer than a
                # call may take: by then our caller gave up anyway (module docstring).
                ms = max(1, round(min(self.call_timeout, 86_400.0) * 1000))
                conn.execute(f"SET idle_in_transaction_session_timeout = {ms:d}")
                conn.execute(f"SET lock_timeout = {ms:d}")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        import psycopg

        if self.read_only:
            try:
                row = conn.execute("SELECT value FROM plait_meta WHERE key = 'schema_version'").fetchone()
            except psycopg.errors.UndefinedTable as exc:
                raise StorageUnavailable(f"{self.name}: not a Plait database") from exc
            if row is not None and int(row[0]) > SCHEMA_VERSION:
                raise self._newer(row[0])
            return
        with conn.transaction():  # all of it or nothing
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY + 1,))
            conn.execute(_META)
            row = conn.execute("SELECT value FROM plait_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT INTO plait_meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),))
                return
            version = int(row[0])
            if version > SCHEMA_VERSION:
                raise self._newer(row[0])
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute(
                    "UPDATE plait_meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
                )

    def _newer(self, version: str) -> StorageUnavailable:
        return StorageUnavailable(f"{self.name} has schema version {version}; this Plait reads up to {SCHEMA_VERSION}")

    async def _run(self, fn: Callable[[psycopg.Connection[Any]], T], *, read: bool = False) -> T:
        """`fn` on the store's connection, in a worker thread, within call_timeout. `read`: it
        only reads, so when the connection turns out to have died since the last call (the
        server restarted, its backend was terminated) it goes once more on a new one; a write
        fails instead (StorageUnavailable), as whether it committed is not known."""

        def on_connection() -> T:
            import psycopg

            try:
                reused = self._conn is not None and not self._conn.closed
                if self._conn is None or not reused:
                    self._conn = self._connect()
                    self._opened = True
                try:
                    return fn(self._conn)
                except psycopg.OperationalError:
                    if not (read and reused and self._conn.broken):
                        raise
                self._conn.close()
                self._conn = self._connect()
                return fn(self._conn)
            except psycopg.errors.ReadOnlySqlTransaction as exc:
                raise StorageUnavailable(f"{self.name}: opened read-only") from exc
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn.close()
                    self._conn = None
                raise StorageUnavailable(f"{self.name}: {_first_line(exc)}") from exc

        unanswered = self._unanswered
        if unanswered is not None:
            if not unanswered.done.is_set() and not await trio.to_thread.run_sync(
                unanswered.done.wait, LATE, abandon_on_cancel=True
            ):
                raise StorageUnavailable(
                    f"{self.name}: no answer within {self.call_timeout:g} s"
                    " (an earlier call still waits for one: the database is stalled, or that call waits for a lock)"
                )
            if self._unanswered is unanswered:
                self._unanswered = None
        call = _Call(on_connection)
        with trio.move_on_after(self.call_timeout) as waited:
            self._waiting.add(waited)
            try:
                result = await trio.to_thread.run_sync(call.run, limiter=self._limiter, abandon_on_cancel=True)
            except trio.Cancelled:
                raise
            except BaseException:
                self._answered()  # it failed, but the database (or the network) answered
                raise
            finally:
                self._waiting.discard(waited)
            self._answered()
            return result
        if trio.current_time() - waited.deadline > LATE:
            # This process did not run when the deadline came (paused, a frozen VM, its loop
            # held up): the database had no fair chance. A call that had not started goes
            # again; one under way gets call_timeout more to come back.
            if call.abandon():
                return await self._run(fn)
            if await trio.to_thread.run_sync(call.done.wait, self.call_timeout, abandon_on_cancel=True):
                self._answered()
                return call.result()
        if call.started and not call.done.is_set():
            self._unanswered = call
        raise StorageUnavailable(f"{self.name}: no answer within {self.call_timeout:g} s")

    def _answered(self) -> None:
        """A call came back: the calls queued behind it have call_timeout from now."""
        deadline = trio.current_time() + self.call_timeout
        for scope in self._waiting:
            scope.deadline = max(scope.deadline, deadline)

    async def open(self) -> None:
        """Connect, take the writer's lock, create or check the schema. Every other method
        does this first if needed; calling it at start shows a problem there.

        Raises:
            StoreLocked: another writable store has this database open.
            StorageUnavailable: it cannot be reached, or has a newer schema.
        """
        await self._run(lambda conn: None, read=True)

    async def ping(self) -> None:
        """Check the database answers now (the engine's /readyz), on a connection of its own
        so that a long commit on the store's is not a failure; abandoned if the caller gives up.

        Raises:
            StorageUnavailable: it cannot be reached or does not answer.
        """

        def ping() -> None:
            import psycopg

            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                raise StorageUnavailable(f"{self.name}: {_first_line(exc)}") from exc

        await trio.to_thread.run_sync(ping, abandon_on_cancel=True)

    async def aclose(self) -> None:
        """Close the connection, which releases the lock. The store may be opened again."""

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            self._opened = False

        with trio.move_on_after(self.call_timeout):  # a stalled call holds the connection: leave it
            await trio.to_thread.run_sync(close, limiter=self._limiter, abandon_on_cancel=True)

    # -- the Store interface ----------------------------------------------------------------

    async def load(self, room: str) -> RoomData:
        def load(conn: psycopg.Connection[Any]) -> RoomData:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                snap = conn.execute("SELECT data FROM plait_snapshots WHERE room = %s", (room,)).fetchone()
                updates = conn.execute("SELECT data FROM plait_updates WHERE room = %s ORDER BY id", (room,)).fetchall()
                events = conn.execute(
                    "SELECT seq, body FROM plait_events WHERE room = %s ORDER BY seq", (room,)
                ).fetchall()
            return RoomData(
                snapshot=None if snap is None else bytes(snap[0]),
                updates=tuple(bytes(u[0]) for u in updates),
                events=tuple(StoredEvent(seq, bytes(body)) for seq, body in events),
            )

        return await self._run(load, read=True)

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        """Group commit across rooms, as in the SQLite store."""
        await self._appends.submit([(room, bytes(u)) for u in updates])

    async def _insert_updates(self, rows: list[tuple[str, bytes]]) -> None:
        """One statement, so one round trip and its own transaction (the connection is in
        autocommit). Shared mode: the rooms' locks first, in ascending key order (no deadlock
        between two writers), all taken before any row is inserted (an aggregate reads all its
        input first), held until the commit, so a room's ids are drawn in commit order."""
        rooms, data = [room for room, _ in rows], [d for _, d in rows]
        params: tuple[Any, ...]
        if self.shared:
            locks = sorted({_room_key(room) for room in rooms})
            query, params = _INSERT_LOCKED, (ROOM_LOCK_CLASS, locks, rooms, data)
        else:
            query, params = _INSERT, (rooms, data)

        def insert(conn: psycopg.Connection[Any]) -> None:
            conn.execute(query, params)

        await self._run(insert)

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None:
        def compact(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                ids = conn.execute(
                    "SELECT id FROM plait_updates WHERE room = %s ORDER BY id LIMIT %s FOR UPDATE", (room, covered)
                ).fetchall()
                if len(ids) != covered:
                    raise _Refused(f"compaction covers {covered} updates, {len(ids)} stored")
                conn.execute(
                    "INSERT INTO plait_snapshots (room, data) VALUES (%s, %s)"
                    " ON CONFLICT (room) DO UPDATE SET data = EXCLUDED.data",
                    (room, snapshot),
                )
                if ids:
                    conn.execute("DELETE FROM plait_updates WHERE room = %s AND id <= %s", (room, ids[-1][0]))

        try:
            await self._run(compact)
        except _Refused as exc:
            raise StorageError(str(exc)) from None

    async def compact_stored(self, room: str, merge: Callable[[list[bytes]], bytes]) -> tuple[int, bytes]:
        """Fold what is stored of `room` into its snapshot, in one transaction: the snapshot
        and every update, merged by `merge` (the caller's CRDT merge, run in the store's
        worker thread), replace them. For several processes writing one room: their
        compactions run one after another (COMPACT_LOCK_CLASS), each reads what the last one
        wrote, and an update appended meanwhile is not read, so not dropped (a room's updates
        commit in id order: shared mode's room locks). No lease is needed for safety.

        Returns (updates folded in, the snapshot written; (0, b"") when there were none).
        Raises StorageUnavailable, StoreLocked; what `merge` raises (nothing changes)."""

        def compact(conn: psycopg.Connection[Any]) -> tuple[int, bytes]:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (COMPACT_LOCK_CLASS, _room_key(room)))
                snap = conn.execute("SELECT data FROM plait_snapshots WHERE room = %s", (room,)).fetchone()
                rows = conn.execute("SELECT id, data FROM plait_updates WHERE room = %s ORDER BY id", (room,)).fetchall()
                if not rows:
                    return 0, b""
                snapshot = merge(([bytes(snap[0])] if snap is not None else []) + [bytes(data) for _, data in rows])
                conn.execute(
                    "INSERT INTO plait_snapshots (room, data) VALUES (%s, %s)"
                    " ON CONFLICT (room) DO UPDATE SET data = EXCLUDED.data",
                    (room, snapshot),
                )
                conn.execute("DELETE FROM plait_updates WHERE room = %s AND id <= %s", (room, rows[-1][0]))
                return len(rows), snapshot

        return await self._run(compact)

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None:
        rows = [(room, e.seq, e.body) for e in events]

        def append(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO plait_events (room, seq, body) VALUES (%s, %s, %s)"
                    " ON CONFLICT (room, seq) DO UPDATE SET body = EXCLUDED.body",
                    rows,
                )
                _keep_events(conn, room, keep)

        await self._run(append)

    async def events_since(self, room: str, seq: int) -> tuple[StoredEvent, ...]:
        """The stored events of `room` after `seq`, oldest first: what a process of a cluster
        may not have heard of yet (another process stored them and died before it said so).
        Raises StorageUnavailable, StoreLocked."""

        def read(conn: psycopg.Connection[Any]) -> tuple[StoredEvent, ...]:
            rows = conn.execute(
                "SELECT seq, body FROM plait_events WHERE room = %s AND seq > %s ORDER BY seq", (room, seq)
            ).fetchall()
            return tuple(StoredEvent(s, bytes(body)) for s, body in rows)

        return await self._run(read, read=True)

    async def list_rooms(self) -> list[str]:
        def rooms(conn: psycopg.Connection[Any]) -> list[str]:
            rows = conn.execute(
                "SELECT room FROM plait_snapshots UNION SELECT room FROM plait_updates UNION SELECT room FROM plait_events"
            ).fetchall()
            return sorted(r[0] for r in rows)

        return await self._run(rooms, read=True)

    async def delete(self, room: str) -> None:
        """Forget the room: its snapshot, updates, events, event head and epoch."""

        def delete(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                # After a compaction of the room in progress (another process's), never during
                # it: one that read the updates before could write its snapshot back after.
                conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (COMPACT_LOCK_CLASS, _room_key(room)))
                for table in ("plait_snapshots", "plait_updates", "plait_events", "plait_heads"):
                    conn.execute(f"DELETE FROM {table} WHERE room = %s", (room,))

        await self._run(delete)

    # -- the event sequence and epoch authority (cluster mode) ------------------------------

    async def next_seq(self, room: str, head: int) -> int:
        """The room's next event sequence number, handed out once across every process on
        this database: greater than `head`, than every number handed out before, and than
        every event of the room stored (events stored before the cluster started count).
        One commit per call.

        Args:
            head: the room's last sequence number the caller knows (0 for none).

        Raises:
            ValueError: `head` is negative.
            StorageUnavailable: the database cannot be reached, or the store is read-only.
            StoreLocked: as every method.
        """
        if head < 0:
            raise ValueError(f"an event head is 0 or more, not {head}")

        return await self._run(lambda conn: _take_seq(conn, room, head))

    async def add_event(self, room: str, head: int, key: str | None, body: bytes, keep: int) -> tuple[int, bool]:
        """Number and store one event of `room` in one commit (a cluster's publish): (its
        seq, True), the seq as `next_seq` gives it. If an event of the room still kept has
        idempotency key `key`, nothing is stored: (that event's seq, False); processes that
        publish one key at once store it once. Keeps the room's `keep` most recent events.

        Raises: ValueError (`head` negative), StorageUnavailable, StoreLocked."""
        if head < 0:
            raise ValueError(f"an event head is 0 or more, not {head}")

        def add(conn: psycopg.Connection[Any]) -> tuple[int, bool]:
            with conn.transaction():
                if key is not None:
                    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (KEY_LOCK_CLASS, _room_key(room)))
                    found = conn.execute("SELECT seq FROM plait_events WHERE room = %s AND key = %s", (room, key)).fetchone()
                    if found is not None:
                        return int(found[0]), False
                seq = _take_seq(conn, room, head)
                conn.execute("INSERT INTO plait_events (room, seq, body, key) VALUES (%s, %s, %s, %s)", (room, seq, body, key))
                _keep_events(conn, room, keep)
                return seq, True

        return await self._run(add)

    async def epoch(self, room: str, proposed: str) -> str:
        """The room's history epoch: the `proposed` of the first call on this database (since
        the room was last deleted), which every later call returns, in any process.

        Raises:
            StorageUnavailable: the database cannot be reached, or the store is read-only.
            StoreLocked: as every method.
        """

        def settle(conn: psycopg.Connection[Any]) -> str:
            row = conn.execute(
                "INSERT INTO plait_heads AS h (room, epoch) VALUES (%s, %s)"
                " ON CONFLICT (room) DO UPDATE SET epoch = COALESCE(h.epoch, EXCLUDED.epoch)"
                " RETURNING epoch",
                (room, proposed),
            ).fetchone()
            assert row is not None and row[0] is not None  # the row's epoch, or ours
            return str(row[0])

        return await self._run(settle)


def _holder(conn: psycopg.Connection[Any]) -> tuple[tuple[int, str] | None, bool]:
    """The pid and host of a Plait process holding the writer's lock, from the application
    name its connection gave (`plait PID@HOST`), if the server lets us see it; and whether
    the lock is held shared (a cluster's stores)."""
    row = conn.execute(
        "SELECT a.application_name, l.mode = 'ShareLock' FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s AND l.objsubid = 1"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF),
    ).fetchone()
    name = str(row[0]) if row is not None and row[0] else ""
    shared = bool(row[1]) if row is not None else False
    pid, _, host = name.removeprefix("plait ").partition("@")
    return ((int(pid), host) if name.startswith("plait ") and pid.isdigit() and host else None), shared


def _take_seq(conn: psycopg.Connection[Any], room: str, head: int) -> int:
    row = conn.execute(
        "INSERT INTO plait_heads AS h (room, seq)"
        " SELECT %(room)s, GREATEST(%(head)s, (SELECT max(seq) FROM plait_events WHERE room = %(room)s)) + 1"
        " ON CONFLICT (room) DO UPDATE SET seq = GREATEST(h.seq + 1, EXCLUDED.seq)"
        " RETURNING seq",
        {"room": room, "head": head},
    ).fetchone()
    assert row is not None  # INSERT ... RETURNING returns its one row
    return int(row[0])


def _keep_events(conn: psycopg.Connection[Any], room: str, keep: int) -> None:
    conn.execute(
        "DELETE FROM plait_events WHERE room = %s AND seq <= "
        "(SELECT seq FROM plait_events WHERE room = %s ORDER BY seq DESC LIMIT 1 OFFSET %s)",
        (room, room, keep),
    )


def _room_key(room: str) -> int:
    """The second key of a room's append lock: a stable signed 32-bit hash of its name (the
    same in every process and Python version, unlike hash())."""
    digest = hashlib.blake2b(room.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Refused(Exception):
    """A compaction refused inside its transaction (rolled back): not a database failure."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _Call(Generic[T]):
    """A call to run in a worker thread, whose outcome is kept: a caller that stopped waiting
    (its deadline passed while this process was paused) can still take it."""

    __slots__ = ("_error", "_fn", "_lock", "_result", "_state", "done")

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._lock = threading.Lock()
        self._state = "waiting"  # then "started" or "abandoned", never both
        self.done = threading.Event()
        self._result: T | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._state == "started"

    def abandon(self) -> bool:
        """True if it had not started: then it never will (the caller may run it again)."""
        with self._lock:
            if self._state == "waiting":
                self._state = "abandoned"
            return self._state == "abandoned"

    def run(self) -> T:
        with self._lock:
            if self._state == "abandoned":
                raise StorageUnavailable("abandoned before it started")
            self._state = "started"
        try:
            self._result = self._fn()
            return self._result
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self.done.set()

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
