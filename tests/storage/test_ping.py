"""Each store's optional ping (storage/_store.py), behind the engine's /readyz: quiet while the
store can be reached, StorageUnavailable once it cannot, and cancellable."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from plait.storage import FileStore, MemoryStore, SQLiteStore, StorageUnavailable


async def test_a_memory_store_is_always_reachable() -> None:
    await MemoryStore().ping()


async def test_sqlite_ping_answers_and_fails_once_the_database_is_gone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db" / "plait.db")
    await store.open()
    try:
        await store.append("r", [b"x"])
        await store.ping()
        shutil.rmtree(tmp_path / "db")
        with pytest.raises(StorageUnavailable):
            await store.ping()
    finally:
        await store.aclose()


async def test_file_store_ping_answers_and_fails_once_the_folder_is_gone(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    await store.open()
    try:
        await store.ping()
        shutil.rmtree(tmp_path / "files")
        with pytest.raises(StorageUnavailable):
            await store.ping()
    finally:
        await store.aclose()


async def test_a_ping_that_hangs_in_its_thread_is_given_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung disk (a network mount, say) must not hold the engine's /readyz or its shutdown."""
    import sqlite3
    import threading

    store = SQLiteStore(tmp_path / "plait.db")
    await store.open()
    stuck, entered = threading.Event(), threading.Event()
    connect = sqlite3.connect

    def hanging_connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        entered.set()
        stuck.wait(10)
        return connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite3, "connect", hanging_connect)
    try:
        with trio.fail_after(5):
            with trio.move_on_after(0.2) as scope:
                await store.ping()
        assert scope.cancelled_caught and entered.is_set()
    finally:
        stuck.set()
        monkeypatch.undo()
        await store.aclose()


async def test_file_store_ping_fails_when_the_folder_takes_no_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that can be listed but not written loses every edit: not ready (a fresh user
    chmod-ed one under a running server and /readyz said ready throughout)."""
    import os

    store = FileStore(tmp_path / "files")
    await store.open()
    real_open = os.open

    def refuse_writes(path: object, flags: int, *args: object) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    try:
        await store.ping()
        monkeypatch.setattr(os, "open", refuse_writes)  # root ignores chmod: refuse as a read-only folder would
        with pytest.raises(StorageUnavailable, match="permission denied"):
            await store.ping()
        monkeypatch.undo()
        await store.ping()
        assert not [p for p in (tmp_path / "files" / "rooms").iterdir() if p.name.startswith(".ping")]
    finally:
        await store.aclose()
