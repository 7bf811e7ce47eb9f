"""The file store: per room a snapshot file and an append-only log with a length and a CRC-32
per record; compaction writes a new snapshot and rewrites the log through atomic renames.

Layout under the root folder: `rooms/<sha256(name)[:32]>/` holding `name` (the room's name),
`snapshot`, `log` (document updates) and `events`. Every file starts with an 8-byte magic and a
2-byte format version.

Crash rules (spec/notes/storage.md):
- An append is one write and one fsync. A crash mid-append leaves a torn last record: load
  detects it (short or bad CRC at the end), drops it and truncates the log there. It was never
  acknowledged, so nothing acknowledged is lost.
- A bad record followed by good ones is corruption, not a torn write: load raises
  SnapshotCorrupt and nothing is overwritten.
- Compaction renames the new snapshot into place, then the shortened log. A crash between the
  two leaves a snapshot that already contains some logged updates; applying them again is a
  no-op for a CRDT, so the loaded document is the same.

One writer: a writable store locks `<root>/lock` while open (storage/_lock.py). A read-only
store takes no lock and never repairs a torn tail: the record may be an append in progress.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

import trio

from ._errors import SnapshotCorrupt, StorageError, StorageUnavailable
from ._lock import LockFile, reason
from ._store import RoomData, StoredEvent

logger = logging.getLogger("plait.storage")

FORMAT_VERSION: Final = 1
_SNAPSHOT_MAGIC: Final = b"PLAITSNP"
_LOG_MAGIC: Final = b"PLAITLOG"
_EVENTS_MAGIC: Final = b"PLAITEVT"
_HEADER = struct.Struct("<8sH")
_RECORD = struct.Struct("<II")  # length, crc32
_SEQ = struct.Struct("<Q")
T = TypeVar("T")


def _header(magic: bytes) -> bytes:
    return _HEADER.pack(magic, FORMAT_VERSION)


def _record(data: bytes) -> bytes:
    return _RECORD.pack(len(data), zlib.crc32(data)) + data


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _check_header(raw: bytes, magic: bytes, path: Path) -> int:
    if len(raw) < _HEADER.size:
        raise SnapshotCorrupt(f"{path}: shorter than its header")
    found, version = _HEADER.unpack_from(raw)
    if found != magic:
        raise SnapshotCorrupt(f"{path}: not a Plait {magic.decode()} file")
    if version > FORMAT_VERSION:
        raise StorageUnavailable(f"{path}: format {version} is newer than this Plait reads ({FORMAT_VERSION})")
    return _HEADER.size


def _read_records(path: Path, magic: bytes, repair: bool = True) -> list[bytes]:
    """The records of a log file; a torn tail is left out (and with `repair`, truncated away)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    pos = _check_header(raw, magic, path)
    records: list[bytes] = []
    while pos < len(raw):
        if len(raw) - pos < _RECORD.size:
            break  # torn header
        length, crc = _RECORD.unpack_from(raw, pos)
        end = pos + _RECORD.size + length
        if end > len(raw):
            break  # torn body
        data = raw[pos + _RECORD.size : end]
        if zlib.crc32(data) != crc:
            if end == len(raw):
                break  # the last record, half written
            raise SnapshotCorrupt(f"{path}: record at byte {pos} fails its checksum")
        records.append(data)
        pos = end
    if pos < len(raw) and repair:
        logger.warning("%s: dropping a torn last record (%d bytes)", path, len(raw) - pos)
        with open(path, "r+b") as file:
            file.truncate(pos)
            file.flush()
            os.fsync(file.fileno())
    return records


