"""A room's event log: per-room sequence numbers, a bounded history, idempotency keys (§5.6),
and the epoch that names the history (§7).

An epoch is made when a room's history starts empty and is stored with every event, so it
lives exactly as long as the stored history: a server restarted on a memory store, or a room
whose events were deleted, starts a new epoch, and a client's old position is known to be from
another history instead of being read as a position in this one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgpack
import trio

from plait.protocol import (
    JSON_EXPANSION,
    MAX_DEPTH,
    ChannelFrame,
    ErrorCode,
    Event,
    LocalProtocolError,
    ProtocolError,
    check_value,
    encode_json_trusted,
    encode_trusted,
    encoded_size,
)
from plait.storage import StorageError, StoredEvent

from .._config import EngineConfig
from .._errors import RequestError
from .._hooks import EventRejected, HookFailed, Hooks, Identity, application_error, call_hook
from .._metrics import Metrics
from ._ephemeral import Ephemeral
from ._fanout import Fanout
from ._member import Member, MemberSession, RoomState

logger = logging.getLogger("plait.room")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EventRecord:
    seq: int
    name: str
    payload: Any
    session: str | None
    user: str | None
    key: str | None
    epoch: str
    _frame: ChannelFrame | None = dataclasses.field(default=None, compare=False, repr=False)

    def frame(self) -> ChannelFrame:
        """The event as a room's frame, encoded (and checked) once for every member it is sent
        to: the room's members as it is published, and each joiner it is replayed to (spec
        §7). A join(since=0) of each of 20 connections that read nothing once queued its own
        copy of a 16 MiB history: 1.3 GiB (QA).

        Raises:
            LocalProtocolError: a field no member could be sent (an event from a store).
        """
        if self._frame is None:
            frame = ChannelFrame(Event(0, self.seq, self.name, self.payload, self.session, self.user))
            object.__setattr__(self, "_frame", frame)  # a cache on a frozen record
            return frame
        return self._frame

    def size(self) -> int:
        """About its encoded size, in bytes: what it counts toward the history's byte bound."""
        return encoded_size(self.payload) + len(self.name) + len(self.session or "") + len(self.user or "") + len(self.key or "")

    def stored(self) -> StoredEvent:
        body = msgpack.packb([self.name, self.payload, self.session, self.user, self.key, self.epoch], use_bin_type=True)
        return StoredEvent(self.seq, body)

    @classmethod
    def from_stored(cls, stored: StoredEvent) -> EventRecord:
        fields = msgpack.unpackb(stored.body, raw=False)
        if len(fields) == 5:  # stored before epochs: all of one history
            fields.append(LEGACY_EPOCH)
        name, payload, session, user, key, epoch = fields
        return cls(stored.seq, name, payload, session, user, key, epoch)


LEGACY_EPOCH = "0"


def new_epoch() -> str:
    return secrets.token_hex(8)


