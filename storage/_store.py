"""The Store interface the engine uses (architecture: Storage).

A store keeps, per room: the latest document snapshot, the document updates appended after it,
and a bounded history of events. Every method is async; blocking backends do their I/O in worker
threads so the Trio thread never blocks on disk. Nothing here names a Trio type.

Contract (checked for every backend by tests/storage/test_contract.py):
- `append` returns only once the updates are durable: after it returns, a crash loses nothing.
- `compact(room, snapshot, covered)` atomically replaces the snapshot and drops the oldest
  `covered` updates; a crash leaves either the old state or the new one.
- `load` of a room never stored returns an empty RoomData; it never invents data.
- A store that keeps data outside the process has one writer at a time: opening a second
  writable store on the same data raises StoreLocked until the first is closed or its process
  is gone (tests/storage/test_lock.py).

Optional: `async def ping() -> None`, a cheap check that the store can be reached now (the
engine's `/readyz`), raising StorageError if not. It must be cancellable: the engine gives up
on it after a timeout. A store without one counts as always reachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event of a room's history: its sequence number and an opaque encoded body."""

    seq: int
    body: bytes


@dataclass(frozen=True, slots=True)
class RoomData:
    """What `load` returns: apply `snapshot` (if any), then `updates` in order."""

    snapshot: bytes | None = None
    updates: tuple[bytes, ...] = ()
    events: tuple[StoredEvent, ...] = ()
    """The most recent events, oldest first."""



class Store(Protocol):
    async def open(self) -> None:
        """Open the store for real (create, lock, check it can be written), so that a problem
        shows at start. Optional for callers: every other method opens the store if needed.
        Raises StorageError (StoreLocked: another writer has this store open)."""
        ...

    async def load(self, room: str) -> RoomData:
        """The room's stored state. Raises StorageError (SnapshotCorrupt, StorageUnavailable)."""
        ...

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        """Append document updates durably, as one commit."""
        ...

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None:
        """Replace the snapshot; drop the `covered` oldest updates it includes.

        Raises:
            StorageError: `covered` is more than the updates stored; nothing changes.
        """
        ...

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None:
        """Append events durably, keeping only the `keep` most recent."""
        ...

    async def list_rooms(self) -> list[str]: ...

    async def delete(self, room: str) -> None: ...

    async def aclose(self) -> None:
        """Close the store and release its lock; it may be opened again."""
        ...
