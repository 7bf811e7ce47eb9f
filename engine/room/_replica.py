"""A room's copies in other processes (architecture: Scale-out): the Replication seam, and what
a room does with what its copies elsewhere committed.

Every process that has members in a room holds a copy of it. What one copy commits to the
shared store (document updates, events) reaches the others through the Replication seam, after
the commit: so everything a copy receives is already durable, and a copy never stores it again.
What a copy misses (a link that dropped, a peer that died between its commit and its publish)
is found in the store: `resync` applies what the store has and this copy does not.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pycrdt
import trio

from plait.storage import StoredEvent

from .._hooks import application_error
from ._doc import apply_update, merge_updates
from ._events import EventLog, EventRecord
from ._member import RoomState

if TYPE_CHECKING:
    from ._ephemeral import Ephemeral

logger = logging.getLogger("plait.room")


class Replica(Protocol):
    """What the Replication seam calls on a room (on the Trio thread)."""

    name: str
    state: RoomState

    def receive_committed(self, updates: Sequence[bytes], events: Sequence[StoredEvent]) -> None: ...

    def receive_ephemeral(self, process: str, body: bytes) -> None: ...

    def ephemeral_state(self) -> bytes: ...

    def drop_process(self, process: str) -> None: ...

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

    async def attach(self, room: Replica) -> None:
        """The room starts loading here: follow what its copies commit from now on, so nothing
        committed after the load is missed (what is received twice changes nothing)."""

    def follow(self, room: Replica) -> None:
        """The room is live: hand it what its copies commit (receive_committed, ...)."""

    def detach(self, room: Replica) -> None:
        """The room unloaded here (or failed)."""

    def committed(self, room: str, updates: Sequence[bytes], events: Sequence[StoredEvent]) -> None:
        """What this copy just committed to the shared store, for the others. Never waits."""

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

    async def attach(self, room: Replica) -> None:
        pass

    def follow(self, room: Replica) -> None:
        pass

    def detach(self, room: Replica) -> None:
        pass

    def committed(self, room: str, updates: Sequence[bytes], events: Sequence[StoredEvent]) -> None:
        pass

    def ephemeral(self, room: str, body: bytes) -> None:
        pass

    def broadcast(self, operation: list[Any]) -> None:
        pass

    def on_operation(self, handler: Callable[[list[Any]], Awaitable[None]]) -> None:
        pass


LOCAL_REPLICATION = LocalReplication()


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

    if TYPE_CHECKING:
        def _receive_event(self, record: EventRecord) -> None: ...

    def receive_committed(self, updates: Sequence[bytes], events: Sequence[StoredEvent]) -> None:
        """A copy's committed updates and events: applied and sent to this copy's members,
        not stored (they are). An update that does not apply (a bug elsewhere) resyncs."""
        if self.state is not RoomState.LIVE:
            return
        if updates:
            self._replicated = True
            try:
                apply_update(self.doc, updates[0] if len(updates) == 1 else merge_updates(list(updates)))
            except (ValueError, RuntimeError) as exc:
                logger.error("room %r: an update from another process does not apply (%s); resyncing", self.name, exc)
                self.want_resync()
            finally:
                self._replicated = False
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

    def drop_process(self, process: str) -> None:
        """A peer died: its members leave this copy's presence; what it committed and did not
        publish is in the store."""
        if self.state is RoomState.LIVE:
            self._ephemeral.drop_process(process)
            self.want_resync()

    def want_resync(self) -> None:
        self._resync_wanted.set()

    async def _resyncer(self) -> None:
        """Runs in the room's nursery when the room has copies elsewhere."""
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted = trio.Event()
            await self._resync()

    async def _resync(self) -> None:
        """Apply what the store has that this copy has not (documents by state vector, events
        by sequence). A store that fails is tried at the next resync."""
        try:
            data = await self._store.load(self.name)
        except BaseException as exc:
            if not application_error(exc):
                raise
            logger.warning("room %r: resync from the store failed: %s", self.name, exc)
            return
        stored = ([data.snapshot] if data.snapshot is not None else []) + list(data.updates)
        self.receive_committed([merge_updates(stored)] if stored else [], data.events)
