"""A room's local document changes on their way to the server (spec §4.1, §5.3, §5.8).

Pure bookkeeping, no I/O: the room feeds it edits and the server's answers, the client's
writer takes frames from it when the pacer allows.

Every local transaction gets the next number (1, 2, ...) and becomes a *piece*. A piece waits
in `unsent` until the client may send an update frame; then every unsent piece goes out merged
into that one frame, and waits in `in_flight` under the frame's ref for the answer:

- ack: durable on the server (spec §4.1); the pieces are done.
- RATE_LIMITED: the frame had no effect (§5.8); its pieces go back to the front of `unsent` and
  out again, merged with whatever was typed since. Nothing is lost and nothing is reordered:
  each local change is in exactly one place until the server has it.
- any other error: refused for good (`refuse`); the room decides what happens to the document.
- the connection dropped: back to `unsent`. The next join's sync_step2, computed from the whole
  document against the server's state vector, carries them (§7), so `absorb_into_sync` folds
  every waiting piece into that one.

A piece made while the room has no channel has no bytes: the next sync_step2 will carry it.
A piece covering no change (`first > last`) is the empty sync_step2 the protocol requires
after a join; it is sent and answered like the others but never holds `flushed()` up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pycrdt


@dataclass(slots=True)
class Piece:
    first: int
    """The first local change it holds."""
    last: int
    """The last; `first > last` holds none."""
    update: bytes | None
    """The Yjs update; None while offline (the next sync_step2 carries it)."""
    sync: bool = False
    """The answer to the server's sync_step1: sent as sync_step2."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One frame's worth of pieces, merged: send `update` as sync_step2 if `sync`, else as update."""

    update: bytes
    pieces: list[Piece]
    sync: bool


@dataclass(slots=True)
class LocalChanges:
    count: int = 0
    """Local changes made so far."""
    unsent: list[Piece] = field(default_factory=list)
    in_flight: dict[int, list[Piece]] = field(default_factory=dict)

    def record(self, update: bytes | None) -> None:
        """A local transaction; `update` is None while the room has no channel."""
        self.count += 1
        last = self.unsent[-1] if self.unsent else None
        if update is None and last is not None and last.update is None and last.last == self.count - 1:
            last.last = self.count  # offline: one growing piece, not one per keystroke
            return
        self.unsent.append(Piece(self.count, self.count, update))

    def sendable(self) -> bool:
        return any(p.update is not None for p in self.unsent)

    def take(self) -> Outgoing | None:
        """Every unsent piece that has bytes, merged into one frame's update."""
        ready = [p for p in self.unsent if p.update is not None]
        if not ready:
            return None
        self.unsent = [p for p in self.unsent if p.update is None]
        updates = [p.update for p in ready if p.update is not None]
        merged = updates[0] if len(updates) == 1 else pycrdt.merge_updates(*updates)
        return Outgoing(merged, ready, any(p.sync for p in ready))

    def sent(self, ref: int, outgoing: Outgoing) -> None:
        # The pieces as they were, not one merged piece: a change made offline can fall
        # between two that went out, and must not be counted as answered with them.
        self.in_flight[ref] = outgoing.pieces

    def acked(self, ref: int) -> bool:
        """The server has these for good; False if `ref` is not ours (any more)."""
        return self.in_flight.pop(ref, None) is not None

    def retry(self, ref: int) -> bool:
        """The frame had no effect (RATE_LIMITED, or the connection dropped): send it again."""
        pieces = self.in_flight.pop(ref, None)
        if pieces is None:
            return False
        self.unsent = sorted(pieces + self.unsent, key=lambda p: p.first)
        return True

    def refuse(self, ref: int) -> list[Piece] | None:
        """The server refused the frame for good: its pieces, or None if `ref` is not ours."""
        return self.in_flight.pop(ref, None)

    def lost_connection(self) -> None:
        for ref in list(self.in_flight):
            self.retry(ref)

    def absorb_into_sync(self, update: bytes) -> None:
        """The server's sync_step1 arrived: `update` (what it lacks) holds every unsent piece,
        so they become one, sent as the sync_step2 (spec §5.3)."""
        first = min((p.first for p in self.unsent), default=self.count + 1)
        self.unsent = [Piece(first, self.count, update, sync=True)]

    def discard(self) -> list[Piece]:
        """Drop everything not acknowledged (the room is resetting its document)."""
        pieces = [p for ps in self.in_flight.values() for p in ps] + self.unsent
        self.in_flight.clear()
        self.unsent = []
        return sorted(pieces, key=lambda p: p.first)

    def oldest_unacked(self) -> int | None:
        """The lowest change number not yet durable on the server, None if all are."""
        firsts = [p.first for p in self.unsent if p.first <= p.last]
        firsts += [p.first for ps in self.in_flight.values() for p in ps if p.first <= p.last]
        return min(firsts, default=None)

    def pending(self) -> bool:
        """Anything waiting to go out or to be answered."""
        return bool(self.in_flight) or bool(self.unsent)
