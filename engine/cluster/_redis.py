"""One process's part in a cluster on Redis (architecture: Scale-out), through coredis (it runs
on anyio, so on Trio).

Keys and channels, per room (its name, UTF-8):
- `plait:{room}:log`, a stream: what each process committed to the shared store (document
  updates, events), one entry per commit, `m` = msgpack [process, [update, ...],
  [[seq, body], ...], first, last] (first and last: the numbers of its updates as relayed, or
  nil). One script (COMMIT_SCRIPT) adds the entry and publishes it, with its id
  and the id of the entry before it, on the channel of the same name: every other process that
  holds the room listens, so an entry costs its readers no command of their own; the process
  that committed learns the same two ids from the script's answer. A process keeps, per room
  it holds, the id of the last entry it saw; an entry whose previous id is not that one means
  it missed some (a subscription that dropped, a room that was loading, a process it had not
  yet heard of), and it reads them from the stream (XRANGE from that id). The stream keeps
  about `stream_length` entries: if the entry it last saw was trimmed (or the stream was lost
  with a Redis restart, or expired an hour after its last entry, or went with the room's
  deletion), it resyncs the room from the store. After any Redis failure it resyncs every room
  from the store too, once its stream is read.
  (Centrifugo's Redis broker publishes with offsets and recovers from a history stream alike.)
- Commits and messages are written on one connection as they are made (no task between a
  room and the socket), and a task reads Redis's answers in order.
- `plait:{room}:eph`, pub/sub: presence, cursor and typing changes, msgpack [process, kind,
  body]; kind `e` is a body of Ephemeral's (engine/room/_ephemeral.py; its changes only while another
  process is known to hold the room, the whole state to one newly met there), `w` asks the others for
  their full state (a process that just loaded the room, or listens again after a failure),
  `u` relays document updates before their commit: body = msgpack [first, [update, ...]]
  (engine/room/_replica.py; at most RELAY_MAX_BYTES, larger ones come with the commit only;
  only while another process is known to hold the room), `l`: this process no longer holds it,
  `r`: this process committed what may not be on the stream (its link to Redis broke with the
  commit on its way, or Redis refused it), so the others, whose own link may be fine, resync
  the room from the store.
- A process subscribes to a room's `:eph` channel while it holds the room, and to its `:log`
  only while another process holds it too (it said so on `:eph`), all on one connection: a
  room's traffic reaches only the processes that hold it, so processes that share no rooms
  share no load, and a process alone in a room does not hear its own commits back. One task keeps the
  subscriptions, one command for every room that loaded, unloaded or met another process
  meanwhile; a room that starts hearing commits reads what came before from its stream. A
  room's load does not wait for it (a join storm would wait on Redis's confirmations): once
  subscribed, the room reads what was committed since it started loading from the stream, and
  asks the others for their state (`w`).
- `plait:ops`, pub/sub: an operator's actions (spec/api.md: disconnects, access changes,
  deletions), msgpack [process, operation], done by every process.
- `plait:{room}:lease`: who compacts the room (SET NX PX, held `lease_seconds`).
- `plait:process:{id}`: this process's heartbeat (PX 3 heartbeats), set by its event loop and by
  a thread of its own (_heartbeat.py: a busy loop is not a dead process). A peer whose key is
  gone is dead: its members leave every room's presence here and the rooms resync (what it
  committed and did not publish is in the store; RESYNCS_AT_ONCE rooms read it at a time). A
  process that finds its key lapsed (its loop stuck, the process paused) sends every room's
  state again. A call to Redis whose timeout passed while this process was not running is not a
  Redis failure (LATE): the answer to a write gets another timeout, another call is tried again
  in its turn.
  Bound: a dead process's members are gone from everyone's presence within 4 heartbeats (6 s
  by default), plus the presence grace.

Event sequence numbers and epochs come from the shared store (PostgreSQL's `next_seq` and
`epoch`): a Redis restart cannot hand out a number twice.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Literal, Protocol, TypeVar

import msgpack
import trio

from plait.storage import StoredEvent

from ..room import Replica
from ._heartbeat import Heartbeat

logger = logging.getLogger("plait.cluster")
T = TypeVar("T")

HEARTBEAT = 1.5
"""Seconds between a process's heartbeats; its key lives 3 of them."""
STUCK_AFTER = 30.0
"""Seconds a process's event loop may make no progress before its heartbeat stops."""


class WokeLate(Exception):
    """A call to Redis timed out while this process was not running (LATE): not Redis's fault."""


class SharedStore(Protocol):
    """What a cluster needs of its store beyond the Store interface (PostgreSQLStore,
    shared=True): one event numbering and one epoch per room for every process."""

    async def next_seq(self, room: str, head: int) -> int: ...

    async def epoch(self, room: str, proposed: str) -> str: ...


def _log_key(room: str) -> bytes:
    return b"plait:" + room.encode() + b":log"


def _eph_channel(room: str) -> bytes:
    return b"plait:" + room.encode() + b":eph"


