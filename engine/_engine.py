"""The Engine: owns the nursery every room and connection runs in (architecture: Engine).

    async with Engine(store=MemoryStore()) as engine:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)

What escapes `async with Engine(...)`: a StorageError from opening the store (StoreLocked: another
server uses it), exceptions raised by the body, unwrapped (never an ExceptionGroup of one), and
Cancelled. A failing room or connection is contained and logged.
On exit the engine shuts down gracefully: it stops accepting, closes every session with
GOING_AWAY, then flushes and unloads every room.

Its port also answers `/healthz` and `/readyz` (engine/http/_health.py), and `/metrics` once
an exporter's route is added (engine/_prometheus.py).
"""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any

import trio

from plait.protocol import YJS_PATH, Access, CloseCode, PresenceEntry
from plait.storage import MemoryStore, Store

from ._config import EngineConfig
from ._errors import RoomUnavailable
from ._handle import RoomHandle
from ._hooks import Hooks, Identity
from ._reclaim import Reclaimer, glibc_malloc_trim
from ._record import RecordingStore, TraceRecorder
from ._metrics import NO_METRICS, ContainedMetrics, Gauges, Metrics
from ._operations import RoomInfo, SessionInfo, room_info, session_info
from .room import (
    LOCAL_FANOUT,
    LOCAL_LEASE,
    LOCAL_REPLICATION,
    LOCAL_SEQUENCE,
    CompactionLease,
    ContainedFanout,
    Fanout,
    Replication,
    Room,
    RoomRegistry,
    SequenceAuthority,
    new_epoch,
)
from ._limits import ConnectionCounts
from .http import HttpSessions, RequestPace, Router, serve_connection
from .http._admission import Admission
from .http._health import Health
from .http._sessions import PREFIX as HTTP_PREFIX
from .sessions import SWEEPS_PER_INTERVAL, Flusher, Peer, Session, SessionServices, SweepSchedule, YjsSession, check_detach
from .transports import HttpTransport, MemoryTransport, Transport, memory_transport_pair

logger = logging.getLogger("plait.engine")

MAX_ACCESS_OVERRIDES = 100_000
"""Access overrides (Engine.set_access) an engine holds at most: each is a few hundred bytes."""


def random_session_ids() -> Callable[[], str]:
    prefix = secrets.token_hex(4)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


