"""One contract suite for every Store backend (the memory store is a verified fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from plait.storage import FileStore, MemoryStore, PostgreSQLStore, SQLiteStore, StorageError, Store, StoredEvent

Backends = Callable[[Path, pytest.FixtureRequest], Store]
BACKENDS: dict[str, Backends] = {
    "memory": lambda tmp, request: MemoryStore(),
    "sqlite": lambda tmp, request: SQLiteStore(tmp / "plait.db"),
    "files": lambda tmp, request: FileStore(tmp / "files"),
    "postgresql": lambda tmp, request: PostgreSQLStore(request.getfixturevalue("postgres").fresh_dsn()),
    "postgresql-shared": lambda tmp, request: PostgreSQLStore(request.getfixturevalue("postgres").fresh_dsn(), shared=True),
}


@pytest.fixture(
    params=[pytest.param(name, marks=pytest.mark.slow) if name.startswith("postgresql") else name for name in sorted(BACKENDS)]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = BACKENDS[request.param](tmp_path, request)
    yield s
    await s.aclose()


async def test_unknown_room_loads_empty(store: Store) -> None:
    data = await store.load("nope")
    assert (data.snapshot, data.updates, data.events) == (None, (), ())


async def test_appends_load_in_order(store: Store) -> None:
    await store.append("r", [b"a", b"b"])
    await store.append("r", [b"c"])
    await store.append("other", [b"x"])
    assert (await store.load("r")).updates == (b"a", b"b", b"c")


async def test_compaction_replaces_the_snapshot_and_drops_covered_updates(store: Store) -> None:
    await store.append("r", [b"a", b"b", b"c"])
    await store.compact("r", b"S1", 2)
    data = await store.load("r")
    assert (data.snapshot, data.updates) == (b"S1", (b"c",))
    await store.append("r", [b"d"])
    await store.compact("r", b"S2", 2)
    data = await store.load("r")
    assert (data.snapshot, data.updates) == (b"S2", ())


async def test_compaction_cannot_cover_more_than_is_stored(store: Store) -> None:
    await store.append("r", [b"a"])
    with pytest.raises(StorageError, match="covers 2 updates, 1 stored"):
        await store.compact("r", b"S", 2)
    assert (await store.load("r")).updates == (b"a",)


async def test_event_history_is_bounded(store: Store) -> None:
    for seq in range(1, 8):
        await store.append_events("r", [StoredEvent(seq, b"e%d" % seq)], keep=3)
    events = [e.seq for e in (await store.load("r")).events]
    # The last `keep` are always there, in order; a backend may keep a few more between trims.
    assert events[-3:] == [5, 6, 7] and len(events) <= 6 and events == sorted(events)


async def test_list_and_delete(store: Store) -> None:
    await store.append("b", [b"1"])
    await store.append_events("a", [StoredEvent(1, b"")], keep=5)
    assert await store.list_rooms() == ["a", "b"]
    await store.delete("b")
    assert await store.list_rooms() == ["a"]
    assert (await store.load("b")).updates == ()


async def test_binary_survives_exactly(store: Store) -> None:
    blob = bytes(range(256)) * 10
    await store.append("r", [blob, b""])
    assert (await store.load("r")).updates == (blob, b"")
