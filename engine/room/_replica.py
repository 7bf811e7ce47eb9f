"""A room's copies in other processes (architecture: Scale-out): the Replication seam, and what
a room does with what its copies elsewhere committed.

Every process that has members in a room holds a copy of it. What one copy commits to the
shared store (document updates, events) reaches the others through the Replication seam, after
the commit: so everything a copy receives that way is already durable, and a copy never stores
it again. What a copy misses (a link that dropped, a peer that died between its commit and its
publish) is found in the store: `resync` applies what the store has and this copy does not.

A copy's document updates also reach the others before they are stored (relayed, numbered
1, 2, ... per copy), so that members everywhere see an edit as soon as members of its own
process do. Such an update is not durable yet: a copy keeps each one it applied until the
commit that covers it arrives (and then does not apply that commit's updates again); if the
commit does not come (its process died, or its store failed for longer than
`store_outage_grace`), the copy stores the update itself. Updates are idempotent, so one stored
twice costs bytes until the next compaction, never a change.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pycrdt
import trio

from plait.protocol import DecodedUpdate, ProtocolError, read_update
from plait.storage import StoredEvent

from .._hooks import application_error
from ._doc import apply_update, merge_updates
from ._events import EventLog, EventRecord
from ._member import RoomState
from ._updatecheck import UpdateCheck

if TYPE_CHECKING:
    from ._ephemeral import Ephemeral

logger = logging.getLogger("plait.room")


class Replica(Protocol):
    """What the Replication seam calls on a room (on the Trio thread)."""

    name: str
    state: RoomState

    def receive_committed(
        self, updates: Sequence[bytes], events: Sequence[StoredEvent], process: str = "", numbers: tuple[int, int] | None = None
    ) -> None: ...

    def receive_relayed(self, process: str, first: int, updates: Sequence[bytes]) -> None: ...

    def receive_ephemeral(self, process: str, body: bytes) -> None: ...

    def ephemeral_state(self) -> bytes: ...

    def drop_process(self, process: str) -> None: ...

    def peer_left(self, process: str) -> None: ...

    def want_resync(self) -> None: ...


class Replication(Protocol):
    """How a room meets its copies in other processes. In one process there are none
    (LocalReplication); engine/cluster/ has the Redis one."""

    shared_store: bool
    """Whether other processes write the room's store too: then a compaction folds in what the
    store holds, not what this copy holds (it may not have everything yet)."""
    process: str
    """This process's name among the others ('' when there are none)."""
    available: bool
    """Whether this process hears the others now. While it does not, events are refused
    (STORAGE_UNAVAILABLE): they could not be put in one order with the others'."""
    resyncs: trio.CapacityLimiter
    """How many rooms may read the store at once to resync. A peer given up for dead or a
    Redis outage resyncs every room: all at once, their reads would queue the store's writes
    (acks) behind them until those time out."""

    async def attach(self, room: Replica) -> None:
        """The room starts loading here: follow what its copies commit from now on, so nothing
        committed after the load is missed (what is received twice changes nothing)."""

    def follow(self, room: Replica) -> None:
        """The room is live: hand it what its copies commit (receive_committed, ...)."""

    def detach(self, room: Replica) -> None:
        """The room unloaded here (or failed)."""

    def relay(self, room: str, first: int, updates: Sequence[bytes]) -> None:
        """Updates this copy applied and has not stored yet, numbered `first`, first + 1, ...,
        for the others to apply now (receive_relayed). Never waits; may drop them (the commit
        brings them)."""

    def committed(
        self, room: str, updates: Sequence[bytes], events: Sequence[StoredEvent], numbers: tuple[int, int] | None = None
    ) -> None:
        """What this copy just committed to the shared store, for the others (receive_committed);
        `numbers`: the first and last number of the updates, as relayed. Never waits."""

    def ephemeral(self, room: str, body: bytes) -> None:
        """This copy's presence, cursor and typing changes of a tick, for the others."""

    def broadcast(self, operation: list[Any]) -> None:
        """An operator's action (spec/api.md: a disconnect, an access change, a deletion) for
        the other processes to do too: each calls the handler given to `on_operation`."""

    def on_operation(self, handler: Callable[[list[Any]], Awaitable[None]]) -> None:
        """Who does what other processes broadcast (the engine)."""