class Engine:
    """A Plait engine.

    Args:
        store: where rooms are kept; a MemoryStore if not given.
        hooks: authentication, authorisation and event hooks; anonymous full access if not given.
        config: timings and limits.
        session_ids: makes session ids (tests and trace replay pass a deterministic one).
        epochs: makes the epoch of a new event history (spec §7; random unless given).
        recorder: records every connection's traffic as a trace (`plait serve --record`).
        metrics: where the engine reports what happens (engine/_metrics.py; nowhere by default).
        fanout, sequence, lease, replication: the seams several processes share a room
            through: how a room's frames reach its members, who numbers its events, who may
            compact it, how its copies in other processes meet (engine/room/; in-process by
            default). A cluster (plait.engine.cluster.RedisCluster) is the last three.
        wall_clock: unix seconds now (`time.time`), injected so tests run under MockClock: it
            turns a credential's expiry (`Hooks.expires_at`, spec §5.9) into a Trio deadline.
    """

    def __init__(
        self,
        store: Store | None = None,
        hooks: Hooks | None = None,
        config: EngineConfig | None = None,
        session_ids: Callable[[], str] | None = None,
        recorder: TraceRecorder | None = None,
        epochs: Callable[[], str] | None = None,
        *,
        metrics: Metrics = NO_METRICS,
        fanout: Fanout = LOCAL_FANOUT,
        sequence: SequenceAuthority = LOCAL_SEQUENCE,
        lease: CompactionLease = LOCAL_LEASE,
        replication: Replication = LOCAL_REPLICATION,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store: Store = store if store is not None else MemoryStore()
        if hooks is None:  # anonymous users of each process of a cluster are its own (Hooks)
            hooks = Hooks(anonymous_prefix=f"anon-{replication.process}-" if replication.process else "anon-")
        self.hooks = hooks
        self.config = config if config is not None else EngineConfig()
        self._new_session_id = session_ids or random_session_ids()
        if metrics is not NO_METRICS:
            metrics = ContainedMetrics(metrics)  # application code: what it raises stays in it
        self._new_epoch = epochs or new_epoch
        self._rooms = RoomRegistry(
            self.store if recorder is None else RecordingStore(self.store, recorder),
            self.hooks,
            self.config,
            nursery=lambda: self.nursery,
            accepting=lambda: self._accepting,
            started=lambda: self._reclaimer.started(self._load()),
            ended=lambda: self._reclaimer.ended(),
            new_epoch=self._new_epoch,
            fanout=fanout if fanout is LOCAL_FANOUT else ContainedFanout(fanout),  # application code
            sequence=sequence,
            lease=lease,
            metrics=metrics,
            replication=replication,
        )
        self._metrics = metrics
        self._replication = replication
        replication.on_operation(self._peer_operation)
        self._sessions: dict[str, Peer] = {}
        # Every pair a server can have, at 0 too: a dashboard shows 0, not "no data".
        self._connections = {("websocket", "native"): 0, ("websocket", "yjs"): 0, ("http", "native"): 0}
        """Sessions open by (transport, protocol), counted as they start and end (gauges)."""
        self._flusher = Flusher(lambda: self.nursery, metrics)
        self._sweeps = SweepSchedule(self.config.heartbeat / SWEEPS_PER_INTERVAL, self._sessions)
        self._services = SessionServices(self.config, self.hooks, self._rooms.hold, self._flusher.flush_soon, recorder, metrics, wall_clock)
        self._services.sweep_soon = self._sweeps.soon
        if metrics is not NO_METRICS:
            self._services.probe_fanout = self._flusher.probe
        self._per_ip = ConnectionCounts(self.config.max_connections_per_ip)
        """WebSockets and HTTP sessions open per peer address (spec §2, §14.5)."""
        self._http = HttpSessions(self.config, self._start_http_session, lambda: self._accepting, self._per_ip)
        self.admission = Admission(self._http.origins, self._per_ip)
        """Who may open a WebSocket (spec §2: origin, connections per address), on any server."""
        self.router = Router()
        """Plain HTTP requests on the engine's port, by path (engine/http/_router.py)."""
        self.router.add(HTTP_PREFIX, self._http.handle)
        self.health = Health(lambda: self._accepting, getattr(self.store, "ping", None), lambda: self.nursery, metrics,
                             linked=lambda: replication.available)
        """`/healthz` and `/readyz` (engine/http/_health.py); `health.timeout`: the store's ping's."""
        self.router.add("/healthz", self.health.healthz)
        self.router.add("/readyz", self.health.readyz)
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._accepting = False
        self._reclaimer = Reclaimer(self.config.reclaim_interval, self.config.reclaim_after, trim=glibc_malloc_trim())

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        # A store that cannot be used (locked by another server, unwritable) fails here, at
        # start, rather than at the first join (StorageError escapes).
        open_store = getattr(self.store, "open", None)
        if open_store is not None:
            await open_store()
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._accepting = True
        self._nursery.start_soon(self._keep_alive)
        if self.config.reclaim_interval > 0:
            self._nursery.start_soon(self._reclaimer.run, self._load)
        return self

    async def _keep_alive(self) -> None:
        """The heartbeat sweep, eight times per interval, instead of a timer per connection:
        each looks at the connections that have something due (Peer.keep_alive, SweepSchedule)."""
        while True:
            await trio.sleep(self._sweeps.interval)
            self._sweeps.sweep(trio.current_time())

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        shutdown_error: BaseException | None = None
        try:
            with trio.CancelScope(shield=exc is not None):
                await self.shutdown()
        except BaseException as error:  # re-raised below, once the nursery is closed
            shutdown_error = error
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        try:
            suppressed = bool(await self._nursery_cm.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if shutdown_error is not None:
            raise shutdown_error
        return suppressed

    async def shutdown(self) -> None:
        """Stop accepting, close every session (GOING_AWAY), flush and unload every room.
        Gives up after `shutdown_timeout` (a store that hangs), logging what it left."""
        self._accepting = False
        for session in list(self._sessions.values()):
            session.close(CloseCode.GOING_AWAY, "server shutting down")
        rooms: list[Room] = []
        with trio.move_on_after(self.config.shutdown_timeout) as waited:
            for session in list(self._sessions.values()):
                await session.wait_done()  # each closes its transport within close_timeout
            rooms = self._rooms.all()
            for room in rooms:
                room.request_unload()
            for room in rooms:
                await room.wait_closed()
        if waited.cancelled_caught:
            stuck = self._rooms.names()
            logger.error("shutdown gave up after %g s; rooms not stored: %s", self.config.shutdown_timeout, stuck)

    # -- application hooks (contained: see Hooks) ---------------------------------------------

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        """The identity `Hooks.authenticate` gives a token (SessionServices.authenticate)."""
        return await self._services.authenticate(token, client)

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        """`Hooks.authorize`'s answer (SessionServices.authorize)."""
        return await self._services.authorize(identity, room)

    @property
    def recorder(self) -> TraceRecorder | None:
        """Records every connection's traffic as a trace; set or cleared at any time (a room
        loaded while recording keeps recording its store's use)."""
        return self._services.recorder

    @recorder.setter
    def recorder(self, recorder: TraceRecorder | None) -> None:
        self._services.recorder = recorder
        self._rooms.store = self.store if recorder is None else RecordingStore(self.store, recorder)

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("use the engine inside `async with Engine(...)`")
        return self._nursery

    # -- connections ------------------------------------------------------------------------

    async def serve_websocket(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the protocol over WebSocket until cancelled. With `nursery.start`, returns the
        bound port once listening (pass port 0 for any free port)."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()[1]
        logger.info("listening on ws://%s:%d", host, bound)
        task_status.started(bound)
        # A partial, not a wrapper coroutine: every idle connection holds its handler's frames.
        handler = functools.partial(
            serve_connection,
            handler=self.serve_transport,
            accepting=lambda: self._accepting,
            handshake_timeout=self.config.handshake_timeout,
            max_message_bytes=self.max_message_bytes,
            control_frames_per_second=self.config.frames_per_second,
            pace=RequestPace.of(self.config),
            router=self.router,
            admission=self.admission,
            metrics=self._metrics,
        )
        await trio.serve_listeners(handler, listeners, handler_nursery=self.nursery)

    @property
    def accepting(self) -> bool:
        """Whether the engine takes new connections (False before it starts and once it shuts down)."""
        return self._accepting

    def max_message_bytes(self, path: str) -> int:
        """The largest WebSocket message taken on `path` (bytes). Native clients split what
        they send; y-websocket clients send a whole document's state (their offline edits) as
        one message, so that endpoint takes documents up to max_document_bytes, plus room for
        the message's own header."""
        if path.startswith(YJS_PATH):
            return max(self.config.max_message_bytes, self.config.max_document_bytes + 64 * 1024)
        return self.config.max_message_bytes

    async def serve_transport(
        self, transport: Transport, *, detach_grace: float = 0.0, resume_key: str = "", session_id: str | None = None
    ) -> None:
        """Run one connection to its end, whatever transport carries it. The path picks the
        protocol: `/yjs/<room>?token=...` is y-websocket (spec §13), anything else native;
        under `/v1/`, a native session carried by HTTP requests (spec §14: the SSE wire, its
        transport times the client's absence). `session_id`: the id to give it (else a new one).

        With `detach_grace` (seconds; native sessions), a session whose transport ends other
        than by a normal close, or goes silent for 2H (spec §5.7), lives on that long, its
        memberships and outbox kept, for `attach` to give it another transport (the HTTP
        transports, whose session spans many requests); then it ends as if its connection had
        closed then. `resume_key` (16 characters or more, required with a grace) is the secret
        `attach` must be given: session ids are seen by every member of a room.

        Raises:
            ValueError: a grace without a resume key.
        """
        check_detach(detach_grace, resume_key)
        session: Peer
        # Not urllib.parse.urlsplit: it caches its last 128 answers, which would keep the paths
        # of 128 recent connections (scattered in memory) alive long after they closed.
        path, _, query = transport.path.partition("#")[0].partition("?")
        if path.startswith(YJS_PATH):
            room = path[len(YJS_PATH) :]  # percent-decoded and checked by the session
            token = urllib.parse.parse_qs(query).get("token", [None])[0]
            session = YjsSession(self._services, transport, session_id or self._new_session_id(), room, token)
        else:
            http = path.startswith(HTTP_PREFIX)
            session = Session(self._services, transport, session_id or self._new_session_id(), detach_grace, resume_key, http=http)
        self._sessions[session.id] = session
        self._sweeps.soon(session)
        # A session that outlives its transport is given another of the same type (attach).
        kind = _connection_kind(type(transport), session.PROTOCOL)  # one shared tuple per kind
        self._connections[kind] = self._connections.get(kind, 0) + 1
        self._reclaimer.started(self._load())
        try:
            await session.run()  # raises only Cancelled (Peer.run)
        except* Exception as bug:  # the last line of defence: never the engine's nursery
            logger.critical("session %s escaped its containment", session.id, exc_info=bug)
        finally:
            self._connections[kind] -= 1
            del self._sessions[session.id]
            self._reclaimer.ended()

    def _start_http_session(self, transport: HttpTransport) -> str:
        """Serve a session the HTTP transports opened (engine/http/_sessions.py); its id."""
        session_id = self._new_session_id()
        self.nursery.start_soon(self._serve_http_session, transport, session_id)
        return session_id

    async def _serve_http_session(self, transport: HttpTransport, session_id: str) -> None:
        try:
            await self.serve_transport(transport, session_id=session_id)
        finally:
            self._http.ended(session_id)  # its place among its address's connections is free
            try:
                # Its last frames and how it ended stay for a stream or poll to collect, briefly.
                with trio.move_on_after(min(self.config.http_session_grace, 5)):
                    await transport.collected()
            finally:
                self._http.forget(session_id)

    def attach(self, session_id: str, transport: Transport, resume_key: str) -> trio.Event | None:
        """Give a detached session (see `serve_transport`'s `detach_grace`) a new transport.
        The session's own task serves it from now on; the returned event is set once the
        session lets go of it (detached again, or ended), when the caller may finish with it.
        None if there is no such session, it is not waiting for a transport, or `resume_key`
        is not its own."""
        session = self._sessions.get(session_id)
        return session.attach(transport, resume_key) if session is not None else None

    def connect_memory(
        self, path: str = "/", buffer: int = 16, *, detach_grace: float = 0.0, resume_key: str = ""
    ) -> MemoryTransport:
        """Open an in-memory connection served by this engine; returns the client's end.
        `detach_grace`, `resume_key`: as for `serve_transport`."""
        check_detach(detach_grace, resume_key)
        client, server = memory_transport_pair(path, buffer)
        self.nursery.start_soon(functools.partial(self.serve_transport, server, detach_grace=detach_grace, resume_key=resume_key))
        return client

    # -- rooms ------------------------------------------------------------------------------

    def hold_room(self, name: str) -> AbstractAsyncContextManager[Room]:
        """The live room `name`, loading it if needed; it cannot unload while held
        (RoomRegistry.hold)."""
        return self._rooms.hold(name)

    @asynccontextmanager
    async def room(self, name: str) -> AsyncIterator[RoomHandle]:
        """Server-side access to a room without a connection: read and edit its document,
        publish events, list presence. The room stays loaded while the block runs."""
        async with self.hold_room(name) as room:
            yield RoomHandle(room, self._record)

    # -- operations: what the server API does (spec/api.md) ----------------------------------

    def rooms(self) -> list[RoomInfo]:
        """Every room loaded now (loading, live or storing before it unloads), by name."""
        now = trio.current_time()
        return sorted((room_info(room, now) for room in self._rooms.all()), key=lambda info: info.name)

    def room_info(self, name: str) -> RoomInfo | None:
        """The room `name` if it is loading or live (never loads it)."""
        room = self._rooms.get(name)
        return room_info(room, trio.current_time()) if room is not None else None

    def presence(self, room: str) -> tuple[PresenceEntry, ...]:
        """Who is in `room` now (spec §5.4); empty if it is not loaded (it is never loaded)."""
        live = self._rooms.get(room)
        return live.presence() if live is not None else ()

    def sessions(self, *, room: str | None = None, user: str | None = None) -> list[SessionInfo]:
        """Sessions open now; only those in `room`, or of the identity id `user`, if given."""
        found = []
        for peer in self._sessions.values():
            if user is not None and peer.identity.get("id") != user:
                continue
            info = session_info(peer)
            if room is None or any(m.room == room for m in info.rooms):
                found.append(info)
        return found

    def disconnect(self, *, session: str | None = None, user: str | None = None, reason: str = "") -> int:
        """End a session, or every session of the identity id `user`, at once: their clients
        are closed with DISCONNECTED (4013, spec §9), which a client does not retry on its own.
        Returns how many sessions it ended.

        Raises:
            ValueError: neither or both of `session` and `user` given.
        """
        if (session is None) == (user is None):
            raise ValueError("give a session or a user")
        self._record("disconnect", {"session": session, "user": user, "reason": reason})
        self._replication.broadcast(["disconnect", session, user, reason])
        return self._disconnect_here(session, user, reason)

    def _disconnect_here(self, session: str | None, user: str | None, reason: str) -> int:
        peers = [self._sessions[session]] if session in self._sessions else [] if session is not None else [
            peer for peer in self._sessions.values() if peer.identity.get("id") == user
        ]
        for peer in peers:
            peer.close(CloseCode.DISCONNECTED, reason or "disconnected by the server")
        return len(peers)

    def set_access(self, user: str, room: str, access: Access | None) -> int:
        """Give the identity id `user` this access to `room` (None: no access), now and for
        every later join, over what `Hooks.authorize` says, until `clear_access`. Members
        already in the room are told at once (access_changed, or channel_closed FORBIDDEN,
        spec §5.2). Returns how many memberships changed.

        Raises:
            ValueError: more than MAX_ACCESS_OVERRIDES overrides would be held.
        """
        overrides = self._services.access_overrides
        if (user, room) not in overrides and len(overrides) >= MAX_ACCESS_OVERRIDES:
            raise ValueError(f"{MAX_ACCESS_OVERRIDES} access overrides are held already; clear some first")
        self._record("set_access", {"user": user, "room": room, "access": None if access is None else int(access)})
        self._replication.broadcast(["set_access", user, room, None if access is None else int(access)])
        return self._set_access_here(user, room, access)

    def _set_access_here(self, user: str, room: str, access: Access | None) -> int:
        overrides = self._services.access_overrides
        if (user, room) in overrides or len(overrides) < MAX_ACCESS_OVERRIDES:  # else full: told by another process
            overrides[user, room] = access
        live = self._rooms.get(room)
        return live.set_access(user, access) if live is not None else 0

    def clear_access(self, user: str, room: str) -> bool:
        """Let `Hooks.authorize` decide `user`'s access to `room` again from its next join
        (members in the room keep the access they have). Whether there was an override."""
        self._record("clear_access", {"user": user, "room": room})
        self._replication.broadcast(["clear_access", user, room])
        return self._services.access_overrides.pop((user, room), 0) != 0

    async def delete_room(self, name: str) -> None:
        """Delete a room: every member's channel is closed (ROOM_DELETED; a y-websocket client
        DISCONNECTED), what was acked is stored, then the room is deleted from the store, and
        the access set for it (`set_access`) is forgotten. A join meanwhile waits, then finds a
        new, empty room.

        Raises:
            StorageError: the store failed to delete it.
        """
        self._record("delete_room", {"room": name})
        self._replication.broadcast(["delete_room", name])  # the others' copies close first
        await self._rooms.delete(name)
        self._forget_access(name)

    def _forget_access(self, room: str) -> None:
        overrides = self._services.access_overrides
        for key in [key for key in overrides if key[1] == room]:  # the access set for what is gone
            del overrides[key]

    async def _peer_operation(self, operation: list[Any]) -> None:
        """What an operator did on another process of the cluster, done here too (without
        telling the others again; spec/api.md). A shape this version does not know is logged
        and ignored."""
        match operation:
            case ["disconnect", str() | None as session, str() | None as user, str(reason)] if (session is None) != (user is None):
                self._disconnect_here(session, user, reason)
            case ["set_access", str(user), str(room), int() | None as access] if access is None or access in set(Access):
                self._set_access_here(user, room, None if access is None else Access(access))
            case ["clear_access", str(user), str(room)]:
                self._services.access_overrides.pop((user, room), None)
            case ["delete_room", str(room)]:
                await self._rooms.discard(room)
                self._forget_access(room)
            case _:
                logging.getLogger("plait.engine").error("an operation from another process that this one does not know: %.200r", operation)

    def _record(self, op: str, args: dict[str, Any]) -> None:
        recorder = self._services.recorder
        if recorder is not None:
            recorder.operation(op, args)

    def _load(self) -> int:
        """What the reclaimer watches: rooms loaded or unloading, and sessions open."""
        return len(self._rooms) + len(self._sessions)

    def statistics(self) -> dict[str, int]:
        """Gauges, read when asked (a metrics exporter's scrape): rooms loaded, sessions
        open, bytes queued for clients across them, and how many times memory was given back
        (engine/_reclaim.py)."""
        return {
            "rooms": self._rooms.loaded,
            "sessions": len(self._sessions),
            "queued_bytes": sum(s.outbox.queued_bytes for s in self._sessions.values()),
            "memory_reclaims": self._reclaimer.reclaims,
            **self._services.traffic.snapshot(),
        }

    def gauges(self) -> Gauges:
        """What a metrics exporter shows at a scrape (engine/_metrics.py Gauges): sessions by
        transport and protocol, rooms by state, outbox bytes and laggards, and the traffic
        counters. Reads engine state: call it on the Trio thread (it takes about a
        microsecond per session and room)."""
        queued = lagging = 0
        for session in self._sessions.values():
            outbox = session.outbox
            queued += outbox.queued_bytes
            lagging += outbox.lagging
        return Gauges(
            dict(self._connections), self._rooms.states(), queued, lagging, self._reclaimer.reclaims, self._services.traffic.snapshot()
        )


@functools.cache
def _connection_kind(transport: type, protocol: str) -> tuple[str, str]:
    return _transport_name(transport), protocol


def _transport_name(kind: type) -> str:
    if issubclass(kind, HttpTransport):
        return "http"
    if issubclass(kind, MemoryTransport):
        return "memory"
    return "websocket"


__all__ = ["Engine", "RoomUnavailable"]