class EventLog:
    """A room's recent events (spec §5.6, §7): at most `capacity` of them and `max_bytes` of
    their encoded bodies (the newest is always kept), for resume and idempotency keys."""

    def __init__(
        self,
        capacity: int,
        history: tuple[StoredEvent, ...] = (),
        epoch: str | Callable[[], str] = new_epoch,
        max_bytes: int = 2**62,
    ) -> None:
        """`epoch` names the history if `history` is empty (a string, or what makes one)."""
        self._history: deque[EventRecord] = deque(maxlen=capacity)
        self._sizes: deque[int] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._keys: dict[str, int] = {}
        self.head = 0
        for stored in history:
            self._remember(EventRecord.from_stored(stored), len(stored.body))
        if self._history:
            self.epoch = self._history[-1].epoch
        else:
            self.epoch = epoch if isinstance(epoch, str) else epoch()

    def seq_for_key(self, key: str | None) -> int | None:
        return None if key is None else self._keys.get(key)

    def append(
        self,
        name: str,
        payload: Any,
        session: str | None,
        user: str | None,
        key: str | None,
        seq: int | None = None,
        size: int | None = None,
    ) -> EventRecord:
        """Record an event at `seq` (the next after `head` if not given); `size`, its encoded
        size if the caller measured it (the fit check does), counts toward `max_bytes`."""
        record = EventRecord(self.head + 1 if seq is None else seq, name, payload, session, user, key, self.epoch)
        self._remember(record, record.size() if size is None else size)
        return record

    def add(self, record: EventRecord, size: int) -> bool:
        """Record an event numbered elsewhere (another process's, spec §7), in its place by
        seq. False if it is known already, or older than everything kept."""
        if record.seq > self.head:
            self._remember(record, size)
            return True
        position = len(self._history)
        for kept in reversed(self._history):
            if kept.seq == record.seq:
                return False
            if kept.seq < record.seq:
                break
            position -= 1
        if position == 0 and self._history and len(self._history) == self._history.maxlen:
            return False
        self._remember(record, size, position)
        return True

    def _remember(self, record: EventRecord, size: int, position: int | None = None) -> None:
        while self._history and (len(self._history) == self._history.maxlen or self._bytes + size > self._max_bytes):
            self._forget_oldest()
            if position is not None:
                position = max(0, position - 1)
        if position is None:
            self._history.append(record)
            self._sizes.append(size)
        else:
            self._history.insert(position, record)
            self._sizes.insert(position, size)
        self._bytes += size
        self.head = max(self.head, record.seq)
        if record.key is not None:
            self._keys[record.key] = record.seq

    def _forget_oldest(self) -> None:
        dropped = self._history.popleft()
        self._bytes -= self._sizes.popleft()
        if dropped.key is not None and self._keys.get(dropped.key) == dropped.seq:
            del self._keys[dropped.key]

    def since(self, seq: int, epoch: str | None) -> tuple[list[EventRecord], bool]:
        """Events after position (`epoch`, `seq`), and whether they are all of them (spec §7).
        A position from another history (another epoch, with seq > 0) starts this history
        from its beginning, and is never complete: the client cannot know what it missed."""
        if seq > 0 and epoch != self.epoch:
            return list(self._history), False
        if seq > self.head:
            return [], False
        missed = [r for r in self._history if r.seq > seq]
        complete = seq == self.head or (bool(missed) and missed[0].seq == seq + 1)
        return missed, complete


class SequenceAuthority(Protocol):
    """Who assigns a room's event sequence numbers (spec §7). In one process, the room's own
    log does (LocalSequence); across processes, one atomic counter per room."""

    async def next_seq(self, room: str, head: int) -> int:
        """The sequence number of the room's next event; `head` is the last one this room
        knows. The room calls this between its idempotency-key check and the append: an
        authority that waits there must serialise a room's publishes itself."""


    async def epoch(self, room: str, proposed: str) -> str:
        """The room's history epoch: `proposed` (what this process's log has or made) if the
        room has none yet, else the one every process uses (spec §7)."""


class LocalSequence:
    """The next number after the room's own head. It never waits (no checkpoint), so a
    publish stays one atomic step from its key check to its append."""

    __slots__ = ()

    async def next_seq(self, room: str, head: int) -> int:
        return head + 1

    async def epoch(self, room: str, proposed: str) -> str:
        return proposed


