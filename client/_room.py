"""A joined room on the client: the document, presence, cursors, typing and events, kept in
step across reconnects (spec §7)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pycrdt
import trio

from plait.protocol import (
    AccessChanged,
    ChannelClosed,
    CursorMove,
    Cursors,
    ErrorCode,
    Event,
    Frame,
    Join,
    Joined,
    Leave,
    PresenceDiff,
    PresenceEntry,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    SyncStep1,
    SyncStep2,
    Typing,
    TypingState,
    Update,
)

from ._changes import LocalChanges, Piece, Unsendable
from ._errors import (
    ConnectionClosed,
    DocumentReplaced,
    EventsLost,
    OfflineQueueFull,
    RateLimited,
    RequestFailed,
    RoomLeft,
    UnknownChannel,
    error_for,
)

if TYPE_CHECKING:
    from ._client import Client

logger = logging.getLogger("plait.client")

T = TypeVar("T")


class Waiter(Generic[T]):
    """A one-shot result for a request: set once, awaited by whoever asked."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def set(self, value: T) -> None:
        if not self.done:
            self._value = value
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done:
            self._error = error
            self._done.set()

    async def wait(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Feed(Generic[T]):
    """Fan-out of items to any number of async iterators, each with a bounded backlog.

    An iterator that falls more than `backlog` items behind raises EventsLost rather than
    silently skipping items or growing without bound.
    """

    def __init__(self, backlog: int = 10_000) -> None:
        self._subscribers: dict[trio.MemorySendChannel[T], bool] = {}
        self._backlog = backlog
        self._closed = False

    def publish(self, item: T) -> None:
        if self._closed:
            return
        for send in list(self._subscribers):
            try:
                send.send_nowait(item)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._subscribers[send] = True  # lost items
                send.close()

    def close(self) -> None:
        self._closed = True
        for send in self._subscribers:
            send.close()

    def subscribe(self) -> Subscription[T]:
        """An iterator of every item published from now on (subscribed at once, not lazily)."""
        send, receive = trio.open_memory_channel[T](self._backlog)
        self._subscribers[send] = False
        if self._closed:
            send.close()
        return Subscription(self, send, receive)

    def lost(self, send: trio.MemorySendChannel[T]) -> bool:
        return self._subscribers.pop(send, False)


class Subscription(Generic[T]):
    def __init__(self, feed: Feed[T], send: trio.MemorySendChannel[T], receive: trio.MemoryReceiveChannel[T]) -> None:
        self._feed, self._send, self._receive = feed, send, receive

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._feed.lost(self._send):
                raise EventsLost("fell too far behind; items were dropped") from None
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._feed.lost(self._send)
        self._send.close()
        self._receive.close()


# -- changes a room reports ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """Presence changed. Per session: who joined (entries), whose state changed and who left
    (session ids). Per user (identity id, spec §5.4): the same change seen by people rather than
    by connections: a second tab of a user already here is `users_updated`, and so is a quick
    reconnect (its old session leaving and its new one joining in one diff)."""

    joined: tuple[PresenceEntry, ...]
    updated: tuple[str, ...]
    left: tuple[str, ...]
    users_joined: tuple[str, ...] = ()
    users_updated: tuple[str, ...] = ()
    users_left: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CursorsChanged:
    moved: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TypingChanged:
    sessions: frozenset[str]


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    """The client's connection changed state (`ClientState` values: "connecting", "open",
    "reconnecting", "closed").

    Attributes:
        attempt: for "reconnecting", how many attempts in a row have failed (1, 2, ...); else 0.
        error: for "reconnecting", why the last attempt failed (an OSError, a ConnectionClosed
            with the close code, ...); for "closed", the ConnectionClosed that stopped the client.
        delay: for "reconnecting", seconds until the next attempt (backoff with full jitter).
    """

    state: str
    attempt: int = 0
    error: BaseException | None = None
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class HistoryGap:
    """On rejoin the server could not replay every missed event (spec §7), or the room's event
    history started again (its sequence numbers too): refetch what you derive from events.
    `since` is the last sequence number seen before."""

    since: int


@dataclass(frozen=True, slots=True)
class DocumentReset:
    """The server refused local edits for good (a read-only member's edits: Forbidden), so the
    room replaced `room.doc` with a new document holding the room's state, and is following
    the room again. Re-read `room.doc` (and anything taken from it, like `room.text`).

    Attributes:
        error: the server's refusal.
        discarded: one Yjs update holding every local change the room did not take; applied to
            a copy of the room's document, it shows what the refused edits were.
    """

    error: RequestFailed
    discarded: bytes


@dataclass(frozen=True, slots=True)
class AccessChange:
    """The server's operator changed this member's access to the room while it was in it
    (spec §5.2): `room.access` is now `access` (1 read, 3 comment, 2 write). Edits made with
    less than write access are refused (DocumentReset), publishes with read access (Forbidden).
    Access taken away altogether ends the room instead (Forbidden from `flushed()`/`publish`)."""

    access: int


@dataclass(frozen=True, slots=True)
class RoomEnded:
    """The server ended this member's membership (spec §5.2): `error` says why (RoomDeleted:
    the operator deleted the room; Forbidden: access taken away; StorageUnavailable: the room
    failed). Nothing more arrives for it, and it is not joined again on its own; edits not yet
    acknowledged are lost with it. Calls on the room raise `error`."""

    error: RequestFailed


Change = (
    PresenceChanged | CursorsChanged | TypingChanged | ConnectionChanged | HistoryGap | DocumentReset | AccessChange | RoomEnded
)


@dataclass(frozen=True, slots=True)
class RoomEvent:
    seq: int
    name: str
    payload: Any
    session: str | None
    user: str | None


@dataclass(frozen=True, slots=True)
class Unacknowledged:
    """What a room has not had acknowledged by the server (see `Room.unacknowledged`)."""

    edits: int
    """Local document transactions not yet durable on the server (at most this many)."""
    publishes: int
    """Publishes not yet acknowledged with their sequence number."""

    def __bool__(self) -> bool:
        return bool(self.edits or self.publishes)


@dataclass(slots=True)
class _Publish:
    name: str
    payload: Any
    key: str
    waiter: Waiter[int]
    refusals: int = 0
    """Times the server refused it for the event rate (it was sent again each time)."""


_ANY = 2**32 - 1
"""A channel or ref number no real one encodes longer than (the size checks of requests)."""
_KEY = "0" * 32
"""As long as an idempotency key (uuid4().hex)."""

PUBLISH_RETRIES = 6
"""A publish the server refuses for its event rate (RATE_LIMITED: it had no effect, spec §5.8)
is sent again, first in line and after a backoff at a slower pace, this many times before
`publish()` raises RateLimited. The server's count can run ahead of the announced rate when
paced frames reach it bunched (it was paused, or its reader was held up)."""
MAX_REFUSALS = 100
"""Refused ranges of local changes kept for `flushed()` to report."""
MAX_GIVEN_UP = 4
"""Documents replaced by resets that flushed() still watches for edits (DocumentReplaced):
the latest few, not every one a long-lived room ever gave up."""


class Room:
    """Use through `client.join(name)`."""

    def __init__(self, client: Client, name: str, offline_queue: int) -> None:
        self._client = client
        self.name = name
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        """The room's document. Replaced by a new one after a DocumentReset."""
        self.channel: int | None = None
        self.access: int | None = None
        self.presence: dict[str, PresenceEntry] = {}
        """Everyone else in the room, by session id, with the identity the server stamped."""
        self.cursors: dict[str, Any] = {}
        self.typing: frozenset[str] = frozenset()
        self.last_seq: int | None = None
        self._epoch: str | None = None
        """The event history `last_seq` belongs to (spec §7)."""
        self._join_error: RequestFailed | None = None
        self._synced = trio.Event()
        self._applying_remote = False
        self._local = LocalChanges()
        self._refusals: list[tuple[int, int, RequestFailed]] = []
        """(first, last, error): local changes the server refused for good."""
        self._reported_through = 0
        """`flushed()` has raised every refusal of changes up to this number."""
        self._resetting: RequestFailed | None = None
        self._replaced: list[tuple[pycrdt.Doc, RequestFailed]] = []
        self._given_up: list[tuple[pycrdt.Doc, bytes]] = []
        """Documents given up by resets, each with the state vector flushed() last saw: an
        edit through a reference taken before the reset changes it (DocumentReplaced)."""
        """Documents given up by resets, until the new one has synced (DocumentReset)."""
        self._progress = trio.Event()
        """Set (and replaced) whenever anything a waiting call checks may have changed."""
        self._my_presence: dict[str, Any] | None = None
        self._my_cursor: Any = None
        self._publishes: list[_Publish] = []
        self._offline_queue = offline_queue
        self._events: Feed[RoomEvent] = Feed()
        self._changes: Feed[Change] = Feed()
        self._left = False
        self._subscription = self.doc.observe(self._on_local_change)

    # -- public API -------------------------------------------------------------------------

    async def synced(self) -> None:
        """Wait until the document holds the server's state (first sync after joining, and
        after a DocumentReset).

        Raises:
            RequestFailed: the join was refused (Forbidden, StorageUnavailable, ...), or the
                server closed the room's channel.
            ConnectionClosed: the client stopped for good.
            RoomLeft: the room's `join` block has ended.
        """
        await self._wait_until(self._synced.is_set)

    async def flushed(self) -> None:
        """Wait until every local edit made so far is acknowledged, i.e. durable on the server
        (spec §4.1). Edits the server refused for a while (RATE_LIMITED) are sent again until
        it takes them; while disconnected it waits for the reconnect.

        Raises:
            Forbidden, InvalidUpdate, ...: the server refused some of these edits for good. The
                room resets its document to the room's state (see DocumentReset). Each refusal
                is raised once: a later call does not raise it again.
            RequestFailed: the room's channel was closed by the server.
            ConnectionClosed: the client stopped for good.
            RoomLeft: the room's `join` block has ended (also when it ends while this waits):
                edits not acknowledged by then, and any made since, are never sent.
        """
        if self._left:
            raise self._left_error()
        target = self._local.count
        floor = self._reported_through
        while True:
            if self._edited_given_up():
                raise DocumentReplaced(
                    f"an edit was made to a document room {self.name!r} replaced at a reset (DocumentReset); "
                    "it is not sent: re-read room.doc (and anything taken from it, like room.text)"
                )
            for first, last, error in self._refusals:
                if last > floor and first <= target:
                    self._reported_through = max(self._reported_through, target)
                    raise error.copy()
            oldest = self._local.oldest_unacked()
            if oldest is None or oldest > target:
                return
            self._check_usable()
            await self._progress.wait()

    async def set_presence(self, state: dict[str, Any]) -> None:
        """Set this session's presence state; it is restored after every reconnect.

        Raises:
            PresenceTooLarge: the state takes more than the server's `max_presence_bytes`
                (spec §5.4); raised at once, and the previous state is kept.
            InvalidField, TooDeep: the state breaks a rule of spec §3.3 (NaN, a lone
                surrogate, nesting, ...); raised at once.
            ConnectionClosed: the client stopped for good.
            RoomLeft: the room's `join` block has ended.
        """
        self._check_usable()
        self._client.check_request(PresenceSet(_ANY, _ANY, state))
        self._client.check_presence("presence state", state)
        self._my_presence = dict(state)
        if self.channel is not None:
            await self._request(PresenceSet(self.channel, self._client.next_ref(), dict(state)))

    async def move_cursor(self, position: Any) -> None:
        """Move this session's cursor (latest wins); None hides it.

        Raises:
            PresenceTooLarge, InvalidField, TooDeep, ConnectionClosed, RoomLeft: as for
                `set_presence`.
        """
        self._check_usable()
        self._client.check_request(CursorMove(_ANY, position))
        self._client.check_presence("cursor position", position)
        self._my_cursor = position
        if self.channel is not None:
            self._client.send(CursorMove(self.channel, position))
        await trio.lowlevel.checkpoint()

    async def set_typing(self, on: bool) -> None:
        """Mark this session typing (call again while the user keeps typing; it expires).

        Raises:
            InvalidField: `on` is not a bool (spec §4); raised at once.
            ConnectionClosed: the client stopped for good.
            RoomLeft: the room's `join` block has ended.
        """
        self._check_usable()
        self._client.check_request(Typing(_ANY, on))
        if self.channel is not None:
            self._client.send(Typing(self.channel, on))
        await trio.lowlevel.checkpoint()

    async def publish(self, name: str, payload: Any = None) -> int:
        """Publish a named event; returns its sequence number once the server has it.

        While disconnected it waits in a bounded queue and is sent, exactly once, on reconnect.
        Refused for the event rate (RATE_LIMITED, spec §5.8), it is sent again after a pause,
        up to PUBLISH_RETRIES times, under the same idempotency key.

        Raises:
            EventRejected, Forbidden, RateLimited, ...: the server refused it (roll back);
                RateLimited only once PUBLISH_RETRIES sendings were refused.
            FrameTooLarge: the event does not fit in a message the server takes (spec §3.2);
                raised at once, and nothing is sent.
            InvalidField, TooDeep: the name or payload breaks a rule of spec §3.3 (NaN,
                nesting, a lone surrogate, ...); raised at once.
            OfflineQueueFull: offline, and `offline_queue` publishes already wait for a
                connection (0: none may wait).
            ConnectionClosed: the client stopped for good.
            RoomLeft: the room's `join` block has ended, before or while this waits.
        """
        self._check_usable()
        self._client.check_request(Publish(_ANY, _ANY, name, payload, _KEY))
        if self.channel is None and len(self._publishes) >= self._offline_queue:
            raise OfflineQueueFull(
                f"{len(self._publishes)} publishes already wait for a connection (connect's offline_queue)"
            )
        pending = _Publish(name, payload, uuid.uuid4().hex, Waiter())
        self._publishes.append(pending)
        if self.channel is not None:
            self._send_publish(pending)
        try:
            return await pending.waiter.wait()
        finally:
            if pending in self._publishes:
                self._publishes.remove(pending)

    def users(self) -> dict[str, list[PresenceEntry]]:
        """The room's presence grouped by user (identity id), each with its sessions (tabs,
        devices); this connection's own session is left out, the user's other ones are not
        (spec §5.4)."""
        users: dict[str, list[PresenceEntry]] = {}
        for entry in self.presence.values():
            users.setdefault(str(entry.identity.get("id")), []).append(entry)
        return users

    def _user_sessions(self) -> dict[str, set[str]]:
        users: dict[str, set[str]] = {}
        for entry in self.presence.values():
            users.setdefault(str(entry.identity.get("id")), set()).add(entry.session)
        return users

    @property
    def unacknowledged(self) -> Unacknowledged:
        """What the server has not acknowledged yet: `flushed()` waits for the edits,
        `publish()` for each publish. Leaving `connect` while offline drops it, so check it
        (false when nothing is waiting) before quitting without a connection."""
        oldest = self._local.oldest_unacked()
        edits = 0 if oldest is None else self._local.count - oldest + 1
        return Unacknowledged(edits, len(self._publishes))

    def events(self) -> Subscription[RoomEvent]:
        """Named events from now on, in sequence order, each once (across reconnects too).
        The iterator raises EventsLost if it falls more than 10,000 events behind."""
        return self._events.subscribe()

    def changes(self) -> Subscription[Change]:
        """Presence, cursor, typing, connection and document-reset changes from now on."""
        return self._changes.subscribe()

    @property
    def text(self) -> pycrdt.Text:
        """The document's shared text named "text" (what `plait client` edits).

        pycrdt 0.14 counts its positions in UTF-8 bytes, not characters: with `s = str(text)`,
        `text.insert(len(s[:i].encode()), ...)` inserts before character i. A position inside a
        multi-byte character makes an update the server refuses with INVALID_UPDATE
        (spec/notes/unicode.md)."""
        return self.doc.get("text", type=pycrdt.Text)

    # -- internals: driven by the client ----------------------------------------------------

    def _check_usable(self) -> None:
        if self._left:
            raise self._left_error()
        if self._join_error is not None:
            raise self._join_error.copy()
        if self._client.closed_error is not None:
            raise self._client.closed_error

    def _left_error(self) -> RoomLeft:
        return RoomLeft(
            f"room {self.name!r} was left (its join block has ended): nothing is sent for it, "
            "and edits to its document are not kept in step; join it again"
        )

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._check_usable()
            await self._progress.wait()
        self._check_usable()

    async def _request(self, frame: Frame) -> Any:
        waiter: Waiter[Any] = Waiter()
        self._client.send(frame, waiter)
        return await waiter.wait()

    async def settled(self) -> None:
        """Wait while the room still has edits of ours to send or to hear back about, through
        a reconnect too (leaving the room waits for this, bounded by the client's close
        timeout); not once the client has stopped for good or the join was refused."""
        while self._join_error is None and self._client.closed_error is None and self._local.pending():
            await self._progress.wait()

    def join_frame(self) -> Join:
        """(Re)join: our state vector brings both documents up to date; `since` resumes events."""
        ref = self._client.next_ref()
        self._client.expect_join(ref, self)
        return Join(ref, self.name, self.doc.get_state(), self.last_seq, self._epoch)

    @property
    def ended(self) -> bool:
        """Whether the server ended the membership (channel_closed) or refused the join."""
        return self._join_error is not None

    @property
    def rejoinable(self) -> bool:
        return self._join_error is None and not self._left

    def on_joined(self, joined: Joined) -> None:
        self.channel = joined.channel
        self.access = joined.access
        if self.last_seq is None:
            self.last_seq = joined.head
        elif joined.epoch != self._epoch and self.last_seq > 0:
            # spec §7: another history (the server lost this one). Its sequence numbers start
            # again, so every event it replays is one we have not seen.
            self._changes.publish(HistoryGap(self.last_seq))
            self.last_seq = 0
        elif joined.resumed is False:
            self._changes.publish(HistoryGap(self.last_seq))
        self._epoch = joined.epoch
        if self._my_presence is not None:
            self._client.send(PresenceSet(joined.channel, None, self._my_presence))
        if self._my_cursor is not None:
            self._client.send(CursorMove(joined.channel, self._my_cursor))
        for pending in self._publishes:
            self._send_publish(pending)
        self._wake()

    def on_join_failed(self, error: RequestFailed) -> None:
        self._join_error = error
        self._wake()

    def on_disconnected(self) -> None:
        self.channel = None
        self.presence.clear()
        self.cursors.clear()
        self.typing = frozenset()
        self._local.lost_connection()
        self._maybe_reset()
        if self._client.closed_error is not None:  # stopped for good: no reconnect sends them
            self._fail_publishes(lambda: self._client.closed_error or self._left_error())
            # Nothing more will arrive: `async for` over events() and changes() ends, as after
            # leaving, instead of waiting for a client that will never reconnect.
            self._events.close()
            self._changes.close()
        self._wake()

    def _fail_publishes(self, error: Callable[[], BaseException]) -> None:
        for pending in self._publishes:
            pending.waiter.fail(error())

    def on_frame(self, frame: Frame) -> None:
        match frame:
            case SyncStep1(state_vector=sv):
                # spec §5.3: answer with what the server lacks (our offline edits); it goes
                # out paced like any update, and is acked like one.
                self._local.absorb_into_sync(self.doc.get_update(sv))
                self._client.doc_ready(self)
            case SyncStep2(update=update) | Update(update=update):
                self._apply_remote(update)
                if isinstance(frame, SyncStep2):
                    self._synced.set()
                    self._report_resets()
                    self._wake()
            case PresenceSnapshot(entries=entries):
                me = self._client.session_id
                before = self._user_sessions()
                self.presence = {e.session: e for e in entries if e.session != me}
                self._changes.publish(
                    PresenceChanged(tuple(self.presence.values()), (), (), *_user_changes(before, self._user_sessions(), ()))
                )
            case PresenceDiff(joined=joined, updated=updated, left=left):
                me = self._client.session_id
                before = self._user_sessions()
                for entry in joined:
                    if entry.session != me:
                        self.presence[entry.session] = entry
                changed = []
                for upd in updated:
                    old = self.presence.get(upd.session)
                    if old is not None:
                        self.presence[upd.session] = PresenceEntry(old.session, old.identity, upd.state)
                        changed.append(upd.session)
                for sid in left:
                    self.presence.pop(sid, None)
                    self.cursors.pop(sid, None)
                self._changes.publish(
                    PresenceChanged(
                        tuple(e for e in joined if e.session != me),
                        tuple(changed),
                        left,
                        *_user_changes(before, self._user_sessions(), changed),
                    )
                )
            case Cursors(moves=moves):
                me = self._client.session_id
                moved = {m.session: m.position for m in moves if m.session != me}
                for sid, pos in moved.items():
                    if pos is None:
                        self.cursors.pop(sid, None)
                    else:
                        self.cursors[sid] = pos
                if moved:
                    self._changes.publish(CursorsChanged(moved))
            case TypingState(sessions=sessions):
                me = self._client.session_id
                self.typing = frozenset(s for s in sessions if s != me)
                self._changes.publish(TypingChanged(self.typing))
            case Event():
                if self.last_seq is None or frame.seq > self.last_seq:
                    self.last_seq = frame.seq
                    self._events.publish(RoomEvent(frame.seq, frame.name, frame.payload, frame.session, frame.user))
            case AccessChanged(access=access):
                self.access = access
                self._changes.publish(AccessChange(access))
            case ChannelClosed(code=code, message=message):
                self.channel = None
                error = self._join_error = error_for(code, message)
                # What waits for an answer gets the reason the room ended, not the
                # UNKNOWN_CHANNEL the server gives what crossed the close on the wire.
                self._fail_publishes(error.copy)
                self._changes.publish(RoomEnded(error.copy()))
                self._wake()
            case _:
                pass

    def on_connection_state(self, change: ConnectionChanged) -> None:
        self._changes.publish(change)
        self._wake()

    def close(self) -> None:
        if self.channel is not None and not self._left:
            if self._local.pending():
                logger.warning(
                    "leaving room %r with local edits the server has not acknowledged", self.name
                )
            self._client.send(Leave(self.channel, None))
        self._left = True
        self.channel = None
        self._fail_publishes(self._left_error)
        self.doc.unobserve(self._subscription)
        self._events.close()
        self._changes.close()
        self._wake()

    def _apply_remote(self, update: bytes) -> None:
        self._applying_remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying_remote = False

    # -- local document changes (client/_changes.py) ----------------------------------------

    def _on_local_change(self, event: pycrdt.TransactionEvent) -> None:
        if self._applying_remote or self._left:
            return
        online = self.channel is not None
        # Offline: only counted. The state-vector exchange on rejoin sends it (spec §7).
        self._local.record(event.update if online else None)
        if online:
            self._client.doc_ready(self)

    def has_doc_frame(self) -> bool:
        return self.channel is not None and self._resetting is None and self._local.sendable()

    def take_doc_frame(self) -> tuple[Frame, Waiter[Any]] | None:
        """The next update frame (every waiting local change, merged; or the next part of
        one larger than a message, spec §3.2) and what handles its answer; the client calls
        this when the pacer allows a frame."""
        if not self.has_doc_frame():
            return None
        assert self.channel is not None
        try:
            taken = self._local.take(self._client.max_update_bytes, self._fits_the_server)
        except Unsendable as exc:
            # One value larger than a message: no server of these limits can take it. Like
            # a refusal for good (spec §7.1): reported, and the document is reset.
            error = error_for(ErrorCode.DOCUMENT_TOO_LARGE, str(exc)[:1024])
            changed = [p for p in exc.pieces if p.first <= p.last]
            if changed and isinstance(error, RequestFailed):
                self._refuse(changed, error)
                if self._resetting is None:
                    self._resetting = error
            self._maybe_reset()
            self._wake()
            return None
        if taken is None:
            return None
        ref = self._client.next_ref()
        self._local.sent(ref, taken)
        kind = SyncStep2 if taken.sync else Update
        return kind(self.channel, ref, taken.update), _DocAnswer(self, ref)

    def _fits_the_server(self) -> bool | None:
        """Whether the document, with the edit about to go in parts, stays within the server's
        max_document_bytes (it is checked only then: encoding the document costs its size);
        None inside a transaction, where pycrdt cannot encode it (the writer asks again)."""
        limit = self._client.max_document_bytes
        if limit is None:
            return True
        try:
            return len(self.doc.get_update()) <= limit
        except RuntimeError:  # "Already mutably borrowed": called from the change's own observer
            return None

    def on_doc_acked(self, ref: int) -> None:
        if self._local.acked(ref):
            self._client.doc_acked()
        self._maybe_reset()
        self._wake()

    def on_doc_failed(self, ref: int, error: BaseException) -> None:
        if isinstance(error, UnknownChannel) and self._join_error is not None:
            error = self._join_error.copy()  # the edit crossed the server's channel_closed on the wire
        if isinstance(error, ConnectionClosed):
            self._local.retry(ref)  # the rejoin's sync_step2 carries it
        elif isinstance(error, RateLimited):
            if self._local.retry(ref):
                self._client.doc_rate_limited(self)
        else:
            pieces = self._local.refuse(ref)
            changed = [p for p in pieces or () if p.first <= p.last]
            if changed and isinstance(error, RequestFailed):
                self._refuse(changed, error)
                if self._resetting is None:
                    self._resetting = error
        self._maybe_reset()
        self._wake()

    def _edited_given_up(self) -> bool:
        """Whether a document given up by a reset was edited since flushed() last looked."""
        edited = False
        for i, (doc, seen) in enumerate(self._given_up):
            now = doc.get_state()
            if now != seen:
                self._given_up[i] = (doc, now)
                edited = True
        return edited

    def _refuse(self, pieces: list[Piece], error: RequestFailed) -> None:
        self._refusals.append((min(p.first for p in pieces), max(p.last for p in pieces), error))
        del self._refusals[:-MAX_REFUSALS]

    def _maybe_reset(self) -> None:
        """After a refusal for good, once nothing is in flight (every answer is in): replace
        the document with the room's state, so that client and room never diverge unnoticed.
        The old document's unacknowledged edits are dropped; DocumentReset reports them once
        the new document has synced."""
        if self._resetting is None or self._local.busy or self._left:
            return  # (a room left has no document to follow: its block has ended)
        error, self._resetting = self._resetting, None
        dropped = [p for p in self._local.discard() if p.first <= p.last]
        if dropped:
            self._refuse(dropped, error)
        old = self.doc
        old.unobserve(self._subscription)
        self._replaced.append((old, error))
        self.doc = pycrdt.Doc()
        self._subscription = self.doc.observe(self._on_local_change)
        self._synced = trio.Event()
        if self.channel is not None:
            # spec §5.3: the server answers with everything we lack, i.e. the whole room.
            self._client.send(SyncStep1(self.channel, self.doc.get_state()))

    def _report_resets(self) -> None:
        replaced, self._replaced = self._replaced, []
        for old, error in replaced:
            self._changes.publish(DocumentReset(error, old.get_update(self.doc.get_state())))
            # DocumentReset reported every edit it holds; a reference taken before the reset
            # may still edit it later (flushed() raises DocumentReplaced then).
            self._given_up.append((old, old.get_state()))
            del self._given_up[:-MAX_GIVEN_UP]  # each holds a whole document

    def _send_publish(self, pending: _Publish, *, first: bool = False) -> None:
        assert self.channel is not None
        ref = self._client.next_ref()
        frame = Publish(self.channel, ref, pending.name, pending.payload, pending.key)
        self._client.send(frame, _PublishAnswer(self, pending), first=first)

    def _publish_refused_for_rate(self, pending: _Publish) -> bool:
        """A publish refused RATE_LIMITED: whether it goes out again (PUBLISH_RETRIES)."""
        if pending.refusals >= PUBLISH_RETRIES or pending not in self._publishes:
            return False
        pending.refusals += 1
        self._client.publish_rate_limited(pending.refusals)
        if self.channel is not None:  # else the rejoin sends it, with the same key
            self._send_publish(pending, first=True)
        return True


