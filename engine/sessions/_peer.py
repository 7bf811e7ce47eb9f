"""What every session has, whatever protocol it speaks: the transport that carries it now, a
bounded outbox, a reader task, rate limits, one error boundary and one way to close.

- A session usually lives as long as its transport. With a detach grace it outlives one that
  ends (`attach` gives it the next), its memberships and outbox kept.

- Writing: what is queued is written by the engine's flush, one task for every connection a
  fan-out reached, without waiting on the socket; only what a socket does not take at once
  (and large messages) goes to a writer task of the connection's own, which runs while there
  is something to send. Transports that cannot send without waiting (memory streams) always
  use the writer task.

Subclasses (`Session` for the native protocol, `YjsSession` for y-websocket) implement the
handshake, the reader's decoding and how room frames are put on their wire (`deliver*`).

- Closing: `close(code)` records why and stops the reader; the writer then sends what is
  queued (an error frame, say) within `close_timeout`, and the transport is closed with the
  code. A client too slow to take what is queued (TOO_SLOW) is cut off at once.
- Containment: a subclass's reader turns protocol errors into its own error reports; an
  unexpected exception is logged and closes *this* connection only. Cancellation propagates.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from plait.protocol import Access, Ack, ChannelFrame, CloseCode, ErrorCode, Frame, Join, RemoteProtocolError, TransportClosed, decode

from .._errors import RequestError
from .._hooks import Identity
from .._limits import UNCOUNTED
from .._logs import log_subject
from .._metrics import code_name
from ..room import Member, Refresh, Room
from ..transports import NowaitTransport, Transport
from ._outbox import Outbox
from ._ratelimit import TokenBucket
from ._services import SessionServices

logger = logging.getLogger("plait.session")


def _first(group: BaseExceptionGroup[TransportClosed]) -> TransportClosed:
    """The first TransportClosed in a (possibly nested) group."""
    found = group.exceptions[0]
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


SOLO_FRAME_BYTES = 64 * 1024
"""A frame this large goes as a message of its own, never joined into a batch: batching saves
small frames a message each, and would copy a large one. A room's large frames (a document's
sync, an event, its replay) are shared by everyone they are sent to; 20 clients that read
nothing each held a 16 MiB batch copied out of 1 MiB events (QA)."""


@dataclass(slots=True)
class _Detach:
    """A session's life beyond a transport (Peer.attach): only sessions with a grace have one,
    so the thousands of WebSocket sessions of an idle server pay a slot, not eight."""

    grace: float
    """Seconds the session outlives a transport that ended, waiting for `attach`."""
    key: str
    """What `attach` must be given: a secret of the client's, as session ids are not."""
    detached: bool = False
    code: int = CloseCode.NORMAL
    """How the last transport ended."""
    attached: trio.Event | None = None
    """While detached: set when a transport is given (or the session closes)."""
    next_transport: Transport | None = None
    released: trio.Event | None = None
    """Set when the session lets go of the transport `attach` gave it."""


@dataclass(slots=True)
class _Expiry:
    """When a session's credential expires (spec §5.9), on Trio's clock: only sessions whose
    credential expires have one, checked by the heartbeat sweep (no timer per session)."""

    deadline: float
    """Closed TOKEN_EXPIRED at the first sweep at or after this."""
    warn_at: float
    """token_expiring is sent at the first sweep at or after this (native sessions)."""
    warned: bool = False


REFRESH_MARGIN = 30.0
"""Seconds before a credential expires that a native client is asked for a fresh one (spec
§5.9): this, or a third of the credential's remaining lifetime when it was given, if less."""

_NEVER = float("-inf")
# Peer._large_send: what the writer is doing with a large message.
_NO_LARGE_SEND, _WAITING_FOR_SLOT, _SENDING_LARGE = 0, 1, 2


def check_detach(grace: float, resume_key: str) -> None:
    """Raise ValueError unless a session that outlives its transport (`grace` > 0) has a
    resume key of 16 characters or more."""
    if grace > 0 and len(resume_key) < 16:
        raise ValueError("a session that outlives its transport needs a resume key of 16 characters or more")


