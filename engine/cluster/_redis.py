"""One process's part in a cluster on Redis (architecture: Scale-out), through coredis (it runs
on anyio, so on Trio).

Keys and channels, per room (its name, UTF-8):
- `plait:{room}:log`, a stream: what each process committed to the shared store (document
  updates, events), one entry per commit, `m` = msgpack [process, [update, ...],
  [[seq, body], ...]]. Every process that holds the room reads it from the last id it saw, so
  a process that loses Redis for a moment catches up instead of missing entries; after any
  Redis failure it also resyncs its rooms from the store (the stream may have been lost with a
  Redis restart, or trimmed past its position: it keeps about `stream_length` entries, and
  is gone an hour after its last entry, or at once when the room is deleted).
- `plait:{room}:eph`, pub/sub: presence, cursor and typing changes, msgpack [process, kind,
  body]; kind `e` is a body of Ephemeral's (engine/room/_ephemeral.py), `w` asks the others for
  their full state (a process that just loaded the room, or listens again after a failure).
  Every process listens to every room's (one pattern subscription) and drops what is for
  rooms it does not hold.
- `plait:ops`, pub/sub: an operator's actions (spec/api.md: disconnects, access changes,
  deletions), msgpack [process, operation], done by every process.
- `plait:{room}:lease`: who compacts the room (SET NX PX, held `lease_seconds`).
- `plait:process:{id}`: this process's heartbeat (PX 3 heartbeats). A peer whose key is gone is
  dead: its members leave every room's presence here and the rooms resync (what it committed
  and did not publish is in the store). Bound: a dead process's members are gone from
  everyone's presence within 4 heartbeats (6 s by default), plus the presence grace.

Event sequence numbers and epochs come from the shared store (PostgreSQL's `next_seq` and
`epoch`): a Redis restart cannot hand out a number twice.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

import msgpack
import trio

from plait.storage import StoredEvent

from ..room import Replica

logger = logging.getLogger("plait.cluster")

HEARTBEAT = 1.5
"""Seconds between a process's heartbeats; its key lives 3 of them."""


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
EPH_PATTERN = b"plait:*:eph"


