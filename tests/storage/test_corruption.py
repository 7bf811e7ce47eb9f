"""Damaged storage never loads as garbage: a torn last write is dropped (it was never
acknowledged), anything else raises, and nothing is overwritten."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest

from plait.storage import FileStore, SnapshotCorrupt, SQLiteStore, StorageError, StorageUnavailable


def room_dir(root: Path) -> Path:
    (folder,) = (root / "rooms").iterdir()
    return folder


async def test_torn_last_record_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.append("r", [b"one", b"two"])
    log = room_dir(tmp_path) / "log"
    intact = log.stat().st_size
    with open(log, "ab") as file:
        file.write(struct.pack("<II", 100, 0) + b"half")  # a crash mid-append
    assert (await store.load("r")).updates == (b"one", b"two")
    assert log.stat().st_size == intact  # truncated back to the last good record
    await store.append("r", [b"three"])
    assert (await store.load("r")).updates == (b"one", b"two", b"three")


async def test_last_record_with_a_bad_checksum_counts_as_torn(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.append("r", [b"one", b"two"])
    log = room_dir(tmp_path) / "log"
    raw = bytearray(log.read_bytes())
    raw[-1] ^= 0xFF
    log.write_bytes(bytes(raw))
    assert (await store.load("r")).updates == (b"one",)


async def test_a_bad_record_before_good_ones_is_corruption(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.append("r", [b"first", b"second"])
    log = room_dir(tmp_path) / "log"
    raw = bytearray(log.read_bytes())
    raw[10 + 8] ^= 0xFF  # first byte of the first record's data
    log.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorrupt):
        await store.load("r")
    assert log.read_bytes() == bytes(raw)  # left as it was, for a person to look at


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic"])
async def test_damaged_snapshot_raises(tmp_path: Path, damage: str) -> None:
    store = FileStore(tmp_path)
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


async def test_a_newer_format_is_refused_not_rewritten(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
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
