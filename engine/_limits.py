"""Connections open at once per peer address and per user (EngineConfig.max_connections_per_ip,
max_connections_per_user; spec §2, §5.1, §14.5).

A count that leaked would lock an address or a user out for the life of the server, so a
connection holds a `Slot` that gives its place back exactly once, however the connection ends
(closed, aborted in its handshake, timed out, cancelled): its owner releases it in a `finally`,
and a second release does nothing. A key whose count falls to 0 is forgotten, so the table
holds only the keys with connections open. Taking and releasing are a dict update each.
"""

from __future__ import annotations

from typing import Final


class Slot:
    """A place taken in a `ConnectionCounts`; `release` gives it back (once)."""

    __slots__ = ("_counts", "_key")

    def __init__(self, counts: ConnectionCounts | None, key: str) -> None:
        self._counts = counts
        self._key = key

    def release(self) -> None:
        counts, self._counts = self._counts, None
        if counts is not None:
            counts._release(self._key)


UNCOUNTED: Final = Slot(None, "")
"""The slot every connection holds where there is no limit: nothing to count, nothing to give back."""


class ConnectionCounts:
    """How many connections each key (a peer address, an identity's id) holds, at most `limit`
    each; a limit of 0 is no limit (and nothing is counted)."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"a connection limit is 0 (none) or more, not {limit}")
        self.limit = limit
        self._counts: dict[str, int] = {}

    def take(self, key: str) -> Slot | None:
        """A place for one more connection of `key`; None if it holds `limit` already."""
        if not self.limit:
            return UNCOUNTED
        held = self._counts.get(key, 0)
        if held >= self.limit:
            return None
        self._counts[key] = held + 1
        return Slot(self, key)

    def _release(self, key: str) -> None:
        held = self._counts[key] - 1
        if held:
            self._counts[key] = held
        else:
            del self._counts[key]

    def count(self, key: str) -> int:
        """Connections `key` holds now (0 when there is no limit: nothing is counted)."""
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        """Keys with at least one connection counted."""
        return len(self._counts)