class LocalReplication:
    """No other process: nothing to do."""

    __slots__ = ()
    shared_store = False
    process = ""
    available = True
    resyncs = trio.CapacityLimiter(1)  # never used: rooms without copies do not resync

    async def attach(self, room: Replica) -> None:
        pass

    def follow(self, room: Replica) -> None:
        pass

    def detach(self, room: Replica) -> None:
        pass

    def relay(self, room: str, first: int, updates: Sequence[bytes]) -> None:
        pass

    def committed(
        self, room: str, updates: Sequence[bytes], events: Sequence[StoredEvent], numbers: tuple[int, int] | None = None
    ) -> None:
        pass

    def ephemeral(self, room: str, body: bytes) -> None:
        pass

    def broadcast(self, operation: list[Any]) -> None:
        pass

    def on_operation(self, handler: Callable[[list[Any]], Awaitable[None]]) -> None:
        pass


LOCAL_REPLICATION = LocalReplication()

GAP_RESYNC_INTERVAL = 1.0
"""Seconds an update from another process may wait for one this copy lacks before the room
resyncs (Replica._apply_replicated)."""
RESYNC_RETRY = 0.5
"""Seconds before a resync whose store read failed is tried again (doubling, up to 4 s)."""
RELAY_BUFFER_BYTES = 16 * 1024 * 1024
"""At most this many bytes of one process's relayed updates wait for their commit in a copy; past
it, relayed updates are not applied (their commit brings them)."""
RELAY_CONFIRM_MARGIN = 5.0
"""Seconds past `store_outage_grace` (how long a process tries to store a commit) after which a
relayed update whose commit has not come is stored by the copy that applied it."""


@dataclass(slots=True)
class PeerRelays:
    """Another process's relayed updates, as this copy heard them."""

    baseline: int
    """Updates numbered up to here were not all heard here: a commit covering any of them is
    applied."""
    through: int
    """Every update numbered from baseline + 1 through here was heard (and applied) here."""
    unconfirmed: deque[tuple[int, list[bytes], float]] = field(default_factory=deque)
    """(last number, updates, when heard) of each relay whose commit has not come yet."""
    size: int = 0


