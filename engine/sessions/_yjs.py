"""The y-websocket endpoint: `/yjs/<room>?token=...` serves Yjs editors unchanged, in the same
rooms as native clients (spec §13).

One room per connection. The document side maps one to one onto the room's document. Awareness
maps onto presence: a Yjs client's own awareness state becomes its presence state (and its
"cursor" field its cursor); everyone else's presence reaches Yjs clients as awareness states
carrying the server-stamped identity. A Yjs client can only speak for its own awareness client
id; entries for other ids are ignored.

Yjs clients send no pings, so liveness uses WebSocket ping/pong frames (answered by every
browser and by `ws`), and the writer renews awareness every heartbeat: Yjs drops remote states
not renewed within 30 s, and y-websocket reconnects after 30 s without a message.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

import trio

from plait.protocol import (
    MAX_AWARENESS_ENTRIES,
    MAX_DEPTH,
    Access,
    ChannelFrame,
    CloseCode,
    Cursors,
    ErrorCode,
    Frame,
    Join,
    PresenceDiff,
    PresenceSnapshot,
    ProtocolError,
    RemoteProtocolError,
    SyncStep1,
    SyncStep2,
    Update,
    YAuth,
    YAwareness,
    YMessageKind,
    YQueryAwareness,
    YSync,
    YSyncStep,
    awareness_entries,
    check_room_name,
    check_value,
    close_code_for,
    decode_y,
    encode_awareness,
    encode_sync,
    encode_y,
    json_values,
)

from .._errors import RequestError
from .._hooks import Unauthenticated
from ..room import Member, MemberRoom, Refresh, merge_updates, presence_size
from ..transports import PingTransport, Transport
from ._peer import Peer
from ._services import SessionServices

logger = logging.getLogger("plait.yjs")

AWARENESS_FIRST_BYTE = bytes([YMessageKind.AWARENESS])
"""How an awareness message begins (its kind, a one-byte varuint)."""

ECHOED_ENTRY_FRAMES = 1 / 16
"""What an awareness entry for another client costs of frames_per_second (spec §5.8, §13)."""

MAX_AWARENESS_STATE = 64 * 1024
"""Bytes of JSON one awareness state may take."""


class YjsSession(Peer):
    __slots__ = ("_member", "room_path", "token")
    PROTOCOL = "yjs"
    OWN_AWARENESS = True
    CONFIRMS_BY_ECHO = True

    def __init__(self, services: SessionServices, transport: Transport, session_id: str, room_path: str, token: str | None) -> None:
        super().__init__(services, transport, session_id)
        self.room_path = room_path
        """The room's name as the URL has it (percent-encoded), checked in the handshake."""
        self.token = token
        self._member: Member | None = None

    # -- handshake: authenticate, authorise, join the one room -------------------------------

    async def _handshake(self) -> bool:
        try:
            name = urllib.parse.unquote(self.room_path, errors="strict")
            check_room_name(name)
        except (UnicodeDecodeError, RemoteProtocolError):
            self.refuse(ErrorCode.INVALID_ROOM_NAME, "invalid room name (1..256 characters, no control characters)")
            return False
        try:
            self.identity = await self.services.authenticate(self.token, {"name": "y-websocket"})
            # spec §13: y-websocket cannot refresh; the session is closed TOKEN_EXPIRED at expiry.
            self._set_deadline(await self.services.credential_deadline(self.token, self.identity))
            if not self._admit_identity():
                return False
            access = await self.services.authorize(self.identity, name)
            if access is None:
                self.refuse(ErrorCode.FORBIDDEN, "no access to this room")
                return False
            async with self.services.hold_room(name) as room:
                self._member = self._admit(room, 1, access, Join(0, name, None, None))
        except Unauthenticated:
            self.refuse(ErrorCode.UNAUTHENTICATED, "unauthenticated")
            return False
        except RequestError as exc:  # the room is unavailable, a hook failed, shutting down
            self.refuse(exc.code, exc.message)
            return False
        self._members[1] = self._member
        logger.info("yjs session %s joined %r as %s", self.id, name, self.identity.get("id"))
        return True

    def refuse(
        self, code: int, message: str, ref: int | None = None, channel: int | None = None, *, reason: str | None = None
    ) -> None:
        """The one place this session refuses what its client sent or asked for. y-websocket
        has no error message, so the close code says it (spec §13: retry or not) and the
        reason why; then counted (Peer.refused)."""
        logger.info("yjs session %s refused: %s (%d)", self.id, message, code)
        self.close(close_code_for(code), reason or message)
        self.refused(code)

    # -- reader ------------------------------------------------------------------------------

    async def _reader(self) -> None:
        async with trio.open_nursery() as nursery:
            if isinstance(self.transport, PingTransport):  # else the transport knows liveness itself
                nursery.start_soon(self._contained, self._pinger, self.transport)
            while True:
                data = await self._receive()
                if data is None:
                    break
                try:
                    if not isinstance(data, bytes):
                        raise RemoteProtocolError("text message", ErrorCode.MALFORMED_FRAME)
                    self.services.traffic.frames_in += 1  # a y-websocket message is one message of y-protocols
                    if data[:1] == AWARENESS_FIRST_BYTE:  # updates, the hot path, skip the header read
                        self._count_entries(awareness_entries(data))
                    self._handle(decode_y(data))
                except (ProtocolError, RequestError) as exc:
                    self.refuse(exc.code, exc.message)
                    break
                if self._close_code is not None:
                    break
            nursery.cancel_scope.cancel()

    async def _pinger(self, transport: PingTransport) -> None:
        """spec §13: a ping every H; no pong within H closes HEARTBEAT_TIMEOUT, unless a
        write is still under way and the socket took bytes of it meanwhile: the pong waits
        behind what the peer is still reading (a large document on a slow link), so the peer
        is there, and it is pinged again. (Bytes taken alone say nothing: the socket's buffer
        takes a quiet room's few bytes whether or not anyone reads them.)"""
        while True:
            await trio.sleep(self.config.heartbeat)
            sent = getattr(transport, "sent_bytes", 0)  # optional (PingTransport)
            while True:
                with trio.move_on_after(self.config.heartbeat) as waited:
                    await transport.ping()  # TransportClosed: the peer is gone (_contained)
                if not waited.cancelled_caught:
                    break
                if self.reads_held_until > trio.current_time() - self.config.heartbeat:
                    continue  # its pong waits behind reads held back (spec §5.8): not its fault
                sent, before = getattr(transport, "sent_bytes", 0), sent
                if sent == before or not getattr(transport, "writing", False):
                    self.close(CloseCode.HEARTBEAT_TIMEOUT, "no pong")
                    return

    def _handle(self, message: Any) -> None:
        member = self._members.get(1)
        if member is None:
            return  # the room ended the membership (it failed): the rest of this batch is stale
        room = member.room
        if not (isinstance(message, YSync) and message.step is not YSyncStep.STEP1):  # not an update
            if not self._frame_bucket.take(trio.current_time()):
                raise RequestError(ErrorCode.RATE_LIMITED, "too many messages")  # it reconnects, later
        match message:
            case YSync(step=YSyncStep.STEP1, payload=sv):
                room.sync_step1(member, sv)
            case YSync(payload=update):
                # Counted whatever becomes of it (spec §5.8): a read-only member's ignored
                # updates cost the server a parse and a check each, and were never limited.
                if not self._update_bucket.take(trio.current_time()):
                    raise RequestError(ErrorCode.RATE_LIMITED, "too many updates")  # it resyncs on reconnect
                if member.access is not Access.WRITE:
                    # y-protocols read-only: step 2 and updates from this client are not applied.
                    logger.debug("yjs session %s is read-only: update ignored", self.id)
                    return
                room.apply_client_update(member, update, None)
                self.services.probe_fanout(self.services.read_at)
            case YAwareness(entries=entries):
                own = room.awareness_id(member)
                parsed = values = 0
                for entry in entries:
                    # A client speaks only for itself: one client id, bound at its first state.
                    # y-websocket echoes others' entries: ignored before they cost a JSON parse.
                    if own is not None and entry.client_id != own:
                        continue
                    # Each entry parsed past the first counts as a frame (spec §5.8): one
                    # message of 10,000 states of 60 KB, each parsed and checked, kept a core
                    # busy for a message that counted once.
                    if parsed and not self._frame_bucket.take(trio.current_time()):
                        raise RequestError(ErrorCode.RATE_LIMITED, "too many awareness entries")
                    parsed += 1
                    values = self._count_values(entry.state_json, values)
                    state, size = _parse_state(entry.state_json, self.config.presence_limit)
                    if room.claim_awareness(member, entry.client_id, entry.clock, hidden=state is None):
                        own = room.awareness_id(member)
                        room.set_presence(member, state or {}, None, size if state is not None else None)
                        room.move_cursor(member, state.get("cursor") if state else None)
            case YQueryAwareness():
                self._send_awareness(member, room.awareness_sessions())
            case YAuth():
                pass  # y-protocols auth messages carry nothing we act on

    def _count_entries(self, entries: int) -> None:
        """An awareness message's entries past its first count a sixteenth of a message each,
        before they are decoded (spec §13): y-websocket echoes the others' entries it hears (a
        joiner echoes a room of a thousand in 63 messages' worth), and one message of 10,000
        forged entries, decoded before it was counted, held the core at 91 % (QA); 200
        connections sending one each kept it for 20 s.

        Raises:
            RequestError: RATE_LIMITED.
        """
        if entries > MAX_AWARENESS_ENTRIES:
            return  # decode_y refuses it from its count (FRAME_TOO_LARGE)
        if entries > 1 and not self._frame_bucket.take(trio.current_time(), (entries - 1) * ECHOED_ENTRY_FRAMES):
            raise RequestError(ErrorCode.RATE_LIMITED, "too many awareness entries")

    def _count_values(self, state_json: str, before: int) -> int:
        """An awareness state's values, counted before it is parsed, and the message's so far
        with them: bounded and read at a rate as a native message's are (spec §3.4, §5.8). A
        state of a million empty arrays fits in a few MiB, and one message of 190 states of
        the client's own, each within the bound, held 6 M values (QA).

        Raises:
            RequestError: FRAME_TOO_LARGE.
        """
        values = json_values(state_json.encode("utf-8", "surrogatepass"))
        total = before + values
        if total > self.config.max_values_per_message:
            limit = self.config.max_values_per_message
            raise RequestError(ErrorCode.FRAME_TOO_LARGE, f"an awareness message holds more than {limit} values")
        self.read_values(values)
        return total

    # -- output: room frames onto the y-websocket wire ---------------------------------------

    def deliver(self, member: Member, shared: ChannelFrame) -> None:
        frame = shared.frame
        if isinstance(frame, Update):  # the fan-out hot path: encoded once per room
            self.send_bytes(shared.derived("yjs", _update_message))
        elif isinstance(frame, SyncStep2):  # a large document's, shared by its joiners (Room._sync_step2_for)
            self.send_bytes(shared.derived("yjs", _sync_step2_message))
        else:
            self._translate(member, [shared.frame])

    def deliver_ephemeral(self, member: Member, shared: list[ChannelFrame], refresh: Refresh) -> None:
        # One awareness message for the tick: a Yjs state that changed its presence and its
        # cursor goes out once, not once per frame with the same clock.
        for data in self._encode(member, [frame.frame for frame in shared]):
            self.send_ephemeral(member.channel, data, lambda: self._encode(member, refresh()))

    def deliver_frames(self, member: Member, frames: list[Frame]) -> None:
        self._translate(member, frames)

    def _translate(self, member: Member, frames: list[Frame]) -> None:
        for data in self._encode(member, frames):
            self.send_bytes(data)

    def _encode(self, member: Member, frames: list[Frame]) -> list[bytes]:
        """`frames` as y-messages. Presence and cursor frames all become one awareness message
        (where the first of them was): each session's entry at most once."""
        out: list[bytes] = []
        room = member.room
        sids: list[str] | None = None  # for the awareness message, once there is one
        at = 0
        for frame in frames:
            match frame:
                case SyncStep1(state_vector=sv):
                    out.append(encode_sync(YSyncStep.STEP1, sv))
                case SyncStep2(update=update):
                    out.append(encode_sync(YSyncStep.STEP2, update))
                case Update(update=update):
                    out.append(encode_sync(YSyncStep.UPDATE, update))
                case PresenceSnapshot() | PresenceDiff() | Cursors():
                    if sids is None:
                        sids, at = [], len(out)
                        out.append(b"")
                    sids += _sessions(frame)
                case _:
                    pass  # typing, events, acks: nothing in y-websocket carries them
        if sids:
            out[at] = self._awareness(room, sids)
        return [data for data in out if data]

    def _messages(self, batch: list[bytes]) -> list[bytes]:
        """y-websocket carries exactly one y-message per WebSocket message, so a batch becomes
        several messages; but a run of queued document updates (a busy room, a client that
        lags) becomes one update message holding their merge. Fifty editors then cost a
        reader one message per writer turn, not one per edit."""
        out: list[bytes] = []
        run: list[bytes] = []
        for data in batch:
            if data.startswith(UPDATE_PREFIX):
                run.append(data)
                continue
            if run:
                out.append(_merged(run))
                run = []
            out.append(data)
        if run:
            out.append(_merged(run))
        return out

    def _awareness(self, room: MemberRoom, sids: list[str]) -> bytes:
        entries = [e for sid in dict.fromkeys(sids) if sid != self.id and (e := room.awareness_entry(sid)) is not None]
        return encode_awareness(entries) if entries else b""

    def query_awareness(self, member: Member) -> None:
        self.send_bytes(encode_y(YQueryAwareness()))

    def _send_awareness(self, member: Member, sids: list[str]) -> None:
        self.send_bytes(self._awareness(member.room, sids) or encode_awareness([]))

    def _leave_rooms(self) -> None:
        super()._leave_rooms()
        self._member = None  # the member refers back to this session: no cycle to wait for the collector

    def _ping_frame(self) -> bytes | None:
        # Renew everyone's awareness (Yjs forgets states after 30 s) and keep y-websocket's
        # 30 s message timeout from firing on a quiet room.
        member = self._member
        if member is None:
            return None
        member.room.renew_awareness()
        return self._awareness(member.room, member.room.awareness_sessions()) or encode_awareness([])

    def send_error(self, ref: int | None, channel: int | None, code: int, message: str) -> None:
        logger.info("yjs session %s: %s (%d)", self.id, message, code)

    def close_channel(self, member: Member, code: int, message: str) -> None:
        """The room ends the membership (spec §13: the connection is the membership): a
        close whose code says whether to retry, not a refusal of anything the client sent."""
        self._members.pop(member.channel, None)
        logger.info("yjs session %s: the room ended it: %s (%d)", self.id, message, code)
        self.close(close_code_for(code), message)

    def access_changed(self, member: Member) -> None:
        """y-websocket has no way to say so (spec §13): from now on the client's updates are
        applied or ignored as its new access says."""
        logger.info("yjs session %s: access to %r is now %s", self.id, member.room.name, member.access.name.lower())


