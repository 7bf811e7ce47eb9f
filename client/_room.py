"""A joined room on the client: the document, presence, cursors, typing and events, kept in
step across reconnects (spec §7)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pycrdt
import trio

from plait.protocol import (
    ChannelClosed,
    CursorMove,
    Cursors,
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

from ._errors import ConnectionClosed, EventsLost, OfflineQueueFull, RequestFailed, error_for

if TYPE_CHECKING:
    from ._client import Client

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

    def publish(self, item: T) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(item)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._subscribers[send] = True  # lost items
                send.close()

    def close(self) -> None:
        for send in self._subscribers:
            send.close()

    def subscribe(self) -> Subscription[T]:
        """An iterator of every item published from now on (subscribed at once, not lazily)."""
        send, receive = trio.open_memory_channel[T](self._backlog)
        self._subscribers[send] = False
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
    joined: tuple[PresenceEntry, ...]
    updated: tuple[str, ...]
    left: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CursorsChanged:
    moved: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TypingChanged:
    sessions: frozenset[str]


@dataclass(frozen=True, slots=True)
class ConnectionChanged:
    state: str


@dataclass(frozen=True, slots=True)
class HistoryGap:
    """On rejoin the server could not replay every missed event (spec §7): refetch what you
    derive from events."""

    since: int


Change = PresenceChanged | CursorsChanged | TypingChanged | ConnectionChanged | HistoryGap


@dataclass(frozen=True, slots=True)
class RoomEvent:
    seq: int
    name: str
    payload: Any
    session: str | None
    user: str | None


@dataclass(slots=True)
class _Publish:
    name: str
    payload: Any
    key: str
    waiter: Waiter[int]


class Room:
    """Use through `client.join(name)`."""

    def __init__(self, client: Client, name: str, offline_queue: int) -> None:
        self._client = client
        self.name = name
        self.doc = pycrdt.Doc()
        self.channel: int | None = None
        self.access: int | None = None
        self.presence: dict[str, PresenceEntry] = {}
        """Everyone else in the room, by session id, with the identity the server stamped."""
        self.cursors: dict[str, Any] = {}
        self.typing: frozenset[str] = frozenset()
        self.last_seq: int | None = None
        self._join_error: RequestFailed | None = None
        self._synced = trio.Event()
        self._joined_once = trio.Event()
        self._applying_remote = False
        self._local_changes = 0
        self._acked_changes = 0
        self._ack_progress = trio.Event()
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
        """Wait until the document holds the server's state (first sync after joining).

        Raises:
            RequestFailed: the join was refused (Forbidden, StorageUnavailable, ...).
            ConnectionClosed: the client stopped for good.
        """
        await self._wait_for(self._synced)

    async def flushed(self) -> None:
        """Wait until every local edit made so far is acknowledged (durable on the server)."""
        target = self._local_changes
        while self._acked_changes < target:
            self._check_usable()
            event = self._ack_progress
            await event.wait()

    async def set_presence(self, state: dict[str, Any]) -> None:
        """Set this session's presence state; it is restored after every reconnect."""
        self._my_presence = dict(state)
        if self.channel is not None:
            await self._request(PresenceSet(self.channel, self._client.next_ref(), dict(state)))

    async def move_cursor(self, position: Any) -> None:
        """Move this session's cursor (latest wins); None hides it."""
        self._my_cursor = position
        if self.channel is not None:
            self._client.send(CursorMove(self.channel, position))
        await trio.lowlevel.checkpoint()

    async def set_typing(self, on: bool) -> None:
        """Mark this session typing (call again while the user keeps typing; it expires)."""
        if self.channel is not None:
            self._client.send(Typing(self.channel, on))
        await trio.lowlevel.checkpoint()

    async def publish(self, name: str, payload: Any = None) -> int:
        """Publish a named event; returns its sequence number once the server has it.

        While disconnected it waits in a bounded queue and is sent, exactly once, on reconnect.

        Raises:
            EventRejected, Forbidden, RateLimited, ...: the server refused it (roll back).
            OfflineQueueFull: too many publishes are already waiting.
        """
        self._check_usable()
        if len(self._publishes) >= self._offline_queue:
            raise OfflineQueueFull(f"{len(self._publishes)} publishes already waiting")
        pending = _Publish(name, payload, uuid.uuid4().hex, Waiter())
        self._publishes.append(pending)
        if self.channel is not None:
            self._send_publish(pending)
        try:
            return await pending.waiter.wait()
        finally:
            if pending in self._publishes:
                self._publishes.remove(pending)

    def events(self) -> Subscription[RoomEvent]:
        """Named events from now on, in sequence order, each once (across reconnects too).
        The iterator raises EventsLost if it falls more than 10,000 events behind."""
        return self._events.subscribe()

    def changes(self) -> Subscription[Change]:
        """Presence, cursor, typing and connection changes from now on, as they happen."""
        return self._changes.subscribe()

    @property
    def text(self) -> pycrdt.Text:
        """The document's shared text named "text" (what `plait client` edits)."""
        return self.doc.get("text", type=pycrdt.Text)

    # -- internals: driven by the client ----------------------------------------------------

    def _check_usable(self) -> None:
        if self._join_error is not None:
            raise self._join_error
        if self._client.closed_error is not None:
            raise self._client.closed_error

    async def _wait_for(self, event: trio.Event) -> None:
        while not event.is_set():
            self._check_usable()
            with trio.move_on_after(0.5):
                await event.wait()
        self._check_usable()

    async def _request(self, frame: Frame) -> Any:
        waiter: Waiter[Any] = Waiter()
        self._client.send(frame, waiter)
        return await waiter.wait()

    def join_frame(self) -> Join:
        """(Re)join: our state vector brings both documents up to date; `since` resumes events."""
        ref = self._client.next_ref()
        self._client.expect_join(ref, self)
        return Join(ref, self.name, self.doc.get_state(), self.last_seq)

    def on_joined(self, joined: Joined) -> None:
        self.channel = joined.channel
        self.access = joined.access
        if self.last_seq is None:
            self.last_seq = joined.head
        elif joined.resumed is False:
            self._changes.publish(HistoryGap(self.last_seq))
        self._joined_once.set()
        if self._my_presence is not None:
            self._client.send(PresenceSet(joined.channel, None, self._my_presence))
        if self._my_cursor is not None:
            self._client.send(CursorMove(joined.channel, self._my_cursor))
        for pending in self._publishes:
            self._send_publish(pending)

    def on_join_failed(self, error: RequestFailed) -> None:
        self._join_error = error

    def on_disconnected(self) -> None:
        self.channel = None
        self.presence.clear()
        self.cursors.clear()
        self.typing = frozenset()
        self._ack_progress.set()
        self._ack_progress = trio.Event()

    def on_frame(self, frame: Frame) -> None:
        match frame:
            case SyncStep1(state_vector=sv):
                # spec §5.3: answer with what the server lacks (our offline edits), acked.
                covered = self._local_changes
                update = self.doc.get_update(sv)
                ref = self._client.next_ref()
                self._client.send(SyncStep2(frame.channel, ref, update), self._ack_covering(covered))
            case SyncStep2(update=update) | Update(update=update):
                self._apply_remote(update)
                if isinstance(frame, SyncStep2):
                    self._synced.set()
            case PresenceSnapshot(entries=entries):
                me = self._client.session_id
                self.presence = {e.session: e for e in entries if e.session != me}
                self._changes.publish(PresenceChanged(tuple(self.presence.values()), (), ()))
            case PresenceDiff(joined=joined, updated=updated, left=left):
                me = self._client.session_id
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
                    PresenceChanged(tuple(e for e in joined if e.session != me), tuple(changed), left)
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
            case ChannelClosed(code=code, message=message):
                self.channel = None
                self._join_error = error_for(code, message)
            case _:
                pass

    def on_connection_state(self, state: str) -> None:
        self._changes.publish(ConnectionChanged(state))

    def close(self) -> None:
        if self.channel is not None and not self._left:
            self._client.send(Leave(self.channel, None))
        self._left = True
        self.channel = None
        self.doc.unobserve(self._subscription)
        self._events.close()
        self._changes.close()

    def _apply_remote(self, update: bytes) -> None:
        self._applying_remote = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying_remote = False

    def _on_local_change(self, event: pycrdt.TransactionEvent) -> None:
        if self._applying_remote or self._left:
            return
        self._local_changes += 1
        if self.channel is not None:
            ref = self._client.next_ref()
            self._client.send(Update(self.channel, ref, event.update), self._ack_covering(self._local_changes))
        # Offline: nothing to queue. The state-vector exchange on rejoin sends it (spec §7).

    def _ack_covering(self, changes: int) -> Waiter[Any]:
        room = self

        class _AckWaiter(Waiter[Any]):
            def set(self, value: Any) -> None:
                super().set(value)
                if changes > room._acked_changes:
                    room._acked_changes = changes
                room._ack_progress.set()
                room._ack_progress = trio.Event()

        return _AckWaiter()

    def _send_publish(self, pending: _Publish) -> None:
        assert self.channel is not None
        ref = self._client.next_ref()
        self._client.send(Publish(self.channel, ref, pending.name, pending.payload, pending.key), _Forward(pending.waiter))


class _Forward(Waiter[Any]):
    """Passes an ack's value (or error) on to a publish's own waiter, which outlives connections."""

    def __init__(self, target: Waiter[int]) -> None:
        super().__init__()
        self._target = target

    def set(self, value: Any) -> None:
        super().set(value)
        self._target.set(value)

    def fail(self, error: BaseException) -> None:
        super().fail(error)
        if not isinstance(error, ConnectionClosed) or not error.retryable:
            self._target.fail(error)

