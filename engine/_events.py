"""A room's event log: per-room sequence numbers, a bounded history, idempotency keys (§5.6)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import msgpack

from plait.storage import StoredEvent


@dataclass(frozen=True, slots=True)
class EventRecord:
    seq: int
    name: str
    payload: Any
    session: str | None
    user: str | None
    key: str | None

    def stored(self) -> StoredEvent:
        body = msgpack.packb([self.name, self.payload, self.session, self.user, self.key], use_bin_type=True)
        return StoredEvent(self.seq, body)

    @classmethod
    def from_stored(cls, stored: StoredEvent) -> EventRecord:
        name, payload, session, user, key = msgpack.unpackb(stored.body, raw=False)
        return cls(stored.seq, name, payload, session, user, key)


class EventLog:
    def __init__(self, capacity: int, history: tuple[StoredEvent, ...] = ()) -> None:
        self._history: deque[EventRecord] = deque(maxlen=capacity)
        self._keys: dict[str, int] = {}
        self.head = 0
        for stored in history:
            self._remember(EventRecord.from_stored(stored))

    def seq_for_key(self, key: str | None) -> int | None:
        return None if key is None else self._keys.get(key)

    def append(self, name: str, payload: Any, session: str | None, user: str | None, key: str | None) -> EventRecord:
        record = EventRecord(self.head + 1, name, payload, session, user, key)
        self._remember(record)
        return record

    def _remember(self, record: EventRecord) -> None:
        if len(self._history) == self._history.maxlen and self._history:
            dropped = self._history[0]
            if dropped.key is not None:
                self._keys.pop(dropped.key, None)
        self._history.append(record)
        self.head = max(self.head, record.seq)
        if record.key is not None:
            self._keys[record.key] = record.seq

    def since(self, seq: int) -> tuple[list[EventRecord], bool]:
        """Events after `seq`, and whether they are all of them (spec §7)."""
        if seq > self.head:
            return [], False
        missed = [r for r in self._history if r.seq > seq]
        complete = seq == self.head or (bool(missed) and missed[0].seq == seq + 1)
        return missed, complete
