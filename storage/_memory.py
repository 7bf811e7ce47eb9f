"""The in-memory store: a verified fake of the Store contract, for tests and ephemeral servers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ._errors import StorageError
from ._store import RoomData, StoredEvent


@dataclass
class _Room:
    snapshot: bytes | None = None
    updates: list[bytes] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)


class MemoryStore:
    """Keeps everything in a dict. Durable for as long as the process lives."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}

    async def open(self) -> None:
        pass

    async def ping(self) -> None:
        """Always reachable (see Store's optional ping)."""

    async def load(self, room: str) -> RoomData:
        stored = self._rooms.get(room)
        if stored is None:
            return RoomData()
        return RoomData(stored.snapshot, tuple(stored.updates), tuple(stored.events))

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        self._rooms.setdefault(room, _Room()).updates.extend(updates)

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None:
        stored = self._rooms.setdefault(room, _Room())
        if covered > len(stored.updates):
            raise StorageError(f"compaction covers {covered} updates, {len(stored.updates)} stored")
        stored.snapshot = snapshot
        del stored.updates[:covered]

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None:
        stored = self._rooms.setdefault(room, _Room())
        stored.events.extend(events)
        del stored.events[: max(0, len(stored.events) - keep)]

    async def list_rooms(self) -> list[str]:
        return sorted(self._rooms)

    async def delete(self, room: str) -> None:
        self._rooms.pop(room, None)

    async def aclose(self) -> None:
        pass