UPDATE_PREFIX = encode_sync(YSyncStep.UPDATE, b"")[:2]
MERGE_CACHE_SIZE = 256
_merge_cache: dict[tuple[bytes, ...], bytes] = {}


def _update_message(frame: Frame) -> bytes:
    assert isinstance(frame, Update)
    return encode_sync(YSyncStep.UPDATE, frame.update)


def _sync_step2_message(frame: Frame) -> bytes:
    assert isinstance(frame, SyncStep2)
    return encode_sync(YSyncStep.STEP2, frame.update)


def _update_payload(message: bytes) -> bytes:
    """The update in a sync-update y-message this module encoded: prefix, varuint length."""
    pos, shift, length = 2, 0, 0
    while True:
        byte = message[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return message[pos : pos + length]


def _merged(messages: list[bytes]) -> bytes:
    """One update message for a run of them. The members of a room mostly queue the same
    runs (the same shared message objects), so merges are cached for the next member."""
    if len(messages) == 1:
        return messages[0]
    key = tuple(messages)
    merged = _merge_cache.get(key)
    if merged is None:
        merged = encode_sync(YSyncStep.UPDATE, merge_updates([_update_payload(m) for m in messages]))
        if len(_merge_cache) >= MERGE_CACHE_SIZE:
            del _merge_cache[next(iter(_merge_cache))]
        _merge_cache[key] = merged
    return merged


def _sessions(frame: PresenceSnapshot | PresenceDiff | Cursors) -> list[str]:
    """The sessions whose awareness entry a presence or cursor frame changes."""
    if isinstance(frame, PresenceSnapshot):
        return [e.session for e in frame.entries]
    if isinstance(frame, PresenceDiff):
        return [e.session for e in frame.joined] + [u.session for u in frame.updated] + list(frame.left)
    return [m.session for m in frame.moves]


def _parse_state(text: str, max_bytes: int) -> tuple[dict[str, Any] | None, int]:
    """An awareness state and its encoded size (0 for a null state), refused (RequestError)
    unless every protocol can carry it and it is within `max_bytes` (spec §13)."""
    if len(text) > MAX_AWARENESS_STATE:
        raise RequestError(ErrorCode.FRAME_TOO_LARGE, "awareness state too large")
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RequestError(ErrorCode.INVALID_FIELD, "awareness state is not JSON") from exc
    if state is None:
        return None, 0
    if not isinstance(state, dict):
        state = {"value": state}
    try:
        check_value(state, MAX_DEPTH)
    except ProtocolError as exc:
        raise RequestError(exc.code, exc.message) from exc
    return state, presence_size("presence state", state, max_bytes)  # before the client id is claimed
