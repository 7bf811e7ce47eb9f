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

An update larger than a message goes as several frames, its parts (spec §3.2, §5.3), sent in
order before anything newer, each with a ref: its pieces are acknowledged when every part is;
if one part fails, the whole update is retried or refused, and the answers to its other parts
are ignored (they may fail only because the failed one is missing).

A piece made while the room has no channel has no bytes: the next sync_step2 will carry it.
A piece covering no change (`first > last`) is the empty sync_step2 the protocol requires
after a join; it is sent and answered like the others but never holds `flushed()` up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pycrdt

from plait.protocol import SplitError, split_update


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


@dataclass(eq=False, slots=True)
class Outgoing:
    """Pieces merged into one update, on their way as one frame or, when the update is larger
    than a message, as several (spec §3.2, §5.3): `parts` still to send, in order, each in a
    frame of its own; the last goes as sync_step2 if `sync`, every other as update."""

    pieces: list[Piece]
    sync: bool
    parts: list[bytes]
    refs: set[int] = field(default_factory=set)
    """Refs of parts sent and not answered yet."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One part to send: `update` in a sync_step2 if `sync`, else in an update frame."""

    update: bytes
    sync: bool
    outgoing: Outgoing


class Unsendable(Exception):
    """Local changes that cannot travel: one value in them is larger than a message. `pieces`
    are out of the bookkeeping, refused for good; `args[0]` says why."""

    def __init__(self, message: str, pieces: list[Piece]) -> None:
        super().__init__(message)
        self.pieces = pieces


