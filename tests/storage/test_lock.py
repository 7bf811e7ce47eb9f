"""One writer per store: the contract every backend that keeps data outside the process meets.

Rules: `flock` excludes per open file, so a second store object in this process stands in for a
second process; one slow test uses a real process and kills it with SIGKILL. Each backend is
made by `open_store(tmp, read_only)`; both point at the same data for the same `tmp`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from plait.storage import FileStore, MemoryStore, SQLiteStore, StorageUnavailable, Store, StoreLocked

MakeStore = Callable[[Path, bool], Store]
LOCKING: dict[str, MakeStore] = {
    "sqlite": lambda tmp, read_only: SQLiteStore(tmp / "data" / "plait.db", read_only=read_only),
    "files": lambda tmp, read_only: FileStore(tmp / "data" / "files", read_only=read_only),
}
CHILD = {
    "sqlite": "SQLiteStore(sys.argv[1] + '/data/plait.db')",
    "files": "FileStore(sys.argv[1] + '/data/files')",
}


@pytest.fixture(params=sorted(LOCKING))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(backend: str) -> MakeStore:
    return LOCKING[backend]


async def test_a_second_writer_is_refused_until_the_first_closes(make: MakeStore, tmp_path: Path) -> None:
    first, second = make(tmp_path, False), make(tmp_path, False)
    await first.open()
    with pytest.raises(StoreLocked) as refused:
        await second.open()
    assert refused.value.pid == os.getpid()
    assert "is in use by another open store in this process" in str(refused.value)
    await first.aclose()
    await second.open()
    await second.append("r", [b"after"])
    assert (await second.load("r")).updates == (b"after",)
    await second.aclose()


async def test_first_use_takes_the_lock_without_open(make: MakeStore, tmp_path: Path) -> None:
    # An embedding app that never calls open() gets the same protection at its first write or read.
    first, second = make(tmp_path, False), make(tmp_path, False)
    try:
        await first.append("r", [b"one"])
        with pytest.raises(StoreLocked):
            await second.load("r")
        with pytest.raises(StoreLocked):
            await second.append("r", [b"lost?"])
        await first.append("r", [b"two"])
        assert (await first.load("r")).updates == (b"one", b"two")
    finally:
        await first.aclose()
        await second.aclose()


async def test_open_twice_is_one_open_and_a_closed_store_opens_again(make: MakeStore, tmp_path: Path) -> None:
    store = make(tmp_path, False)
    await store.open()
    await store.open()
    await store.append("r", [b"x"])
    await store.aclose()
    await store.append("r", [b"y"])  # reopens, and locks again
    with pytest.raises(StoreLocked):
        await make(tmp_path, False).open()
    await store.aclose()
    await store.aclose()


async def test_a_reader_reads_while_the_writer_holds_the_lock(make: MakeStore, tmp_path: Path) -> None:
    writer, reader = make(tmp_path, False), make(tmp_path, True)
    try:
        await writer.append("r", [b"one"])
        assert (await reader.load("r")).updates == (b"one",)
        assert await reader.list_rooms() == ["r"]
        await writer.append("r", [b"two"])
        assert (await reader.load("r")).updates == (b"one", b"two")
        with pytest.raises(StorageUnavailable):
            await reader.append("r", [b"from the reader"])
        assert (await writer.load("r")).updates == (b"one", b"two")
    finally:
        await reader.aclose()
        await writer.aclose()


async def test_a_reader_does_not_create_a_missing_store(make: MakeStore, tmp_path: Path) -> None:
    reader = make(tmp_path, True)
    with pytest.raises(StorageUnavailable, match="no such"):
        await reader.open()
    assert list(tmp_path.iterdir()) == []


async def test_a_store_that_cannot_be_created_fails_at_open(make: MakeStore, tmp_path: Path) -> None:
    # A file where the data folder should be: refused at open, with the path in the message
    # (this works as root too, unlike a folder without write permission).
    (tmp_path / "data").write_text("not a folder")
    store = make(tmp_path, False)
    with pytest.raises(StorageUnavailable) as failed:
        await store.open()
    assert not isinstance(failed.value, StoreLocked)
    assert str(tmp_path / "data") in str(failed.value) and "a file is in the way" in str(failed.value)
    await store.aclose()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
async def test_a_store_that_cannot_be_written_fails_at_open(make: MakeStore, tmp_path: Path) -> None:
    store = make(tmp_path, False)
    await store.append("r", [b"x"])
    await store.aclose()
    (tmp_path / "data").chmod(0o500)
    for path in (tmp_path / "data").rglob("*"):
        path.chmod(0o500 if path.is_dir() else 0o400)
    try:
        with pytest.raises(StorageUnavailable):
            await store.open()
    finally:
        for path in [tmp_path / "data", *(tmp_path / "data").rglob("*")]:
            path.chmod(0o700)
    await store.aclose()


async def test_the_memory_store_opens_and_has_nothing_to_lock() -> None:
    first, second = MemoryStore(), MemoryStore()
    await first.open()
    await second.open()
    await first.aclose()
    await second.aclose()


@pytest.mark.slow
async def test_the_lock_dies_with_its_process_even_on_sigkill(backend: str, make: MakeStore, tmp_path: Path) -> None:
    code = (
        "import sys, trio\n"
        "from plait.storage import SQLiteStore, FileStore\n"
        "async def main():\n"
        f"    store = {CHILD[backend]}\n"
        "    await store.open()\n"
        "    print('locked', flush=True)\n"
        "    await trio.sleep(600)\n"
        "trio.run(main)\n"
    )
    child = await trio.lowlevel.open_process([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        with trio.fail_after(30):
            assert (await child.stdout.receive_some(100)).strip() == b"locked"
        store = make(tmp_path, False)
        with pytest.raises(StoreLocked) as refused:
            await store.open()
        assert refused.value.pid == child.pid
        assert f"is in use by process {child.pid}" in str(refused.value)
    finally:
        child.send_signal(signal.SIGKILL)
        with trio.fail_after(30):
            await child.wait()
    await store.open()  # no stale lock left behind
    await store.aclose()


async def test_an_engine_on_a_store_another_server_holds_fails_at_start(make: MakeStore, tmp_path: Path) -> None:
    """Embedding: `async with Engine(store=...)` on a store in use fails at once with
    StoreLocked, not with STORAGE_UNAVAILABLE at its first join."""
    from plait.engine import Engine

    first = make(tmp_path, False)
    await first.open()
    try:
        with pytest.raises(StoreLocked):
            async with Engine(store=make(tmp_path, False)):
                pytest.fail("the engine started on a locked store")  # pragma: no cover
    finally:
        await first.aclose()