class Peer:
    """One client's session. Abstract: see Session and YjsSession."""

    # Slots: an idle server holds thousands of these (bench/idle.py).
    __slots__ = (
        "_close_code", "_close_reason", "_closed_by_peer", "_detach", "_done",
        "_catching_up", "_expiry", "_finished", "_read_free_at", "_event_bucket", "_members", "_nowait",
        "_nursery", "_drains", "_handshake_scope", "_lag_drains", "_lag_sent", "_lag_since", "_large_send", "_ping_nonce",
        "_reader_scope", "_tasks_scope", "_frame_bucket", "_update_bucket", "_user_slot", "_violations", "_writer_stopped",
        "_writing", "config", "id",
        "identity", "last_sent", "max_frames_per_message", "max_message_bytes", "outbox", "services", "sweep_slot", "transport",
        "__weakref__",
    )

    PROTOCOL = "native"
    """What it speaks, as metrics label it."""
    OWN_AWARENESS = False
    """Whether the client speaks its own Yjs awareness (y-websocket), or the room derives it
    from presence (spec §13)."""
    CONFIRMS_BY_ECHO = False
    """Whether the client's updates are confirmed by sending them back once durable
    (y-websocket, spec §13) rather than by acks (native, §4.1), which never echo (§5.3)."""

    def __init__(
        self, services: SessionServices, transport: Transport, session_id: str, detach_grace: float = 0.0, resume_key: str = ""
    ) -> None:
        check_detach(detach_grace, resume_key)
        self.services = services
        self.config = services.config
        self.transport = transport
        # Written without waiting by the engine's flush, unless it may outlive the transport:
        # the writer task is what puts back a batch a failing transport did not take.
        self._nowait = transport if isinstance(transport, NowaitTransport) and detach_grace == 0 else None
        self.id = session_id
        self.identity: Identity = {}
        self._user_slot = UNCOUNTED
        """Its place among its identity's sessions (max_connections_per_user), once admitted."""
        self.outbox = Outbox(self.config.outbox_max_bytes, self.config.outbox_lag_frames,
                             min(SOLO_FRAME_BYTES, self.config.large_message_bytes), self._wake_writer)
        self.max_frames_per_message = self.config.max_frames_per_message
        self.max_message_bytes = self.config.max_message_bytes
        self._members: dict[int, Member] = {}
        self.sweep_slot = -1
        """Where the heartbeat sweep has it filed (SweepSchedule)."""
        self._reader_scope = trio.CancelScope()
        self._tasks_scope: trio.CancelScope | None = None
        """The nursery's while it is open: TOO_SLOW cancels it, writers and all. (Not a cancel
        scope of the session's own around everything: an idle server holds thousands, and the
        handshake, reader and detach waits are each ended by close() anyway.)"""
        self._handshake_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._writing = False
        self._writer_stopped: trio.Event | None = None
        self._drains = 0
        """Times everything queued was written: the heartbeat sweep tells a connection that
        is behind from one that keeps up without a clock read per message (keep_alive)."""
        self._lag_drains = 0
        self._lag_since: float | None = None
        self._lag_sent = 0
        """The transport's `sent_bytes` at the sweep before, while a large message is sent."""
        self._large_send = _NO_LARGE_SEND
        """Whether the writer waits for a large-send slot or sends a large message (_check_lag)."""
        self.last_sent = trio.current_time()
        self._close_code: int | None = None
        self._close_reason = ""
        self._ping_nonce = 0
        self._done: trio.Event | None = None  # made when someone waits
        self._finished = False
        self._closed_by_peer = False
        self._catching_up = False
        """While a room admits this session: what it queues is the join's catch-up, outside
        the outbox budget (Outbox.put)."""
        self._read_free_at = _NEVER
        """When what this connection has sent so far is paid for at read_bytes_per_second."""
        self._expiry: _Expiry | None = None
        """When the credential expires (spec §5.9); None: never."""
        self._detach = _Detach(detach_grace, resume_key) if detach_grace > 0 else None
        """How it outlives a transport; None: it ends with its transport (a WebSocket's)."""
        now = trio.current_time()
        self._update_bucket = TokenBucket(self.config.updates_per_second, now)
        self._event_bucket = TokenBucket(self.config.events_per_second, now)
        self._frame_bucket = TokenBucket(self.config.frames_per_second, now)
        self._violations = TokenBucket(1.0, now, capacity=self.config.rate_violations_before_close)

    def log_ids(self) -> tuple[str | None, str | None, str | None]:
        """For log lines (engine/_logs.py): this session's id and its user's, once known."""
        user = self.identity.get("id")
        return self.id, None, user if isinstance(user, str) else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.identity.get('id', '?')}>"

    # -- to implement -----------------------------------------------------------------------

    async def _handshake(self) -> bool:
        raise NotImplementedError

    async def _reader(self) -> None:
        raise NotImplementedError

    def deliver(self, member: Member, shared: ChannelFrame) -> None:
        """A frame fanned out to the whole room, encoded once."""
        raise NotImplementedError

    def deliver_ephemeral(self, member: Member, shared: list[ChannelFrame], refresh: Refresh) -> None:
        """One tick's presence/cursor/typing frames: may be coalesced into `refresh()` when
        lagging."""
        raise NotImplementedError

    def deliver_frames(self, member: Member, frames: list[Frame]) -> None:
        """Frames for this member only (join sequence, acks, answers)."""
        raise NotImplementedError

    def query_awareness(self, member: Member) -> None:
        """Ask the client to send its awareness state again (y-websocket only)."""

    def deliver_ack(self, member: Member, ref: int, value: int | None) -> None:
        """The answer to a request, once its effect is durable (spec §4.1)."""
        self.deliver_frames(member, [Ack(ref, value)])

    def send_error(self, ref: int | None, channel: int | None, code: int, message: str) -> None:
        raise NotImplementedError

    def close_channel(self, member: Member, code: int, message: str) -> None:
        """The server ends a membership (spec §5.2)."""
        raise NotImplementedError

    def access_changed(self, member: Member) -> None:
        """The member's access changed to `member.access` (spec §5.2)."""
        raise NotImplementedError

    def _messages(self, batch: list[bytes]) -> Sequence[bytes | str]:
        """The messages that carry a batch of queued frames."""
        raise NotImplementedError

    def _frames_of(self, message: bytes | str) -> list[Frame]:
        """The frames of a message this session sent, for a trace (RemoteProtocolError: a
        message that is not frames, recorded raw)."""
        if isinstance(message, str):
            raise RemoteProtocolError("a text message", ErrorCode.MALFORMED_FRAME)
        return decode(message)

    def _ping_frame(self) -> bytes | None:
        """What the writer sends after a quiet heartbeat interval (None: nothing)."""
        return None

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side closes it. Raises only Cancelled: anything
        else that goes wrong is this connection's failure (logged, closed INTERNAL_ERROR)."""
        self.services.record_opened(self.id, self.transport.path)
        log_subject(self)  # this task's log lines, and its children's (engine/_logs.py)
        try:
            # close() ends a handshake too: a client that never says hello must not
            # hold up a shutdown for the whole handshake timeout.
            opened = False
            with trio.CancelScope() as self._handshake_scope:
                opened = await self._contained(self._handshake) is True
            self._handshake_scope = None
            if opened and self._close_code is None:
                logger.info("session %s open for %s", self.id, self.identity.get("id"))
                self.services.metrics.add("sessions_opened", 1, self.PROTOCOL)
                while True:
                    # Inline, not a method: an idle connection's task would hold one more
                    # coroutine frame for its whole life (bench/idle.py).
                    if self._detach is not None and self._detach.next_transport is not None:
                        self._use(self._detach.next_transport)
                    self._reader_scope = trio.CancelScope()
                    try:
                        async with trio.open_nursery() as nursery:
                            self._nursery, self._tasks_scope = nursery, nursery.cancel_scope
                            self._wake_writer()  # what the handshake queued, or what waited for a transport
                            with self._reader_scope:
                                # _contained, inline: an idle connection's task would hold
                                # one more coroutine frame for its whole life.
                                try:
                                    await self._reader()
                                except* TransportClosed as closed:
                                    self._peer_closed(_first(closed))
                                except* Exception as failed:
                                    self._failed("_reader", failed)
                            if self._reader_scope.cancelled_caught and self._close_code is None and not self._detached:
                                if self._detach is not None:  # a link gone silent: wait for another
                                    self._detach_now(CloseCode.HEARTBEAT_TIMEOUT)
                                else:
                                    self.close(CloseCode.HEARTBEAT_TIMEOUT, "no heartbeat")
                            # Let a running writer finish what is queued (an error frame, say),
                            # briefly; what is left goes in the goodbye, or waits for the next
                            # transport.
                            self._nursery = None
                            if self._writing:
                                self._writer_stopped = trio.Event()
                                with trio.move_on_after(self.config.close_timeout):
                                    await self._writer_stopped.wait()
                            nursery.cancel_scope.cancel()
                    finally:
                        self._nursery = self._tasks_scope = None  # also when cancelled (TOO_SLOW): no more writers
                    if not self._detached or self._close_code is not None:
                        break
                    await self._let_go()
                    if not await self._reattached():
                        self._closed_by_peer = True  # its transport is gone: no goodbye
                        assert self._detach is not None
                        self.close(self._detach.code, "not re-attached in time")
                        break
        finally:
            self._user_slot.release()
            self._leave_rooms()
            with trio.move_on_after(self.config.close_timeout, shield=True):
                await self._contained(self._say_goodbye)
            logger.info("session %s closed (%s)", self.id, self._close_code)
            self.services.metrics.add("sessions_closed", 1, str(self._close_code if self._close_code is not None else CloseCode.GOING_AWAY))
            self.outbox.detach()
            self._finished = True
            if self._detach is not None and self._detach.released is not None:
                self._detach.released.set()
            if self._done is not None:
                self._done.set()

    def _admit_identity(self) -> bool:
        """Take a place among the sessions of the identity authenticated (spec §5.1); False
        (refused and closed TOO_MANY_CONNECTIONS) when it holds max_connections_per_user."""
        slot = self.services.users.take(self.identity["id"])
        if slot is None:
            limit = self.services.users.limit
            self.refuse(ErrorCode.TOO_MANY_CONNECTIONS, f"this user has {limit} sessions open already (the server's limit)")
            self.close(CloseCode.TOO_MANY_CONNECTIONS, "too many connections")
            return False
        self._user_slot = slot
        return True

    @property
    def _detached(self) -> bool:
        return self._detach is not None and self._detach.detached

    def _detach_now(self, code: int) -> None:
        """The transport is gone (closed under us with `code`, or silent): wait for another."""
        d = self._detach
        if d is not None and not d.detached:
            d.detached, d.code, d.attached = True, code, trio.Event()
            self._reader_scope.cancel()
            logger.info("session %s detached (%s); waiting %g s for a transport", self.id, code, d.grace)

    async def _let_go(self) -> None:
        """Close the transport that ended (it may still hold a socket), and tell whoever gave
        it to us (`attach`) that we are done with it."""
        d = self._detach
        assert d is not None
        with trio.move_on_after(self.config.close_timeout, shield=True):
            try:
                await self.transport.aclose(d.code, "detached")
            except TransportClosed:
                pass
        if d.released is not None:
            d.released.set()
            d.released = None

    async def _reattached(self) -> bool:
        """Wait what is left of the detach grace for `attach`; whether a transport came."""
        d = self._detach
        assert d is not None and d.attached is not None
        with trio.move_on_after(d.grace):
            await d.attached.wait()
        d.attached = None
        return d.next_transport is not None and self._close_code is None

    def attach(self, transport: Transport, resume_key: str) -> trio.Event | None:
        """Carry this session on `transport`, if it is detached (its last transport ended
        within the detach grace), not closed, and `resume_key` is its own: what its outbox
        held goes out first, in order, including the batch a failing transport did not take.
        Returns an event set once the session lets go of `transport` (it detached again, or
        ended), or None if it cannot take it."""
        d = self._detach
        if d is None or not d.detached or self._close_code is not None or d.attached is None or d.attached.is_set():
            return None
        if not hmac.compare_digest(resume_key.encode(), d.key.encode()):
            logger.warning("session %s: attach with a wrong resume key refused", self.id)
            return None
        d.next_transport = transport
        d.released = trio.Event()
        d.attached.set()
        logger.info("session %s re-attached", self.id)
        return d.released

    def _use(self, transport: Transport) -> None:
        d = self._detach
        assert d is not None
        self.transport = transport
        d.next_transport = None
        d.detached = False
        self._on_attached()

    def _on_attached(self) -> None:
        """A new transport carries the session (a subclass resets what it times)."""

    async def _contained(self, task: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run one of this connection's tasks (handshake, reader, writer, pinger, goodbye) so
        that nothing it raises escapes to the engine (style §3): the peer closing the
        connection ends it quietly; anything unexpected (a bug, or application code that
        misbehaved) is logged with its traceback and closes this connection only."""
        # except*: a task with a nursery (the y-websocket reader) can raise its error together
        # with a Cancelled owned by an outer scope; the Cancelled must go on, the error stop here.
        try:
            return await task(*args)
        except* TransportClosed as closed:
            self._peer_closed(_first(closed))
        except* Exception as failed:
            self._failed(getattr(task, "__name__", str(task)), failed)
        return None

    def _failed(self, task: str, exc: BaseException) -> None:
        logger.error("session %s: %s failed", self.id, task, exc_info=exc)
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _peer_closed(self, exc: TransportClosed) -> None:
        """The transport ended under us. With a detach grace, and unless the client said it
        was done (a normal close), the session waits for another (`attach`); else it ends."""
        if self._detach is not None and self._close_code is None and exc.code != CloseCode.NORMAL:
            self._detach_now(exc.code)
            return
        self._closed_by_peer = True
        self.close(exc.code, "closed by peer")

    async def wait_done(self) -> None:
        if self._finished:
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    def close(self, code: int, reason: str = "") -> None:
        """Close the connection with `code` (the first reason given wins). What is queued
        is still sent, unless the client is too slow to take it."""
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason
            if code == CloseCode.TOO_SLOW:
                self.services.metrics.add("slow_consumer_closes")
        self._reader_scope.cancel()
        if self._detach is not None and self._detach.attached is not None:  # stop waiting for a transport
            self._detach.attached.set()
        if self._handshake_scope is not None:
            self._handshake_scope.cancel()
        if code == CloseCode.TOO_SLOW and self._tasks_scope is not None:
            self._tasks_scope.cancel()

    async def _say_goodbye(self) -> None:
        code = self._close_code if self._close_code is not None else CloseCode.GOING_AWAY
        if self._closed_by_peer:
            return
        if not self.outbox.overflowed and code != CloseCode.TOO_SLOW:  # it would not take them
            try:
                # In messages within the limits, as always (spec §3.2): one message of all
                # that waited could pass max_message_bytes, which a client takes for a fatal
                # FRAME_TOO_LARGE instead of reading the close code behind it.
                self.outbox.forget_stale()  # its rooms are left: nothing to refresh
                while batch := self.outbox.take(self.max_frames_per_message, self.max_message_bytes):
                    for message in self._messages(batch):
                        await self._send(message)
            except TransportClosed:
                return
        self.services.record_closed(self.id, "out", code, self._close_reason)
        try:
            await self.transport.aclose(code, self._close_reason)
        except TransportClosed:
            pass

    # -- transport --------------------------------------------------------------------------

    async def _receive(self) -> bytes | str | None:
        """The next message, counted and paced (`_received`); None once the transport ended."""
        try:
            data = await self.transport.receive_message()
        except TransportClosed as exc:
            self._receive_ended(exc)
            return None
        if (wait := self._received(data)) > 0:
            await trio.sleep(wait)
        return data

    def _receive_ended(self, exc: TransportClosed) -> None:
        self.services.record_closed(self.id, "in", exc.code, exc.reason)
        self._peer_closed(exc)

    def _received(self, data: bytes | str) -> float:
        """Record and count a message read. Returns the seconds to wait before the next read:
        at most read_bytes_per_second are read from a connection, after a burst of a second's
        worth or one largest message (spec §5.8), and TCP makes the sender wait too. One float
        of state: an idle server holds thousands of these."""
        self.services.record_message(self.id, "in", data)
        traffic = self.services.traffic
        traffic.messages_in += 1
        size = len(data)
        traffic.bytes_in += size
        rate = self.config.read_bytes_per_second
        self.services.read_at = now = trio.current_time()
        burst = max(rate, self.max_message_bytes) / rate
        self._read_free_at = max(self._read_free_at, now - burst) + size / rate
        return self._read_free_at - now

    @property
    def reads_held_until(self) -> float:
        """When this connection's next read may happen, at the read rate (spec §5.8): until
        then what the client sends waits unread, its pongs among it."""
        return self._read_free_at

    def read_values(self, values: int) -> None:
        """Count the values of a message just decoded (spec §3.4), or the parts of a document
        update just read (§5.3), toward the read rate, each as read_bytes_per_value bytes
        (§5.8): the next message is read that much later."""
        self._read_free_at += values * self.config.read_bytes_per_value / self.config.read_bytes_per_second

    async def _send(self, message: bytes | str) -> None:
        if len(message) < self.config.large_message_bytes:
            await self.transport.send_message(message)
        else:
            slot = self._copies(message)
            try:
                if slot:
                    self._large_send = _WAITING_FOR_SLOT
                    await self._acquire_large_send()
                try:
                    self._large_send = _SENDING_LARGE
                    await self.transport.send_message(message)
                finally:
                    if slot:
                        self.services.large_sends.release()
                self._lag_since = None  # the client took all of it: progress, as a drain is
            finally:
                self._large_send = _NO_LARGE_SEND
        self._sent(message)

    def _copies(self, message: bytes | str) -> bool:
        """Whether the transport copies `message` to frame it, so that sending it takes one of
        the engine's `concurrent_large_sends`: a transport that sends a bytes message of
        `uncopied_bytes` or more as it is says so (the server's WebSocket endpoint, the HTTP
        transports)."""
        uncopied = getattr(self.transport, "uncopied_bytes", None)
        return uncopied is None or not isinstance(message, bytes) or len(message) < uncopied

    async def _acquire_large_send(self) -> None:
        """Wait for a large-send slot, pinging the client every heartbeat interval meanwhile
        (spec §5.7: the server sends something at least every H, and while its writer waits
        nothing else can). The caller releases the slot."""
        slots = self.services.large_sends
        ping_after = 0.75 * self.config.heartbeat
        while True:
            with trio.move_on_at(self.last_sent + ping_after):
                await slots.acquire()
                return
            ping = self._ping_frame() if self._close_code is None else None  # closing: its goodbye waits
            if ping is not None:
                for message in self._messages([ping]):
                    await self.transport.send_message(message)
                    self._sent(message)
            self.last_sent = trio.current_time()

    def _sent(self, message: bytes | str) -> None:
        traffic = self.services.traffic
        traffic.messages_out += 1
        traffic.bytes_out += len(message)
        # Recorded once delivered to the transport: a send cut short by a close never happened.
        if self.services.recorder is not None:  # not even a bound method per message otherwise
            self.services.record_message(self.id, "out", message, self._frames_of)

    # -- limits -----------------------------------------------------------------------------

    def _rate(self, bucket: TokenBucket, what: str) -> None:
        now = trio.current_time()
        if bucket.take(now):
            return
        self._violation(now, CloseCode.RATE_LIMITED, "rate limits exceeded repeatedly")
        raise RequestError(ErrorCode.RATE_LIMITED, f"too many {what} per second")

    def refuse(
        self, code: int, message: str, ref: int | None = None, channel: int | None = None, *, reason: str | None = None
    ) -> None:
        """The one place a session refuses what its client sent (spec §8, §9): told in the
        session's protocol, then counted (`refused`). `reason` replaces the close reason of a
        refusal that closes."""
        raise NotImplementedError

    def refused(self, code: int) -> None:
        """Count a refusal of what this connection sent, with error `code` (its answer is on
        its way): every refusal is reported to the metrics. Document bytes that are not well
        formed or that the room's document cannot take (INVALID_UPDATE) count toward the
        violation limit, as rate violations do: a client that keeps sending them is closed
        with PROTOCOL_ERROR (spec §5.8)."""
        self.services.metrics.add("refusals", 1, code_name(code))
        if code == ErrorCode.INVALID_UPDATE:
            self._violation(trio.current_time(), CloseCode.PROTOCOL_ERROR, "invalid document updates or state vectors, repeatedly")

    def _violation(self, now: float, code: CloseCode, reason: str) -> None:
        """A refusal that counts toward the violation limit (`rate_violations_before_close`,
        refilling at one a second); past it, close with `code`."""
        if not self._violations.take(now):
            self.close(code, reason)

    # -- output -----------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        """Queue an encoded frame; a session that cannot keep up is closed TOO_SLOW."""
        if self._close_code is not None:
            return
        if not self.outbox.put(data, self._catching_up):
            logger.warning("session %s too slow: %d bytes queued", self.id, self.outbox.queued_bytes)
            self.close(CloseCode.TOO_SLOW, "too slow")

    def send_ephemeral(self, channel: int, data: bytes, refresh: Callable[[], list[bytes]]) -> None:
        if self._close_code is None and not self.outbox.put_ephemeral(data, channel, refresh):
            self.close(CloseCode.TOO_SLOW, "too slow")

    def memberships(self) -> list[Member]:
        """The rooms this session is in now."""
        return list(self._members.values())

    def _admit(self, room: Room, channel: int, access: Access, join: Join) -> Member:
        """`room.add_member`, its catch-up queued outside the outbox budget: the document
        (max_document_bytes), the missed events (event_history_bytes) and the room's presence
        (max_room_presence_bytes) are each bounded, but together they may pass the budget,
        and a member that can never join is worse than one that reads a large first message.
        One catch-up at a time: while one queued before still waits, the next counts toward
        the budget. A client that joined and left a large room in a loop without reading
        queued a copy of the document per join (a fresh QA helper's server grew by 4.6 GB in
        15 s from one connection); now it is TOO_SLOW at the budget."""
        overridden = self.services.access_now(self.identity, room.name, access)
        if overridden is None:  # taken away while the join waited (Engine.set_access)
            raise RequestError(ErrorCode.FORBIDDEN, f"no access to room {room.name!r}")
        self._catching_up = not self.outbox.catching_up
        try:
            return room.add_member(self, channel, overridden, join)
        finally:
            self._catching_up = False

    def _leave_rooms(self) -> None:
        # A connection that dropped lingers in presence for the reconnect grace (spec §5.4);
        # one the server's operator ended (DISCONNECTED) will not be back: it leaves at once.
        lingers = self._close_code != CloseCode.DISCONNECTED
        for member in list(self._members.values()):
            member.room.remove_member(member, disconnected=lingers)
        self._members.clear()

    def _wake_writer(self) -> None:
        """Something was queued: have it written unless a write is under way. A transport
        that can send without waiting is written by the engine's flush, once the tasks
        running now have queued what they will (flush_nowait); otherwise, and when the socket
        does not take everything at once, a writer task runs while there is something to
        send, so an idle connection holds no task."""
        if self._writing or self._nursery is None:
            return
        self._writing = True
        if self._nowait is not None:
            self.services.flush_soon(self)
        else:
            self._start_writer()

    def _send_alone(self, frame: bytes) -> None:
        """Send `frame` (the heartbeat's ping): with nothing queued or being written before it,
        written at once when the transport can, not through the outbox and the engine's flush,
        which cost an idle server a tenth of its time (bench/idle.py); what the socket does
        not take at once goes to a writer task."""
        nowait = self._nowait
        if (nowait is None or self._nursery is None or self._writing or self.outbox
                or len(frame) >= self.config.large_message_bytes):
            self.send_bytes(frame)
            return
        message = self._messages([frame])[0]
        try:
            written = nowait.send_message_nowait(message)
        except TransportClosed as exc:
            self._peer_closed(exc)
            return
        self._sent(message)
        if not written:
            self._writing = True
            self._start_writer()

    def flush_nowait(self) -> None:
        """Write what is queued without waiting; hand what the socket does not take at once
        (and any large message, which waits its turn) to a writer task."""
        nowait = self._nowait
        if self._nursery is None or nowait is None:  # closing: the goodbye sends what is queued
            self._writer_done()
            return
        large = self.config.large_message_bytes
        try:
            while batch := self.outbox.take(self.max_frames_per_message, self.max_message_bytes):
                messages = self._messages(batch)
                for i, message in enumerate(messages):
                    if len(message) >= large:
                        self._start_writer(messages[i:])
                        return
                    written = nowait.send_message_nowait(message)
                    self._sent(message)
                    if not written:
                        self._start_writer(messages[i + 1:])
                        return
                self.last_sent = trio.current_time()
            self._drains += 1
        except TransportClosed as exc:
            self._peer_closed(exc)
        except Exception:  # a bug here must not stop the engine's flush of the others
            logger.exception("session %s: writing failed", self.id)
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
        self._writer_done()

    async def _writer(self, leftover: Sequence[bytes | str] = ()) -> None:
        try:
            if self._nowait is not None:
                await self._nowait.flush()
            for message in leftover:
                await self._send(message)
            while True:
                batch = self.outbox.take(self.max_frames_per_message, self.max_message_bytes)
                if not batch:
                    self._drains += 1
                    return
                try:
                    for message in self._messages(batch):
                        await self._send(message)
                except (TransportClosed, trio.Cancelled):
                    if self._detach is not None:
                        # Not taken: it goes out on the next transport. (Exact for a protocol
                        # that sends a batch as one message, as the native one does.)
                        self.outbox.requeue(batch)
                    raise
                self.last_sent = trio.current_time()
        finally:
            self._writer_done()

    def _start_writer(self, messages: Sequence[bytes | str] = ()) -> None:
        """A writer task for what the socket did not take at once (`messages` first, then the
        outbox); the heartbeat sweep looks at the session from its next pass, to time how long
        it stays behind (_check_lag)."""
        assert self._nursery is not None
        self.services.sweep_soon(self)
        self._nursery.start_soon(self._contained, self._writer, *([messages] if messages else []))

    def _writer_done(self) -> None:
        self._writing = False
        if self._writer_stopped is not None:
            self._writer_stopped.set()

    # -- credential expiry (spec §5.9) --------------------------------------------------------

    def _set_deadline(self, deadline: float | None) -> None:
        """The credential this session was (re-)authenticated with expires at `deadline` on
        Trio's clock (SessionServices.credential_deadline), or never (None); it replaces the
        one before. The client is asked for a fresh one REFRESH_MARGIN (or a third of what
        is left now) before."""
        if deadline is None:
            self._expiry = None
            return
        margin = min(REFRESH_MARGIN, (deadline - trio.current_time()) / 3)
        self._expiry = _Expiry(deadline, deadline - margin)
        self.services.sweep_soon(self)  # it may come sooner than the sweep would look

    def _check_expiry(self, expiry: _Expiry, now: float) -> bool:
        """The heartbeat sweep's look at the credential: close a session whose credential has
        expired (True), warn one about to (spec §5.9). Up to one sweep (H/8) late, never early."""
        if now >= expiry.deadline:
            self._expiry = None
            logger.info("session %s: credential expired", self.id)
            self._token_expired()
            return True
        if not expiry.warned and now >= expiry.warn_at:
            expiry.warned = True
            self._token_expiring(expiry.deadline - now)
        return False

    def _token_expiring(self, remaining: float) -> None:
        """Ask the client for a fresh credential, `remaining` seconds before it expires (a
        protocol that cannot refresh, y-websocket's, does nothing: spec §13)."""

    def _token_expired(self) -> None:
        """The credential expired unrefreshed: close TOKEN_EXPIRED (spec §5.9, §9)."""
        self.close(CloseCode.TOKEN_EXPIRED, "token expired")

    def keep_alive(self, now: float) -> float:
        """Called by the engine's heartbeat sweep (SweepSchedule): close a session whose
        credential expired (spec §5.9), and a connection that has been behind for longer than
        `outbox_max_lag`; queue a ping if this connection has sent nothing for most of a
        heartbeat interval, so the client hears from it every interval. Returns when the sweep
        must look again (Trio's clock): the next sweep while something waits to be written."""
        if self._close_code is not None:  # closing: nothing more is due (nor said again)
            return math.inf
        expiry = self._expiry
        if expiry is not None and self._check_expiry(expiry, now):
            return math.inf
        if self._writing or self.outbox:
            self._check_lag(now)
            return now
        self._lag_since = None
        ping_after = 0.75 * self.config.heartbeat
        if self._nursery is not None and now - self.last_sent >= ping_after:
            ping = self._ping_frame()
            if ping is not None:
                self._send_alone(ping)
            self.last_sent = now
        next_look = self.last_sent + ping_after
        if expiry is not None:
            next_look = min(next_look, expiry.deadline if expiry.warned else expiry.warn_at)
        return next_look

    def _check_lag(self, now: float) -> None:
        """spec §9 TOO_SLOW, in time: something has waited to be written at every sweep since
        `_lag_since`, with no moment in between when everything was written. The bytes bound
        (outbox_max_bytes) alone would let a client that reads a little slower than its room
        talks hold the server's memory for hours. Not counted: the wait for a large-send slot
        (the server's own), and a large message's sending time while the client takes its
        bytes (a big document's first sync on a slow link). A client that takes none of a
        large message for outbox_max_lag is too slow like any other: it would otherwise hold
        its large-send slot, and the message, for as long as it stays connected."""
        if self._detached or self._large_send == _WAITING_FOR_SLOT:
            # Detached, nothing can be written: the detach grace bounds that, not the lag.
            self._lag_since = None
        elif self._large_send == _SENDING_LARGE and self._large_send_moved():
            self._lag_since = None
        elif self._lag_since is None or self._lag_drains != self._drains:
            self._lag_since, self._lag_drains = now, self._drains
        elif now - self._lag_since > self.config.outbox_max_lag:
            logger.warning("session %s too slow: behind for %.0f s", self.id, now - self._lag_since)
            self.close(CloseCode.TOO_SLOW, "too slow")

    def _large_send_moved(self) -> bool:
        """Whether the transport took bytes of the large message since the sweep before (its
        optional `sent_bytes`, PingTransport); one that does not count them is given the
        benefit of the doubt."""
        sent = getattr(self.transport, "sent_bytes", None)
        if not isinstance(sent, int):
            return True
        moved, self._lag_sent = sent != self._lag_sent, sent
        return moved


