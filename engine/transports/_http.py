"""A session's transport over HTTP requests (spec §14): one object for the session's life,
which many requests use in turn.

- In: each `POST .../frames` body is one message (`put`); the session's reader takes them from
  `receive_message`. A request that asked something waits for the answers (`expect`).
- Out: every message the session sends (one frame each, `sse_message`) gets the next *position*
  and goes into a log. An event stream or a long-poll (a *consumer*, one at a time: a new one
  replaces the old) takes what is after its position. What was taken stays in the log for
  `resume_window` seconds (and at most `resume_bytes`), so a consumer that comes back with the
  last position it saw (SSE `Last-Event-ID`, the poll's `after`) gets exactly what it missed.
- An event stream, once caught up, is a *sink*: each message is handed to it as it is sent
  (`Sink.write_nowait` writes to its socket without waiting), with no task woken per message,
  as the WebSocket's writes are. A sink that could not write everything is not given more
  until it has (`sink_drained`).
- Backpressure: past `unsent_bytes` not yet taken, `send_message_nowait` says so and `flush`
  waits, so the session's outbox holds the rest under its budget and lag limit (TOO_SLOW).
- Liveness: with no consumer for `grace` seconds, the transport ends (HEARTBEAT_TIMEOUT) and
  with it the session, as a WebSocket's silence would.
"""

from __future__ import annotations

import hmac
from collections import deque
from collections.abc import Iterable
from typing import Protocol

import trio

from plait.protocol import CloseCode, Frame, TransportClosed

Decoded = tuple[list[Frame], int]
"""A message's frames and the values it holds (spec §3.4), as a decoder gives them."""

KiB = 1024


def sse_message(event_type: str, json_text: str) -> bytes:
    """A message of an HTTP session: one Server-Sent Event without its `id:` (which the
    transport adds, with the blank line that ends the event). `json_text` holds no line break
    (JSON escapes them); `event_type` must not either."""
    return f"event: {event_type}\ndata: {json_text}\n".encode()


def json_of_event(message: bytes) -> bytes:
    """The JSON inside a message `sse_message` made (long-polling answers with these)."""
    return message[message.index(b"\ndata: ") + 7 :].rstrip(b"\n")


class Sink(Protocol):
    """Where a caught-up consumer's messages go as they are sent (an event stream's socket)."""

    def write_nowait(self, entries: list[tuple[int, bytes]]) -> bool:
        """Write (position, message) pairs now as far as the socket takes them, keeping the
        rest in order; False when some are kept (then nothing more is given until
        `HttpTransport.sink_drained`)."""
        ...

    def wake(self) -> None:
        """The transport closed, or another consumer replaced this one."""
        ...


class InboundFull(Exception):
    """The session has not read what its client sent before (HttpTransport.put)."""


