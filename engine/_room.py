"""A live room: one document, presence, cursors, typing and events, and the tasks that keep
them moving (architecture: Engine).

Concurrency rules:
- Room state changes only on the Trio thread, in synchronous methods (no await in the middle of
  a change), so there are no locks. Sessions call those methods from their reader tasks.
- The room's own nursery runs the ticker (coalesces ephemeral changes, one frame per kind per
  tick), the sweeper (expires lingering presence and typing) and the persister (group commit of
  document updates and events; acks go out only after the commit).
- Lifecycle: loading -> live -> draining -> closed (or failed). A room that fails to load never
  starts empty; a room whose store fails closes every channel and unloads without writing.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pycrdt
import trio

from plait.protocol import (
    FRAME_OVERHEAD,
    MAX_DEPTH,
    SKIP_STRUCT,
    Access,
    Ack,
    AwarenessEntry,
    ChannelFrame,
    CursorPosition,
    Cursors,
    DecodedUpdate,
    Error,
    ErrorCode,
    Event,
    Frame,
    Join,
    Joined,
    PresenceDiff,
    PresenceEntry,
    PresenceSnapshot,
    ProtocolError,
    RemoteProtocolError,
    SplitError,
    SyncStep1,
    SyncStep2,
    TypingState,
    Update,
    check_state_vector,
    check_value,
    read_update,
    split_update,
)
from plait.storage import RoomData, StoredEvent

from ._config import EngineConfig
from ._errors import RequestError, RoomUnavailable
from ._events import EventLog, EventRecord, new_epoch
from ._awareness import Awareness
from ._hooks import EventRejected, HookFailed, Hooks, Identity, call_hook
from ._presence import PresenceBook
from ._updatecheck import UpdateCheck

if TYPE_CHECKING:
    from ._peer import Peer as Session

logger = logging.getLogger("plait.room")
T = TypeVar("T")


class RoomStore(Protocol):
    """The part of `plait.storage.Store` a room uses."""

    async def load(self, room: str) -> RoomData: ...

    async def append(self, room: str, updates: Sequence[bytes]) -> None: ...

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None: ...

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None: ...


class RoomState(Enum):
    LOADING = "loading"
    LIVE = "live"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(eq=False, slots=True)
class Member:
    session: Session
    room: Room
    channel: int
    access: Access


@dataclass(slots=True)
class _Pending:
    """What the persister commits next, and the acks waiting for that commit."""

    updates: list[bytes] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    acks: list[tuple[Member | None, int, int | Error | None]] = field(default_factory=list)
    """Answers in request order: (member, ref, ack value) or (member, ref, Error frame)."""
    confirmations: dict[Member, list[bytes]] = field(default_factory=dict)
    """Updates of members confirmed by sending them back once durable (y-websocket, §13)."""

    def __bool__(self) -> bool:
        return bool(self.updates or self.events or self.acks or self.confirmations)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON")


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


def changes_nothing(doc: pycrdt.Doc, update: DecodedUpdate) -> bool:
    """Whether applying `update` would leave `doc` as it is: it inserts nothing and deletes
    only what `doc` has already deleted. A client's sync_step2 after it took the server's
    state is such an update (Yjs sends its whole delete set), read-only member or not."""
    if any(struct[3] != SKIP_STRUCT for struct in update.structs):
        return False
    if not any(update.deletes.values()):
        return True
    ours = read_update(doc.get_update(doc.get_state()), trusted=True).deletes
    for client, ranges in update.deletes.items():
        have = ours.get(client, ())
        for i in range(0, len(ranges), 2):
            clock, end = ranges[i], ranges[i] + ranges[i + 1]
            for j in range(0, len(have), 2):  # sorted, disjoint: is [clock, end) inside their union?
                if have[j] <= clock < have[j] + have[j + 1]:
                    clock = have[j] + have[j + 1]
                if clock >= end:
                    break
            if clock < end:
                return False
    return True


def read_client_update(update: bytes) -> DecodedUpdate:
    """A peer's update, decoded; RequestError INVALID_UPDATE if it is not one pycrdt may see
    (spec §5.3)."""
    try:
        return read_update(update)
    except RemoteProtocolError as exc:
        raise RequestError(exc.code, exc.message) from None


def apply_update(doc: pycrdt.Doc, update: bytes) -> None:
    _crdt_call(lambda: doc.apply_update(update))


def merge_updates(updates: list[bytes]) -> bytes:
    return updates[0] if len(updates) == 1 else _crdt_call(lambda: pycrdt.merge_updates(*updates))


class Room:
    def __init__(
        self,
        name: str,
        store: RoomStore,
        hooks: Hooks,
        config: EngineConfig,
        on_draining: Callable[[Room], None],
        new_epoch: Callable[[], str] = new_epoch,
    ) -> None:
        self.name = name
        self.state = RoomState.LOADING
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self._update_check = UpdateCheck()
        self._store, self._hooks, self._config = store, hooks, config
        self._on_draining = on_draining
        self._members: dict[Session, Member] = {}
        self._holds = 0
        """Joins in progress and server-side handles: a held room does not unload."""
        self._presence = PresenceBook()
        self._cursors: dict[str, Any] = {}
        self._moved: dict[str, Any] = {}
        self._typing: dict[str, float] = {}
        self._typing_changed = False
        self._events = EventLog(config.event_history, epoch="-")  # replaced once loaded
        self._new_epoch = new_epoch
        self._pending = _Pending()
        self._updates_since_snapshot = 0
        self._bytes_since_snapshot = 0
        self._snapshot_bytes = 0
        self._doc_bytes = 0
        """The document's size, estimated (spec §8 DOCUMENT_TOO_LARGE, _fits)."""
        self._doc_bytes_exact = False
        self._origin: Member | None = None
        self._persist_lock = trio.StrictFIFOLock()
        self._loaded = trio.Event()
        self._closed = trio.Event()
        self._tick_wanted = trio.Event()
        self._persist_wanted = trio.Event()
        self._deadlines_changed = trio.Event()
        self._membership_changed = trio.Event()
        self._unload_requested = False
        self._changes = 0
        self._durable_changes = 0
        self._commit_done = trio.Event()
        self._awareness = Awareness()
        self._awareness_waiting: dict[int, Member] = {}
        """Client id -> a Yjs member refused it because a disconnected session held it."""
        self._doc_subscription: pycrdt.Subscription | None = None
        self._sync_cache: tuple[bytes, list[ChannelFrame]] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Load, serve until idle (or asked to unload), flush, close. Runs in the engine's nursery.
        Whatever ends it (a failed load, a crash, a cancellation), whoever waits for the room to
        load or close is released."""
        try:
            if not await self._load():
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._sweeper)
                nursery.start_soon(self._persister)
                await self._wait_until_idle()
                if self.state is RoomState.LIVE:
                    self.state = RoomState.DRAINING
                    self._on_draining(self)
                    await self._flush(final=True)
                nursery.cancel_scope.cancel()
        finally:
            # The subscription holds the room and the document alive (a cycle through Rust
            # that the garbage collector cannot see): an unloaded room must leave nothing.
            self._unobserve()
            if self.state is RoomState.LOADING:  # cancelled while loading
                self.state = RoomState.FAILED
                self._on_draining(self)
            elif self.state is not RoomState.FAILED:
                self.state = RoomState.CLOSED
            self._loaded.set()
            self._closed.set()
            logger.info("room %r unloaded (%s)", self.name, self.state.value)

    async def _load(self) -> bool:
        """Load the stored state and run on_room_loaded; False (the room failed) if either
        fails: the room then refuses joins and never writes (it never starts empty)."""
        try:
            data = await self._store.load(self.name)
            self._restore(data)
            await call_hook("on_room_loaded", lambda: self._hooks.on_room_loaded(self.name, self.doc), self._config.hook_timeout)
        except Exception as exc:
            # The details (paths, the store's own words) are for the server's log, not clients.
            logger.error("room %r failed to load: %s", self.name, exc, exc_info=exc)
            self.state = RoomState.FAILED
            self._on_draining(self)
            return False
        self.state = RoomState.LIVE
        logger.info("room %r live (%d updates replayed)", self.name, len(data.updates))
        self._loaded.set()
        return True

    def _restore(self, data: RoomData) -> None:
        # One merged update applies in milliseconds where 10k separate ones on a large document
        # take seconds; and loading is not a change, so the observer is not attached yet.
        stored = ([data.snapshot] if data.snapshot is not None else []) + list(data.updates)
        if stored:
            apply_update(self.doc, merge_updates(stored))
            self._update_check.reset(self.doc.get_update())
        self._doc_subscription = self.doc.observe(self._on_doc_change)
        self._updates_since_snapshot = len(data.updates)
        self._bytes_since_snapshot = sum(map(len, data.updates))
        self._snapshot_bytes = len(data.snapshot or b"")
        self._doc_bytes = len(data.snapshot or b"") + self._bytes_since_snapshot
        self._events = EventLog(self._config.event_history, data.events, self._new_epoch)

    def _unobserve(self) -> None:
        if self._doc_subscription is not None:
            self.doc.unobserve(self._doc_subscription)
            self._doc_subscription = None
        self._sync_cache = None

    async def wait_loaded(self) -> None:
        """Return once the room is live. Raises RoomUnavailable if it failed to load."""
        await self._loaded.wait()
        if self.state is RoomState.FAILED:
            raise RoomUnavailable("room could not be loaded")

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def request_unload(self) -> None:
        self._unload_requested = True
        self._membership_changed.set()

    def hold(self) -> None:
        """Keep the room loaded until `release` (a join in progress, a server-side handle)."""
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            self._membership_changed.set()  # idle now? the grace period starts

    @property
    def accepting(self) -> bool:
        return self.state in (RoomState.LOADING, RoomState.LIVE)

    async def _wait_until_idle(self) -> None:
        while not self._unload_requested and self.state is RoomState.LIVE:
            idle = not self._members and self._holds == 0
            with trio.move_on_after(self._config.room_idle_grace if idle else math.inf) as timer:
                await self._membership_changed.wait()
                self._membership_changed = trio.Event()
            if timer.cancelled_caught and not self._members and self._holds == 0:
                return

    def _fail(self, exc: BaseException) -> None:
        """The store failed: tell everyone, keep what is stored, unload without writing."""
        logger.error("room %r failed: %s", self.name, exc, exc_info=exc)
        self.state = RoomState.FAILED
        self._on_draining(self)
        message = "storage failed"  # the details are in the server's log
        for member, ref, answer in self._pending.acks:
            if member is None:
                continue
            if isinstance(answer, Error):
                member.session.deliver_frames(member, [answer])
            else:
                member.session.send_error(ref, member.channel, ErrorCode.STORAGE_UNAVAILABLE, message)
        self._pending = _Pending()
        for member in list(self._members.values()):
            self._remove(member)
            member.session.close_channel(member, ErrorCode.STORAGE_UNAVAILABLE, message)
        self._membership_changed.set()
        self._commit_done.set()

    # -- members ----------------------------------------------------------------------------

    def add_member(self, session: Session, channel: int, access: Access, join: Join) -> Member:
        """Admit a session: queue Joined, the sync frames, the presence snapshot and missed
        events, in the order spec §5.2 requires. Raises RequestError for a bad state vector."""
        sync_frames: list[ChannelFrame] = []
        if join.state_vector is not None:
            sync_frames = self._sync_step2_for(join.state_vector)
        missed: list[EventRecord] = []
        resumed = None
        if join.since is not None:
            missed, resumed = self._events.since(join.since, join.epoch)
        member = Member(session, self, channel, access)
        self._members[session] = member
        self._membership_changed.set()
        self._presence.join(session.id, session.identity)
        if not session.OWN_AWARENESS:
            self._awareness.add_native(session.id)
        self._want_tick()
        session.deliver_frames(member, [
            Joined(join.ref, channel, int(access), self._events.head, resumed, self._events.epoch),
            SyncStep1(channel, self.doc.get_state()),
        ])
        for frame in sync_frames:
            session.deliver(member, frame)
        frames: list[Frame] = [PresenceSnapshot(channel, self._presence.snapshot())]
        if self._cursors:
            frames.append(Cursors(channel, tuple(CursorPosition(s, p) for s, p in self._cursors.items())))
        if self._typing:
            frames.append(TypingState(channel, tuple(self._typing)))
        frames.extend(self._event_frame(r, channel) for r in missed)
        session.deliver_frames(member, frames)
        return member

    def remove_member(self, member: Member, *, disconnected: bool) -> None:
        """The member left (at once) or disconnected (its presence lingers for the grace)."""
        if self._members.get(member.session) is not member:
            return
        self._remove(member)
        sid = member.session.id
        if disconnected:
            self._presence.linger(sid, trio.current_time() + self._config.presence_grace)
            self._deadlines_changed.set()
        else:
            self._presence.leave(sid)
        self._membership_changed.set()
        self._want_tick()

    def _remove(self, member: Member) -> None:
        del self._members[member.session]
        sid = member.session.id
        if self._cursors.pop(sid, None) is not None or sid in self._moved:
            self._moved[sid] = None
            self._awareness.changed(sid)
        if self._typing.pop(sid, None) is not None:
            self._typing_changed = True
        if self._awareness_waiting:
            self._awareness_waiting = {c: m for c, m in self._awareness_waiting.items() if m is not member}
        # Acks still waiting for a commit go nowhere now; the commit itself still happens.
        self._pending.acks = [a for a in self._pending.acks if a[0] is not member]
        self._pending.confirmations.pop(member, None)

    @property
    def member_count(self) -> int:
        return len(self._members)

    def presence(self) -> tuple[PresenceEntry, ...]:
        return self._presence.snapshot()

    # -- documents --------------------------------------------------------------------------

    def _update_since(self, state_vector: bytes) -> bytes:
        """What the document holds beyond a peer's state vector; RequestError INVALID_UPDATE
        for one that is not well formed, checked before pycrdt sees it (spec §5.3)."""
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
        that each fit in one (protocol/_ysplit.py; [update] itself when it fits). Raises
        RequestError DOCUMENT_TOO_LARGE if one indivisible value does not fit in a message
        (INVALID_UPDATE if the bytes are not an update)."""
        try:
            return split_update(update, self._config.max_message_bytes - FRAME_OVERHEAD)
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
        """Answer a member's sync_step1 (spec §5.3), in pieces if it is larger than a message."""
        pieces = self._pieces(self._update_since(state_vector))
        frames: list[Frame] = [Update(member.channel, None, piece) for piece in pieces[:-1]]
        frames.append(SyncStep2(member.channel, None, pieces[-1]))
        member.session.deliver_frames(member, frames)

    def apply_client_update(self, member: Member, update: bytes, ref: int | None) -> None:
        """Apply a member's update; its ack waits for the commit that makes it durable.
        Raises RequestError (nothing applied): INVALID_UPDATE (spec §5.3), FORBIDDEN,
        DOCUMENT_TOO_LARGE."""
        if member.access is not Access.WRITE:
            # spec §5.3: a read-only member's sync_step2 (mandatory) is fine when it changes nothing.
            if not changes_nothing(self.doc, read_client_update(update)):
                raise RequestError(ErrorCode.FORBIDDEN, "read-only member: document updates refused")
            if ref is not None:
                self.ack(member, ref)
            return
        self._check_size(len(update))  # before reading: a refusal for size costs nothing
        decoded = read_client_update(update)
        if len(update) > self._config.max_message_bytes - FRAME_OVERHEAD:
            # A y-websocket client's update may be larger than a message (§13); it must split
            # into pieces that fit in one, or it could never reach native members (§3.2).
            self._pieces(update)
        self._origin = member
        try:
            self._update_check.apply(update, decoded, self._apply)
        except ValueError as exc:
            raise RequestError(ErrorCode.INVALID_UPDATE, f"update does not apply: {exc}"[:1024]) from exc
        finally:
            self._origin = None
        if ref is not None:
            self._pending.acks.append((member, ref, None))
            self._want_persist()
        elif member.session.CONFIRMS_BY_ECHO:
            self._pending.confirmations.setdefault(member, []).append(update)
            self._want_persist()

    def apply_client_updates(self, member: Member, items: list[tuple[bytes, int | None]]) -> None:
        """Apply a burst of a member's updates as one merged update (one transaction, one
        fan-out frame, one log record); if the merge or the apply fails, fall back to one by
        one so that each bad update gets its own error. Answers keep request order."""
        if member.access is Access.WRITE and self._fits(sum(len(update) for update, _ in items)):
            try:
                for update, _ in items:  # pycrdt merges only what the reader took
                    read_update(update)
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
                if ref is not None:
                    self.refuse(member, ref, exc.code, exc.message)
                member.session.refused(exc.code)

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

    def _check_size(self, extra: int) -> None:
        if not self._fits(extra):
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
        self._pending.updates.append(update)
        self._changes += 1
        self._want_persist()
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
        for piece in pieces:
            shared = ChannelFrame(Update(0, None, piece))
            for member in recipients:
                member.session.deliver(member, shared)

    # -- presence, cursors, typing ----------------------------------------------------------

    def set_presence(self, member: Member, state: dict[str, Any] | None, patch: dict[str, Any] | None) -> None:
        if self._members.get(member.session) is not member:
            return  # a frame that raced the end of its membership
        sid = member.session.id
        if state is not None:
            self._presence.set(sid, state)
        if patch is not None:
            self._presence.patch(sid, patch)
        self._awareness.changed(sid)
        self._want_tick()

    def move_cursor(self, member: Member, position: Any) -> None:
        if self._members.get(member.session) is not member:
            return  # a frame that raced the end of its membership
        sid = member.session.id
        if position is None:
            self._cursors.pop(sid, None)
        else:
            self._cursors[sid] = position
        self._moved[sid] = position
        self._awareness.changed(sid)
        self._want_tick()

    def set_typing(self, member: Member, on: bool) -> None:
        if self._members.get(member.session) is not member:
            return  # a frame that raced the end of its membership
        sid = member.session.id
        if on:
            if sid not in self._typing:
                self._typing_changed = True
            self._typing[sid] = trio.current_time() + self._config.typing_expiry
            self._deadlines_changed.set()
        elif self._typing.pop(sid, None) is not None:
            self._typing_changed = True
        if self._typing_changed:
            self._want_tick()

    def ack(self, member: Member, ref: int, value: int | None = None) -> None:
        """Ack a request; behind any answer still waiting for a commit, so answers to one
        member's requests go out in the order the requests came (spec §4.1)."""
        if self._pending.acks:
            self._pending.acks.append((member, ref, value))
        else:
            member.session.deliver_frames(member, [Ack(ref, value)])

    def refuse(self, member: Member, ref: int, code: int, message: str) -> None:
        """Answer a request with an error, in order behind answers waiting for a commit."""
        error = Error(ref, member.channel, code, message[:1024])
        if self._pending.acks:
            self._pending.acks.append((member, ref, error))
        else:
            member.session.deliver_frames(member, [error])

    def _want_tick(self) -> None:
        self._tick_wanted.set()

    async def _ticker(self) -> None:
        while True:
            await self._tick_wanted.wait()
            await trio.sleep(max(self._config.tick, len(self._members) / self._config.ephemeral_messages_per_second))
            self._tick_wanted = trio.Event()
            self._flush_ephemeral()

    def _flush_ephemeral(self) -> None:
        frames: list[ChannelFrame] = []
        left: tuple[str, ...] = ()
        if self._presence.dirty:
            joined, updated, left = self._presence.take_diff()
            for sid in left:
                self._awareness.changed(sid)  # its entry becomes a null state
            frames.append(ChannelFrame(PresenceDiff(0, joined, updated, left)))
        if self._moved:
            moves = tuple(CursorPosition(s, p) for s, p in self._moved.items())
            self._moved = {}
            frames.append(ChannelFrame(Cursors(0, moves)))
        if self._typing_changed:
            self._typing_changed = False
            frames.append(ChannelFrame(TypingState(0, tuple(self._typing))))
        if not frames:
            return
        for member in list(self._members.values()):
            refresh = self._refresher(member)
            member.session.deliver_ephemeral(member, frames, refresh)
        for sid in left:  # its null awareness state went out with the diff
            client_id = self._awareness.release(sid)
            waiting = self._awareness_waiting.pop(client_id, None) if client_id is not None else None
            if waiting is not None and self._members.get(waiting.session) is waiting:
                waiting.session.query_awareness(waiting)

    def _refresher(self, member: Member) -> Callable[[], list[Frame]]:
        def full_state() -> list[Frame]:
            if self._members.get(member.session) is not member:
                return []
            ch = member.channel
            return [
                PresenceSnapshot(ch, self._presence.snapshot()),
                Cursors(ch, tuple(CursorPosition(s, p) for s, p in self._cursors.items())),
                TypingState(ch, tuple(self._typing)),
            ]

        return full_state

    async def _sweeper(self) -> None:
        while True:
            deadlines = [t for t in (self._presence.next_expiry(), *self._typing.values()) if t is not None]
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._deadlines_changed.wait()
                self._deadlines_changed = trio.Event()
            now = trio.current_time()
            if self._presence.expire(now):
                self._want_tick()
            expired = [s for s, t in self._typing.items() if t <= now]
            for sid in expired:
                del self._typing[sid]
            if expired:
                self._typing_changed = True
                self._want_tick()

    # -- Yjs awareness (spec §13) ------------------------------------------------------------

    def claim_awareness(self, member: Member, client_id: int, clock: int, hidden: bool) -> bool:
        """A Yjs member's awareness entry for `client_id` (`hidden`: a null state). False if
        it may not speak for that id, or the clock does not move on; then it is ignored
        (spec §13: a client speaks only for itself). An id whose holder disconnected passes
        to a session of the same identity at once (a quick reconnect), and to anyone once
        the holder's presence has left; such a session is asked to send its state again."""
        sid = member.session.id
        holder = self._awareness.holder(client_id)
        if holder is not None and holder != sid and not hidden and not self._awareness.bound(sid):
            if self._may_take_over(holder, member.session.identity):
                self._awareness.release(holder)
            else:
                self._awareness_waiting[client_id] = member
        return self._awareness.claim(sid, client_id, clock, hidden)

    def _may_take_over(self, holder: str, identity: Identity) -> bool:
        if any(m.session.id == holder for m in self._members.values()):
            return False  # still connected: a client speaks only for itself
        return holder not in self._presence or self._presence.entry(holder).identity.get("id") == identity.get("id")

    def renew_awareness(self) -> None:
        """Yjs clients drop states not renewed within 30 s: renew those of native members."""
        self._awareness.renew()

    def awareness_entry(self, sid: str) -> AwarenessEntry | None:
        """The awareness a Yjs client sees for a session: its presence state, its cursor and
        the identity the server stamped (which no client can set); a null state once it
        left; None if it shows none (a Yjs client that has not spoken for itself)."""
        cached = self._awareness.cached(sid)
        if cached is not None:
            return cached
        state_json = None
        if sid in self._presence:
            entry = self._presence.entry(sid)
            state: dict[str, Any] = dict(entry.state)
            if sid in self._cursors:
                state["cursor"] = self._cursors[sid]
            state["identity"] = entry.identity
            state_json = json.dumps(state, default=_json_default, allow_nan=False)
        return self._awareness.entry(sid, state_json)

    def awareness_sessions(self) -> list[str]:
        return self._presence.sessions()

    # -- events -----------------------------------------------------------------------------

    async def publish(
        self, member: Member | None, ref: int | None, name: str, payload: Any, key: str | None
    ) -> int:
        """Sequence and broadcast an event; ack (value = seq) after it is durable."""
        if self.state is not RoomState.LIVE:
            raise RequestError(ErrorCode.STORAGE_UNAVAILABLE, "room is not live")
        existing = self._events.seq_for_key(key)
        if existing is None:
            identity: Identity | None = member.session.identity if member else None
            original = payload
            payload = await call_hook(
                "on_event",
                lambda: self._hooks.on_event(self.name, identity, name, original),
                self._config.hook_timeout,
                (EventRejected,),
            )
            try:
                check_value(payload, MAX_DEPTH)
            except ProtocolError as exc:
                logger.error("hook on_event returned a payload that cannot be sent: %s", exc.message)
                raise HookFailed("on_event") from None
            existing = self._events.seq_for_key(key)  # a retry may have won during the hook
        if existing is not None:
            if member is not None and ref is not None:
                self.ack(member, ref, existing)
            return existing
        session = member.session.id if member else None
        user = str(member.session.identity.get("id")) if member else None
        record = self._events.append(name, payload, session, user, key)
        self._pending.events.append(record)
        self._changes += 1
        if member is not None and ref is not None:
            self._pending.acks.append((member, ref, record.seq))
        self._want_persist()
        if session is not None and self._presence.changed(session):
            # What a member did before it published is seen first: its name set just before
            # a chat message names that message, instead of waiting for the next tick.
            self._flush_ephemeral()
        shared = ChannelFrame(self._event_frame(record, 0))
        for m in list(self._members.values()):
            m.session.deliver(m, shared)
        return record.seq

    @staticmethod
    def _event_frame(record: EventRecord, channel: int) -> Event:
        return Event(channel, record.seq, record.name, record.payload, record.session, record.user)

    # -- persistence ------------------------------------------------------------------------

    def _want_persist(self) -> None:
        self._persist_wanted.set()

    async def _persister(self) -> None:
        while True:
            await self._persist_wanted.wait()
            # One turn later: the fan-out of what woke us is written first (Engine.flush_soon)
            # instead of behind a worker thread's start, and a batch collects what the other
            # connections' readers apply in this turn.
            await trio.lowlevel.checkpoint()
            self._persist_wanted = trio.Event()
            await self._flush(final=False)

    async def _flush(self, *, final: bool) -> None:
        """Commit what is pending as one batch, then send its acks; compact when due."""
        async with self._persist_lock:
            if self.state is RoomState.FAILED:
                return
            pending, self._pending = self._pending, _Pending()
            mark = self._changes
            try:
                if pending.updates:
                    await self._store.append(self.name, pending.updates)
                if pending.events:
                    stored = [r.stored() for r in pending.events]
                    await self._store.append_events(self.name, stored, self._config.event_history)
            except Exception as exc:  # StorageError, or a store that breaks its contract
                self._pending = pending
                self._fail(exc)
                return
            self._updates_since_snapshot += len(pending.updates)
            self._bytes_since_snapshot += sum(map(len, pending.updates))
            for member, ref, answer in pending.acks:
                if member is None or self._members.get(member.session) is not member:
                    continue
                if isinstance(answer, Error):
                    member.session.deliver_frames(member, [answer])
                else:
                    member.session.deliver_ack(member, ref, answer)
            for member, updates in pending.confirmations.items():
                if self._members.get(member.session) is member:
                    # spec §13: a y-websocket client counts its update as synced when it comes
                    # back; one merged update per commit, however many it sent.
                    member.session.deliver(member, ChannelFrame(Update(member.channel, None, merge_updates(updates))))
            self._durable_changes = mark
            self._commit_done.set()
            self._commit_done = trio.Event()
            # The log may grow in proportion to the snapshot before it is folded in: a fixed
            # threshold rewrote a 29 MB document every 11 appends of 96 KB (quadratic; a writer
            # slowed from 1.4 to 15 s per 50 updates). Proportional, each byte appended costs a
            # bounded number of snapshot bytes written, and a load replays at most about as
            # much log as snapshot.
            scale = max(1.0, self._snapshot_bytes / self._config.compact_after_bytes)
            due = (
                self._updates_since_snapshot >= self._config.compact_after_updates * scale
                or self._bytes_since_snapshot >= self._config.compact_after_bytes * scale
                or (final and self._updates_since_snapshot > 0)
            )
            if due:
                await self._compact()

    async def _compact(self) -> None:
        covered = self._updates_since_snapshot
        snapshot = self.doc.get_update()
        self._doc_bytes, self._doc_bytes_exact = len(snapshot), True
        try:
            await self._store.compact(self.name, snapshot, covered)
        except Exception as exc:
            # The updates are still stored; a failed compaction loses nothing.
            logger.warning("room %r: compaction failed: %s", self.name, exc, exc_info=exc)
            return
        self._updates_since_snapshot -= covered
        self._bytes_since_snapshot = 0
        self._snapshot_bytes = len(snapshot)
        try:
            await call_hook("on_room_stored", lambda: self._hooks.on_room_stored(self.name, snapshot), self._config.hook_timeout)
        except HookFailed:
            pass  # logged; the snapshot is stored whatever the hook did

    async def wait_flushed(self) -> None:
        """Return once every change made so far is durable. Raises RoomUnavailable on failure."""
        target = self._changes
        while self._durable_changes < target and self.state is not RoomState.FAILED:
            self._want_persist()
            await self._commit_done.wait()
        if self.state is RoomState.FAILED:
            raise RoomUnavailable("room failed before its changes were stored")

    def crashed(self) -> None:
        """A bug ended `run`: fail the room, end every membership with INTERNAL, and release
        whoever waits for a commit (wait_flushed raises RoomUnavailable)."""
        self.state = RoomState.FAILED
        self._on_draining(self)
        self._pending = _Pending()
        self.close_all(ErrorCode.INTERNAL, "internal error")
        self._commit_done.set()
        self._closed.set()

    def close_all(self, code: int, message: str) -> None:
        """Server-side: end every membership with channel_closed (spec §5.2)."""
        for member in list(self._members.values()):
            self.remove_member(member, disconnected=False)
            member.session.close_channel(member, code, message)
