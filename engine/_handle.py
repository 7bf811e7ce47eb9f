"""Server-side access to a room, for embedding applications (no connection needed)."""

from __future__ import annotations

from typing import Any

import pycrdt

from plait.protocol import MAX_EVENT_NAME, PresenceEntry, check_value

from .room import Room


class RoomHandle:
    """A live room, held loaded while the handle's `async with` block runs.

    Edit `doc` like any pycrdt document: every change is broadcast to the room's members and
    stored, exactly like a member's edit. `await flushed()` waits until it is durable.
    """

    def __init__(self, room: Room) -> None:
        self._room = room

    @property
    def name(self) -> str:
        return self._room.name

    @property
    def doc(self) -> pycrdt.Doc[Any]:
        return self._room.doc

    def presence(self) -> tuple[PresenceEntry, ...]:
        return self._room.presence()

    async def publish(self, name: str, payload: Any, key: str | None = None) -> int:
        """Publish an event as the server; returns its sequence number."""
        if not 1 <= len(name) <= MAX_EVENT_NAME:
            raise ValueError(f"event names are 1..{MAX_EVENT_NAME} characters")
        check_value(name, 0)  # Unicode text, as for every string a member receives (spec §3.3)
        check_value(payload, 32)
        seq = await self._room.publish(None, None, name, payload, key)
        return seq

    async def flushed(self) -> None:
        """Wait until every change made so far is durable. Raises RoomUnavailable if the store failed."""
        await self._room.wait_flushed()