class HttpTransport:
    """What carries one HTTP session. See the module's docstring.

    Args:
        path: the route that opened it (`/v1/sessions`, `/v1/events?...`): recorded in traces,
            and what makes the engine serve it as an HTTP session.
        key: the secret every request on the session must give (session ids are seen by
            every member of a room).
        grace: seconds the session lives with no consumer.
        resume_window, resume_bytes: how long, and how many bytes, of what consumers took is
            kept for one that comes back.
        unsent_bytes: what the log holds for a consumer before the session waits.
        inbound_bytes: what the client may have sent that the session has not read yet (past
            it, `put` refuses: InboundFull); at least one message is always taken.
    """

    uncopied_bytes = 0
    """A bytes message is kept in the log as it is, not copied (the SSE wire's frames are its
    messages): sending it takes none of the engine's large-send slots, which a session whose
    client opened no event stream held until its grace ran out."""

    def __init__(
        self,
        path: str,
        key: str,
        *,
        grace: float,
        resume_window: float,
        resume_bytes: int,
        unsent_bytes: int = 256 * KiB,
        inbound_bytes: int = 16 * 1024 * KiB,
    ) -> None:
        self.path = path
        self.key = key
        self._grace = grace
        self._resume_window = resume_window
        self._resume_bytes = resume_bytes
        self._unsent_limit = unsent_bytes
        # Lists where they stay short (an empty deque is 760 bytes; thousands of sessions idle).
        self._inbound: list[bytes | str] = []
        self._inbound_decoded: list[Decoded | None] = []
        """Beside each message of `_inbound`: its frames and values, when the request that put
        it decoded it already (`decoded`)."""
        self._received_decoded: tuple[bytes | str, Decoded | None] | None = None
        self._inbound_bytes = 0
        self._inbound_limit = inbound_bytes
        self._log: deque[bytes] = deque()
        self._first = 1
        """The position of `_log[0]`."""
        self._taken = 0
        """The last position a consumer took."""
        self._unsent = 0
        """Bytes in the log after `_taken`."""
        self._taken_bytes = 0
        """Bytes in the log up to `_taken`."""
        self._marks: list[tuple[float, int]] = []
        """(when, the last position taken then), oldest first: what `resume_window` trims by."""
        self._consumer = 0
        """The current consumer's number; 0: none."""
        self._consumers = 0
        self._idle_since: float | None = trio.current_time()
        self._inbound_changed = trio.Event()
        """Set when the reader has something to look at: a message, a consumer come or gone."""
        self._output_changed = trio.Event()
        """Set when consumers and `flush` have: output, output taken, a consumer replaced."""
        self._told_closed = False
        """Whether a consumer was told how the session ended (or its client ended it)."""
        self._reader_deadline = float("inf")
        self._sink: Sink | None = None
        self._sink_ready = False
        self.closed: TransportClosed | None = None
        self._waiting: list[list[list[int | bool | Frame | None]]] = []
        """For each request waiting for answers: a [ref, is a join, answer once come] slot
        per request frame of its body."""
        self._answered = trio.Event()

    def check_key(self, key: str) -> bool:
        return hmac.compare_digest(key.encode(), self.key.encode())

    def _wake_reader(self) -> None:
        self._inbound_changed.set()
        self._inbound_changed = trio.Event()

    def _wake_output(self) -> None:
        self._output_changed.set()
        self._output_changed = trio.Event()

    # -- in ---------------------------------------------------------------------------------

    def check_room(self, size: int) -> None:
        """Raise what `put` would for a message of `size` bytes: asked before a body is
        decoded, so that one refused costs nothing.

        Raises:
            TransportClosed: the session has ended.
            InboundFull: what the client sent before is still unread, and `inbound_bytes` of it
                (a request it waits on holds the session's reader: spec §4.1).
        """
        if self.closed is not None:
            raise self._closed_error()
        if self._inbound and self._inbound_bytes + size > self._inbound_limit:
            raise InboundFull(f"the session has not read {self._inbound_bytes} bytes sent before")

    def put(self, message: bytes | str, decoded: Decoded | None = None) -> None:
        """A message from the client, for the session's reader, with its frames and values if
        they were decoded already (the session takes them from `decoded`).

        Raises:
            As `check_room`.
        """
        self.check_room(len(message))
        self._inbound.append(message)
        self._inbound_decoded.append(decoded)
        self._inbound_bytes += len(message)
        self._wake_reader()

    def decoded(self, message: bytes | str) -> Decoded | None:
        """The frames and values `put` was given with `message`, the message last received
        (once: they are not kept after)."""
        taken, self._received_decoded = self._received_decoded, None
        return taken[1] if taken is not None and taken[0] is message else None

    def expect(self, requests: Iterable[tuple[int, bool]]) -> list[list[int | bool | Frame | None]]:
        """A request is about to `put` frames with these (ref, is a join) and waits for their
        answers: what `answers` takes, a slot per request frame."""
        waiting: list[list[int | bool | Frame | None]] = [[ref, join, None] for ref, join in requests]
        if waiting:
            self._waiting.append(waiting)
        return waiting

    def forget(self, waiting: list[list[int | bool | Frame | None]]) -> None:
        if any(w is waiting for w in self._waiting):
            self._waiting = [w for w in self._waiting if w is not waiting]

    def answered(self, frame: Frame, *, join: bool) -> None:
        """The session answered a request (an ack, an error or `joined` with its ref): the
        first slot still waiting for that ref, of a join if `join` or else of another
        request, hears it. A ref should name one request at a time (spec §4.1); a ref reused
        by requests still waiting is answered to them in the order they were sent, as the
        session answers them: joins in their order, the others in theirs."""
        ref = getattr(frame, "ref", None)
        for waiting in self._waiting:
            for slot in waiting:
                if slot[0] == ref and slot[1] is join and slot[2] is None:
                    slot[2] = frame
                    self._answered.set()
                    self._answered = trio.Event()
                    return

    async def answers(self, waiting: list[list[int | bool | Frame | None]], timeout: float) -> list[Frame]:
        """The answers `expect` waits for, once all came, the session ended, or `timeout`
        passed: those that came, in request order."""
        try:
            with trio.move_on_after(timeout):
                while self.closed is None and any(slot[2] is None for slot in waiting):
                    await self._answered.wait()
        finally:
            self.forget(waiting)
        return [slot[2] for slot in waiting if isinstance(slot[2], Frame)]

    async def receive_message(self) -> bytes | str:
        while not self._inbound:
            if self.closed is not None:
                raise self._closed_error()
            deadline = float("inf") if self._idle_since is None else self._idle_since + self._grace
            self._reader_deadline = deadline
            changed = self._inbound_changed
            with trio.move_on_at(deadline):
                await changed.wait()
            if self._idle_since is not None and trio.current_time() >= self._idle_since + self._grace and not self._inbound:
                self._finish(TransportClosed(CloseCode.HEARTBEAT_TIMEOUT, f"no event stream or poll for {self._grace:g} s"))
        message = self._inbound.pop(0)
        decoded = self._inbound_decoded.pop(0)
        self._received_decoded = (message, decoded) if decoded is not None else None
        self._inbound_bytes -= len(message)
        return message

    # -- out --------------------------------------------------------------------------------

    @property
    def last_position(self) -> int:
        return self._first + len(self._log) - 1

    def send_message_nowait(self, data: bytes | str) -> bool:
        if self.closed is not None:
            raise self._closed_error()
        message = data.encode() if isinstance(data, str) else data
        self._log.append(message)
        self._unsent += len(message)
        if self._sink_ready:
            self._push()
        else:
            self._wake_output()
        return self._unsent <= self._unsent_limit

    async def send_message(self, data: bytes | str) -> None:
        self.send_message_nowait(data)
        await self.flush()

    async def flush(self) -> None:
        """Wait until a consumer has taken enough of the log."""
        while self._unsent > self._unsent_limit:
            if self.closed is not None:
                raise self._closed_error()
            await self._output_changed.wait()

    # -- consumers (the event stream, the long-poll) -------------------------------------------

    def retains(self, after: int) -> bool:
        """Whether everything after position `after` is still here (a resume can be exact)."""
        return self._first - 1 <= after <= self.last_position

    @property
    def earliest(self) -> int:
        """The position of the oldest message kept."""
        return self._first

    async def first(self, timeout: float) -> bytes | None:
        """The session's first message (its welcome, or the error that refused its hello),
        once sent, within `timeout` seconds; None if none came."""
        with trio.move_on_after(timeout):
            while not self._log and self.closed is None:
                await self._output_changed.wait()
        return self._log[0] if self._log and self._first == 1 else None

    @property
    def taken(self) -> int:
        """The last position a consumer took."""
        return self._taken

    def attach(self) -> int:
        """A new consumer, which replaces the one before (its `take` returns None, its sink
        is woken and given nothing more)."""
        replacing = self._consumer != 0
        self._consumers += 1
        self._consumer = self._consumers
        self._idle_since = None  # the reader finds out when its deadline comes: no need to wake it
        self._drop_sink()
        if replacing:
            self._wake_output()  # the one replaced stops waiting
        return self._consumer

    def detach(self, consumer: int) -> None:
        """The consumer is gone; the grace starts, unless another has come."""
        if self._consumer == consumer:
            self._consumer = 0
            self._idle_since = trio.current_time()
            self._drop_sink()
            if self._reader_deadline == float("inf"):
                self._wake_reader()  # it waits with no deadline: give it one

    def push_to(self, consumer: int, sink: Sink) -> bool:
        """From now on hand `consumer`'s messages to `sink` as they are sent, starting with
        any after the last taken. False if `consumer` is no longer the consumer."""
        if self._consumer != consumer:
            return False
        self._sink, self._sink_ready = sink, True
        self._push()
        return True

    def sink_drained(self) -> None:
        """The sink wrote what it kept: give it what came meanwhile."""
        if self._sink is not None:
            self._sink_ready = True
            self._push()

    def _push(self) -> None:
        assert self._sink is not None
        if self._taken < self.last_position:
            self._sink_ready = self._sink.write_nowait(self._take_from(max(self._taken + 1, self._first)))

    def _drop_sink(self) -> None:
        if self._sink is not None:
            sink, self._sink, self._sink_ready = self._sink, None, False
            sink.wake()

    @property
    def consumer(self) -> int:
        """The current consumer's number (0: none)."""
        return self._consumer

    def confirm(self, after: int) -> None:
        """The client has everything up to position `after` (a long-poll's `after`)."""
        while self._log and self._first <= min(after, self._taken):
            self._drop_first()

    async def take(self, consumer: int, after: int, timeout: float) -> list[tuple[int, bytes]] | None:
        """What is after position `after`, waiting up to `timeout` seconds for something:
        [] when nothing came, None when this consumer was replaced or the transport closed
        and everything was taken."""
        with trio.move_on_after(timeout):  # one deadline, however often the output changes meanwhile
            while True:
                entries = self.take_now(consumer, after)
                if entries != []:
                    return entries
                await self._output_changed.wait()
        return []

    def take_now(self, consumer: int, after: int) -> list[tuple[int, bytes]] | None:
        """`take` without waiting: what is after `after` now ([] if nothing yet)."""
        if self._consumer != consumer:
            return None
        start = max(after + 1, self._first)
        if start <= self.last_position:
            return self._take_from(start)
        return None if self.closed is not None else []

    def _take_from(self, start: int) -> list[tuple[int, bytes]]:
        last = self.last_position
        if start == last:  # one message: the fan-out's case
            entries = [(last, self._log[-1])]
        else:
            entries = [(pos, self._log[pos - self._first]) for pos in range(start, last + 1)]
        if last > self._taken:
            unsent_before = self._unsent
            for pos in range(max(self._taken + 1, self._first), last + 1):
                size = len(self._log[pos - self._first])
                self._unsent -= size
                self._taken_bytes += size
            self._taken = last
            now = trio.current_time()
            if self._marks and now - self._marks[-1][0] < 1:  # a mark a second (trims up to 1 s early)
                self._marks[-1] = (self._marks[-1][0], last)
            else:
                self._marks.append((now, last))
            self.trim(now)
            # Waiting on a take: `flush` (only past the limit) and `collected` (only once closed).
            # A sink's pushes, one per frame sent, wake nobody.
            if unsent_before > self._unsent_limit or self.closed is not None:
                self._wake_output()
        return entries

    def trim(self, now: float | None = None) -> None:
        """Forget what was taken long enough ago, or past `resume_bytes` (at every take, and
        when a consumer has been quiet for a while)."""
        old = (trio.current_time() if now is None else now) - self._resume_window
        while self._marks and self._marks[0][0] < old:
            _, upto = self._marks.pop(0)
            while self._log and self._first <= upto:
                self._drop_first()
        while self._log and self._first <= self._taken and self._taken_bytes > self._resume_bytes:
            self._drop_first()

    def _drop_first(self) -> None:
        """Forget the oldest message, which a consumer took (nothing untaken is dropped)."""
        assert self._first <= self._taken
        self._taken_bytes -= len(self._log.popleft())
        self._first += 1

    def told_closed(self) -> None:
        """A consumer was told how the session ended (a poll's `closed`, a stream's `close`
        event), or its client ended it: nobody needs to hear it any more."""
        self._told_closed = True
        self._wake_output()

    async def collected(self) -> None:
        """Return once a consumer has taken everything and was told how the session ended
        (after the session ended: its last frames, and how it ended, were delivered). Taking
        the last frames is not enough: a poll may take them before the session ends."""
        while self._unsent > 0 or not self._told_closed:
            await self._output_changed.wait()

    # -- closing ----------------------------------------------------------------------------

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """The session ends: consumers take what is left, then hear `code`."""
        self._finish(TransportClosed(code, reason))
        await trio.lowlevel.checkpoint()

    def _finish(self, closed: TransportClosed) -> None:
        if self.closed is None:
            self.closed = closed
            self._answered.set()
            self._wake_reader()
            self._wake_output()
            if self._sink is not None:
                self._sink.wake()

    def _closed_error(self) -> TransportClosed:
        assert self.closed is not None
        return TransportClosed(self.closed.code, self.closed.reason)
