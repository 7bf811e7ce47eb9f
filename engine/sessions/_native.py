"""A session speaking the native protocol (spec §4-§7), on the core of sessions/_peer.py.

- The reader decodes each message, checks each frame against the protocol state machine
  (`self.conn`), and dispatches it. Every refusal goes through `refuse`: an Error frame, in
  request order when a room answers; a fatal one also closes (spec §6).
- Joins wait their turn in a queue of their own, handled in order by a task that runs while
  the queue holds any (an idle session has neither): a join waiting on its room's load or its
  authorize hook holds up only the joins behind it, and the reader goes on with the rooms
  already joined (spec §4.1). Every other frame is handled by the reader in order, as if each
  join had been answered as it came: a join is judged against the rooms the session was in
  then (_claim), a frame for the channel a waiting join will open waits for it, and a token
  refresh meanwhile has the join judged by the fresh token.
- Every frame it sends goes through the state machine too (the fan-out by its shared route).
- The engine's heartbeat sweep queues a ping when the session has sent nothing for most of a
  heartbeat interval, and ends (or, with a detach grace, detaches) a session silent for 2H.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import trio

from plait.protocol import (
    MAX_HELLO_BYTES,
    STALE,
    Access,
    AccessChanged,
    Ack,
    ChannelClosed,
    ChannelFrame,
    CloseCode,
    Connection,
    CursorMove,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Join,
    Joined,
    Leave,
    LocalProtocolError,
    Ping,
    Pong,
    PresencePatch,
    PresenceSet,
    Publish,
    RemoteProtocolError,
    Role,
    SessionState,
    SyncStep1,
    SyncStep2,
    TokenExpiring,
    TransportClosed,
    Typing,
    Update,
    Welcome,
    check_room_name,
    decode_counted,
    decode_json_counted,
)
from plait.protocol import Refresh as RefreshToken  # room.Refresh is the ephemeral refresh

from .._errors import RequestError
from .._hooks import HookFailed, Identity, Unauthenticated
from ..room import Member, Refresh
from ..transports import AnsweringTransport, Decoded, TextBytesTransport, Transport
from ._peer import Peer
from ._services import SessionServices
from ._wire import JSON, JSON_BYTES, MSGPACK, SSE, Wire

logger = logging.getLogger("plait.session")

class Session(Peer):
    """A connection speaking the native protocol (spec §4-§7)."""

    __slots__ = (
        "_answering_join", "_answers", "_client", "_heard_at", "_http", "_join_bytes", "_joins", "_joins_moved",
        "_left", "_next_channel",
        "_rooms", "conn", "wire",
    )

    def __init__(
        self,
        services: SessionServices,
        transport: Transport,
        session_id: str,
        detach_grace: float = 0.0,
        resume_key: str = "",
        *,
        http: bool = False,
    ) -> None:
        """`http`: a session carried by HTTP requests (spec §14): it speaks the SSE wire, and
        its transport, not heartbeats, says when the client is gone (HttpTransport)."""
        super().__init__(services, transport, session_id, detach_grace, resume_key)
        self._http = http
        self.wire: Wire = SSE if http else MSGPACK
        """How frames go out: msgpack, or JSON for a client whose hello was text (spec §3.5)."""
        self._answers = transport if isinstance(transport, AnsweringTransport) else None
        self.conn = Connection(Role.SERVER, self.config.codec_limits)
        self._rooms: dict[str, None] = {}  # the names joined (a dict: an empty set is 216 bytes)
        self._next_channel = 1
        self._heard_at = trio.current_time()
        """When the last message arrived (spec §5.7's silence)."""
        self._joins: deque[tuple[Join, RequestError | None, int]] | None = None
        """The joins waiting their turn (module docstring): each with its refusal if it has
        one already (_arrived), and how many names `_left` held when it came; None while no
        join is under way."""
        self._left: list[str] | None = None
        """The rooms the client left while joins were waiting, in order (_claim)."""
        self._answering_join = False  # the error going out answers a join (_refuse_join)
        self._join_bytes = 0  # about what the queued joins hold: the reader waits while too much
        self._joins_moved: trio.Event | None = None  # set when a join is taken off the queue
        self._client: dict[str, Any] = {}
        """hello.client, given to a refresh's authentication too (spec §5.9); kept only when
        the credential expires (an idle server holds thousands of sessions: bench/idle.py),
        else a refresh is authenticated with an empty one."""

    def _leave_rooms(self) -> None:
        super()._leave_rooms()
        self.conn.close()

    def _ping_frame(self) -> bytes | None:
        """spec §5.7: a ping when the session has sent nothing for most of an interval (over
        HTTP, the event stream's own heartbeat does that, spec §14)."""
        if self._http:
            return None
        self._ping_nonce = (self._ping_nonce + 1) % (2**32)
        return self._encode(Ping(self._ping_nonce))

    def _messages(self, batch: list[bytes]) -> Sequence[bytes | str]:
        return self.wire.messages(batch)

    def _frames_of(self, message: bytes | str) -> list[Frame]:
        return self.wire.decode(message)

    def _encode(self, frame: Frame, *, trusted: bool = False) -> bytes:
        """A frame through the state machine, on this session's wire (`trusted`: built by a
        room, `Wire.trusted`); an answer to a request also goes to an HTTP request waiting for
        it (spec §14.3).

        Raises:
            LocalProtocolError: the state machine refuses it, or a field is invalid.
        """
        self.conn.send(frame)
        data = self.wire.trusted(frame) if trusted else self.wire.frame(frame)
        if self._answers is not None and isinstance(frame, (Ack, Error, Joined)):
            self._answers.answered(frame, join=self._answering_join or isinstance(frame, Joined))
        return data

    def _on_attached(self) -> None:
        self._heard_at = trio.current_time()  # the silence timer (keep_alive) starts again with the new transport
        if self.wire is JSON or self.wire is JSON_BYTES:
            self.wire = self._json_wire()

    def _json_wire(self) -> Wire:
        """spec §3.5: JSON in text messages; as the frames' own bytes where the transport can
        send bytes as text (no str copy of each message, per session)."""
        if isinstance(self.transport, TextBytesTransport):
            self.transport.send_bytes_as_text()
            return JSON_BYTES
        return JSON

    async def _handshake(self) -> bool:
        with trio.move_on_after(self.config.handshake_timeout):
            # spec §5.1: the hello is read before anyone knows who sent it; a message of the
            # full size, from connections made in a loop, cost 16 MiB each to refuse.
            limit = getattr(self.transport, "limit_messages", None)
            if limit is not None:
                limit(min(MAX_HELLO_BYTES, self.max_message_bytes))
            data = await self._receive()
            if data is None:
                return False
            if limit is not None:
                limit(self.max_message_bytes)
            try:
                if isinstance(data, str) and not self._http:
                    self.wire = self._json_wire()  # spec §3.5: a client that says hello in text hears text
                frames = self._decode(data)
                self.services.traffic.frames_in += len(frames)
                if len(frames) != 1:
                    raise RemoteProtocolError("the first message must hold only hello", ErrorCode.UNEXPECTED_FRAME)
                self.conn.receive(frames[0])
            except RemoteProtocolError as exc:
                # Not Plait frames at all: most often a client of another protocol; say where
                # to go. A Plait frame with a bad field is closed with its own reason.
                not_plait = exc.code in (ErrorCode.MALFORMED_FRAME, ErrorCode.UNKNOWN_KIND)
                hint = "not a Plait hello; Yjs clients connect to /yjs/ROOM" if not_plait else None
                self.refuse(exc.code, exc.message, reason=hint)
                return False
            hello = frames[0]
            assert isinstance(hello, Hello)
            try:
                self.identity = await self.services.authenticate(hello.token, hello.client)
                deadline = await self.services.credential_deadline(hello.token, self.identity)
            except Unauthenticated as exc:  # spec §5.1: the error, then the close that says why
                self.refuse(ErrorCode.UNAUTHENTICATED, str(exc) or "token refused")
                self.close(CloseCode.UNAUTHENTICATED, "unauthenticated")
                return False
            except HookFailed as exc:
                self.refuse(exc.code, exc.message)
                self.close(CloseCode.INTERNAL_ERROR, "internal error")
                return False
            if not self._admit_identity():
                return False
            welcome = Welcome(self.conn.version or 1, self.id, int(self.config.heartbeat * 1000), self.config.limits)
            self._send_now(welcome)
            if deadline is not None:
                self._client = hello.client
            self._set_deadline(deadline)
            return True
        self.close(CloseCode.HANDSHAKE_TIMEOUT, "no hello in time")
        return False

    def _send_now(self, frame: Frame) -> None:
        self.outbox.put(self._encode(frame))

    def _decode(self, data: bytes | str) -> list[Frame]:
        """A message's frames: msgpack (binary) or JSON (text), spec §3.5.

        Raises:
            RemoteProtocolError: as `decode` and `decode_json` do.
        """
        decoded_by = getattr(self.transport, "decoded", None) if self._http else None
        decoded: Decoded | None = decoded_by(data) if decoded_by is not None else None
        if decoded is not None:  # the request that brought it decoded it (HttpSessions._frames)
            frames, values = decoded
        elif isinstance(data, bytes):
            frames, values = decode_counted(data, self.conn.limits)
        else:
            frames, values = decode_json_counted(data, self.conn.limits)
        self.read_values(values)
        return frames

    def keep_alive(self, now: float) -> float:
        """The heartbeat sweep also ends a connection silent for 2H (spec §5.7). The close
        comes between 2H and 2H plus one sweep interval after the last message."""
        if self._http:  # over HTTP, the transport times the client's absence
            return Peer.keep_alive(self, now)
        # While its reads are held back (spec §5.8), what the client sends is not read: the
        # silence counts from when they may go on. A writer held 30 s for an update of 2 M
        # structs was closed 4005 for its own pacing (QA).
        silent_until = max(self._heard_at, self.reads_held_until) + 2 * self.config.heartbeat
        if now >= silent_until and self._nursery is not None:
            self._reader_scope.cancel()  # Peer.run reports HEARTBEAT_TIMEOUT
            return math.inf
        return min(Peer.keep_alive(self, now), silent_until)

    # -- credential expiry and refresh (spec §5.9) ---------------------------------------------

    def _token_expiring(self, remaining: float) -> None:
        self.send_frames([TokenExpiring(min(int(remaining * 1000), 2**32 - 1))])

    def _token_expired(self) -> None:
        self.send_frames([Error(None, None, ErrorCode.TOKEN_EXPIRED, "token expired: reconnect with a fresh token")])
        super()._token_expired()

    async def _refresh(self, ref: int, token: str) -> None:
        """spec §5.9: a fresh token for the same user replaces the session's credential and its
        expiry; anything else is refused (UNAUTHENTICATED, not fatal) and changes nothing.

        Raises:
            RequestError: UNAUTHENTICATED (refused), INTERNAL (a hook failed: HookFailed).
        """
        try:
            identity = await self.services.authenticate(token, self._client)
            deadline = await self.services.credential_deadline(token, identity)
        except Unauthenticated as exc:
            raise RequestError(ErrorCode.UNAUTHENTICATED, str(exc) or "token refused") from None
        if identity["id"] != self.identity.get("id"):
            raise RequestError(ErrorCode.UNAUTHENTICATED, "the token is for another user: a session cannot change user")
        # The fresh credential may grant less (or more): every room joined is authorised again
        # with it, all before anything changes, so a hook that fails changes nothing.
        members = list(self._members.values())
        accesses = [await self.services.authorize(identity, member.room.name) for member in members]
        self.identity = identity
        self._set_deadline(deadline)
        self.send_frames([Ack(ref, None)])
        for member, access in zip(members, accesses, strict=True):
            member.room.change_access(member, access)
        # A join that was waiting (it runs beside the reader) may have been admitted meanwhile,
        # judged by the old token: the new one judges it too.
        for member in [m for m in self._members.values() if m not in members]:
            await self._judge_again(member)

    async def _judge_again(self, member: Member) -> None:
        """A membership admitted on the token a refresh replaced, judged by the new one (spec
        §5.9). Its join or the refresh is answered already: if the authorize hook fails now, the
        membership ends (channel_closed INTERNAL: joining again may work)."""
        while True:
            identity = self.identity
            try:
                access = await self.services.authorize(identity, member.room.name)
            except HookFailed as exc:
                if self.identity is not identity:
                    continue  # a newer token judges it
                if self._members.get(member.channel) is member:
                    member.room.remove_member(member, disconnected=False)
                    self.close_channel(member, ErrorCode.INTERNAL, exc.message)
                return
            if self.identity is identity:
                break
        if self._members.get(member.channel) is member:
            member.room.change_access(member, access)

    # -- reader -----------------------------------------------------------------------------

    async def _reader(self) -> None:
        frames: list[Frame] | None = None
        group: Frame | list[Update] | None = None
        while True:
            # The transport is awaited here, not through _receive: an idle connection's task
            # holds one coroutine frame fewer, and not the last message's frames (bench/idle.py).
            frames = group = None
            try:
                data = await self.transport.receive_message()
            except TransportClosed as exc:
                self._receive_ended(exc)
                return
            if (wait := self._received(data)) > 0:
                await trio.sleep(wait)
            self._heard_at = self.services.read_at  # now, as _received read the clock (keep_alive)
            try:
                frames = self._decode(data)
            except RemoteProtocolError as exc:
                self.refuse(exc.code, exc.message)
                return
            self.services.traffic.frames_in += len(frames)
            for group in _runs_of_updates(frames):
                if isinstance(group, Join):
                    refusal = self._arrived(group)
                    if self._close_code is not None:
                        return
                    self._queue_join(group, refusal)
                    continue
                if self._joins is not None and (channel := _channel_of(group)) is not None and channel >= self._next_channel:
                    # For a channel not opened yet (one a queued join may open: they are
                    # predictable, spec §5.2): it waits for the joins before it, as if they
                    # had been answered.
                    await self._joins_wait(lambda: self._joins is None)
                if not await self._process(group):
                    return
            # A client that keeps sending joins behind one that waits is read no further until
            # the queue is short again (spec §4.1).
            if self._joins is not None:  # (no coroutine per message when none waits)
                await self._joins_wait(lambda: self._joins is None or (
                    len(self._joins) <= self.config.max_rooms_per_connection and self._join_bytes <= self.config.max_message_bytes
                ))

    async def _joins_wait(self, done: Callable[[], bool]) -> None:
        while not done():
            self._joins_moved = trio.Event()
            await self._joins_moved.wait()

    async def _process(self, group: Frame | list[Update]) -> bool:
        """Handle one frame, or a run of updates; False once the session is closing."""
        try:
            if isinstance(group, list):
                self._handle_updates(group)
                self.services.probe_fanout(self.services.read_at)
            else:
                await self._handle(group)
                if type(group) in _FANNED_OUT:
                    self.services.probe_fanout(self.services.read_at)
        except Exception as exc:
            first = group[0] if isinstance(group, list) else group
            logger.error("session %s: internal error on %s", self.id, type(first).__name__, exc_info=exc)
            self._send_now(Error(getattr(first, "ref", None), None, ErrorCode.INTERNAL, "internal error"))
            self.close(CloseCode.INTERNAL_ERROR, "internal error")
            return False
        return self._close_code is None

    def _queue_join(self, join: Join, refusal: RequestError | None) -> None:
        self._join_bytes += _join_size(join)
        if self._joins is not None:
            assert self._left is not None
            self._joins.append((join, refusal, len(self._left)))
            return
        queue = self._joins = deque(((join, refusal, 0),))
        self._left = []
        assert self._nursery is not None  # the reader runs inside it
        self._nursery.start_soon(self._contained, self._run_joins, queue)

    async def _run_joins(self, queue: deque[tuple[Join, RequestError | None, int]]) -> None:
        """Answer the queued joins in order until none is left (or the session closes); the
        task ends in the same step as it finds the queue empty (`_joins` None: no task)."""
        try:
            while queue:
                join, refusal, left_before = queue.popleft()
                try:
                    await self._answer_join(join, refusal, left_before)
                finally:
                    self._took_join(join)
                if self._close_code is not None:
                    return
        finally:
            while queue:  # closing, or cancelled with the transport: nothing more is handled
                self._took_join(queue.popleft()[0])
            if self._joins is queue:
                self._joins = self._left = None

    async def _answer_join(self, join: Join, refusal: RequestError | None, left_before: int) -> None:
        """`joined`, or the join's error; a bug closes the session, as in the reader."""
        try:
            if refusal is not None:
                raise refusal
            self._claim(join, left_before)
            await self._join(join)
        except RequestError as exc:
            self._refuse_join(join, exc.code, exc.message)
        except Exception as exc:
            logger.error("session %s: internal error on Join", self.id, exc_info=exc)
            self._refuse_join(join, ErrorCode.INTERNAL, "internal error")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _refuse_join(self, join: Join, code: int, message: str) -> None:
        """The join's error, marked as a join's for an HTTP request waiting for it (spec
        §14.3: joins are answered in their own order, so a ref is matched to a join)."""
        self._answering_join = True
        try:
            self.refuse(code, message, join.ref, None)
        finally:
            self._answering_join = False

    def _took_join(self, join: Join) -> None:
        self._join_bytes -= _join_size(join)
        if self._joins_moved is not None:
            self._joins_moved.set()
            self._joins_moved = None

    def _handle_updates(self, run: list[Update]) -> None:
        """Several document updates for one channel in one message (an editor's burst): checked
        and rate-limited one by one, then applied to the room as one merged update."""
        accepted: list[Update] = []
        for frame in run:
            try:
                self._charge(frame)
                if self.conn.receive(frame) is STALE:
                    self._answer_stale(frame.ref, frame.channel)
                    continue
            except (RemoteProtocolError, RequestError) as exc:  # UNKNOWN_CHANNEL, RATE_LIMITED
                # Answered in request order (spec §4.1): after those accepted before it.
                self._apply_updates(accepted)
                accepted = []
                self.refuse(exc.code, exc.message, frame.ref, frame.channel)
                continue
            accepted.append(frame)
        self._apply_updates(accepted)

    def _apply_updates(self, accepted: list[Update]) -> None:
        if accepted:
            member = self._member(accepted[0].channel)
            member.room.apply_client_updates(member, [(f.update, f.ref) for f in accepted])

    async def _handle(self, frame: Frame) -> None:
        ref: int | None = getattr(frame, "ref", None)
        channel: int | None = getattr(frame, "channel", None)
        try:
            self._charge(frame)
            accepted = self.conn.receive(frame)
        except (RemoteProtocolError, RequestError) as exc:
            self.refuse(exc.code, exc.message, ref, channel)
            return
        if accepted is STALE:
            self._answer_stale(ref, channel)
            return
        if self.conn.state is not SessionState.OPEN:
            return
        try:
            await self._dispatch(frame)
        except RequestError as exc:
            self.refuse(exc.code, exc.message, ref, channel)

    def refuse(
        self, code: int, message: str, ref: int | None = None, channel: int | None = None, *, reason: str | None = None
    ) -> None:
        """The one place this session refuses what its client sent (spec §4.1, §8): a fatal
        code (1001-1007) is an error frame and a close (with `reason`, or the error's own
        words); any other is an error frame, in request order when a room's member asked
        (the room answers its requests in order, spec §4.1), or at once. Then counted
        (Peer.refused)."""
        known = ErrorCode._value2member_map_.get(code)
        if isinstance(known, ErrorCode) and known.fatal:
            logger.info("session %s: protocol error %s: %s", self.id, known.name, message)
            self.outbox.put(self._encode(Error(ref, None, known, message[:1024])))
            self.close(known.close_code, reason or f"{known.name.lower()}: {message}")
        else:
            member = self._members.get(channel) if channel is not None else None
            if member is not None and ref is not None:
                member.room.refuse(member, ref, code, message)
            else:
                self.send_error(ref, channel, code, message)
        self.refused(code)

    def send_error(self, ref: int | None, channel: int | None, code: int, message: str) -> None:
        self.send_frames([Error(ref, channel, code, message[:1024])])

    def _answer_stale(self, ref: int | None, channel: int | None) -> None:
        """A frame for a channel this client already left (spec §5.2) changes nothing; a request
        among them is still answered, as every request is (§4.1), with UNKNOWN_CHANNEL, which
        is not fatal."""
        if ref is not None:
            self.refuse(ErrorCode.UNKNOWN_CHANNEL, f"channel {channel} was left", ref, channel)

    def _member(self, channel: int) -> Member:
        return self._members[channel]  # the state machine already checked the channel is open

    def _charge(self, frame: Frame) -> None:
        """spec §5.8: every frame counts toward its rate as it arrives, whatever becomes of it
        (refused, for a channel left or never joined, from a read-only member): frames that
        came to nothing were free, and a client sending them as fast as it could kept a core
        busy. Raises RequestError RATE_LIMITED."""
        if isinstance(frame, (Update, SyncStep2)):
            self._rate(self._update_bucket, "document updates")
        elif isinstance(frame, Publish):
            self._rate(self._event_bucket, "events")
        else:
            self._rate(self._frame_bucket, "frames")

    async def _dispatch(self, frame: Frame) -> None:
        match frame:
            case Ping(nonce=nonce):
                self.send_frames([Pong(nonce)])
            case Pong():
                pass
            case RefreshToken(ref=ref, token=token):
                await self._refresh(ref, token)
            case Leave(channel=channel, ref=ref):
                member = self._members[channel]
                await member.room.answered(member)  # spec §4.1: after the requests before it
                if self._members.get(channel) is not member:  # ended meanwhile (channel_closed sent)
                    if ref is not None:
                        self.send_frames([Ack(ref, None)])
                    return
                member = self._members.pop(channel)
                self._rooms.pop(member.room.name, None)
                if self._left is not None:  # joins wait: those that came before it still count it
                    self._left.append(member.room.name)
                self.outbox.forget_channel(channel)
                member.room.remove_member(member, disconnected=False)
                if ref is not None:
                    self.send_frames([Ack(ref, None)])
            case SyncStep1(channel=channel, state_vector=sv):
                member = self._member(channel)
                member.room.sync_step1(member, sv)
            case Update(channel=channel, ref=ref, update=update) | SyncStep2(
                channel=channel, ref=ref, update=update
            ):
                member = self._member(channel)
                member.room.apply_client_update(member, update, ref)
            case PresenceSet(channel=channel, ref=ref, state=state):
                member = self._member(channel)
                member.room.set_presence(member, state, None)
                if ref is not None:
                    member.room.ack(member, ref)
            case PresencePatch(channel=channel, ref=ref, patch=patch):
                member = self._member(channel)
                member.room.set_presence(member, None, patch)
                if ref is not None:
                    member.room.ack(member, ref)
            case CursorMove(channel=channel, position=position):
                member = self._member(channel)
                member.room.move_cursor(member, position)
            case Typing(channel=channel, on=on):
                member = self._member(channel)
                member.room.set_typing(member, on)
            case Publish(channel=channel, ref=ref, name=name, payload=payload, key=key):
                member = self._member(channel)
                if not member.access.may_publish:
                    raise RequestError(ErrorCode.FORBIDDEN, "read-only member: events refused")
                await member.room.publish(member, ref, name, payload, key)
            case _:  # pragma: no cover - the state machine admits only client frames
                raise RequestError(ErrorCode.UNEXPECTED_FRAME, f"unexpected {type(frame).__name__}")

    def _arrived(self, join: Join) -> RequestError | None:
        """What is checked of a join as it arrives, in order with everything else: the state
        machine, the frame rate, the room name. The error, to be answered in its turn among
        the joins (a fatal one is answered and closes at once), or None."""
        try:
            self.conn.receive(join)
        except RemoteProtocolError as exc:
            known = ErrorCode._value2member_map_.get(exc.code)
            if isinstance(known, ErrorCode) and known.fatal:  # refused and closed at once
                self.refuse(exc.code, exc.message, join.ref, None)
                return None
            return RequestError(exc.code, exc.message)
        try:
            self._rate(self._frame_bucket, "frames")
            check_room_name(join.room)
        except RequestError as exc:
            return exc
        except RemoteProtocolError as exc:
            return RequestError(exc.code, exc.message)
        return None

    def _claim(self, join: Join, left_before: int) -> None:
        """At its turn, the join's room name is claimed (so that a later join of it is
        refused while it waits) if the session may take it: judged against the rooms it was
        in as the join arrived, which are those it is in now and those it left since (a leave
        sent after a join cannot make room for it, nor free the name it asks for).

        Raises:
            RequestError: ALREADY_JOINED, TOO_MANY_ROOMS."""
        assert self._left is not None
        left_since = self._left[left_before:]
        name = join.room
        if name in self._rooms or name in left_since:
            raise RequestError(ErrorCode.ALREADY_JOINED, f"already joined {name!r}")
        if len(self._rooms) + len(left_since) >= self.config.max_rooms_per_connection:
            raise RequestError(
                ErrorCode.TOO_MANY_ROOMS, f"at most {self.config.max_rooms_per_connection} rooms per connection"
            )
        self._rooms[name] = None

    async def _join(self, join: Join) -> None:
        """A join whose name `_claim` took: authorised, its room loaded, admitted; the claim
        let go if it fails. A refresh meanwhile (the reader goes on) means the join is judged
        again by the fresh token before it is admitted, so `joined` carries what that token
        grants (spec §5.9).

        Raises:
            RequestError: FORBIDDEN, a hook's failure (HookFailed), the room's refusal."""
        name = join.room
        try:
            access, judged_by = await self._authorized(name)
            async with self.services.hold_room(name) as room:
                if judged_by is not self.identity:
                    access, judged_by = await self._authorized(name)
                channel = self._next_channel
                member = self._admit(room, channel, access, join)  # RequestError: nothing sent
                self._next_channel += 1
                self._members[channel] = member
        except BaseException:
            self._rooms.pop(name, None)
            raise

    async def _authorized(self, name: str) -> tuple[Access, Identity]:
        """The access the session's current token grants in `name`, and the identity asked
        about: asked again for as long as a refresh replaces the token while the hook runs.

        Raises:
            RequestError: FORBIDDEN (none), HookFailed."""
        while True:
            identity = self.identity
            access = await self.services.authorize(identity, name)
            if self.identity is identity:
                break
        access = self.services.access_now(identity, name, access)  # the operator's, if set meanwhile
        if access is None:
            raise RequestError(ErrorCode.FORBIDDEN, f"no access to room {name!r}")
        return access, identity

    # -- output -----------------------------------------------------------------------------

    # Every frame goes out through the state machine (self.conn), which says whether it may
    # (spec §6): the room's fan-out by its shared route, acks by theirs. A frame for a channel
    # the session has just closed is dropped (it raced the close); anything else it refuses
    # is a bug, which closes this session only (_unsendable).

    def send_frames(self, frames: Sequence[Frame], *, trusted: bool = False) -> None:
        for frame in frames:
            if self._close_code is not None:
                return
            try:
                data = self._encode(frame, trusted=trusted)
            except LocalProtocolError as exc:
                self._unsendable(frame, exc)
                continue
            self.send_bytes(data)

    def deliver(self, member: Member, shared: ChannelFrame) -> None:
        if self._close_code is not None:
            return
        try:
            if self.wire is MSGPACK:  # the common case, in one call: every delivery of a busy room
                data = self.conn.send_shared(shared, member.channel)
            else:
                self.conn.check_shared(member.channel)
                data = self.wire.shared(shared, member.channel)
        except LocalProtocolError as exc:
            self._unsendable(shared.frame, exc)
            return
        self.send_bytes(data)

    def deliver_ephemeral(self, member: Member, shared: list[ChannelFrame], refresh: Refresh) -> None:
        def full_state() -> list[bytes]:
            out = []
            for frame in refresh():
                try:
                    out.append(self._encode(frame))
                except LocalProtocolError as exc:
                    self._unsendable(frame, exc)
            return out

        if self._close_code is not None:
            return
        for frame in shared:
            try:
                self.conn.check_shared(member.channel)
            except LocalProtocolError as exc:
                self._unsendable(frame.frame, exc)
                return
            self.send_ephemeral(member.channel, self.wire.shared(frame, member.channel), full_state)

    def deliver_frames(self, member: Member, frames: list[Frame]) -> None:
        # A room's own frames (a joiner's presence snapshot and missed events): their values
        # were checked as they came in. Checked again for each joiner, events of millions of
        # small values made one join(since=0) cost seconds (QA).
        self.send_frames(frames, trusted=True)

    def deliver_ack(self, member: Member, ref: int, value: int | None) -> None:
        if self._close_code is None:
            if self.wire is MSGPACK:
                self.send_bytes(self.conn.send_ack(ref, value))
            else:
                self.conn.check_open()
                self.send_bytes(self.wire.ack(ref, value))
            if self._answers is not None:
                self._answers.answered(Ack(ref, value), join=False)

    def _unsendable(self, frame: Frame, exc: LocalProtocolError) -> None:
        if exc.code == ErrorCode.UNKNOWN_CHANNEL:
            logger.debug("session %s: %s for a closed channel dropped", self.id, type(frame).__name__)
            return
        # Called from the room's tasks too: raising would stop its fan-out to everyone else.
        logger.error("session %s: the state machine refused %s: %s", self.id, type(frame).__name__, exc.message)
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def close_channel(self, member: Member, code: int, message: str) -> None:
        """The server ends a membership (spec §5.2)."""
        if self._members.get(member.channel) is not member:
            return
        del self._members[member.channel]
        self._rooms.pop(member.room.name, None)
        self.outbox.forget_channel(member.channel)
        self.send_frames([ChannelClosed(member.channel, code, message[:1024])])

    def access_changed(self, member: Member) -> None:
        """The member's access changed (spec §5.2): it is told before anything else it sends
        is judged by it."""
        if self._members.get(member.channel) is member:
            self.send_frames([AccessChanged(member.channel, int(member.access))])


_FANNED_OUT = (Update, Publish)
"""Frames whose handling fans out to the room at once (Flusher.probe)."""

def _channel_of(group: Frame | list[Update]) -> int | None:
    frame = group[0] if isinstance(group, list) else group
    channel: int | None = getattr(frame, "channel", None) if frame.ROOM_SCOPED else None
    return channel


def _join_size(join: Join) -> int:
    """About the bytes a queued join holds (its frame's fields, and the object's own)."""
    return 200 + len(join.room) + len(join.state_vector or b"") + len(join.epoch or "")


def _runs_of_updates(frames: list[Frame]) -> list[Frame | list[Update]]:
    """The message's frames, with each run of 2+ consecutive updates to one channel grouped."""
    out: list[Frame | list[Update]] = []
    for frame in frames:
        last = out[-1] if out else None
        if isinstance(frame, Update):
            if isinstance(last, list) and last[0].channel == frame.channel:
                last.append(frame)
                continue
            if isinstance(last, Update) and last.channel == frame.channel:
                out[-1] = [last, frame]
                continue
        out.append(frame)
    return out
