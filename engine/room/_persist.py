"""A room's persister: group commit, acks in request order once durable, compaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import pycrdt
import trio

from plait.protocol import Ack, ChannelFrame, Error, Update
from plait.storage import RoomData, StorageUnavailable, StoredEvent, StoreLocked

from .._config import EngineConfig
from .._errors import RoomUnavailable
from .._hooks import HookFailed, Hooks, application_error, call_hook
from .._metrics import Metrics
from ._doc import merge_updates
from ._events import EventRecord
from ._member import Member, MemberSession, RoomState
from ._replica import Replication

logger = logging.getLogger("plait.room")

LAST_CHANCE = 1.0
"""Seconds of tries a commit still gets after its first refusal by the store, when that came
past `store_outage_grace` (PersistStrand._commit)."""


class RoomStore(Protocol):
    """The part of `plait.storage.Store` a room uses."""

    async def load(self, room: str) -> RoomData: ...

    async def append(self, room: str, updates: Sequence[bytes]) -> None: ...

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None: ...

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None: ...

    async def delete(self, room: str) -> None: ...


class SharedRoomStore(RoomStore, Protocol):
    """A store several processes write (PostgreSQLStore(shared=True)): it compacts what it
    holds, in one transaction."""

    async def compact_stored(self, room: str, merge: Callable[[list[bytes]], bytes]) -> tuple[int, bytes]: ...

    async def events_since(self, room: str, seq: int) -> tuple[StoredEvent, ...]: ...

    async def add_event(self, room: str, head: int, key: str | None, body: bytes, keep: int) -> tuple[int, bool]: ...


class CompactionLease(Protocol):
    """Who may compact a room: replace its snapshot and drop the updates it covers. In one
    process, the room itself (LocalLease); across processes, one holder of a lease at a time."""

    async def may_compact(self, room: str) -> bool:
        """Whether this process may compact `room` now (False: the updates stay appended)."""


async def _ask_lease(lease: CompactionLease, room: str) -> bool:
    """The lease's answer; a lease that fails says no (the updates stay appended, nothing is
    lost), and is logged."""
    try:
        return await lease.may_compact(room)
    except BaseException as exc:
        if not application_error(exc):
            raise
        logging.getLogger("plait.room").error("room %r: the compaction lease failed; not compacting", room, exc_info=exc)
        return False


class LocalLease:
    """Always yes, without waiting (no checkpoint)."""

    __slots__ = ()

    async def may_compact(self, room: str) -> bool:
        return True


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


class PersistStrand:
    """Group commit of document updates and events, acks in request order once durable,
    and compaction."""

    # What this part uses of the Room it is mixed into (set in Room.__init__), for type checkers.
    name: str
    state: RoomState
    doc: pycrdt.Doc[Any]
    _config: EngineConfig
    _metrics: Metrics
    _hooks: Hooks
    _store: RoomStore
    _lease: CompactionLease
    _replication: Replication
    _members: dict[MemberSession, Member]
    _pending: _Pending
    _persist_lock: trio.StrictFIFOLock
    _persist_wanted: trio.Event
    _relay_wanted: trio.Event
    _commit_done: trio.Event
    _changes: int
    _durable_changes: int
    _queued_updates: int
    _relayed_updates: int
    _committing_acks: list[tuple[Member | None, int, int | Error | None]]
    """The answers of the commit under way (empty when none is)."""
    _committing_confirmations: dict[Member, list[bytes]]
    _last_writer: str | None
    _last_write_at: float
    _writers_met_at: float
    _discarded: bool
    _updates_since_snapshot: int
    _bytes_since_snapshot: int
    _snapshot_bytes: int
    _doc_bytes: int
    _doc_bytes_exact: bool

    if TYPE_CHECKING:
        def _fail(self, exc: BaseException) -> None: ...

    def ack(self, member: Member, ref: int, value: int | None = None) -> None:
        """Ack a request; behind any answer still waiting for a commit (the next one's, or the
        one under way's), so answers to one member's requests go out in the order the
        requests came (spec §4.1)."""
        if self._pending.acks or self._committing_acks:
            self._pending.acks.append((member, ref, value))
            self._want_persist()
        else:
            member.session.deliver_frames(member, [Ack(ref, value)])

    def refuse(self, member: Member, ref: int, code: int, message: str) -> None:
        """Answer a request with an error, in order behind answers waiting for a commit."""
        error = Error(ref, member.channel, code, message[:1024])
        if self._pending.acks or self._committing_acks:
            self._pending.acks.append((member, ref, error))
            self._want_persist()
        else:
            member.session.deliver_frames(member, [error])

    def _answers_waiting(self, member: Member) -> bool:
        """Whether an answer to `member`, or a y-websocket confirmation, waits for a commit."""
        return any(a[0] is member for batch in (self._pending.acks, self._committing_acks) for a in batch) or (
            member in self._pending.confirmations or member in self._committing_confirmations)

    async def answered(self, member: Member) -> None:
        """Return once every answer to `member` that waits for a commit has been sent (or the
        room failed): a leave is answered after the requests that came before it (spec §4.1)."""
        while self._answers_waiting(member) and self.state is not RoomState.FAILED and not self._discarded:
            self._want_persist()
            await self._commit_done.wait()

    def _want_persist(self) -> None:
        self._persist_wanted.set()

    def _note_writer(self, origin: Member | None, now: float) -> None:
        """An update from `origin` (None: server-side code) is being queued: whether another
        writer's update came within commit_delay before it decides whether the next commit
        waits (commit_delay)."""
        writer = origin.session.id if origin is not None else ""
        if writer != self._last_writer and now - self._last_write_at < self._config.commit_delay:
            self._writers_met_at = now
        self._last_writer, self._last_write_at = writer, now

    def _queue_updates(self, updates: list[bytes]) -> None:
        """Updates applied here, for the next commit. They are numbered (1, 2, ... in this
        copy's life) as they are queued, for their relay to other processes."""
        self._pending.updates.extend(updates)
        self._queued_updates += len(updates)
        self._changes += 1
        self._want_persist()
        self._relay_wanted.set()

    async def _relayer(self) -> None:
        """Runs in the room's nursery when the room has copies elsewhere: relays what was
        queued as soon as it runs (a batch collects what the readers applied before it), whether
        or not a commit is in progress (a store that stalls holds back the acks, not the edits)."""
        while True:
            await self._relay_wanted.wait()
            self._relay_wanted = trio.Event()
            self._relay_queued()

    def _relay_queued(self) -> None:
        """Hand the updates queued since the last relay to the other processes now, before
        they are stored (spec §15: they reach members there as they reach members here). They
        are at the end of what is pending (only _flush takes it, after a relay)."""
        fresh = min(self._queued_updates - self._relayed_updates, len(self._pending.updates))
        if fresh > 0 and self._replication.process and not self._discarded:
            self._replication.relay(self.name, self._queued_updates - fresh + 1, self._pending.updates[-fresh:])
        self._relayed_updates = self._queued_updates

    async def _persister(self) -> None:
        while True:
            await self._persist_wanted.wait()
            # One turn later: the fan-out of what woke us is written first (Flusher.flush_soon)
            # instead of behind a worker thread's start, and a batch collects what the other
            # connections' readers apply in this turn.
            await trio.lowlevel.checkpoint()
            delay = self._config.commit_delay
            if delay > 0 and trio.current_time() - self._writers_met_at < delay:
                # Several members are writing: one commit for what they write in the next
                # moment instead of one each (their acks wait; the fan-out went out already).
                await trio.sleep(delay)
            self._persist_wanted = trio.Event()
            await self._flush(final=False)

    async def _flush(self, *, final: bool) -> None:
        """Commit what is pending as one batch, then send its acks; compact when due."""
        async with self._persist_lock:
            if self.state is RoomState.FAILED or self._discarded:
                return
            self._relay_queued()
            pending, self._pending = self._pending, _Pending()
            self._committing_acks, self._committing_confirmations = pending.acks, pending.confirmations
            numbers = (self._queued_updates - len(pending.updates) + 1, self._queued_updates) if pending.updates else None
            mark = self._changes
            started = time.perf_counter()
            events = [r.stored() for r in pending.events]
            try:
                await self._commit(pending.updates, events)
            except BaseException as exc:  # StorageError, or a store that breaks its contract
                self._committing_acks, self._committing_confirmations = [], {}
                if not application_error(exc):
                    raise
                pending.acks.extend(self._pending.acks)  # in request order: those queued behind it
                self._pending = pending
                self._fail(exc)
                return
            self._committing_acks, self._committing_confirmations = [], {}
            if pending.updates or pending.events:
                self._metrics.observe("commit_seconds", time.perf_counter() - started)
                self._metrics.observe("commit_updates", len(pending.updates))
                self._replication.committed(self.name, pending.updates, events, numbers)
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
            if due and await _ask_lease(self._lease, self.name):
                await self._compact()

    async def _commit(self, updates: list[bytes], events: list[StoredEvent]) -> None:
        """Store a batch's updates, then its events. A store that says it is unavailable is
        tried again, with backoff, for `store_outage_grace` seconds from the commit's start
        before what it raised goes up (and the room fails): a database restart or failover then
        delays acks instead of failing every member's membership. A first try that failed only
        past that (it waited on the store's own call timeout, or the process was paused) still
        gets LAST_CHANCE seconds of tries: a store that is back by then takes it. What was stored
        is not stored twice."""
        deadline = trio.current_time() + self._config.store_outage_grace
        delay, told, failed = 0.05, False, False
        while True:
            try:
                if updates:
                    await self._store.append(self.name, updates)
                    updates = []
                if events:
                    await self._store.append_events(self.name, events, self._config.event_history)
            except StorageUnavailable as exc:
                if not failed:
                    failed = True
                    deadline = max(deadline, trio.current_time() + LAST_CHANCE)
                if isinstance(exc, StoreLocked) or trio.current_time() + delay > deadline:
                    raise
                self._metrics.add("store_errors", 1, "commit")  # the try that gives up is counted by _fail
                if not told:
                    told = True
                    logger.warning("room %r: the store is unavailable, trying again for up to %.1f s more: %s",
                                   self.name, deadline - trio.current_time(), exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if told:
                logger.warning("room %r: the store is back; the commit went through", self.name)
            return

    async def _compact(self) -> None:
        covered = self._updates_since_snapshot
        try:
            if self._replication.shared_store:
                # Other processes append too, and this copy may not have all of it yet: the
                # store folds in what it holds (the lease only saves duplicate work).
                store = cast(SharedRoomStore, self._store)
                covered, snapshot = await store.compact_stored(self.name, merge_updates)
                if not covered:
                    return
            else:
                snapshot = self.doc.get_update()
                self._doc_bytes, self._doc_bytes_exact = len(snapshot), True
                await self._store.compact(self.name, snapshot, covered)
        except BaseException as exc:
            if not application_error(exc):
                raise
            # The updates are still stored; a failed compaction loses nothing.
            self._metrics.add("store_errors", 1, "compact")
            logger.warning("room %r: compaction failed: %s", self.name, exc, exc_info=exc)
            return
        self._updates_since_snapshot = max(0, self._updates_since_snapshot - covered)
        self._bytes_since_snapshot = 0
        self._snapshot_bytes = len(snapshot)
        try:
            await call_hook("on_room_stored", lambda: self._hooks.on_room_stored(self.name, snapshot), self._config.hook_timeout)
        except HookFailed:
            pass  # logged; the snapshot is stored whatever the hook did

    async def wait_flushed(self) -> None:
        """Return once every change made so far is durable. Raises RoomUnavailable on failure."""
        target = self._changes
        while self._durable_changes < target and self.state is not RoomState.FAILED and not self._discarded:
            self._want_persist()
            await self._commit_done.wait()
        if self.state is RoomState.FAILED or self._discarded:
            raise RoomUnavailable("room failed (or was deleted) before its changes were stored")