class EventsStrand:
    """Named events: sequenced, broadcast, acked once durable (spec §5.6, §7)."""

    # What this part uses of the Room it is mixed into (set in Room.__init__), for type checkers.
    name: str
    state: RoomState
    _config: EngineConfig
    _hooks: Hooks
    _fanout: Fanout
    _members: dict[MemberSession, Member]
    _ephemeral: Ephemeral
    _events: EventLog
    _held_events: dict[int, tuple[EventRecord, int, float]]
    _gap_opened: trio.Event
    _sequence: SequenceAuthority
    _store: Any  # _persist.SharedRoomStore in a cluster (that module imports this one)
    _replication: Any  # _replica.Replication (idem)
    _metrics: Metrics
    _pending: Any  # _persist._Pending (that module imports this one)
    _changes: int
    last_activity: float

    if TYPE_CHECKING:
        def _want_persist(self) -> None: ...
        def ack(self, member: Member, ref: int, value: int | None = None) -> None: ...

    async def publish(
        self, member: Member | None, ref: int | None, name: str, payload: Any, key: str | None
    ) -> int:
        """Sequence and broadcast an event; ack (value = seq) after it is durable."""
        if self.state is not RoomState.LIVE:
            raise RequestError(ErrorCode.STORAGE_UNAVAILABLE, "room is not live")
        if not self._replication.available:
            raise RequestError(ErrorCode.STORAGE_UNAVAILABLE, "the server's processes cannot reach each other; publish it again")
        existing = self._seq_for_key(key)
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
            existing = self._seq_for_key(key)  # a retry may have won during the hook
            self._check_still_here(member)
        size = self._check_event_fits(member, name, payload) if existing is None else 0
        if existing is not None:
            if member is not None and ref is not None:
                self.ack(member, ref, existing)
            return existing
        session = member.session.id if member else None
        user = str(member.session.identity.get("id")) if member else None
        record = EventRecord(0, name, payload, session, user, key, self._events.epoch)
        if self._replication.shared_store:
            # A cluster: numbered and stored in one step, so that one key is one event
            # whichever processes publish it, and at once (spec §15).
            numbered: tuple[int, bool] = await self._authority_call(self._store.add_event(
                self.name, self._events.head, key, record.stored().body, self._config.event_history
            ))
            seq, new = numbered
            record = dataclasses.replace(record, seq=seq)
            here = member is not None and self._members.get(member.session) is member
            if member is not None and ref is not None and here:
                self.ack(member, ref, seq)
            if not new and seq > self._events.head and seq not in self._held_events:
                # Published before by a process that may have died before telling anyone.
                with contextlib.suppress(RequestError):
                    await self._events_from_store(None)
            if not new or self.state is not RoomState.LIVE:
                return seq
            self._replication.committed(self.name, [], [record.stored()])  # stored: the others hear of it now
        else:
            seq = await self._authority_call(self._sequence.next_seq(self.name, self._events.head))
            self._check_still_here(member)
            record = dataclasses.replace(record, seq=seq)
            self._pending.events.append(record)
            self._changes += 1
            if member is not None and ref is not None:
                self._pending.acks.append((member, ref, record.seq))
            self._want_persist()
        self.last_activity = trio.current_time()
        self._metrics.add("events_published")
        if session is not None:
            self._ephemeral.flush_before_event(session)
        self._deliver_event(record, size)
        return record.seq

    def _receive_event(self, record: EventRecord) -> None:
        """An event another process published (engine/room/_replica.py)."""
        if record.seq not in self._held_events:
            self._deliver_event(record, record.size())

    def _seq_for_key(self, key: str | None) -> int | None:
        """The seq of the event published under `key`, kept or held (None: none)."""
        seq = self._events.seq_for_key(key)
        if seq is None and key is not None and self._held_events:
            seq = next((s for s, (r, _, _) in self._held_events.items() if r.key == key), None)
        return seq

    def _deliver_event(self, record: EventRecord, size: int) -> None:
        """Into the log and to every member, in seq order (spec §7, §15): an event numbered
        past a gap (the one before is another process's, on its way) waits for it, at most
        `event_gap_timeout` (then the store is asked for it, and what it does not have is
        skipped). One process numbers its events one after the other: there, nothing waits."""
        if record.seq > self._events.head + 1:
            self._held_events[record.seq] = (record, size, trio.current_time())
            self._gap_opened.set()
            return
        self._send_event(record, size)
        self._release_held(expired_before=-math.inf)

    def _release_held(self, *, expired_before: float) -> None:
        """Send the held events that are next in line, and past a gap those held since
        before `expired_before`."""
        while self._held_events:
            first = min(self._held_events)
            record, size, held_at = self._held_events[first]
            if first > self._events.head + 1 and held_at >= expired_before:
                return
            del self._held_events[first]
            self._send_event(record, size)

    def _send_event(self, record: EventRecord, size: int) -> None:
        if not self._events.add(record, size):
            return
        self._fanout.event(self.name, list(self._members.values()), record.frame())
        self._metrics.add("fanout_frames", len(self._members), "event")

    async def _event_gaps(self) -> None:
        """Runs in the room's nursery: an event held behind a gap for `event_gap_timeout`
        makes this copy read what the store has (the missing event may be stored, its
        publisher slow to tell or gone); what the store does not have either is skipped."""
        timeout = self._config.event_gap_timeout
        while True:
            if not self._held_events:
                await self._gap_opened.wait()
                self._gap_opened = trio.Event()
                continue
            oldest = min(held_at for _, _, held_at in self._held_events.values())
            await trio.sleep_until(oldest + timeout)
            if self._replication.shared_store and self._held_events:
                try:
                    await self._events_from_store(None)
                except RequestError:
                    pass  # logged; the gap is skipped
            self._release_held(expired_before=trio.current_time() - timeout + 1e-9)

    async def _events_from_store(self, member: Member | None) -> None:
        """Take in the events the shared store has after this copy's head. Raises
        RequestError STORAGE_UNAVAILABLE if the store cannot say."""
        try:
            stored = await self._store.events_since(self.name, self._events.head)
        except BaseException as exc:
            if not application_error(exc):
                raise
            logger.warning("room %r: the events stored by other processes could not be read: %s", self.name, exc)
            raise RequestError(ErrorCode.STORAGE_UNAVAILABLE, "the store cannot be read; publish it again") from None
        self._check_still_here(member)
        for record in stored:
            self._receive_event(EventRecord.from_stored(record))

    async def _authority_call(self, call: Awaitable[T]) -> T:
        """What numbers an event: a store or a shared counter that fails (or a bug in the
        seam) refuses the publish (STORAGE_UNAVAILABLE, INTERNAL), never more."""
        try:
            return await call
        except BaseException as exc:
            if not application_error(exc):
                raise
            logger.error("room %r: the sequence authority failed", self.name, exc_info=exc)
            code = ErrorCode.STORAGE_UNAVAILABLE if isinstance(exc, StorageError) else ErrorCode.INTERNAL
            raise RequestError(code, "the event could not be numbered; publish it again") from None

    def _check_still_here(self, member: Member | None) -> None:
        """After a wait (a hook, the sequence authority): the room may have stopped, or the
        publisher left, meanwhile; then the event is not published."""
        if self.state is not RoomState.LIVE:
            raise RequestError(ErrorCode.STORAGE_UNAVAILABLE, "room is not live")
        if member is not None and self._members.get(member.session) is not member:
            raise RequestError(ErrorCode.UNKNOWN_CHANNEL, "the publisher left the room")
        if member is not None and not member.access.may_publish:  # taken away meanwhile (spec §5.2)
            raise RequestError(ErrorCode.FORBIDDEN, "read-only member: publishing refused")

    def _check_event_fits(self, member: Member | None, name: str, payload: Any) -> int:
        """The event's encoded size, at most. Refuse an event whose frame would be longer than
        the message limit every member was promised (spec §3.2): an event adds its session and
        user to what publish carried, so a publish that just fit would otherwise come back too
        long for every member."""
        session = member.session.id if member else None
        user = str(member.session.identity.get("id")) if member else None
        widest = Event(2**32 - 1, 2**53 - 1, name, payload, session, user)  # the longest channel and seq
        size = longest = len(encode_trusted(widest))
        if size * JSON_EXPANSION > self._config.max_message_bytes:
            # A member may read JSON (spec §3.5), which can be several times longer (base64,
            # escapes, `null` for one byte): measured only when it could matter.
            longest = max(size, len(encode_json_trusted(widest).encode()))
        if longest > self._config.max_message_bytes:
            form = "" if longest == size else " in JSON"
            raise RequestError(
                ErrorCode.EVENT_REJECTED,
                f"the event would be {longest} bytes{form}, over the {self._config.max_message_bytes}-byte message limit",
            )
        return size

    def _replay(self, member: Member, missed: list[EventRecord]) -> None:
        """Send a joiner the events it missed (spec §7), each the room's one encoding of it."""
        for record in missed:
            try:
                frame = record.frame()
            except LocalProtocolError as exc:  # only an event from a store can be one
                logger.error("room %r: event %d cannot be sent to anyone: %s", self.name, record.seq, exc.message)
                continue
            member.session.deliver(member, frame)