class FileStore:
    """Args:
    root: the folder to keep rooms in (created if missing).
    read_only: read an existing store without locking it, e.g. while a server runs on it
        (`plait inspect`). Writes raise StorageUnavailable; a missing folder is not created.

    A writable store holds an exclusive lock on `<root>/lock` from its first use (or `open()`)
    until `aclose()`: a second writable store on the same folder, in this process or another,
    raises StoreLocked instead of writing beside it (storage/_lock.py).
    """

    def __init__(self, root: str | Path, *, read_only: bool = False) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self._limiter = trio.CapacityLimiter(1)
        self._file_lock: LockFile | None = None
        self._opened = False

    async def open(self) -> None:
        """Open the store for real: create its folder, take its lock and write a probe file (a
        read-only store only checks the folder is there). Every other method opens the store
        first if needed; calling `open` at start shows a problem there instead of at the first
        room. Calling it again does nothing until `aclose()`.

        Raises:
            StoreLocked: another writable store has this folder open.
            StorageUnavailable: the folder cannot be created, locked or written.
        """
        await self._run(lambda: None)

    async def ping(self) -> None:
        """Check the store's folder can be listed now and, unless read-only, written (the
        engine's /readyz: a store that takes no write loses every edit), in a worker thread
        abandoned if the caller gives up (a hung network mount).

        Raises:
            StorageUnavailable: the folder is gone, cannot be read, or cannot be written.
        """

        def ping() -> None:
            folder = self.root / "rooms" if not self.read_only else self.root
            try:
                with os.scandir(folder) as entries:
                    next(entries, None)
                if not self.read_only:
                    probe = folder / f".ping-{os.getpid()}-{threading.get_ident()}"
                    os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
                    os.unlink(probe)
            except OSError as exc:
                raise StorageUnavailable(f"{self.root}: {reason(exc)}") from exc

        await trio.to_thread.run_sync(ping, abandon_on_cancel=True)

    def _open(self) -> None:
        # In a worker thread, under the limiter: nothing else touches the store meanwhile.
        if self.read_only:
            if not self.root.is_dir():
                raise StorageUnavailable(f"{self.root}: no such store folder")
            self._opened = True
            return
        rooms = self.root / "rooms"
        try:
            rooms.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"{self.root}: cannot create the folder: {reason(exc)}") from exc
        self._file_lock = LockFile.acquire(self.root / "lock", self.root)
        probe = rooms / f".probe-{os.getpid()}"
        try:
            with open(probe, "wb") as file:
                file.write(b"plait")
                os.fsync(file.fileno())
            probe.unlink()
        except OSError as exc:
            self._close_sync()
            raise StorageUnavailable(f"{rooms}: cannot write: {reason(exc)}") from exc
        self._opened = True

    def _close_sync(self) -> None:
        self._opened = False
        if self._file_lock is not None:
            self._file_lock.release()
            self._file_lock = None

    def _writable(self) -> None:
        if self.read_only:
            raise StorageUnavailable(f"{self.root}: opened read-only")

    def _dir(self, room: str) -> Path:
        return self.root / "rooms" / hashlib.sha256(room.encode()).hexdigest()[:32]

    async def _run(self, fn: Callable[[], T]) -> T:
        def call() -> T:
            try:
                if not self._opened:
                    self._open()
                return fn()
            except StorageError:
                raise
            except OSError as exc:
                raise StorageUnavailable(f"{self.root}: {exc}") from exc

        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    def _ensure(self, room: str) -> Path:
        folder = self._dir(room)
        if not folder.exists():
            folder.mkdir(parents=True)
            _write_atomically(folder / "name", room.encode())
        return folder

    def _append(self, path: Path, magic: bytes, payloads: Sequence[bytes]) -> None:
        new = not path.exists()
        with open(path, "ab") as file:
            if new:
                file.write(_header(magic))
            file.write(b"".join(_record(p) for p in payloads))
            file.flush()
            os.fsync(file.fileno())
        if new:
            _fsync_dir(path.parent)

    # -- the Store interface ----------------------------------------------------------------

    async def load(self, room: str) -> RoomData:
        def load() -> RoomData:
            folder = self._dir(room)
            if not folder.exists():
                return RoomData()
            snapshot = None
            snap_path = folder / "snapshot"
            if snap_path.exists():
                raw = snap_path.read_bytes()
                pos = _check_header(raw, _SNAPSHOT_MAGIC, snap_path)
                if len(raw) - pos < _RECORD.size:
                    raise SnapshotCorrupt(f"{snap_path}: truncated")
                length, crc = _RECORD.unpack_from(raw, pos)
                data = raw[pos + _RECORD.size :]
                if len(data) != length or zlib.crc32(data) != crc:
                    raise SnapshotCorrupt(f"{snap_path}: checksum mismatch")
                snapshot = data
            repair = not self.read_only
            updates = _read_records(folder / "log", _LOG_MAGIC, repair)
            events = [
                StoredEvent(_SEQ.unpack_from(r)[0], r[_SEQ.size :])
                for r in _read_records(folder / "events", _EVENTS_MAGIC, repair)
            ]
            return RoomData(snapshot, tuple(updates), tuple(events))

        return await self._run(load)

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        def append() -> None:
            self._writable()
            self._append(self._ensure(room) / "log", _LOG_MAGIC, updates)

        await self._run(append)

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None:
        def compact() -> None:
            self._writable()
            folder = self._ensure(room)
            updates = _read_records(folder / "log", _LOG_MAGIC)
            if covered > len(updates):
                raise StorageError(f"compaction covers {covered} updates, {len(updates)} stored")
            _write_atomically(folder / "snapshot", _header(_SNAPSHOT_MAGIC) + _record(snapshot))
            rest = updates[covered:]
            _write_atomically(folder / "log", _header(_LOG_MAGIC) + b"".join(_record(u) for u in rest))

        await self._run(compact)

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None:
        def append() -> None:
            self._writable()
            path = self._ensure(room) / "events"
            self._append(path, _EVENTS_MAGIC, [_SEQ.pack(e.seq) + e.body for e in events])
            records = _read_records(path, _EVENTS_MAGIC)
            if len(records) > 2 * keep:  # trim now and then, not on every append
                body = b"".join(_record(r) for r in records[-keep:])
                _write_atomically(path, _header(_EVENTS_MAGIC) + body)

        await self._run(append)

    async def list_rooms(self) -> list[str]:
        def rooms() -> list[str]:
            base = self.root / "rooms"
            if not base.exists():
                return []
            return sorted((d / "name").read_bytes().decode() for d in base.iterdir() if (d / "name").exists())

        return await self._run(rooms)

    async def delete(self, room: str) -> None:
        def delete() -> None:
            self._writable()
            folder = self._dir(room)
            if folder.exists():
                for child in folder.iterdir():
                    child.unlink()
                folder.rmdir()

        await self._run(delete)

    async def aclose(self) -> None:
        """Release the lock. The store may be opened again."""
        await trio.to_thread.run_sync(self._close_sync, limiter=self._limiter)