STREAM_TTL_MS = 3_600_000
"""A room's stream goes an hour after its last entry (a process that stalls longer than its
heartbeats resyncs every room anyway)."""
OPS_CHANNEL = b"plait:ops"
SUBSCRIPTION_TIMEOUT = 30.0
"""Seconds Redis may take to confirm a SUBSCRIBE before the subscription is started again: long,
as a busy process reads the confirmations late (a dead connection fails at once anyway)."""
LATE = 0.5
"""Seconds past a call's deadline at which this process woke up to see it passed: it was not
running (paused, or its loop held up), and Redis may well have answered meanwhile. Such a
timeout is not Redis's failure: an answer to a write gets another timeout (_answer), another
call is given up without counting Redis as failed (WokeLate)."""
RESYNCS_AT_ONCE = 4
OUTBOX_MAX_BYTES = 64 * 1024 * 1024
"""Commits and messages waiting for Redis (while it is away) kept at most; past it they are
dropped, and the rooms whose commits were dropped are resynced by the others once it is back."""
"""Rooms reading the store at once to resync (Replication.resyncs)."""
RELAY_MAX_BYTES = 256 * 1024
"""Updates relayed before their commit at most per batch; a larger batch comes with its commit."""

COMMIT_SCRIPT = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local previous = '0-0'
if newest[1] then previous = newest[1][1] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[1], previous .. ' ' .. id .. ' ' .. ARGV[1])
return previous .. ' ' .. id
"""
"""Adds a commit to a room's stream and publishes it as `PREVIOUS-ID ID ENTRY` on the channel
named as the stream: atomic, so every reader sees one chain of ids. Answers `PREVIOUS-ID ID`:
the process that committed follows the chain by its answers, not by hearing its own entry.
EVAL, not EVALSHA: a restarted Redis has forgotten its scripts, and the text costs little
beside a round trip."""


class RedisCluster:
    """This process's member of a cluster: the Replication, SequenceAuthority and
    CompactionLease seams for `Engine(replication=, sequence=, lease=)`.

    Use: `async with RedisCluster(url, store) as cluster: async with Engine(store=store,
    replication=cluster, sequence=cluster, lease=cluster): ...` (`plait serve --cluster URL`).

    Args:
        url: `redis://HOST:PORT`: one Redis per cluster (its pub/sub is shared by all its
            databases, so a database number does not separate two clusters).
        store: the shared store (PostgreSQLStore(dsn, shared=True)).
        heartbeat: seconds between heartbeats (HEARTBEAT).
        stream_length: about how many entries each room's stream keeps.
        lease_seconds: how long a compaction lease is held.
        stuck_after: seconds this process's event loop may make no progress before its
            heartbeat stops (a thread beats while the loop is merely busy: _heartbeat.py).

    Raises (on entering): StorageUnavailable-like OSError/coredis errors if Redis cannot be
    reached at start.
    """

    shared_store = True

    @property
    def available(self) -> bool:
        """Whether Redis answered the last time it was asked (Replication.available)."""
        return self._healthy

    def __init__(
        self,
        url: str,
        store: SharedStore,
        *,
        heartbeat: float = HEARTBEAT,
        stream_length: int = 10_000,
        lease_seconds: float = 60.0,
        stuck_after: float = STUCK_AFTER,
    ) -> None:
        self.url = url
        self.process = secrets.token_hex(6)
        """This process's id in the cluster (random per start)."""
        self._store = store
        self._heartbeat = heartbeat
        self._timeout = heartbeat * 3
        """Seconds Redis may take to answer a call (a stalled Redis fails it)."""
        self._stream_length = stream_length
        self._lease_ms = int(lease_seconds * 1000)
        self._beats = Heartbeat(self._new_client, self._key(), heartbeat, stuck_after)
        self._read_count = max(2, min(1000, stream_length // 10))
        """Entries read per room at once when catching up."""
        self._client: Any = None
        self._reader_client: Any = None
        self._nursery: trio.Nursery | None = None
        self._rooms: dict[str, Replica] = {}
        """Rooms loading or live here."""
        self._positions: dict[str, bytes] = {}
        """Room -> the id of the last stream entry applied here (or the newest when it loaded)."""
        self._published: dict[str, bytes] = {}
        """Room -> the id of the newest entry seen published (applied or not)."""
        self._behind: set[str] = set()
        """Rooms that missed entries: read from the stream (their position on) by _catch_up."""
        self._behind_ready = trio.Event()
        self._resync_after: set[str] = set()
        """Rooms in _behind that resync from the store once their stream is read (Redis was down:
        commits published meanwhile are in the store only). Resyncing after the read, not
        before, is what makes one enough: a stream lost with a restart moves the position on."""
        self._following: set[str] = set()
        self._subscribed: set[str] = set()
        """Rooms whose `:eph` channel Redis confirmed subscribed, on the subscription live now."""
        self._hearing_commits: set[str] = set()
        """Rooms whose `:log` channel (the commits) Redis confirmed subscribed: those another
        process holds, on the subscription live now."""
        self._subscriptions_changed = trio.Event()
        self._pubsub: Any = None
        """The subscription live now (coredis's PubSub), or None."""
        self._peers: dict[str, set[str]] = {}
        """Peer process -> the rooms it was seen in."""
        self._dropped: set[str] = set()
        """Peers given up for dead (their heartbeat lapsed)."""
        self._heard_at: dict[str, float] = {}
        """Peer -> when it last said something (Trio's clock): it is alive, whatever its key says."""
        self._writer: Any = None
        """The connection commits and messages are written on as they are made (coredis's; held
        by _send), or None while there is none."""
        self._outbox: list[tuple[Literal["commit", "publish", "delete"], bytes, bytes]] = []
        """What waits for a writer, in order: (what, the stream or channel, the entry or message)."""
        self._outbox_ready = trio.Event()
        self._outbox_bytes = 0
        self._written: deque[tuple[Any, Any, tuple[bytes, ...]]] = deque()
        """(writer, batch, streams) written and not yet answered, in order (coredis's request
        batches: _confirm); streams: per command, the room's stream for a commit, else b""."""
        self._unsure: set[str] = set()
        """Rooms with a commit Redis may not have taken (lost on the way, refused, or dropped
        from a full outbox): the others may lack it and be none the wiser, as their own link
        is fine. Once Redis answers, they are told to resync these rooms (`r`)."""
        self._written_ready = trio.Event()
        self.resyncs = trio.CapacityLimiter(RESYNCS_AT_ONCE)
        """Replication.resyncs."""
        self._operation_handler: Callable[[list[Any]], Awaitable[None]] | None = None
        self._healthy = True
        self._refused = False
        """Redis refused a write (out of memory?): only a write taken again means it is back
        (reads and publishes pass meanwhile)."""
        self._trust_heartbeats_at = 0.0
        """Before this (Trio's clock), a missing heartbeat key proves nothing: Redis has just
        come back (a restarted one has lost every key) and the others have not beaten yet."""

    # -- running ----------------------------------------------------------------------------

    async def __aenter__(self) -> RedisCluster:
        self._client, self._reader_client = self._new_client(), self._new_client()
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(self._running())
        return self

    def _new_client(self) -> Any:
        import coredis

        # No retries behind our back: a failure must reach _failed, so that the rooms resync
        # once Redis answers again (a restarted Redis has lost its streams). A stalled Redis
        # fails a call after 3 heartbeats (the stream reader blocks for one).
        return coredis.Redis.from_url(
            self.url, decode_responses=False, retry_policy=coredis.retry.NoRetryPolicy(),
            connect_timeout=self._heartbeat * 2, stream_timeout=self._timeout,
        )

    async def _ask(self, call: Awaitable[T]) -> T:
        """A call to Redis, awaited. Raises WokeLate for a timeout this process woke up too late
        to see (LATE): the call's outcome is unknown, and Redis is not to blame (_failed)."""
        started = trio.current_time()
        try:
            return await call
        except TimeoutError as exc:
            if trio.current_time() - started > self._timeout + LATE:
                raise WokeLate("Redis's answer was due while this process was not running") from exc
            raise

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._stack.__aexit__(*exc)

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        async with self._client, self._reader_client:
            await self._beat()
            logger.info("cluster: process %s joined %s", self.process, _redact(self.url))
            self._beats.start()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._catch_up)
                nursery.start_soon(self._send)
                nursery.start_soon(self._confirm)
                await nursery.start(self._listen)  # subscribed before anything is said
                try:
                    yield
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        await trio.to_thread.run_sync(self._beats.stop)
                        try:  # leave at once rather than when the heartbeat lapses
                            if self._writer is not None and self._outbox:
                                batch, self._outbox = self._outbox, []
                                self._write(self._writer, batch)
                            if self._written:  # answered in order: the last answered, all were
                                await self._written[-1][1]
                            await self._client.delete([self._key()])
                        except Exception as exc:
                            logger.warning("cluster: could not say goodbye: %s", exc)
                    nursery.cancel_scope.cancel()

    def _key(self) -> bytes:
        return b"plait:process:" + self.process.encode()

    async def _beat(self) -> None:
        await self._ask(self._client.set(self._key(), b"1", px=int(self._heartbeat * 3000)))
        self._beats.beaten()

    async def _heartbeats(self) -> None:
        """The loop's own beats (a thread beats too: _heartbeat.py), which also tell whether
        Redis answers, whether the key lapsed, and which peers are gone."""
        last = trio.current_time()
        while True:
            await trio.sleep(self._heartbeat)
            self._beats.progress()
            try:
                await self._beat()
                now = trio.current_time()
                if self._beats.lapsed() and self._healthy:
                    self._stalled(now - last)
                last = now
                self._recovered(wrote=True)
                await self._check_peers()
            except Exception as exc:
                self._failed("heartbeat", exc)

    def _stalled(self, seconds: float) -> None:
        """This process did not beat for longer than its key lives (its loop stuck for
        `stuck_after`, or the whole process paused): the others may have given it up for dead
        and dropped its members.
        It tells them every room's state again, and checks every room's stream for what it
        missed. Nothing was lost that the stream cannot tell: a room resyncs from the store only
        if its stream moved on past it (a resync of every room, as after a Redis failure, would
        queue every process's writes behind the store's reads just when it is busiest)."""
        logger.warning(
            "cluster: this process's heartbeat lapsed (its loop stuck, the process paused, or Redis slow to take it: "
            "beats %.1f s apart); telling the others its state again",
            seconds,
        )
        for name, room in list(self._rooms.items()):
            if name in self._following and name in self._subscribed:
                self._rejoin(name, room, tell=True)

    async def _check_peers(self) -> None:
        if trio.current_time() < self._trust_heartbeats_at:
            return
        for peer in list(self._peers):
            if trio.current_time() - self._heard_at.get(peer, -math.inf) < 3 * self._heartbeat:
                continue  # it speaks (a process paused a while, before its key is renewed)
            if not await self._ask(self._client.exists([b"plait:process:" + peer.encode()])):
                rooms = self._peers.pop(peer, set())
                self._heard_at.pop(peer, None)
                self._dropped.add(peer)
                logger.warning("cluster: process %s is gone; its members leave %d room(s) here", peer, len(rooms))
                for name in rooms:
                    room = self._rooms.get(name)
                    if room is not None:
                        _contained(room, "drop a process", room.drop_process, peer)

    def _seen(self, peer: str, room: str) -> None:
        if peer == self.process:
            return
        self._heard_at[peer] = trio.current_time()
        rooms = self._peers.get(peer)
        if rooms is None:
            rooms = self._peers[peer] = set()
            if peer in self._dropped:
                logger.warning("cluster: process %s is back", peer)
        if room not in rooms:
            alone = not self._shared(room)
            rooms.add(room)
            if alone:
                self._subscriptions_changed.set()  # its commits are to be heard now
            held = self._rooms.get(room)
            if alone and held is not None and room in self._following:
                # Its presence changes went to nobody (ephemeral): the whole state, once.
                _contained(held, "send its state", self._send_state, held)
            if peer in self._dropped:  # given up for dead (a long stall?) and is not: hear it all again
                self._queue_publish(room, b"w", b"")

    def _failed(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, WokeLate):  # given up, and tried again in its turn
            logger.info("cluster: %s: %s; not a Redis failure", what, exc)
            return
        from coredis.exceptions import ResponseError

        if self._healthy:
            logger.error("cluster: Redis failed (%s): %s; rooms resync from the store when it is back", what, _brief(exc))
        self._healthy = False
        self._refused = self._refused or isinstance(exc, ResponseError)

    def _recovered(self, *, wrote: bool = False) -> None:
        """Redis answered (`wrote`: it took a write)."""
        if self._refused and not wrote:
            return
        self._refused = False
        if not self._healthy:
            self._healthy = True
            self._trust_heartbeats_at = trio.current_time() + 3 * self._heartbeat
            logger.warning("cluster: Redis is back; resyncing %d room(s) from the store", len(self._rooms))
            for name, room in list(self._rooms.items()):
                if name in self._following:  # what was said meanwhile may be lost: all again
                    self._resync_after.add(name)
                    self._rejoin(name, room, tell=True)
                else:
                    room.want_resync()
        for name in self._unsure:
            self._queue_publish(name, b"r", b"")
        self._unsure.clear()

    # -- Replication ------------------------------------------------------------------------

    async def attach(self, room: Replica) -> None:
        """Notes the room's newest stream entry and asks for its channels (_keep_subscriptions):
        what is committed after that entry is heard, or read from the stream once subscribed.
        The load does not wait for Redis's confirmation (a join storm would wait on it)."""
        newest = await self._client.xrevrange(_log_key(room.name), "+", "-", count=1)
        self._positions[room.name] = newest[0].identifier if newest else b"0-0"
        self._rooms[room.name] = room
        self._subscriptions_changed.set()

    def follow(self, room: Replica) -> None:
        if self._rooms.get(room.name) is not room:
            return
        self._following.add(room.name)
        if room.name in self._subscribed:  # else once it is (_keep_subscriptions)
            self._rejoin(room.name, room, tell=False)

    def _rejoin(self, name: str, room: Replica, *, tell: bool) -> None:
        """The live room, its channels subscribed, may have missed what the others said and
        committed (it was loading, not yet listening, or this process was cut off): it asks
        for their state (`w`) and reads its stream from its position; with `tell`, it sends
        its own state too (they may have missed it, or given this process up for dead)."""
        self._queue_publish(name, b"w", b"")
        if tell:
            _contained(room, "send its state", self._send_state, room)
        self._fell_behind(name)

    def detach(self, room: Replica) -> None:
        if self._rooms.get(room.name) is not room:
            return
        del self._rooms[room.name]
        if room.name in self._following:
            self._queue_publish(room.name, b"l", b"")  # the others stop relaying to this process
        self._positions.pop(room.name, None)
        self._following.discard(room.name)
        self._behind.discard(room.name)
        self._resync_after.discard(room.name)
        self._published.pop(room.name, None)
        for rooms in self._peers.values():
            rooms.discard(room.name)
        self._subscriptions_changed.set()

    def _shared(self, room: str) -> bool:
        """Whether another process holds the room (it said so: `w` when it loaded the room,
        and anything since)."""
        return any(room in rooms for rooms in self._peers.values())

    def relay(self, room: str, first: int, updates: Sequence[bytes]) -> None:
        # Only to a room another process holds; a copy that loads it later reads the commits.
        if self._shared(room) and sum(map(len, updates)) <= RELAY_MAX_BYTES:
            self._queue_publish(room, b"u", msgpack.packb([first, list(updates)], use_bin_type=True))

    def committed(
        self, room: str, updates: Sequence[bytes], events: Sequence[StoredEvent], numbers: tuple[int, int] | None = None
    ) -> None:
        first, last = numbers or (None, None)
        body = msgpack.packb([self.process, list(updates), [[e.seq, e.body] for e in events], first, last], use_bin_type=True)
        self._put("commit", _log_key(room), body)

    def ephemeral(self, room: str, body: bytes) -> None:
        # Only to a room another process holds: one that loads it later asks for the whole
        # state (`w`), and one met there is sent it (_seen).
        if self._shared(room):
            self._queue_publish(room, b"e", body)

    def broadcast(self, operation: list[Any]) -> None:
        if operation[:1] == ["delete_room"] and isinstance(operation[1], str):
            self._put("delete", _log_key(operation[1]), b"")  # its stream goes too: what it held is gone
        self._put("publish", OPS_CHANNEL, msgpack.packb([self.process, operation], use_bin_type=True))

    def on_operation(self, handler: Callable[[list[Any]], Awaitable[None]]) -> None:
        self._operation_handler = handler

    async def _run_operation(self, operation: list[Any]) -> None:
        try:
            if self._operation_handler is not None:
                await self._operation_handler(operation)
        except Exception as exc:
            logger.critical("cluster: an operation from another process failed here: %.200r", operation, exc_info=exc)

    def _queue_publish(self, room: str, kind: bytes, body: bytes) -> None:
        self._put("publish", _eph_channel(room), msgpack.packb([self.process, kind, body], use_bin_type=True))

    def _put(self, what: Literal["commit", "publish", "delete"], key: bytes, body: bytes) -> None:
        """Write a commit or message to Redis now, on the writer, if it is idle (no task between
        a room's relay and the socket); else queue it for _send, which writes what queued
        meanwhile in one batch (coredis's writer takes a turn of the loop per request queued to
        it: one per busy moment, not one per message). Never waits."""
        if self._writer is not None and not self._outbox and not self._written:
            try:
                self._write(self._writer, [(what, key, body)])
                return
            except Exception as exc:  # the writer's connection broke (coredis says so at once): _send replaces it
                self._failed("publish", exc)
                self._writer = None
        if self._outbox_bytes + len(body) > OUTBOX_MAX_BYTES:
            # Redis has been away a long while: what waits is dropped rather than memory grown.
            # The rooms' commits are in the store: the others resync them (`r`) when it is back.
            logger.warning("cluster: %d message(s) waiting for Redis dropped (over %d MiB)", len(self._outbox), OUTBOX_MAX_BYTES >> 20)
            self._unsure.update(_room_of(key) for what, key, _ in self._outbox if what == "commit")
            self._outbox, self._outbox_bytes = [], 0
        self._outbox.append((what, key, body))
        self._outbox_bytes += len(body)
        self._outbox_ready.set()

    def _write(self, writer: Any, batch: list[tuple[Literal["commit", "publish", "delete"], bytes, bytes]]) -> None:
        commands = []
        for what, key, body in batch:
            if what == "publish":
                commands.append(_Command(b"PUBLISH", (key, body)))
            elif what == "delete":
                commands.append(_Command(b"DEL", (key,)))
            else:
                commands.append(_Command(b"EVAL", (COMMIT_SCRIPT, 1, key, body, self._stream_length, STREAM_TTL_MS)))
        request = writer.create_request_batch(commands)
        request.response_timeout = None  # _answer's instead: it knows a pause from a stalled Redis
        request.disconnect_on_cancellation = False  # idem: it decides
        self._written.append((writer, request, tuple(key if what == "commit" else b"" for what, key, _ in batch)))
        self._written_ready.set()

    # -- SequenceAuthority, CompactionLease -------------------------------------------------

    async def next_seq(self, room: str, head: int) -> int:
        return await self._store.next_seq(room, head)

    async def epoch(self, room: str, proposed: str) -> str:
        return await self._store.epoch(room, proposed)

    async def may_compact(self, room: str) -> bool:
        import coredis

        key = b"plait:" + room.encode() + b":lease"
        try:
            if await self._ask(self._client.set(key, self.process.encode(), condition=coredis.PureToken.NX, px=self._lease_ms)):
                return True
            holder = await self._ask(self._client.get(key))
            if holder == self.process.encode():
                await self._ask(self._client.pexpire(key, self._lease_ms))
                return True
        except Exception as exc:  # not now: the updates stay appended, and nothing is lost
            self._failed("compaction lease", exc)
        return False

    # -- the tasks --------------------------------------------------------------------------

    async def _send(self) -> None:
        """Holds the writer (a connection of its own: what is written on it keeps its order),
        writes what waited for one, and takes a new one after a failure."""
        while True:
            try:
                async with self._client.connection_pool.acquire() as writer:
                    self._writer = writer
                    while self._writer is writer:  # until it breaks (_put, _confirm)
                        if self._outbox:
                            batch, self._outbox, self._outbox_bytes = self._outbox, [], 0
                            try:
                                self._write(writer, batch)
                            except Exception:  # the writer broke: the batch waits for the next one
                                self._outbox = batch + self._outbox
                                self._outbox_bytes += sum(len(body) for _, _, body in batch)
                                raise
                        await self._outbox_ready.wait()
                        self._outbox_ready = trio.Event()
            except Exception as exc:
                # What was committed is in the store: the others resync when Redis is back.
                self._failed("publish", exc)
            finally:
                self._writer = None
            await trio.sleep(self._heartbeat / 3)

    async def _confirm(self) -> None:
        """Reads Redis's answers to what was written, in order: an error (Redis gone or stalled,
        a command refused) is a failure like any other (_failed: the rooms resync when it is
        back); a writer lost or stalled is replaced."""
        from coredis.exceptions import ResponseError

        while True:
            while not self._written:
                await self._written_ready.wait()
                self._written_ready = trio.Event()
            writer, batch, streams = self._written[0]
            try:
                try:
                    results = await self._answer(batch)
                except TimeoutError as exc:
                    results = [exc] * len(streams)
                lost: BaseException | None = None
                for stream, result in zip(streams, results, strict=True):
                    if not isinstance(result, BaseException):
                        if stream:
                            self._committed_here(_room_of(stream), result)
                        continue
                    self._failed("publish", result)
                    if stream:  # taken or not: nobody knows (or refused)
                        self._unsure.add(_room_of(stream))
                    if not isinstance(result, ResponseError):  # not refused (out of memory?): lost or stalled
                        lost = result
                if lost is not None:
                    # Its other requests fail at once with it (not each after its own
                    # timeout), and a new connection is taken.
                    writer.invalidate()
                    self._writer = None
                    self._outbox_ready.set()
                elif not any(isinstance(result, BaseException) for result in results):
                    self._recovered(wrote=any(streams))
            finally:
                self._written.popleft()

    async def _answer(self, batch: Any) -> list[Any]:
        """Redis's answers to a batch of writes (each a result or the error it says).
        TimeoutError if they have not come within the timeout; a timeout this process woke up
        too late to see gets another (LATE): the answer is likely in the socket, and giving up
        on it would resync every room."""
        deadline = trio.current_time() + self._timeout
        while True:
            with trio.move_on_at(deadline):
                return list(await batch)
            if trio.current_time() - deadline <= LATE:
                raise TimeoutError(f"Redis did not answer a write within {self._timeout:g} s")
            deadline = trio.current_time() + self._timeout

    def _on_commit(self, name: str, data: bytes) -> None:
        """A stream entry as published: `PREVIOUS-ID ID ENTRY`. Applied if it follows the last
        one seen here; if not, the room is behind: read from the stream."""
        room = self._rooms.get(name)
        if room is None or name not in self._following:
            return  # not held here, or loading (follow() reads what came meanwhile)
        try:
            previous, identifier, body = data.split(b" ", 2)
            position = _id(identifier)
        except ValueError:
            logger.error("cluster: room %r: a published commit that does not parse; reading the stream", name)
            self._fell_behind(name)
            return
        if position > _id(self._published.get(name, b"0-0")):
            self._published[name] = identifier
        if self._follows(name, previous, identifier):
            self._apply_entry(room, body)

    def _committed_here(self, name: str, answer: Any) -> None:
        """Redis's answer to this process's own commit (COMMIT_SCRIPT: `PREVIOUS-ID ID`): the
        room's position moves on to it, as a commit heard would move it (this process listens
        to a room's commits only while another process holds it; then it hears its own too). An
        entry before it that was not seen here (another process committed, unheard) is read
        from the stream."""
        if self._rooms.get(name) is None or name not in self._following:
            return  # unloaded, or loaded again meanwhile (follow() reads the stream)
        try:
            previous, identifier = bytes(answer).split(b" ")
            _id(identifier)
        except (TypeError, ValueError):
            logger.error("cluster: room %r: Redis's answer to a commit does not parse; reading the stream", name)
            self._fell_behind(name)
            return
        self._follows(name, previous, identifier)

    def _follows(self, name: str, previous: bytes, identifier: bytes) -> bool:
        """Whether the entry `identifier`, which came after `previous` on the room's stream,
        follows the last one seen here: if so, the room's position moves on to it. An entry
        further on means the room missed some: it reads its stream (this entry among them)."""
        if previous == self._positions[name] and name not in self._behind:
            self._positions[name] = identifier
            return True
        if _id(identifier) > _id(self._positions[name]):
            self._fell_behind(name)
        return False

    def _fell_behind(self, name: str) -> None:
        self._behind.add(name)
        self._behind_ready.set()

    async def _catch_up(self) -> None:
        """Read what rooms missed from their streams, from the last entry each saw. If that entry
        is gone (trimmed, expired, deleted, or Redis restarted), what came between is in the store
        only: the room resyncs."""
        while True:
            await self._behind_ready.wait()
            self._behind_ready = trio.Event()
            for name in list(self._behind):
                room = self._rooms.get(name)
                if room is None or name not in self._following:
                    self._behind.discard(name)
                    self._resync_after.discard(name)
                    continue
                try:
                    await self._read_stream(room)
                except Exception as exc:
                    self._failed("read", exc)  # every room resyncs when Redis is back
                    await trio.sleep(self._heartbeat / 3)
                    self._behind_ready.set()
                    break
                self._recovered()

    async def _read_stream(self, room: Replica) -> None:
        name = room.name
        while self._rooms.get(name) is room:
            start = self._positions[name]
            entries = await self._ask(
                self._reader_client.xrange(_log_key(name), b"-" if start == b"0-0" else start, b"+", count=self._read_count)
            )
            if self._rooms.get(name) is not room:
                return
            if start == b"0-0":
                lost = len(entries) == self._read_count  # it was empty when the room loaded: so many since?
            else:
                lost = not entries or entries[0].identifier != start
            progressed = False
            for entry in entries:
                if _id(entry.identifier) > _id(self._positions[name]):
                    self._positions[name] = entry.identifier
                    progressed = True
                    self._apply_entry(room, entry.field_values.get(b"m", b""))
            newest = self._published.get(name, b"0-0")
            if progressed and (len(entries) == self._read_count or _id(self._positions[name]) < _id(newest)):
                # More to read (an entry seen published may come on the subscription, another
                # connection, before this read's answer shows it).
                if lost:
                    self._resync_after.add(name)
                continue
            resync = name in self._resync_after
            self._resync_after.discard(name)
            if lost or _id(self._positions[name]) < _id(newest):
                if not resync:  # after an outage, "Redis is back" said so for every room
                    logger.warning("cluster: room %r: what this process missed is no longer in its stream; resyncing", name)
                resync = True
                if not progressed:  # nothing after its position: go on from the stream's newest entry
                    last = await self._ask(self._reader_client.xrevrange(_log_key(name), b"+", b"-", count=1))
                    if self._rooms.get(name) is not room:
                        return
                    self._positions[name] = last[0].identifier if last else b"0-0"
                # An id only seen published is not trusted: the next entry's previous id counts.
                self._published[name] = self._positions[name]
            if resync:
                room.want_resync()
            self._behind.discard(name)
            return

    def _apply_entry(self, room: Replica, body: bytes) -> None:
        try:
            process, updates, events, *relayed = msgpack.unpackb(body, raw=False)
            first, last = [*relayed, None, None][:2]  # an entry of a Plait before relays has none
            if process == self.process:
                return
            stored = [StoredEvent(int(seq), bytes(data)) for seq, data in events]
            updates = [bytes(u) for u in updates]
            numbers = None if first is None else (int(first), int(last))
        except Exception as exc:
            logger.error("cluster: room %r: a stream entry that does not decode (%s); resyncing", room.name, exc)
            room.want_resync()
            return
        self._seen(process, room.name)
        _contained(room, "apply a commit", room.receive_committed, updates, stored, process, numbers)

    def _send_state(self, room: Replica) -> None:
        self._queue_publish(room.name, b"e", room.ephemeral_state())

    async def _listen(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The operations' channel and the channels of the rooms held here, on one connection
        (kept by _keep_subscriptions); after a failure, all again on a new one."""
        import coredis
        from coredis.patterns.pubsub import PubSub

        first = True
        while True:
            try:
                # Its own retries off: a dropped subscription must be known (what was said
                # meanwhile is lost: the rooms read their streams and resync).
                pubsub = PubSub[bytes](
                    self._reader_client.connection_pool, retry_policy=coredis.retry.NoRetryPolicy(),
                    subscription_timeout=SUBSCRIPTION_TIMEOUT,
                )
                async with pubsub:
                    self._pubsub = pubsub
                    # Handled as coredis reads them (no task between: a hop less under load).
                    await pubsub.subscribe(**{OPS_CHANNEL.decode(): self._heard})
                    again = not first
                    if first:
                        task_status.started()
                        first = False
                    await self._keep_subscriptions(pubsub, again=again)  # until it fails
            except BaseExceptionGroup as group:
                if group.subgroup(trio.Cancelled) is not None:
                    # Cancelled, and the subscription's teardown failed on its way out (its
                    # connection went with the cancellation): only the cancellation is news.
                    await trio.lowlevel.checkpoint()
                    raise
                self._failed("pub/sub", group)
                await trio.sleep(self._heartbeat / 3)
            except Exception as exc:
                self._failed("pub/sub", exc)
                await trio.sleep(self._heartbeat / 3)
            finally:
                self._subscribed, self._hearing_commits, self._pubsub = set(), set(), None

    async def _keep_subscriptions(self, pubsub: Any, *, again: bool) -> None:
        """Subscribes to the channels of the rooms held here and unsubscribes from the others,
        each time that changes (many rooms in one command): a room's `:eph` channel while it is
        held, its `:log` (the commits) only while another process holds it too, as this
        process follows its own commits by Redis's answers (_committed_here). A live room newly
        subscribed hears the others (_rejoin); one that newly hears commits reads what was
        committed before (its stream). `again`: this is a new connection after a failure, and
        what was said while none listened is lost: the rooms' state goes out again too."""
        while True:
            shared = self._rooms.keys() & set().union(*self._peers.values())
            gone = self._subscribed - self._rooms.keys()
            unshared = self._hearing_commits - shared
            if gone or unshared:
                self._subscribed -= gone  # a room loaded again meanwhile waits for the next round
                self._hearing_commits -= unshared
                # Not awaiting Redis's confirmation (pubsub.unsubscribe would): under load it
                # comes after everything heard before it, and coredis warned on each batch
                # that took over 0.1 s. A SUBSCRIBE of the same room later is answered after it.
                channels = [_eph_channel(name) for name in gone] + [_log_key(name) for name in unshared]
                pubsub.connection.send_command(b"UNSUBSCRIBE", *channels)
            new = self._rooms.keys() - self._subscribed
            newly_shared = shared - self._hearing_commits
            if new or newly_shared:
                channels = [_eph_channel(name) for name in new] + [_log_key(name) for name in newly_shared]
                await pubsub.subscribe(**{channel.decode(): self._heard for channel in channels})
                self._subscribed |= new
                self._hearing_commits |= newly_shared
                for name in new | newly_shared:
                    room = self._rooms.get(name)
                    if room is None or name not in self._following:
                        continue  # follow() reads the stream
                    if name in new:
                        self._rejoin(name, room, tell=again)
                    else:
                        self._fell_behind(name)  # committed before it listened: the stream has it
            again = False
            _discard_handled(pubsub)
            with trio.move_on_after(self._heartbeat):
                await self._subscriptions_changed.wait()
            self._subscriptions_changed = trio.Event()

    def _heard(self, message: Any) -> None:
        try:
            self._on_message(message)
        except Exception as exc:  # a bug here must not end the subscription
            logger.critical("cluster: a message from Redis could not be handled: %.200r", message, exc_info=exc)

    def _on_message(self, message: Any) -> None:
        channel = message["channel"]
        if channel == OPS_CHANNEL:
            try:
                process, operation = msgpack.unpackb(message["data"], raw=False)
            except Exception as exc:
                logger.error("cluster: an operation that does not decode (%s)", exc)
                return
            if process != self.process and isinstance(operation, list) and self._nursery is not None:
                self._nursery.start_soon(self._run_operation, operation)
            return
        name = channel[len(b"plait:"):-len(b":eph")].decode()
        if channel.endswith(b":log"):
            self._on_commit(name, message["data"])
            return
        room = self._rooms.get(name)
        if room is None or name not in self._following:
            return
        try:
            process, kind, body = msgpack.unpackb(message["data"], raw=False)
        except Exception as exc:
            logger.error("cluster: room %r: a pub/sub message that does not decode (%s)", name, exc)
            return
        if process == self.process:
            return
        if kind == b"l":
            self._peers.get(process, set()).discard(name)
            _contained(room, "drop a process's members", room.peer_left, process)
            return
        if kind == b"r":  # it committed what may not be on the stream: read the store
            if name not in self._resync_after:  # unless this room is about to anyway
                room.want_resync()
            return
        self._seen(process, name)
        if kind == b"w":
            _contained(room, "send its state", self._send_state, room)
        elif kind == b"e":
            _contained(room, "apply presence", room.receive_ephemeral, process, body)
        elif kind == b"u":
            try:
                first, updates = msgpack.unpackb(body, raw=False)
                first, updates = int(first), [bytes(u) for u in updates]
            except Exception as exc:  # its commit brings them
                logger.error("cluster: room %r: relayed updates that do not decode (%s)", name, exc)
                return
            _contained(room, "apply relayed updates", room.receive_relayed, process, first, updates)


def _brief(exc: BaseException) -> str:
    """What went wrong, for the log, without the command's arguments: coredis names a failed
    pipeline command with them, and they are room names and members' content."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc)
    _, found, rest = text.partition(" of pipeline caused error: ")
    return f"{type(exc).__name__}: {(rest if found else text)[:200]}"


class _Command:
    """A command as coredis's create_request_batch reads it (its CommandRequest's name,
    arguments and decoding)."""

    __slots__ = ("name", "serialized_arguments", "decode")

    def __init__(self, name: bytes, arguments: tuple[Any, ...]) -> None:
        self.name, self.serialized_arguments, self.decode = name, arguments, None


def _room_of(stream: bytes) -> str:
    return stream[len(b"plait:"):-len(b":log")].decode()


def _discard_handled(pubsub: Any) -> None:
    """coredis (6.9) also queues each message it handed to a handler, as None, on a stream
    read only by get_message(), which nothing here calls: without this, a process would keep
    8 bytes for every message it ever heard."""
    stream = getattr(pubsub, "_receive_stream", None)
    if stream is None:
        return
    try:
        while True:
            stream.receive_nowait()
    except Exception:  # anyio.WouldBlock: empty
        return


def _id(entry: bytes) -> tuple[int, int]:
    milliseconds, _, sequence = entry.partition(b"-")
    return int(milliseconds), int(sequence or 0)


def _contained(room: Replica, what: str, call: Callable[..., object], *args: Any) -> None:
    """A room's bug stays the room's: logged, and the room resyncs; the cluster goes on."""
    try:
        call(*args)
    except Exception as exc:
        logger.critical("cluster: room %r failed to %s", room.name, what, exc_info=exc)
        room.want_resync()


def _redact(url: str) -> str:
    from .._settings import hide_password

    return hide_password(url)
