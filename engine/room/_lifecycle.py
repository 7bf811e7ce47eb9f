"""A room's whole lifecycle, and its membership (architecture: Engine).

- RoomRegistry: every room of an engine. A hold loads a room (loading -> live); a room whose
  last member left stays live for the idle grace, then drains (flushes) and closes. A join that
  races an unload waits for the flush, then gets a fresh room, never a half-closed one.
- Room: one room. Its parts live beside this module, one per concern (_doc, _ephemeral,
  _events, _persist); this module runs them and admits and removes members.

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

import functools
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pycrdt
import trio

from plait.protocol import (
    Access,
    AwarenessEntry,
    ChannelFrame,
    DecodedUpdate,
    Error,
    ErrorCode,
    Join,
    Joined,
    PresenceEntry,
    SyncStep1,
)
from plait.storage import RoomData, StorageError, StorageUnavailable

from .._config import EngineConfig
from .._errors import RequestError, RoomUnavailable
from .._hooks import Hooks, application_error, call_hook
from .._logs import log_subject
from .._metrics import NO_METRICS, Metrics
from ._doc import DocStrand, apply_update, merge_updates
from ._ephemeral import Ephemeral
from ._events import EventLog, EventRecord, EventsStrand, LocalSequence, SequenceAuthority, new_epoch
from ._fanout import Fanout, LocalFanout
from ._member import Member, MemberSession, RoomState
from ._persist import CompactionLease, LocalLease, PersistStrand, RoomStore, _Pending
from ._replica import LOCAL_REPLICATION, PeerRelays, ReplicaStrand, Replication
from ._updatecheck import UpdateCheck

logger = logging.getLogger("plait.room")
_COPIES = itertools.count(1)
"""Copies of rooms made in this process, for the numbers of their updates (_first_number)."""


def _first_number() -> int:
    """Where a new copy of a room numbers its updates from (for relays: another process tells
    one copy's updates from the next by them, as a room unloaded and loaded again here numbers
    anew): a range of 2**32 per copy, never used by an earlier one."""
    return next(_COPIES) << 32


LOCAL_FANOUT = LocalFanout()
LOCAL_SEQUENCE = LocalSequence()
LOCAL_LEASE = LocalLease()


class Room(DocStrand, EventsStrand, PersistStrand, ReplicaStrand):
    """One room: its document, ephemeral state, events and persistence (the strands, one
    module each), its members, and its lifecycle, which is all here: LOADING -> LIVE ->
    DRAINING -> CLOSED, or FAILED (a load or a store that failed: joins refused, nothing
    written). RoomRegistry, below, holds the live rooms and decides when one unloads."""

    def __init__(
        self,
        name: str,
        store: RoomStore,
        hooks: Hooks,
        config: EngineConfig,
        on_draining: Callable[[Room], None],
        new_epoch: Callable[[], str] = new_epoch,
        fanout: Fanout = LOCAL_FANOUT,
        sequence: SequenceAuthority = LOCAL_SEQUENCE,
        lease: CompactionLease = LOCAL_LEASE,
        metrics: Metrics = NO_METRICS,
        replication: Replication = LOCAL_REPLICATION,
    ) -> None:
        self.name = name
        self.state = RoomState.LOADING
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc()
        self._update_check = UpdateCheck()
        self._store, self._hooks, self._config = store, hooks, config
        self._on_draining = on_draining
        self._fanout = fanout
        self._sequence = sequence
        self._lease = lease
        self._metrics = metrics
        self._replication = replication
        self._replicated = False
        """Whether the change being applied is another process's (stored already)."""
        self._resync_wanted = trio.Event()
        self._resync_needed = False
        self._waiting_update: DecodedUpdate | None = None
        self._peer_relays: dict[str, PeerRelays] = {}
        """Other processes' relayed updates applied here, waiting for their commits."""
        self._told_unconfirmed = False
        self._relay_heard = trio.Event()
        self._discarded = False
        """Deleted by another process: nothing more is written (discard)."""
        self._held_events: dict[int, tuple[EventRecord, int, float]] = {}
        """Events numbered past a gap, waiting for the ones before (seq -> record, size,
        when it was held)."""
        self._gap_opened = trio.Event()
        self._members: dict[MemberSession, Member] = {}
        self.last_activity = 0.0
        """When a member last joined or left, the document last changed or an event was
        published, or the room started loading (Trio's clock)."""
        self._holds = 0
        """Joins in progress and server-side handles: a held room does not unload."""
        self._ephemeral = Ephemeral(
            name, config, self._members, fanout, metrics,
            replicate=None if replication is LOCAL_REPLICATION else functools.partial(replication.ephemeral, name),
        )
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
        self.loaded_once = False
        """Whether it went live (a room that failed to load never did)."""
        self._closed = trio.Event()
        self._persist_wanted = trio.Event()
        self._relay_wanted = trio.Event()
        self._membership_changed = trio.Event()
        self._unload_requested = False
        self._changes = 0
        self._durable_changes = 0
        self._queued_updates = self._relayed_updates = _first_number()
        """The number of the last update queued for a commit in this copy's life (for relays;
        from a range of this copy's own)."""
        self._committing_acks: list[tuple[Member | None, int, int | Error | None]] = []
        self._committing_confirmations: dict[Member, list[bytes]] = {}
        self._last_writer: str | None = None
        """The session whose update was queued last ("" for server-side code), and when."""
        self._last_write_at = -math.inf
        self._writers_met_at = -math.inf
        """When an update last followed another writer's within commit_delay (Trio's clock)."""
        self._commit_done = trio.Event()
        self._doc_subscription: pycrdt.Subscription | None = None
        self._sync_cache: tuple[bytes, list[ChannelFrame]] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def log_ids(self) -> tuple[str | None, str | None, str | None]:
        """For log lines (engine/_logs.py): the room's name."""
        return None, self.name, None

    async def run(self) -> None:
        """Load, serve until idle (or asked to unload), flush, close. Runs in the engine's nursery.
        Whatever ends it (a failed load, a crash, a cancellation), whoever waits for the room to
        load or close is released."""
        self.last_activity = trio.current_time()
        try:
            if not await self._load():
                return
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ephemeral.ticker)
                nursery.start_soon(self._ephemeral.sweeper)
                nursery.start_soon(self._persister)
                if self._replication is not LOCAL_REPLICATION:
                    nursery.start_soon(self._resyncer)
                    nursery.start_soon(self._event_gaps)
                    nursery.start_soon(self._relays_unconfirmed)
                    nursery.start_soon(self._relayer)
                    self._replication.follow(self)
                await self._wait_until_idle()
                if self.state is RoomState.LIVE:
                    self.state = RoomState.DRAINING
                    self._on_draining(self)
                    self._store_unconfirmed(unloading=True)  # if their process does not, no copy would be left
                    await self._flush(final=True)
                nursery.cancel_scope.cancel()
        finally:
            # The subscription holds the room and the document alive (a cycle through Rust
            # that the garbage collector cannot see): an unloaded room must leave nothing.
            self._unobserve()
            self._replication.detach(self)
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
        started = time.perf_counter()
        try:
            await self._replication.attach(self)  # before the load: nothing committed after it is missed
            with trio.move_on_after(self._config.store_load_timeout) as waited:
                data = await self._store.load(self.name)
            if waited.cancelled_caught:
                raise StorageUnavailable(f"the store did not load the room within {self._config.store_load_timeout:g} s")
            self._restore(data)
            self._events.epoch = await self._sequence.epoch(self.name, self._events.epoch)
            await call_hook("on_room_loaded", lambda: self._hooks.on_room_loaded(self.name, self.doc), self._config.hook_timeout)
        except BaseException as exc:
            if not application_error(exc):
                raise
            # The details (paths, the store's own words) are for the server's log, not clients.
            # An outage's refusals are one line each (they come by the hundred while clients
            # retry); anything else keeps its traceback.
            logger.error("room %r failed to load: %s", self.name, exc, exc_info=not isinstance(exc, StorageUnavailable) and exc)
            if isinstance(exc, StorageError):
                self._metrics.add("store_errors", 1, "load")
            self.state = RoomState.FAILED
            self._on_draining(self)
            return False
        self.state = RoomState.LIVE
        self.loaded_once = True
        self._metrics.add("rooms_loaded")
        self._metrics.observe("room_load_seconds", time.perf_counter() - started)
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
        self._events = EventLog(self._config.event_history, data.events, self._new_epoch, self._config.event_history_bytes)

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
        """Whether a hold may get this room: not once it was asked to unload (a delete, a
        shutdown), even before its state says so, or a join could slip into a room that is
        about to close under it."""
        return self.state in (RoomState.LOADING, RoomState.LIVE) and not self._unload_requested

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
        self._metrics.add("store_errors", 1, "commit")
        logger.error("room %r failed: %s", self.name, exc, exc_info=not isinstance(exc, StorageUnavailable) and exc)
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

    def add_member(self, session: MemberSession, channel: int, access: Access, join: Join) -> Member:
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
        self.last_activity = trio.current_time()
        self._metrics.add("joins")
        self._membership_changed.set()
        self._ephemeral.joined(session)
        session.deliver_frames(member, [
            Joined(join.ref, channel, int(access), self._events.head, resumed, self._events.epoch),
            SyncStep1(channel, self.doc.get_state()),
        ])
        for frame in sync_frames:
            session.deliver(member, frame)
        session.deliver_frames(member, self._ephemeral.join_frames(channel))
        self._replay(member, missed)
        return member

    def remove_member(self, member: Member, *, disconnected: bool) -> None:
        """The member left (at once) or disconnected (its presence lingers for the grace)."""
        if self._members.get(member.session) is not member:
            return
        self._remove(member)
        self.last_activity = trio.current_time()
        self._metrics.add("leaves", 1, "disconnected" if disconnected else "left")
        self._ephemeral.left(member.session.id, disconnected=disconnected)
        self._membership_changed.set()
        self._ephemeral.want_tick()

    def _remove(self, member: Member) -> None:
        del self._members[member.session]
        self._ephemeral.removed(member)
        # Acks still waiting for a commit go nowhere now; the commit itself still happens.
        self._pending.acks = [a for a in self._pending.acks if a[0] is not member]
        self._pending.confirmations.pop(member, None)

    @property
    def member_count(self) -> int:
        return len(self._members)

    def members(self) -> list[Member]:
        return list(self._members.values())

    @property
    def document_bytes(self) -> int:
        """The document's size, about: its snapshot plus the updates since (exact after a
        compaction)."""
        return self._doc_bytes

    @property
    def head(self) -> int:
        """The latest event sequence (spec §5.6)."""
        return self._events.head

    def history(self, since: int, epoch: str | None) -> tuple[list[EventRecord], bool, str]:
        """Events after (`epoch`, `since`; None: this history's), whether that is all of
        them, and the history's epoch (spec §7)."""
        records, complete = self._events.since(since, self._events.epoch if epoch is None else epoch)
        return records, complete, self._events.epoch

    # -- presence, cursors, typing, awareness: the ephemeral strand's (_ephemeral.py) ---------

    def presence(self) -> tuple[PresenceEntry, ...]:
        return self._ephemeral.presence()

    def set_presence(
        self, member: Member, state: dict[str, Any] | None, patch: dict[str, Any] | None, size: int | None = None
    ) -> None:
        self._ephemeral.set_presence(member, state, patch, size)

    def move_cursor(self, member: Member, position: Any) -> None:
        self._ephemeral.move_cursor(member, position)

    def set_typing(self, member: Member, on: bool) -> None:
        self._ephemeral.set_typing(member, on)

    def awareness_id(self, member: Member) -> int | None:
        return self._ephemeral.awareness_id(member)

    def claim_awareness(self, member: Member, client_id: int, clock: int, hidden: bool) -> bool:
        return self._ephemeral.claim_awareness(member, client_id, clock, hidden)

    def renew_awareness(self) -> None:
        self._ephemeral.renew_awareness()

    def awareness_entry(self, sid: str) -> AwarenessEntry | None:
        return self._ephemeral.awareness_entry(sid)

    def awareness_sessions(self) -> list[str]:
        return self._ephemeral.awareness_sessions()

    def crashed(self) -> None:
        """A bug ended `run`: fail the room, end every membership with INTERNAL, and release
        whoever waits for a commit (wait_flushed raises RoomUnavailable)."""
        self.state = RoomState.FAILED
        self._on_draining(self)
        self._pending = _Pending()
        self.close_all(ErrorCode.INTERNAL, "internal error")
        self._commit_done.set()
        self._closed.set()

    def set_access(self, user: str, access: Access | None) -> int:
        """Change the access of every member whose identity id is `user` (change_access).
        Returns how many memberships it changed."""
        members = [m for m in self._members.values() if m.session.identity.get("id") == user]
        return sum(self.change_access(member, access) for member in members)

    def change_access(self, member: Member, access: Access | None) -> bool:
        """Change a member's access (spec §5.2): it is told (access_changed), or, for None,
        removed (channel_closed FORBIDDEN). From the moment this returns, what it sends is
        judged by the new access. Whether anything changed."""
        if self._members.get(member.session) is not member or member.access is access:
            return False
        if access is None:
            self.remove_member(member, disconnected=False)
            member.session.close_channel(member, ErrorCode.FORBIDDEN, "your access to this room was taken away")
        else:
            member.access = access
            member.session.access_changed(member)
        return True

    def close_all(self, code: int, message: str) -> None:
        """Server-side: end every membership with channel_closed (spec §5.2)."""
        for member in list(self._members.values()):
            self.remove_member(member, disconnected=False)
            member.session.close_channel(member, code, message)

    def discard(self) -> None:
        """Another process deleted the room (spec/api.md §5): every membership ends
        (ROOM_DELETED), what was not stored yet is dropped (nobody was told it was), and the
        room unloads."""
        self._pending = _Pending()
        self._discarded = True  # and no last compaction: it could write a snapshot back
        self._commit_done.set()  # whoever waits for a commit is told (wait_flushed)
        self.close_all(ErrorCode.ROOM_DELETED, "the room was deleted")
        self.request_unload()