class RedisCluster:
    """This process's member of a cluster: the Replication, SequenceAuthority and
    CompactionLease seams for `Engine(replication=, sequence=, lease=)`.

    Use: `async with RedisCluster(url, store) as cluster: async with Engine(store=store,
    replication=cluster, sequence=cluster, lease=cluster): ...` (`plait serve --cluster URL`).

    Args:
        url: `redis://HOST:PORT[/DB]`.
        store: the shared store (PostgreSQLStore(dsn, shared=True)).
        heartbeat: seconds between heartbeats (HEARTBEAT).
        stream_length: about how many entries each room's stream keeps.
        lease_seconds: how long a compaction lease is held.

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
    ) -> None:
        self.url = url
        self.process = secrets.token_hex(6)
        """This process's id in the cluster (random per start)."""
        self._store = store
        self._heartbeat = heartbeat
        self._stream_length = stream_length
        self._lease_ms = int(lease_seconds * 1000)
        self._read_count = max(1, min(1000, stream_length // 10))
        """Entries read per room at once: a full read means this process is behind."""
        self._client: Any = None
        self._reader_client: Any = None
        self._nursery: trio.Nursery | None = None
        self._rooms: dict[str, Replica] = {}
        """Rooms loading or live here."""
        self._positions: dict[str, bytes] = {}
        """Room -> the last stream id applied (or seen before the load)."""
        self._following: set[str] = set()
        self._peers: dict[str, set[str]] = {}
        """Peer process -> the rooms it was seen in."""
        self._dropped: set[str] = set()
        """Peers given up for dead (their heartbeat lapsed)."""
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_ready = trio.Event()
        self._wake_key = b"plait:wake:" + self.process.encode()
        self._wake_id = b"0-0"
        self._operation_handler: Callable[[list[Any]], Awaitable[None]] | None = None
        self._healthy = True
        self._trust_heartbeats_at = 0.0
        """Before this (Trio's clock), a missing heartbeat key proves nothing: Redis has just
        come back (a restarted one has lost every key) and the others have not beaten yet."""

    # -- running ----------------------------------------------------------------------------

    async def __aenter__(self) -> RedisCluster:
        import coredis

        # No retries behind our back: a failure must reach _failed, so that the rooms resync
        # once Redis answers again (a restarted Redis has lost its streams). A stalled Redis
        # fails a call after 3 heartbeats (the stream reader blocks for one).
        def client() -> Any:
            return coredis.Redis.from_url(
                self.url, decode_responses=False, retry_policy=coredis.retry.NoRetryPolicy(),
                connect_timeout=self._heartbeat * 2, stream_timeout=self._heartbeat * 3,
            )

        self._client, self._reader_client = client(), client()
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(self._running())
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._stack.__aexit__(*exc)

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        async with self._client, self._reader_client:
            await self._beat()
            logger.info("cluster: process %s joined %s", self.process, _redact(self.url))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._read_streams)
                nursery.start_soon(self._send)
                await nursery.start(self._listen)  # subscribed before anything is said
                try:
                    yield
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(2):
                        try:  # leave at once rather than when the heartbeat lapses
                            await self._flush_outbox()
                            await self._client.delete([self._key()])
                        except Exception as exc:
                            logger.warning("cluster: could not say goodbye: %s", exc)
                    nursery.cancel_scope.cancel()

    def _key(self) -> bytes:
        return b"plait:process:" + self.process.encode()

    async def _beat(self) -> None:
        await self._client.set(self._key(), b"1", px=int(self._heartbeat * 3000))

    async def _heartbeats(self) -> None:
        last = trio.current_time()
        while True:
            await trio.sleep(self._heartbeat)
            try:
                await self._beat()
                now = trio.current_time()
                if now - last > 3 * self._heartbeat and self._healthy:
                    # This process stalled long enough for the others to take it for dead (and
                    # for its streams to move on): as after a Redis failure, all again.
                    self._failed("heartbeat", TimeoutError(f"this process stalled for {now - last:.1f} s"))
                last = now
                self._recovered()
                await self._check_peers()
            except Exception as exc:
                self._failed("heartbeat", exc)

    async def _check_peers(self) -> None:
        if trio.current_time() < self._trust_heartbeats_at:
            return
        for peer in list(self._peers):
            if not await self._client.exists([b"plait:process:" + peer.encode()]):
                rooms = self._peers.pop(peer, set())
                self._dropped.add(peer)
                logger.warning("cluster: process %s is gone; its members leave %d room(s) here", peer, len(rooms))
                for name in rooms:
                    room = self._rooms.get(name)
                    if room is not None:
                        _contained(room, "drop a process", room.drop_process, peer)

    def _seen(self, peer: str, room: str) -> None:
        if peer == self.process:
            return
        rooms = self._peers.setdefault(peer, set())
        if room not in rooms:
            rooms.add(room)
            if peer in self._dropped:  # given up for dead (a long stall?) and is not: hear it all again
                logger.warning("cluster: process %s is back", peer)
                self._queue_publish(room, b"w", b"")

    def _failed(self, what: str, exc: BaseException) -> None:
        if self._healthy:
            logger.error("cluster: Redis failed (%s): %s; rooms resync from the store when it is back", what, exc)
        self._healthy = False

    def _recovered(self) -> None:
        if not self._healthy:
            self._healthy = True
            self._trust_heartbeats_at = trio.current_time() + 3 * self._heartbeat
            logger.warning("cluster: Redis is back; resyncing %d room(s) from the store", len(self._rooms))
            for name, room in list(self._rooms.items()):
                room.want_resync()
                if name in self._following:  # what was said meanwhile may be lost: all again
                    self._queue_publish(name, b"w", b"")
                    _contained(room, "send its state", self._send_state, room)

    # -- Replication ------------------------------------------------------------------------

    async def attach(self, room: Replica) -> None:
        newest = await self._client.xrevrange(_log_key(room.name), "+", "-", count=1)
        self._positions[room.name] = newest[0].identifier if newest else b"0-0"
        self._rooms[room.name] = room

    def follow(self, room: Replica) -> None:
        if self._rooms.get(room.name) is not room:
            return
        self._following.add(room.name)
        self._queue_publish(room.name, b"w", b"")
        self._wake()

    def detach(self, room: Replica) -> None:
        if self._rooms.get(room.name) is not room:
            return
        del self._rooms[room.name]
        self._positions.pop(room.name, None)
        self._following.discard(room.name)
        for rooms in self._peers.values():
            rooms.discard(room.name)

    def committed(self, room: str, updates: Sequence[bytes], events: Sequence[StoredEvent]) -> None:
        body = msgpack.packb([self.process, list(updates), [[e.seq, e.body] for e in events]], use_bin_type=True)
        self._outbox.append((room, body))
        self._outbox_ready.set()

    def ephemeral(self, room: str, body: bytes) -> None:
        self._queue_publish(room, b"e", body)

    def broadcast(self, operation: list[Any]) -> None:
        if operation[:1] == ["delete_room"] and isinstance(operation[1], str):
            self._outbox.append((operation[1], b"\x02"))  # its stream goes too: what it held is gone
        message = msgpack.packb([self.process, operation], use_bin_type=True)
        self._outbox.append((OPS_CHANNEL.decode(), b"\x01" + message))
        self._outbox_ready.set()

    def on_operation(self, handler: Callable[[list[Any]], Awaitable[None]]) -> None:
        self._operation_handler = handler

    async def _run_operation(self, operation: list[Any]) -> None:
        try:
            if self._operation_handler is not None:
                await self._operation_handler(operation)
        except Exception as exc:
            logger.critical("cluster: an operation from another process failed here: %.200r", operation, exc_info=exc)

    def _queue_publish(self, room: str, kind: bytes, body: bytes) -> None:
        message = msgpack.packb([self.process, kind, body], use_bin_type=True)
        self._outbox.append((room, b"\x00" + message))  # \x00: a pub/sub message, not a stream entry
        self._outbox_ready.set()

    # -- SequenceAuthority, CompactionLease -------------------------------------------------

    async def next_seq(self, room: str, head: int) -> int:
        return await self._store.next_seq(room, head)

    async def epoch(self, room: str, proposed: str) -> str:
        return await self._store.epoch(room, proposed)

    async def may_compact(self, room: str) -> bool:
        import coredis

        key = b"plait:" + room.encode() + b":lease"
        try:
            if await self._client.set(key, self.process.encode(), condition=coredis.PureToken.NX, px=self._lease_ms):
                return True
            holder = await self._client.get(key)
            if holder == self.process.encode():
                await self._client.pexpire(key, self._lease_ms)
                return True
        except Exception as exc:  # not now: the updates stay appended, and nothing is lost
            self._failed("compaction lease", exc)
        return False

    # -- the tasks --------------------------------------------------------------------------

    def _wake(self) -> None:
        """Make the stream reader start over with the rooms followed now."""
        self._outbox.append(("", b""))
        self._outbox_ready.set()

    async def _send(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            try:
                await self._flush_outbox()
                self._recovered()
            except Exception as exc:
                # What was committed is in the store: the others resync when Redis is back.
                self._failed("publish", exc)
                await trio.sleep(self._heartbeat / 3)

    async def _flush_outbox(self) -> None:
        import coredis

        while self._outbox:
            batch, self._outbox = self._outbox, []
            async with self._client.pipeline(transaction=False) as pipe:
                for room, body in batch:
                    if not room:
                        pipe.xadd(self._wake_key, {b"w": b""}, trim_strategy=coredis.PureToken.MAXLEN, threshold=8)
                    elif body[:1] == b"\x00":
                        pipe.publish(_eph_channel(room), body[1:])
                    elif body[:1] == b"\x01":
                        pipe.publish(OPS_CHANNEL, body[1:])
                    elif body == b"\x02":
                        pipe.delete([_log_key(room)])
                    else:
                        pipe.xadd(
                            _log_key(room), {b"m": body},
                            trim_strategy=coredis.PureToken.MAXLEN, threshold=self._stream_length,
                            trim_operator=coredis.PureToken.APPROXIMATELY,
                        )
                        pipe.pexpire(_log_key(room), STREAM_TTL_MS)

    async def _read_streams(self) -> None:
        while True:
            streams = {self._wake_key: self._wake_id}
            streams.update((_log_key(name), self._positions[name]) for name in self._following)
            try:
                result = await self._reader_client.xread(streams, count=self._read_count, block=int(self._heartbeat * 1000))
            except Exception as exc:
                self._failed("read", exc)
                await trio.sleep(self._heartbeat / 3)
                continue
            self._recovered()
            for key, entries in (result or {}).items():
                if key == self._wake_key:
                    self._wake_id = entries[-1].identifier
                    continue
                name = key[len(b"plait:"):-len(b":log")].decode()
                room = self._rooms.get(name)
                if room is None or name not in self._following:
                    continue
                before = self._positions[name]
                for entry in entries:
                    self._positions[name] = entry.identifier
                    self._apply_entry(room, entry.field_values.get(b"m", b""))
                if len(entries) == self._read_count:  # behind: was the stream trimmed past us?
                    await self._check_trimmed(room, before)

    async def _check_trimmed(self, room: Replica, before: bytes) -> None:
        """Resync `room` if its stream was trimmed past `before`, the last entry this process
        had read: the entries after it that were dropped are in the store, not here."""
        try:
            info = await self._reader_client.xinfo_stream(_log_key(room.name))
        except Exception as exc:
            self._failed("read", exc)
            return
        first = info.get("first-entry")
        if first is not None and info.get("entries-added", 0) > info.get("length", 0) and _id(before) < _id(first.identifier):
            logger.warning("cluster: room %r: its stream was trimmed past what this process had read; resyncing", room.name)
            room.want_resync()

    def _apply_entry(self, room: Replica, body: bytes) -> None:
        try:
            process, updates, events = msgpack.unpackb(body, raw=False)
            if process == self.process:
                return
            stored = [StoredEvent(int(seq), bytes(data)) for seq, data in events]
            updates = [bytes(u) for u in updates]
        except Exception as exc:
            logger.error("cluster: room %r: a stream entry that does not decode (%s); resyncing", room.name, exc)
            room.want_resync()
            return
        self._seen(process, room.name)
        _contained(room, "apply a commit", room.receive_committed, updates, stored)

    def _send_state(self, room: Replica) -> None:
        self._queue_publish(room.name, b"e", room.ephemeral_state())

    async def _listen(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Every room's ephemeral channel by one pattern (a subscription per room made a join
        storm wait on Redis's acknowledgements: rooms failed to load), and the operations."""
        first = True
        while True:
            try:
                async with self._reader_client.pubsub() as pubsub:
                    await pubsub.subscribe(OPS_CHANNEL)
                    await pubsub.psubscribe(EPH_PATTERN)
                    if first:
                        task_status.started()
                        first = False
                    else:  # what was said while this process did not listen is lost: all again
                        for name, room in list(self._rooms.items()):
                            if name in self._following:
                                self._queue_publish(name, b"w", b"")
                                _contained(room, "send its state", self._send_state, room)
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self._heartbeat)
                        if message is not None and message.get("type") in ("message", "pmessage"):
                            self._on_message(message)
            except Exception as exc:
                self._failed("pub/sub", exc)
                await trio.sleep(self._heartbeat / 3)

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
        self._seen(process, name)
        if kind == b"w":
            _contained(room, "send its state", self._send_state, room)
        elif kind == b"e":
            _contained(room, "apply presence", room.receive_ephemeral, process, body)


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