class _DocAnswer(Waiter[Any]):
    """Routes the answer to one of the room's update frames back to the room."""

    def __init__(self, room: Room, ref: int) -> None:
        super().__init__()
        self._room, self._ref = room, ref

    def set(self, value: Any) -> None:
        super().set(value)
        self._room.on_doc_acked(self._ref)

    def fail(self, error: BaseException) -> None:
        super().fail(error)
        self._room.on_doc_failed(self._ref, error)


class _PublishAnswer(Waiter[Any]):
    """Passes the answer to one sending of a publish on to the publish's own waiter, which
    outlives connections and sendings: an ack's value, or an error, unless the publish goes
    out again (a retryable connection loss: on rejoin; RATE_LIMITED: PUBLISH_RETRIES)."""

    def __init__(self, room: Room, pending: _Publish) -> None:
        super().__init__()
        self._room = room
        self._pending = pending

    def set(self, value: Any) -> None:
        super().set(value)
        self._room._client.publish_acked()
        self._pending.waiter.set(value)

    def fail(self, error: BaseException) -> None:
        super().fail(error)
        if isinstance(error, ConnectionClosed) and error.retryable:
            return
        if isinstance(error, RateLimited) and self._room._publish_refused_for_rate(self._pending):
            return
        self._pending.waiter.fail(error)


def _user_changes(
    before: dict[str, set[str]], after: dict[str, set[str]], updated_sessions: list[str] | tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(users joined, users updated, users left) between two per-user views: a user whose set
    of sessions changed but is not empty on either side, or one of whose sessions changed its
    state, is updated."""
    joined = tuple(sorted(u for u in after if u not in before))
    left = tuple(sorted(u for u in before if u not in after))
    touched = {u for u, sessions in after.items() if u in before and sessions != before[u]}
    touched |= {u for u, sessions in after.items() if any(s in sessions for s in updated_sessions)}
    return joined, tuple(sorted(touched)), left
