"""The SQLite store: one database file (WAL), the default for `plait serve`.

- Every call runs in a worker thread (trio.to_thread), serialised by one limiter: SQLite has one
  writer at a time anyway. So one connection, with one cursor, serves whichever worker thread
  runs a call. Appends from every room are group-committed (storage/_group.py).
- `synchronous=FULL`: a committed append survives a crash of the process and of the machine.
- Every blob carries a CRC-32; a mismatch raises SnapshotCorrupt instead of loading garbage.
- The schema has a version in `meta`; a database from a newer Plait is refused, not rewritten.
- One writer: a writable store locks `PATH-lock` while open (storage/_lock.py).
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

import trio

from ._errors import SnapshotCorrupt, StorageError, StorageUnavailable
from ._group import GroupCommit
from ._lock import LockFile
from ._lock import reason as _reason
from ._store import RoomData, StoredEvent

SCHEMA_VERSION: Final = 1
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (room TEXT PRIMARY KEY, data BLOB NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, room TEXT NOT NULL, data BLOB NOT NULL, crc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_by_room ON updates (room, id);
CREATE TABLE IF NOT EXISTS events (
    room TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
);
"""


def _crc(data: bytes) -> int:
    return zlib.crc32(data)


class SQLiteStore:
    """Args:
    path: the database file; its folder is created if missing.
    read_only: read an existing database without locking it, e.g. while a server runs on it
        (`plait inspect`). Writes raise StorageUnavailable; a missing database is not created.

    A writable store holds an exclusive lock on `PATH-lock` from its first use (or `open()`)
    until `aclose()`: a second writable store on the same database, in this process or another,
    raises StoreLocked instead of writing beside it (storage/_lock.py).
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._limiter = trio.CapacityLimiter(1)
        self._conn: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        self._file_lock: LockFile | None = None
        self._opened = False
        self._appends = GroupCommit(self._insert_updates)

    # -- plumbing ---------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check the database can be read now (the engine's /readyz): a read on a connection
        of its own, in a worker thread that is abandoned if the caller gives up (the store's
        own connection may be busy with a long commit, which is not a failure).

        Raises:
            StorageUnavailable: the database cannot be opened or read.
        """

        def ping() -> None:
            try:
                conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=1.0)
                try:
                    conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"{self.path}: {exc}") from exc

        await trio.to_thread.run_sync(ping, abandon_on_cancel=True)

    async def open(self) -> None:
        """Open the database for real: create it, take the store's lock, check its schema, and
        commit a write (a read-only store only reads). Every other method opens the store first
        if needed; calling `open` at start shows a problem there instead of at the first room.
        Calling it again does nothing until `aclose()`.

        Raises:
            StoreLocked: another writable store has this database open.
            StorageUnavailable: it cannot be created, read or written, or has a newer schema.
            SnapshotCorrupt: the file is not a database.
        """
        await self._run(lambda conn: None)

    def _open(self) -> None:
        # In a worker thread, under the limiter: nothing else touches the store meanwhile.
        if self.path.is_dir():
            raise StorageUnavailable(f"{self.path}: is a folder, not a database file")
        if self.read_only:
            if not self.path.exists():
                raise StorageUnavailable(f"{self.path}: no such database")
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageUnavailable(f"{self.path.parent}: cannot create the folder: {_reason(exc)}") from exc
            self._file_lock = LockFile.acquire(Path(f"{self.path}-lock"), self.path)
        try:
            conn = self._db()
            self._migrate(conn)
            if not self.read_only:
                with _transaction(conn):  # a disk that cannot take a commit fails here, not at a join
                    conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        except BaseException:
            self._close_sync()
            raise
        self._opened = True

    def _db(self) -> sqlite3.Cursor:
        """The store's cursor, made on first use. Not a connection per worker thread: those
        piled up, never closed, as idle worker threads exit and new ones start. And not
        Connection.execute: it makes a cursor per statement and keeps a weak reference to each,
        up to 200, scattered through memory long after the rooms that ran them unloaded."""
        if self._cursor is None:
            if self.read_only:
                uri = f"{self.path.absolute().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            self._conn, self._cursor = conn, conn.cursor()
        return self._cursor

    def _migrate(self, conn: sqlite3.Cursor) -> None:
        if self.read_only:
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                raise StorageUnavailable(f"{self.path}: not a Plait database") from exc
        else:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StorageUnavailable(
                f"{self.path} has schema version {row[0]}; this Plait reads up to {SCHEMA_VERSION}"
            )

    async def _run(self, fn: Callable[[sqlite3.Cursor], T]) -> T:
        def call() -> T:
            try:
                if not self._opened:
                    self._open()
                return fn(self._db())
            except sqlite3.DatabaseError as exc:
                if "malformed" in str(exc) or "not a database" in str(exc):
                    raise SnapshotCorrupt(f"{self.path}: {exc}") from exc
                raise StorageUnavailable(f"{self.path}: {exc}") from exc
            except OSError as exc:
                raise StorageUnavailable(f"{self.path}: {exc}") from exc

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._cursor = None
        self._opened = False
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None

    # -- the Store interface ----------------------------------------------------------------

    async def load(self, room: str) -> RoomData:
        def load(conn: sqlite3.Cursor) -> RoomData:
            conn.execute("BEGIN")
            try:
                snap = conn.execute("SELECT data, crc FROM snapshots WHERE room = ?", (room,)).fetchone()
                updates = conn.execute(
                    "SELECT id, data, crc FROM updates WHERE room = ? ORDER BY id", (room,)
                ).fetchall()
                events = conn.execute(
                    "SELECT seq, body, crc FROM events WHERE room = ? ORDER BY seq", (room,)
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            if snap is not None and _crc(snap[0]) != snap[1]:
                raise SnapshotCorrupt(f"room {room!r}: snapshot checksum mismatch")
            for uid, data, crc in updates:
                if _crc(data) != crc:
                    raise SnapshotCorrupt(f"room {room!r}: update {uid} checksum mismatch")
            for seq, body, crc in events:
                if _crc(body) != crc:
                    raise SnapshotCorrupt(f"room {room!r}: event {seq} checksum mismatch")
            return RoomData(
                snapshot=None if snap is None else bytes(snap[0]),
                updates=tuple(bytes(u[1]) for u in updates),
                events=tuple(StoredEvent(seq, bytes(body)) for seq, body, _ in events),
            )

        return await self._run(load)

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        """Group commit across rooms: appends that arrive while a commit is running all go into
        the next one, so a busy server pays one fsync per batch, not one per room."""
        await self._appends.submit([(room, bytes(u), _crc(u)) for u in updates])

    async def _insert_updates(self, rows: list[tuple[str, bytes, int]]) -> None:
        def insert(conn: sqlite3.Cursor) -> None:
            with _transaction(conn):
                conn.executemany("INSERT INTO updates (room, data, crc) VALUES (?, ?, ?)", rows)

        await self._run(insert)

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None:
        def compact(conn: sqlite3.Cursor) -> None:
            with _transaction(conn):
                ids = conn.execute(
                    "SELECT id FROM updates WHERE room = ? ORDER BY id LIMIT ?", (room, covered)
                ).fetchall()
                if len(ids) != covered:
                    raise StorageError(f"compaction covers {covered} updates, {len(ids)} stored")
                conn.execute(
                    "INSERT OR REPLACE INTO snapshots (room, data, crc) VALUES (?, ?, ?)",
                    (room, snapshot, _crc(snapshot)),
                )
                if ids:
                    conn.execute("DELETE FROM updates WHERE room = ? AND id <= ?", (room, ids[-1][0]))

        await self._run(compact)

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None:
        rows = [(room, e.seq, e.body, _crc(e.body)) for e in events]

        def append(conn: sqlite3.Cursor) -> None:
            with _transaction(conn):
                conn.executemany("INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?)", rows)
                conn.execute(
                    "DELETE FROM events WHERE room = ? AND seq <= "
                    "(SELECT seq FROM events WHERE room = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (room, room, keep),
                )

        await self._run(append)

    async def list_rooms(self) -> list[str]:
        def rooms(conn: sqlite3.Cursor) -> list[str]:
            rows = conn.execute(
                "SELECT room FROM snapshots UNION SELECT room FROM updates UNION SELECT room FROM events"
            ).fetchall()
            return sorted(r[0] for r in rows)

        return await self._run(rooms)

    async def delete(self, room: str) -> None:
        def delete(conn: sqlite3.Cursor) -> None:
            with _transaction(conn):
                for table in ("snapshots", "updates", "events"):
                    conn.execute(f"DELETE FROM {table} WHERE room = ?", (room,))

        await self._run(delete)

    async def aclose(self) -> None:
        """Close every connection and release the lock. The store may be opened again."""
        await trio.to_thread.run_sync(self._close_sync, limiter=self._limiter)


class _transaction:
    def __init__(self, conn: sqlite3.Cursor) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
