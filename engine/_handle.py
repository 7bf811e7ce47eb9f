"""Server-side access to a room, for embedding applications (no connection needed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pycrdt

from plait.protocol import MAX_EVENT_NAME, PresenceEntry, check_value

from .room import Room


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One event of a room's history (spec §5.6)."""

    seq: int
    name: str
    payload: Any
    session: str | None
    """Who published it: its session id and identity id; None for the server's own events."""
    user: str | None


@dataclass(frozen=True, slots=True)
class History:
    """What `RoomHandle.history` returns (spec §7)."""

    epoch: str
    head: int
    complete: bool
    """Whether `events` are every event after the position asked for; False when the history
    no longer holds some of them, or the position came from another epoch."""
    events: tuple[HistoryEvent, ...]


def _no_recording(op: str, args: dict[str, Any]) -> None:
    pass


class RoomHandle:
    """A live room, held loaded while the handle's `async with` block runs.

    Edit `doc` like any pycrdt document: every change is broadcast to the room's members and
    stored, exactly like a member's edit. `await flushed()` waits until it is durable.
    """

    def __init__(self, room: Room, record: Callable[[str, dict[str, Any]], None] = _no_recording) -> None:
        self._room = room
        self._record = record

    @property
    def name(self) -> str:
        return self._room.name

    @property
    def doc(self) -> pycrdt.Doc[Any]:
        return self._room.doc

    def presence(self) -> tuple[PresenceEntry, ...]:
        return self._room.presence()

    @property
    def document_bytes(self) -> int:
        """The document's size, about (Yjs v1 encoding; exact after a compaction)."""
        return self._room.document_bytes

    @property
    def empty(self) -> bool:
        """Whether the room holds nothing: no document content, no event ever, no member."""
        return self._room.head == 0 and self._room.member_count == 0 and self._room.doc.get_state() == b"\x00"

    async def publish(self, name: str, payload: Any, key: str | None = None) -> int:
        """Publish an event as the server; returns its sequence number. With `key`, an
        idempotency key (spec §4.2): publishing again with it while the first event is in
        the history publishes nothing and returns the first event's seq.

        Raises:
            ValueError: a name that is not 1..128 characters of text, a payload that is not
                a value (spec §3.3), or a key that is not 1..128 characters.
            RequestError: EVENT_REJECTED (or 4000-4999) from the on_event hook, INTERNAL, ...
        """
        if not 1 <= len(name) <= MAX_EVENT_NAME:
            raise ValueError(f"event names are 1..{MAX_EVENT_NAME} characters")
        if key is not None and not 1 <= len(key) <= MAX_EVENT_NAME:
            raise ValueError(f"idempotency keys are 1..{MAX_EVENT_NAME} characters")
        check_value(name, 0)  # Unicode text, as for every string a member receives (spec §3.3)
        check_value(payload, 32)
        if key is not None:
            check_value(key, 0)
        self._record("publish", {"room": self.name, "name": name, "payload": payload, "key": key})
        return await self._room.publish(None, None, name, payload, key)

    def apply_update(self, update: bytes) -> None:
        """Apply a Yjs update (v1 encoding) to the document, checked like a member's (spec
        §5.3): it reaches every member and is stored; `await flushed()` waits until it is
        durable.

        Raises:
            RequestError: INVALID_UPDATE (nothing applied), DOCUMENT_TOO_LARGE.
        """
        self._record("update", {"room": self.name, "update": update})
        self._room.apply_checked(update)

    def document_update(self, state_vector: bytes | None = None) -> bytes:
        """The document as one Yjs update (v1), or only what a peer with `state_vector` lacks."""
        return self._room.doc.get_update(state_vector) if state_vector is not None else self._room.doc.get_update()

    def document_json(self, types: dict[str, str] | None = None) -> dict[str, Any]:
        """The document's root types as JSON-ready values: a text as a string, a map as an
        object, an array as a list (pycrdt's `to_py`). An update does not say which type a
        root is: `types` names them (`{"body": "text", "meta": "map"}`); a root not named is
        read as the first of text, map, array that holds anything.

        Raises:
            ValueError: a type other than text, map, array.
        """
        kinds = {"text": pycrdt.Text, "map": pycrdt.Map, "array": pycrdt.Array}
        for kind in (types or {}).values():
            if kind not in kinds:
                raise ValueError(f"a root type is text, map or array, not {kind!r}")
        # Read from a copy: asking for a root as a type fixes that type in the document asked.
        copy: pycrdt.Doc[Any] = pycrdt.Doc()
        copy.apply_update(self._room.doc.get_update())
        out: dict[str, Any] = {}
        for name in sorted(copy.keys()):
            named = (types or {}).get(name)
            out[name] = root_value(copy, name, [kinds[named]] if named else ROOT_TYPES)
        return out

    def history(self, since: int = 0, epoch: str | None = None) -> History:
        """The events after `since` that the room holds; `since` counts in the history `epoch`
        (spec §7; None: the room's current one). A position from another history gives
        the whole history, not complete."""
        records, complete, current = self._room.history(since, epoch)
        events = tuple(HistoryEvent(r.seq, r.name, r.payload, r.session, r.user) for r in records)
        return History(current, self._room.head, complete, events)

    async def flushed(self) -> None:
        """Wait until every change made so far is durable. Raises RoomUnavailable if the store failed."""
        await self._room.wait_flushed()


ROOT_TYPES: list[type] = [pycrdt.Text, pycrdt.Map, pycrdt.Array]


def root_value(doc: pycrdt.Doc[Any], name: str, kinds: list[type] = ROOT_TYPES) -> Any:
    """A root's value read as the first of `kinds` that holds anything (None if none does).
    Reading a root as a type fixes its type in `doc`: read a copy of a live document."""
    for kind in kinds:
        try:
            value = doc.get(name, type=kind)
        except Exception:  # pycrdt refuses a root already read as another type
            continue
        shown = str(value) if kind is pycrdt.Text else value.to_py()
        if shown or len(kinds) == 1:
            return shown
    return None
