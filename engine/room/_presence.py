"""Presence bookkeeping as pure data: no clock reads, no I/O (spec §5.4).

The room feeds it what happened, with `now` from trio.current_time(), and asks for the diff to
broadcast once per tick. Rule: `take_diff` returns each change once. A session that joined and
left within one tick is still reported as left: a member who joined in between got it in its
snapshot, and removing an unknown session is harmless for the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plait.protocol import PresenceEntry, PresenceState, wire_size

ENTRY_OVERHEAD = 40
"""Bytes of a presence entry beside its session id, identity and state, at most: in msgpack
its array and string headers, in JSON its field names, quotes and separators (spec §3.5)."""


@dataclass(slots=True)
class _Entry:
    identity: dict[str, Any]
    state: dict[str, Any]
    identity_bytes: int
    state_bytes: int = 1  # {} encodes as one byte
    lingers_until: float | None = None
    """Set when the session disconnected: it leaves then, unless its identity comes back."""


class PresenceBook:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self.total_bytes = 0
        """Identities and states, encoded, of every entry: what a snapshot carries."""
        self._joined: set[str] = set()
        self._updated: set[str] = set()
        self._left: set[str] = set()

    def __contains__(self, session: str) -> bool:
        return session in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def sessions(self) -> list[str]:
        return list(self._entries)

    def join(self, session: str, identity: dict[str, Any], *, displace: bool = True) -> None:
        """A session joined. A lingering session of the same identity leaves in the same diff,
        so a quick reconnect shows no gap to clients that group by identity (`displace`
        False: a peer's session that is itself lingering displaces nobody)."""
        for old, entry in list(self._entries.items()) if displace else ():
            if entry.lingers_until is not None and entry.identity.get("id") == identity.get("id"):
                self.leave(old)
        entry = self._entries[session] = _Entry(dict(identity), {}, wire_size(identity))
        self.total_bytes += entry.identity_bytes + entry.state_bytes
        self._joined.add(session)
        self._left.discard(session)

    def set(self, session: str, state: dict[str, Any], size: int) -> None:
        """Replace the session's state; `size` is its wire_size."""
        entry = self._entries[session]
        self.total_bytes += size - entry.state_bytes
        entry.state = state
        entry.state_bytes = size
        self._mark_updated(session)

    def patched(self, session: str, patch: dict[str, Any]) -> dict[str, Any]:
        """The session's state with `patch` merged (spec §4.2: one level deep, a key set to
        nil is removed); the book is unchanged."""
        state = dict(self._entries[session].state)
        for key, value in patch.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        return state

    def linger(self, session: str, until: float) -> None:
        """The session disconnected; keep its entry until `until` (the grace period)."""
        entry = self._entries.get(session)
        if entry is not None:
            entry.lingers_until = until

    def lingering(self, session: str) -> bool:
        """Whether the session disconnected and waits out its grace (a peer process's:
        lingers until its owner says it left, `until` infinite)."""
        entry = self._entries.get(session)
        return entry is not None and entry.lingers_until is not None

    def state(self, session: str) -> dict[str, Any]:
        """The session's state itself (not a copy): read it, never change it."""
        return self._entries[session].state

    def leave(self, session: str) -> None:
        entry = self._entries.pop(session, None)
        if entry is None:
            return
        self.total_bytes -= entry.identity_bytes + entry.state_bytes
        self._joined.discard(session)
        self._updated.discard(session)
        self._left.add(session)

    def expire(self, now: float) -> list[str]:
        """Remove lingering sessions whose grace ended; return them."""
        gone = [
            s for s, e in self._entries.items() if e.lingers_until is not None and e.lingers_until <= now
        ]
        for session in gone:
            self.leave(session)
        return gone

    def next_expiry(self) -> float | None:
        times = [e.lingers_until for e in self._entries.values() if e.lingers_until is not None]
        return min(times) if times else None

    def changed(self, session: str) -> bool:
        """Whether `session` joined or changed since the last diff was taken."""
        return session in self._joined or session in self._updated

    def _mark_updated(self, session: str) -> None:
        if session not in self._joined:
            self._updated.add(session)

    @property
    def dirty(self) -> bool:
        return bool(self._joined or self._updated or self._left)

    def entry_bytes(self, session: str) -> int:
        """At most the bytes the session's PresenceEntry takes encoded."""
        e = self._entries[session]
        return e.identity_bytes + e.state_bytes + len(session) + ENTRY_OVERHEAD

    def raw_state_bytes(self, session: str) -> int:
        """The session's state, encoded."""
        return self._entries[session].state_bytes

    def state_bytes(self, session: str) -> int:
        """At most the bytes the session's PresenceState takes encoded."""
        return self._entries[session].state_bytes + len(session) + ENTRY_OVERHEAD

    def entry(self, session: str) -> PresenceEntry:
        e = self._entries[session]
        return PresenceEntry(session, e.identity, dict(e.state))

    def snapshot(self) -> tuple[PresenceEntry, ...]:
        return tuple(self.entry(s) for s in self._entries)

    def take_diff(self) -> tuple[tuple[PresenceEntry, ...], tuple[PresenceState, ...], tuple[str, ...]]:
        joined = tuple(self.entry(s) for s in sorted(self._joined))
        updated = tuple(
            PresenceState(s, dict(self._entries[s].state)) for s in sorted(self._updated)
        )
        left = tuple(sorted(self._left))
        self._joined.clear()
        self._updated.clear()
        self._left.clear()
        return joined, updated, left
