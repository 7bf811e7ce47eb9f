"""A room's document (pycrdt): sync, members' updates, and the fan-out of every change."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pycrdt
import trio

from plait.protocol import (
    SKIP_STRUCT,
    Access,
    ChannelFrame,
    DecodedUpdate,
    ErrorCode,
    RemoteProtocolError,
    SplitError,
    SyncStep2,
    Update,
    check_state_vector,
    inserts_something,
    piece_bytes,
    read_update,
    read_update_counted,
    split_update,
)

from .._config import EngineConfig
from .._errors import RequestError
from .._metrics import Metrics
from ._fanout import Fanout
from ._member import Member, MemberSession
from ._updatecheck import UpdateCheck

logger = logging.getLogger("plait.room")
T = TypeVar("T")


def _crdt_call(call: Callable[[], T]) -> T:
    """Run a pycrdt call, turning anything it raises (even a Rust panic) into ValueError."""
    try:
        return call()
    except Exception as exc:
        raise ValueError(str(exc)) from exc
    except BaseException as exc:  # pyo3 PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        raise ValueError(f"update crashed the decoder: {exc}") from None


STATE_VECTOR_SLACK = 64 * 1024
"""Bytes a peer's state vector may hold beyond the document's own: about 5,000 clients the room
has not heard from."""


def inserts_nothing(update: DecodedUpdate) -> bool:
    """Whether `update` only deletes (it may still change the document)."""
    return all(struct[3] == SKIP_STRUCT for struct in update.structs)


def changes_nothing(doc: pycrdt.Doc[Any], update: DecodedUpdate) -> bool:
    """Whether applying `update` would leave `doc` as it is: it inserts nothing and deletes
    only what `doc` has already deleted. A client's sync_step2 after it took the server's
    state is such an update (Yjs sends its whole delete set), read-only member or not."""
    if not inserts_nothing(update):
        return False
    if not any(update.deletes.values()):
        return True
    ours = read_update(doc.get_update(doc.get_state()), trusted=True).deletes
    for client, ranges in update.deletes.items():
        have = ours.get(client, ())
        j = 0
        # Both sorted and disjoint: one pass over each (a read-only client's whole delete set,
        # what every Yjs client answers a sync_step1 with, was checked range by range from the
        # start of the document's: minutes for a long-edited document, the server's only thread).
        for i in range(0, len(ranges), 2):
            clock, end = ranges[i], ranges[i] + ranges[i + 1]
            while j < len(have) and have[j] + have[j + 1] <= clock:
                j += 2  # ours that end before this range starts
            k = j
            while clock < end:  # is [clock, end) inside the union of ours from j on?
                if k >= len(have) or have[k] > clock:
                    return False
                clock = have[k] + have[k + 1]
                k += 2
    return True


READ_ONLY_SLACK = 64 * 1024
"""How much longer than the document a read-only member's update may be and still be read
(spec §5.3): what its own encoding of the same delete set may add."""


def read_client_update(update: bytes) -> tuple[DecodedUpdate, int]:
    """A peer's update, decoded, and the structs and deleted ranges read (what it costs toward
    the read rate, spec §5.8); RequestError INVALID_UPDATE if it is not one pycrdt may see
    (spec §5.3)."""
    try:
        return read_update_counted(update)
    except RemoteProtocolError as exc:
        raise RequestError(exc.code, exc.message) from None


def apply_update(doc: pycrdt.Doc[Any], update: bytes) -> None:
    _crdt_call(lambda: doc.apply_update(update))


def merge_updates(updates: list[bytes]) -> bytes:
    return updates[0] if len(updates) == 1 else _crdt_call(lambda: pycrdt.merge_updates(*updates))



class DocStrand:
    """The room's document: sync, applying members' updates, fan-out of every change."""

    # What this part uses of the Room it is mixed into (set in Room.__init__), for type checkers.
    name: str
    doc: pycrdt.Doc[Any]
    _config: EngineConfig
    _fanout: Fanout
    _metrics: Metrics
    _members: dict[MemberSession, Member]
    _pending: Any  # _persist._Pending (that module imports this one)
    _update_check: UpdateCheck
    _changes: int
    last_activity: float
    _doc_bytes: int
    _doc_bytes_exact: bool
    _origin: Member | None
    _replicated: bool
    _sync_cache: tuple[bytes, list[ChannelFrame]] | None

    if TYPE_CHECKING:
        def _want_persist(self) -> None: ...
        def _note_writer(self, origin: Member | None, now: float) -> None: ...
        def _queue_updates(self, updates: list[bytes]) -> None: ...
        def ack(self, member: Member, ref: int, value: int | None = None) -> None: ...
        def refuse(self, member: Member, ref: int, code: int, message: str) -> None: ...
        def remove_member(self, member: Member, *, disconnected: bool) -> None: ...

    def _update_since(self, state_vector: bytes) -> bytes:
        """What the document holds beyond a peer's state vector; RequestError INVALID_UPDATE
        for one that is not well formed, checked before pycrdt sees it (spec §5.3), or far
        longer than the document's own: pycrdt's cost grows with every entry, and a peer can
        know of only so many clients the room has not heard from (its own offline edits, what
        it merged from others)."""
        if len(state_vector) > STATE_VECTOR_SLACK and len(state_vector) > len(self.doc.get_state()) + STATE_VECTOR_SLACK:
            raise RequestError(
                ErrorCode.INVALID_UPDATE,
                f"a state vector of {len(state_vector)} bytes, far more clients than this document has ever had",
            )
        try:
            check_state_vector(state_vector)
        except RemoteProtocolError as exc:
            raise RequestError(exc.code, exc.message) from None
        try:
            return self.doc.get_update(state_vector)
        except ValueError as exc:
            raise RequestError(ErrorCode.INVALID_UPDATE, f"invalid state vector: {exc}") from exc

    def _pieces(self, update: bytes) -> list[bytes]:
        """spec §3.2: no message over max_message_bytes, so a larger update goes in pieces
        that each fit in one, in msgpack or in JSON (piece_bytes; protocol/_ysplit.py;
        [update] itself when it fits). Raises
        RequestError DOCUMENT_TOO_LARGE if one indivisible value does not fit in a message
        (INVALID_UPDATE if the bytes are not an update)."""
        try:
            return split_update(update, piece_bytes(self._config.max_message_bytes))
        except SplitError as exc:
            if exc.malformed:
                raise RequestError(ErrorCode.INVALID_UPDATE, str(exc)[:1024]) from exc
            message = f"the document cannot travel in messages of {self._config.max_message_bytes} bytes: {exc}"
            raise RequestError(ErrorCode.DOCUMENT_TOO_LARGE, message[:1024]) from exc

    def _sync_frames(self, update: bytes) -> list[ChannelFrame]:
        """spec §5.3: what a member lacks, as one sync_step2, or as update frames and a last
        sync_step2 when it is larger than a message: sync_step2 still means "you have it all"."""
        pieces = self._pieces(update)
        frames = [ChannelFrame(Update(0, None, piece)) for piece in pieces[:-1]]
        frames.append(ChannelFrame(SyncStep2(0, None, pieces[-1])))
        return frames

    def _sync_step2_for(self, state_vector: bytes) -> list[ChannelFrame]:
        """The join's sync frames, encoded once. Joiners with an empty document (a join storm
        on a large document) share one encoding, so a hundred of them queue one copy, not a
        hundred."""
        if state_vector != b"\x00":
            return self._sync_frames(self._update_since(state_vector))
        state = self.doc.get_state()
        if self._sync_cache is None or self._sync_cache[0] != state:
            self._sync_cache = None  # the old copy goes before the new one is made
            self._sync_cache = (state, self._sync_frames(self.doc.get_update()))
        return self._sync_cache[1]

    def sync_step1(self, member: Member, state_vector: bytes) -> None:
        """Answer a member's sync_step1 (spec §5.3), in pieces if it is larger than a message;
        asked with an empty document, with the joins' shared encoding: a client that asks
        again and again, reading slowly, queues references to one copy, not a copy each."""
        for frame in self._sync_step2_for(state_vector):
            member.session.deliver(member, frame)

    def apply_client_update(self, member: Member, update: bytes, ref: int | None) -> None:
        """Apply a member's update; its ack waits for the commit that makes it durable.
        Raises RequestError (nothing applied): INVALID_UPDATE (spec §5.3), FORBIDDEN,
        DOCUMENT_TOO_LARGE."""
        if member.access is not Access.WRITE:
            # spec §5.3: a read-only member's sync_step2 (mandatory) is fine when it changes
            # nothing: it deletes only what the document has deleted, so it is no longer than
            # the document. One that inserts, or that is longer (a delete set of millions of
            # ranges took seconds to read, QA), is refused unread.
            if inserts_something(update) or len(update) > self._doc_bytes + READ_ONLY_SLACK:
                raise RequestError(ErrorCode.FORBIDDEN, "read-only member: document updates refused")
            decoded, parts = read_client_update(update)
            member.session.read_values(parts)
            if not changes_nothing(self.doc, decoded):
                raise RequestError(ErrorCode.FORBIDDEN, "read-only member: document updates refused")
            if ref is not None:
                self.ack(member, ref)
            return
        self.apply_checked(update, member)
        if ref is not None:
            self._pending.acks.append((member, ref, None))
            self._want_persist()
        elif member.session.CONFIRMS_BY_ECHO:
            self._pending.confirmations.setdefault(member, []).append(update)
            self._want_persist()

    def apply_checked(self, update: bytes, origin: Member | None = None) -> None:
        """Apply an update that passes the checks every client's update gets (spec §5.3); it
        reaches every member but `origin` and is stored like theirs (`wait_flushed` waits
        until it is durable). Raises RequestError (nothing applied): INVALID_UPDATE,
        DOCUMENT_TOO_LARGE (never for an update that only deletes: a document past the maximum,
        by server-side code or by edits made at once on two processes of a cluster, can shrink)."""
        fits = self._fits(len(update))  # before reading: a refusal for size costs nothing
        decoded, parts = read_client_update(update)
        if origin is not None:
            origin.session.read_values(parts)
        if not fits and not inserts_nothing(decoded):
            self._refuse_size()
        if len(update) > piece_bytes(self._config.max_message_bytes):
            # A y-websocket client's update may be larger than a message (§13); it must split
            # into pieces that fit in one, or it could never reach native members (§3.2).
            self._pieces(update)
        self._origin = origin
        try:
            self._update_check.apply(update, decoded, self._apply)
        except ValueError as exc:
            raise RequestError(ErrorCode.INVALID_UPDATE, f"update does not apply: {exc}"[:1024]) from exc
        finally:
            self._origin = None

    def apply_client_updates(self, member: Member, items: list[tuple[bytes, int | None]]) -> None:
        """Apply a burst of a member's updates as one merged update (one transaction, one
        fan-out frame, one log record); if the merge or the apply fails, fall back to one by
        one so that each bad update gets its own error. Answers keep request order."""
        if member.access is Access.WRITE and self._fits(sum(len(update) for update, _ in items)):
            try:
                for update, _ in items:  # pycrdt merges only what the reader took
                    member.session.read_values(read_update_counted(update)[1])
                merged = merge_updates([update for update, _ in items])
                decoded = read_update(merged, trusted=True)
                self._origin = member
                try:
                    self._update_check.apply(merged, decoded, self._apply)
                finally:
                    self._origin = None
            except (RemoteProtocolError, ValueError):
                pass
            else:
                for _, ref in items:
                    if ref is not None:
                        self._pending.acks.append((member, ref, None))
                self._want_persist()
                return
        for update, ref in items:
            try:
                self.apply_client_update(member, update, ref)
            except RequestError as exc:
                member.session.refuse(exc.code, exc.message, ref, member.channel)

    def _fits(self, extra: int) -> bool:
        """Whether the document stays within max_document_bytes with `extra` more bytes of
        updates. The size is estimated (the last exact size plus every update since, which
        only overestimates) and measured exactly only when the estimate is over."""
        limit = self._config.max_document_bytes
        if self._doc_bytes + extra <= limit:
            return True
        if not self._doc_bytes_exact:
            self._doc_bytes, self._doc_bytes_exact = len(self.doc.get_update()), True
        return self._doc_bytes + extra <= limit

    def _refuse_size(self) -> NoReturn:
        raise RequestError(
            ErrorCode.DOCUMENT_TOO_LARGE,
            f"the document would be larger than this server's {self._config.max_document_bytes} bytes",
        )

    def _apply(self, update: bytes) -> None:
        apply_update(self.doc, update)

    def _on_doc_change(self, event: pycrdt.TransactionEvent) -> None:
        # Every change to the document, from a member or from server-side code, passes here:
        # it is broadcast to everyone but its origin and queued for the next commit.
        update: bytes = event.update
        self._doc_bytes += len(update)
        self._doc_bytes_exact = False
        self._update_check.learn(update)
        self.last_activity = trio.current_time()
        if not self._replicated:  # another process's change is stored already (_replica.py)
            self._note_writer(self._origin, self.last_activity)
            self._queue_updates([update])
            self._metrics.add("updates_applied")
        origin = self._origin
        recipients = [m for m in self._members.values() if m is not origin]
        if not recipients:
            return
        try:
            pieces = self._pieces(update)
        except RequestError as exc:
            # Peers' updates were checked before they applied: a server-side edit put a value
            # larger than a message in the document. It can reach no one; nobody may go on
            # believing they follow the room (joins are refused the same way).
            logger.error("room %r: %s", self.name, exc.message)
            for member in recipients:
                self.remove_member(member, disconnected=False)
                member.session.close_channel(member, exc.code, exc.message)
            return
        self._fanout.document(self.name, recipients, [ChannelFrame(Update(0, None, piece)) for piece in pieces])
        self._metrics.add("fanout_frames", len(recipients) * len(pieces), "document")