@dataclass(slots=True)
class LocalChanges:
    count: int = 0
    """Local changes made so far."""
    unsent: list[Piece] = field(default_factory=list)
    in_flight: dict[int, Outgoing] = field(default_factory=dict)
    """Refs of frames sent and not answered, to what they carry (several refs for one update
    sent in parts)."""
    sending: Outgoing | None = None
    """An update being sent in parts, with parts still to send: nothing else goes before it."""

    def record(self, update: bytes | None) -> None:
        """A local transaction; `update` is None while the room has no channel."""
        self.count += 1
        last = self.unsent[-1] if self.unsent else None
        if update is None and last is not None and last.update is None and last.last == self.count - 1:
            last.last = self.count  # offline: one growing piece, not one per keystroke
            return
        self.unsent.append(Piece(self.count, self.count, update))

    def sendable(self) -> bool:
        return self.sending is not None or any(p.update is not None for p in self.unsent)

    def take(self, max_bytes: int, fits: Callable[[], bool | None] = lambda: True) -> Frame | None:
        """The next frame's worth: the next part of an update being sent in parts, or every
        unsent piece that has bytes, merged, and split into parts of at most `max_bytes` if it
        is larger (protocol split_update; the first part is returned, the others wait in
        `sending`). An update that goes in parts is checked with `fits` first: each part is an
        update of its own to the server, so one the document cannot take whole must not start
        (`fits` None: it cannot tell now; nothing is taken, and the caller asks again later).

        Raises:
            Unsendable: the merged update holds a value larger than `max_bytes`, or it goes in
                parts and `fits()` says the document would be too large; its pieces are
                refused for good, and nothing of them was sent.
        """
        outgoing = self.sending
        if outgoing is None:
            ready = [p for p in self.unsent if p.update is not None]
            if not ready:
                return None
            before, self.unsent = self.unsent, [p for p in self.unsent if p.update is None]
            updates = [p.update for p in ready if p.update is not None]
            merged = updates[0] if len(updates) == 1 else pycrdt.merge_updates(*updates)
            try:
                parts = split_update(merged, max_bytes)
            except SplitError as exc:
                raise Unsendable(str(exc), ready) from None
            if len(parts) > 1:
                verdict = fits()
                if verdict is None:
                    self.unsent = before
                    return None
                if not verdict:
                    raise Unsendable("the document would be larger than the server's max_document_bytes; nothing of it was sent", ready)
            del merged, updates
            outgoing = Outgoing(ready, any(p.sync for p in ready), parts)
        part = outgoing.parts.pop(0)
        last = not outgoing.parts
        self.sending = None if last else outgoing
        return Frame(part, outgoing.sync and last, outgoing)

    def sent(self, ref: int, frame: Frame) -> None:
        # The pieces as they were, not one merged piece: a change made offline can fall
        # between two that went out, and must not be counted as answered with them.
        self.in_flight[ref] = frame.outgoing
        frame.outgoing.refs.add(ref)

    def acked(self, ref: int) -> bool:
        """The server has this frame for good; False if `ref` is not ours (any more). The
        pieces are acknowledged once every part of their update is."""
        outgoing = self.in_flight.pop(ref, None)
        if outgoing is None:
            return False
        outgoing.refs.discard(ref)
        return True

    def _drop(self, ref: int) -> Outgoing | None:
        """Take the whole update `ref` belongs to out of flight: its other parts are not sent,
        and their answers, when they come, are not ours any more (a part may build on the
        one that failed, so the server may refuse it for that)."""
        outgoing = self.in_flight.pop(ref, None)
        if outgoing is None:
            return None
        for other in outgoing.refs:
            self.in_flight.pop(other, None)
        outgoing.refs.clear()
        if self.sending is outgoing:
            self.sending = None
        return outgoing

    def retry(self, ref: int) -> bool:
        """The frame had no effect (RATE_LIMITED, or the connection dropped): send its update
        again (all its parts: those already taken are harmless twice)."""
        outgoing = self._drop(ref)
        if outgoing is None:
            return False
        self.unsent = sorted(outgoing.pieces + self.unsent, key=lambda p: p.first)
        return True

    def refuse(self, ref: int) -> list[Piece] | None:
        """The server refused the frame for good: the pieces of its update, or None if `ref`
        is not ours."""
        outgoing = self._drop(ref)
        return None if outgoing is None else outgoing.pieces

    def lost_connection(self) -> None:
        for ref in list(self.in_flight):
            self.retry(ref)
        if self.sending is not None:  # parts all answered so far, some not sent
            self.unsent = sorted(self.sending.pieces + self.unsent, key=lambda p: p.first)
            self.sending = None

    def absorb_into_sync(self, update: bytes) -> None:
        """The server's sync_step1 arrived: `update` (what it lacks) holds every unsent piece,
        so they become one, sent as the sync_step2 (spec §5.3)."""
        # An empty piece (an earlier sync_step2 that held no change of ours) claims no number:
        # taking its `first` would count changes acknowledged since as waiting again.
        first = min((p.first for p in self.unsent if p.first <= p.last), default=self.count + 1)
        self.unsent = [Piece(first, self.count, update, sync=True)]

    def discard(self) -> list[Piece]:
        """Drop everything not acknowledged (the room is resetting its document)."""
        pieces = [p for o in self._outgoing() for p in o.pieces] + self.unsent
        self.in_flight.clear()
        self.sending = None
        self.unsent = []
        return sorted(pieces, key=lambda p: p.first)

    def _outgoing(self) -> list[Outgoing]:
        """Every update sent, or being sent, and not acknowledged, once each."""
        found = {id(o): o for o in self.in_flight.values()}
        if self.sending is not None:
            found[id(self.sending)] = self.sending
        return list(found.values())

    @property
    def busy(self) -> bool:
        """Some frame is unanswered, or an update has parts still to send."""
        return bool(self.in_flight) or self.sending is not None

    def oldest_unacked(self) -> int | None:
        """The lowest change number not yet durable on the server, None if all are."""
        firsts = [p.first for p in self.unsent if p.first <= p.last]
        firsts += [p.first for o in self._outgoing() for p in o.pieces if p.first <= p.last]
        return min(firsts, default=None)

    def pending(self) -> bool:
        """Anything waiting to go out or to be answered."""
        return self.busy or bool(self.unsent)