class ReplicaStrand:
    """What a room does with its copies' changes: apply them without storing them again, and
    resync from the store when told it may have missed some."""

    # What this part uses of the Room it is mixed into (set in Room.__init__), for type checkers.
    name: str
    state: RoomState
    doc: pycrdt.Doc[Any]
    _store: Any  # _persist.RoomStore (that module imports this one)
    _events: EventLog
    _ephemeral: Ephemeral
    _replication: Replication
    _replicated: bool
    _resync_wanted: trio.Event
    _peer_relays: dict[str, PeerRelays]
    _told_unconfirmed: bool
    """Whether the WARNING for relayed updates stored here was logged since a commit last
    confirmed relays (INFO until then)."""
    _relay_heard: trio.Event
    _config: Any  # EngineConfig
    _update_check: UpdateCheck
    _resync_needed: bool
    _waiting_update: DecodedUpdate | None
    """The last update from another process that did not integrate (it waits for one this copy
    lacks), until the resyncer looks at it."""

    if TYPE_CHECKING:
        def _receive_event(self, record: EventRecord) -> None: ...
        def _queue_updates(self, updates: list[bytes]) -> None: ...

    def receive_relayed(self, process: str, first: int, updates: Sequence[bytes]) -> None:
        """Updates `process` applied and has not stored yet (numbered from `first`): applied
        and sent to this copy's members, kept until their commit comes (module docstring)."""
        if self.state is not RoomState.LIVE or not updates:
            return
        peer = self._peer_relays.get(process)
        if peer is None:
            peer = self._peer_relays[process] = PeerRelays(first - 1, first - 1)
        elif first != peer.through + 1:  # some were not heard: their commits are applied
            peer.baseline = peer.through = first - 1
        size = sum(map(len, updates))
        if peer.size + size > RELAY_BUFFER_BYTES:
            return  # not applied: the next relay finds a gap, and the commit brings these
        updates = list(updates)
        if not self._apply_replicated(updates):
            return  # the room resyncs; nothing kept that could not apply
        peer.through = first + len(updates) - 1
        peer.unconfirmed.append((peer.through, updates, trio.current_time()))
        peer.size += size
        self._relay_heard.set()

    def receive_committed(
        self, updates: Sequence[bytes], events: Sequence[StoredEvent], process: str = "", numbers: tuple[int, int] | None = None
    ) -> None:
        """A copy's committed updates and events: applied and sent to this copy's members,
        not stored (they are), unless every update was relayed and applied here already. An
        update that does not apply (a bug elsewhere) resyncs."""
        if self.state is not RoomState.LIVE:
            return
        peer = self._peer_relays.get(process) if numbers is not None else None
        if peer is not None and numbers is not None:
            first, last = numbers
            if peer.unconfirmed and peer.unconfirmed[0][0] <= last:
                self._told_unconfirmed = False
            while peer.unconfirmed and peer.unconfirmed[0][0] <= last:
                peer.size -= sum(map(len, peer.unconfirmed.popleft()[1]))
            if peer.baseline < first and last <= peer.through:
                updates = ()
        if updates:
            self._apply_replicated(updates)
        for stored in events:
            try:
                record = EventRecord.from_stored(stored)
            except Exception as exc:  # a body this version cannot read: not ours to crash on
                logger.error("room %r: an event from another process does not decode (%s)", self.name, exc)
                continue
            self._receive_event(record)

    def receive_ephemeral(self, process: str, body: bytes) -> None:
        if self.state is RoomState.LIVE:
            self._ephemeral.apply_remote(process, body)

    def ephemeral_state(self) -> bytes:
        return self._ephemeral.local_state()

    def _apply_replicated(self, updates: Sequence[bytes]) -> bool:
        """Apply another process's updates (not to be stored here); False if they do not apply
        (a bug elsewhere: the room resyncs). Updates that build on one this copy never had (a
        commit that reached the store unannounced: a store call given up during a database
        stall can still commit when the database answers again) would wait in the document
        for good: the room resyncs if they still wait GAP_RESYNC_INTERVAL later (a commit this
        copy missed on pub/sub comes from the room's stream meanwhile)."""
        update = updates[0] if len(updates) == 1 else merge_updates(list(updates))
        self._replicated = True
        try:
            apply_update(self.doc, update)
        except (ValueError, RuntimeError) as exc:
            logger.error("room %r: an update from another process does not apply (%s); resyncing", self.name, exc)
            self.want_resync()
            return False
        finally:
            self._replicated = False
        try:
            decoded = read_update(update, trusted=True)
        except ProtocolError:
            return True  # it applied: what it is made of is pycrdt's business
        if not self._update_check.holds(decoded):
            self._waiting_update = decoded
            self._resync_wanted.set()
        return True

    def peer_left(self, process: str) -> None:
        """A peer no longer holds the room (it unloaded it): its members leave this copy's
        presence (it may have unloaded before it told of the last one's leave)."""
        if self.state is RoomState.LIVE:
            self._ephemeral.drop_process(process)

    def drop_process(self, process: str) -> None:
        """A peer died: its members leave this copy's presence; what it committed and did not
        publish is in the store; what it relayed and did not commit, this copy stores."""
        if self.state is RoomState.LIVE:
            self._ephemeral.drop_process(process)
            self._store_unconfirmed(process)
            self._peer_relays.pop(process, None)
            self.want_resync()

    def _store_unconfirmed(self, process: str | None = None, heard_before: float | None = None, *, unloading: bool = False) -> None:
        """Queue for this copy's next commit the relayed updates of `process` (of every process
        if None) heard before `heard_before` (all if None) whose commit has not come."""
        updates: list[bytes] = []
        for name, peer in list(self._peer_relays.items()):
            if process is not None and name != process:
                continue
            while peer.unconfirmed and (heard_before is None or peer.unconfirmed[0][2] < heard_before):
                stored = peer.unconfirmed.popleft()[1]
                peer.size -= sum(map(len, stored))
                updates.extend(stored)
        if updates:
            if unloading:  # their process is most likely storing them too: twice is harmless
                logger.info("room %r: storing %d update(s) another process has not stored yet", self.name, len(updates))
            elif process is not None:
                logger.warning("room %r: storing %d update(s) a process that is gone applied and did not store",
                               self.name, len(updates))
            else:  # said once until a commit of relayed updates comes again (an outage: one line, not one per batch)
                log = logger.info if self._told_unconfirmed else logger.warning
                self._told_unconfirmed = True
                log(
                    "room %r: storing %d update(s) another process relayed and whose commit has not come within %g s "
                    "(its store or its link to Redis failed, or is slow: stored twice then, which is harmless)",
                    self.name, len(updates), self._config.store_outage_grace + RELAY_CONFIRM_MARGIN,
                )
            self._queue_updates(updates)

    async def _relays_unconfirmed(self) -> None:
        """Runs in the room's nursery when the room has copies elsewhere: a relayed update whose
        commit has not come within store_outage_grace + RELAY_CONFIRM_MARGIN is stored here."""
        timeout = self._config.store_outage_grace + RELAY_CONFIRM_MARGIN
        while True:
            heard = [peer.unconfirmed[0][2] for peer in self._peer_relays.values() if peer.unconfirmed]
            if not heard:
                await self._relay_heard.wait()
                self._relay_heard = trio.Event()
                continue
            await trio.sleep_until(min(heard) + timeout)
            self._store_unconfirmed(heard_before=trio.current_time() - timeout + 1e-9)

    def want_resync(self) -> None:
        self._resync_needed = True
        self._resync_wanted.set()

    async def _resyncer(self) -> None:
        """Runs in the room's nursery when the room has copies elsewhere. A resync whose store
        read fails is tried again, RESYNC_RETRY seconds later and doubling up to 8 times that."""
        delay = RESYNC_RETRY
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted = trio.Event()
            waiting, self._waiting_update = self._waiting_update, None
            if not self._resync_needed and waiting is not None:
                await trio.sleep(GAP_RESYNC_INTERVAL)
                if not self._resync_needed and self._update_check.holds(waiting):
                    continue  # what it waited for came
                logger.info("room %r: an update from another process waits for one this copy lacks; resyncing", self.name)
            self._resync_needed = False
            if await self._resync():
                delay = RESYNC_RETRY
                continue
            await trio.sleep(delay)
            delay = min(2 * delay, 8 * RESYNC_RETRY)
            self.want_resync()

    async def _resync(self) -> bool:
        """Apply what the store has that this copy has not (documents by state vector, events
        by sequence). False if the store could not be read."""
        try:
            async with self._replication.resyncs:
                data = await self._store.load(self.name)
        except BaseException as exc:
            if not application_error(exc):
                raise
            logger.warning("room %r: resync from the store failed (trying again): %s", self.name, exc)
            return False
        stored = ([data.snapshot] if data.snapshot is not None else []) + list(data.updates)
        self.receive_committed([merge_updates(stored)] if stored else [], data.events)
        return True
