"""Damaged storage never loads as garbage: a torn last write is dropped (it was never
acknowledged), anything else raises, and nothing is overwritten."""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from plait.storage import FileStore, SnapshotCorrupt, SQLiteStore, StorageError, StorageUnavailable


def room_dir(root: Path) -> Path:
    (folder,) = (d for d in (root / "rooms").iterdir() if d.is_dir())
    return folder


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    """A file store on tmp_path, closed (its lock released) after the test."""
    opened = FileStore(tmp_path)
    yield opened
    await opened.aclose()


async def test_torn_last_record_is_dropped_and_the_rest_kept(store: FileStore, tmp_path: Path) -> None:
    await store.append("r", [b"one", b"two"])
    log = room_dir(tmp_path) / "log"
    intact = log.stat().st_size
    with open(log, "ab") as file:
        file.write(struct.pack("<II", 100, 0) + b"half")  # a crash mid-append
    assert (await store.load("r")).updates == (b"one", b"two")
    assert log.stat().st_size == intact  # truncated back to the last good record
    await store.append("r", [b"three"])
    assert (await store.load("r")).updates == (b"one", b"two", b"three")


async def test_last_record_with_a_bad_checksum_counts_as_torn(store: FileStore, tmp_path: Path) -> None:
    await store.append("r", [b"one", b"two"])
    log = room_dir(tmp_path) / "log"
    raw = bytearray(log.read_bytes())
    raw[-1] ^= 0xFF
    log.write_bytes(bytes(raw))
    assert (await store.load("r")).updates == (b"one",)


async def test_a_reader_leaves_a_torn_tail_alone(store: FileStore, tmp_path: Path) -> None:
    # While a server runs, `plait inspect` reads its files: a torn tail may be an append in
    # progress, so a read-only store skips it and never truncates the writer's log.
    await store.append("r", [b"one"])
    log = room_dir(tmp_path) / "log"
    with open(log, "ab") as file:
        file.write(struct.pack("<II", 100, 0) + b"half")
    torn = log.read_bytes()
    reader = FileStore(tmp_path, read_only=True)
    assert (await reader.load("r")).updates == (b"one",)
    assert log.read_bytes() == torn
    await reader.aclose()


async def test_a_bad_record_before_good_ones_is_corruption(store: FileStore, tmp_path: Path) -> None:
    await store.append("r", [b"first", b"second"])
    log = room_dir(tmp_path) / "log"
    raw = bytearray(log.read_bytes())
    raw[10 + 8] ^= 0xFF  # first byte of the first record's data
    log.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorrupt):
        await store.load("r")
    assert log.read_bytes() == bytes(raw)  # left as it was, for a person to look at


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic"])
async def test_damaged_snapshot_raises(store: FileStore, tmp_path: Path, damage: str) -> None:
    await store.append("r", [b"u"])
    await store.compact("r", b"snapshot-bytes", 1)
    snap = room_dir(tmp_path) / "snapshot"
    raw = bytearray(snap.read_bytes())
    if damage == "flip":
        raw[-3] ^= 0x01
    elif damage == "truncate":
        del raw[-4:]
    else:
        raw[:8] = b"NOTPLAIT"
    snap.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorrupt):
        await store.load("r")


async def test_a_newer_format_is_refused_not_rewritten(store: FileStore, tmp_path: Path) -> None:
    await store.append("r", [b"u"])
    log = room_dir(tmp_path) / "log"
    raw = bytearray(log.read_bytes())
    raw[8:10] = struct.pack("<H", 99)
    log.write_bytes(bytes(raw))
    with pytest.raises(StorageUnavailable):
        await store.load("r")


async def test_sqlite_blob_damage_is_detected_by_checksum(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    await store.append("r", [b"precious update"])
    await store.aclose()
    with sqlite3.connect(tmp_path / "p.db") as conn:
        conn.execute("UPDATE updates SET data = ? WHERE room = 'r'", (b"precious updatX",))
    store = SQLiteStore(tmp_path / "p.db")
    with pytest.raises(SnapshotCorrupt):
        await store.load("r")
    await store.aclose()


async def test_sqlite_file_garbage_raises(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = SQLiteStore(path)
    await store.append("r", [b"x" * 5000])
    await store.aclose()
    raw = bytearray(path.read_bytes())
    for i in range(0, len(raw), 97):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    store = SQLiteStore(path)
    with pytest.raises(StorageError):
        await store.load("r")
    await store.aclose()


async def test_sqlite_reader_refuses_a_database_that_is_not_plaits(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    reader = SQLiteStore(tmp_path / "other.db", read_only=True)
    with pytest.raises(StorageUnavailable, match="not a Plait database"):
        await reader.load("r")
    await reader.aclose()


async def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db")
    await store.append("r", [b"u"])
    await store.aclose()
    with sqlite3.connect(tmp_path / "p.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    store = SQLiteStore(tmp_path / "p.db")
    with pytest.raises(StorageUnavailable):
        await store.load("r")
    await store.aclose()