class RoomRegistry:
    """Every room of an engine, each through its whole lifecycle: a hold loads it (loading ->
    live), the last member's leaving starts its idle grace, then it drains (flushes) and
    closes. While a room drains, its name is in `_unloading`: a join that races the unload
    waits for the flush to land, then gets a fresh room, never the half-closed one.

    Args:
        store, hooks, config, new_epoch: what every room is made with.
        fanout, sequence, lease, replication: the seams every room uses (in-process ones by
            default).
        nursery: where rooms run (the engine's; asked for when a room starts).
        accepting: False once the engine shuts down: holds are refused (SHUTTING_DOWN).
        started, ended: told when a room starts and when one has ended (the engine's reclaimer).
    """

    def __init__(
        self,
        store: RoomStore,
        hooks: Hooks,
        config: EngineConfig,
        *,
        nursery: Callable[[], trio.Nursery],
        accepting: Callable[[], bool],
        started: Callable[[], None],
        ended: Callable[[], None],
        new_epoch: Callable[[], str] = new_epoch,
        fanout: Fanout = LOCAL_FANOUT,
        sequence: SequenceAuthority = LOCAL_SEQUENCE,
        lease: CompactionLease = LOCAL_LEASE,
        metrics: Metrics = NO_METRICS,
        replication: Replication = LOCAL_REPLICATION,
    ) -> None:
        self.store = store
        """What rooms loaded from now on are stored in."""
        self._hooks, self._config = hooks, config
        self._nursery, self._accepting = nursery, accepting
        self._started, self._ended = started, ended
        self._new_epoch = new_epoch
        self._fanout, self._sequence, self._lease = fanout, sequence, lease
        self._metrics = metrics
        self._replication = replication
        self._rooms: dict[str, Room] = {}
        self._unloading: dict[str, Room] = {}
        self._deleting: dict[str, trio.Event] = {}
        self._maybe_loading: set[Room] = set()
        """Every room loading, and some that finished since (states() sorts them out)."""

    @property
    def loaded(self) -> int:
        """Rooms loading or live."""
        return len(self._rooms)

    def __len__(self) -> int:
        """Rooms loading, live or unloading."""
        return len(self._rooms) + len(self._unloading)

    def states(self) -> dict[str, int]:
        """Rooms by state (RoomState values): `loading`, `live`, and `draining` (storing before
        they unload). A room that failed leaves the registry at once, so is in none."""
        # Not a look at every room: with thousands live, that alone held a scrape's loop for
        # milliseconds (bench/metrics_scrape.py). The rooms that may still be loading are few.
        self._maybe_loading = {room for room in self._maybe_loading if room.state is RoomState.LOADING}
        loading = len(self._maybe_loading)
        return {"loading": loading, "live": len(self._rooms) - loading, "draining": len(self._unloading)}

    def all(self) -> list[Room]:
        """Every room loading, live or unloading."""
        return [*self._rooms.values(), *self._unloading.values()]

    def names(self) -> list[str]:
        return sorted({*self._rooms, *self._unloading})

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Room]:
        """The live room `name`, loading it if needed; it cannot unload while held.

        Raises:
            RoomUnavailable: it failed to load (stored data is left as it was).
            RequestError: the engine is shutting down.
        """
        while True:
            if not self._accepting():
                raise RequestError(ErrorCode.SHUTTING_DOWN, "server is shutting down")
            deleting = self._deleting.get(name)
            if deleting is not None:
                await deleting.wait()  # then a fresh, empty room
                continue
            room = self._rooms.get(name)
            if room is None:
                previous = self._unloading.get(name)
                if previous is not None:
                    await previous.wait_closed()  # its flush must land before we load again
                    continue
                room = Room(
                    name, self.store, self._hooks, self._config, self._room_draining,
                    new_epoch=self._new_epoch, fanout=self._fanout, sequence=self._sequence, lease=self._lease,
                    metrics=self._metrics, replication=self._replication,
                )
                self._rooms[name] = room
                self._maybe_loading.add(room)
                self._started()
                self._nursery().start_soon(self._run_room, room)
            room.hold()
            try:
                await room.wait_loaded()
                self._maybe_loading.discard(room)
                if not room.accepting:
                    continue  # it began unloading as we arrived: get a fresh one
                yield room
                return
            finally:
                room.release()

    def get(self, name: str) -> Room | None:
        """The room `name` if it is loading or live (never loads it)."""
        return self._rooms.get(name)

    def live(self) -> list[Room]:
        """Every room loading or live."""
        return list(self._rooms.values())

    async def delete(self, name: str) -> None:
        """Delete a room: end every membership (channel_closed ROOM_DELETED, spec §5.2), let
        it unload (what was acked is stored first), then delete it from the store. A join or
        hold meanwhile waits, then gets a new, empty room.

        Raises:
            StorageError: the store failed to delete it.
        """
        while (other := self._deleting.get(name)) is not None:
            await other.wait()
        done = self._deleting[name] = trio.Event()
        try:
            for room in (self._rooms.get(name), self._unloading.get(name)):
                if room is not None:
                    room.close_all(ErrorCode.ROOM_DELETED, "the room was deleted")
                    room.request_unload()
                    await room.wait_closed()
            await self.store.delete(name)
        finally:
            del self._deleting[name]
            done.set()

    async def discard(self, name: str) -> None:
        """Another process deleted the room `name` (it deletes it from the store): this copy
        ends its memberships and unloads without storing what it had not stored."""
        for room in (self._rooms.get(name), self._unloading.get(name)):
            if room is not None:
                room.discard()
                await room.wait_closed()

    def _room_draining(self, room: Room) -> None:
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
        if room.state is RoomState.DRAINING:
            self._unloading[room.name] = room

    async def _run_room(self, room: Room) -> None:
        log_subject(room)  # not the session whose join started it (engine/_logs.py)
        try:
            await room.run()
        except* Exception as crash:  # except*: the room's nursery may add a Cancelled that must go on
            # A bug in a room fails that room loudly, not the server.
            logging.getLogger("plait.engine").critical("room %r crashed", room.name, exc_info=crash)
            room.crashed()
        finally:
            self._maybe_loading.discard(room)
            if self._unloading.get(room.name) is room:
                del self._unloading[room.name]
            if room.loaded_once:
                self._metrics.add("rooms_unloaded")
            self._ended()
