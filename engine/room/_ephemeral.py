"""A room's ephemeral strand: presence, cursors, typing, and Yjs awareness (spec §5.4, §13)."""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio

from plait.protocol import (
    JSON_FRAME_OVERHEAD,
    AwarenessEntry,
    ChannelFrame,
    CursorPosition,
    Cursors,
    ErrorCode,
    Frame,
    PresenceDiff,
    PresenceEntry,
    PresenceSnapshot,
    PresenceState,
    TypingState,
    wire_size,
)

from .._config import EngineConfig
from .._errors import RequestError
from .._hooks import Identity
from .._metrics import NO_METRICS, Metrics
from .._wakeups import sleep_about
from ._awareness import Awareness
from ._chunks import chunks, prefix
from ._fanout import Fanout
from ._member import Member, MemberSession
from ._peerstate import AwarenessClaim, BadPeerState, PeerState, PresenceRecord, decode_peer_state, encode_peer_state
from ._presence import ENTRY_OVERHEAD, PresenceBook

logger = logging.getLogger("plait.room")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON")


def presence_size(what: str, value: Any, limit: int) -> int:
    """The encoded size of a presence state or cursor position, on the wire where it is
    longer (msgpack or JSON: `wire_size`, spec §5.4).

    Raises:
        RequestError: PRESENCE_TOO_LARGE, over `limit` bytes.
    """
    size = wire_size(value)
    if size > limit:
        raise RequestError(
            ErrorCode.PRESENCE_TOO_LARGE,
            f"a {what} of {size} bytes is over this server's {limit}-byte limit (limits.max_presence_bytes); nothing changed",
        )
    return size


class Ephemeral:
    """Presence, cursors and typing: the ticker that coalesces them, the sweeper that expires
    them, and what Yjs clients see of them as awareness. The room runs `ticker` and `sweeper`
    in its nursery and tells it who joined and left.

    Args:
        name: the room's name.
        config: timings.
        members: the room's members by session: the room's own dict, read here, never changed.
        fanout: how each tick's frames reach the members.
        metrics: counters.
        replicate: with several processes serving the room, what tells the peers about the
            ephemeral state of this process's own sessions: called at most once per flush
            with a body (`_peerstate.py`) of the changes since its last call, on the Trio
            thread, from the ticker (or `flush_before_event`): it must neither block nor
            raise (what it raises fails the room). A body it cannot deliver leaves the
            peers behind until they get `local_state()` again. None: one process (nothing
            is kept for it).

    Sessions of peer processes ("remote") come in through `apply_remote`, `drop_process`,
    and then appear to members exactly like local ones: the same presence book, cursors,
    typing and awareness. Their owner is the authority on them: it runs their grace and
    expiry and sends their leave; they are never expired here (drop_process excepted).
    """

    def __init__(
        self,
        name: str,
        config: EngineConfig,
        members: dict[MemberSession, Member],
        fanout: Fanout,
        metrics: Metrics = NO_METRICS,
        replicate: Callable[[bytes], None] | None = None,
    ) -> None:
        self.name = name
        self._metrics = metrics
        self._config = config
        self._members = members
        self._fanout = fanout
        self._presence = PresenceBook()
        self._cursors: dict[str, tuple[Any, int]] = {}
        """Session -> (its cursor position, the bytes its CursorPosition takes at most)."""
        self._moved: dict[str, tuple[Any, int]] = {}
        self._cursor_bytes = 0
        """Of every cursor in `_cursors`: with the presence, what a joiner is sent."""
        self._budget = config.max_message_bytes - JSON_FRAME_OVERHEAD
        """What one frame's list may take, so that the frame fits in a message in either form
        (spec §3.2, §3.5: a JSON frame names its fields)."""
        self._typing: dict[str, float] = {}
        self._typing_changed = False
        self._tick_wanted = trio.Event()
        self._deadlines_changed = trio.Event()
        self._awareness = Awareness()
        self._awareness_waiting: dict[int, Member] = {}
        """Client id -> a Yjs member refused it because a disconnected session held it."""
        self._replicate = replicate
        self._owner: dict[str, str] = {}
        """Session -> the peer process it belongs to, for remote sessions only (kept until
        the flush that announces its leave, so that the leave is not sent back)."""
        self._out_lingering: set[str] = set()
        """Local sessions that disconnected since the last replicate (with `replicate` only)."""
        self._out_awareness: set[str] = set()
        """Local Yjs sessions whose claim changed since the last replicate (idem)."""
        self._sent_typing: tuple[str, ...] = ()
        """The local typers the peers were last told of."""

    # -- membership (told by the room) -------------------------------------------------------

    def joined(self, session: MemberSession) -> None:
        self._presence.join(session.id, session.identity)
        if not session.OWN_AWARENESS:
            self._awareness.add_native(session.id)
        self.want_tick()

    def join_frames(self, channel: int) -> list[Frame]:
        """What a joining member is sent of the ephemeral state (spec §5.2)."""
        frames = self._snapshot_frames(channel)
        if self._cursors:
            frames += self._cursor_frames(channel, self._cursors)
        if self._typing:
            frames.append(self._typing_frame(channel))
        return frames

    # -- frames that fit in a message (spec §3.2, §5.4) -------------------------------------

    def _snapshot_frames(self, channel: int) -> list[Frame]:
        """The presence snapshot; what does not fit in its message follows as diffs that add
        the rest (spec §5.4)."""
        parts = chunks(self._presence.sessions(), self._presence.entry_bytes, self._budget)
        frames: list[Frame] = [PresenceSnapshot(channel, tuple(map(self._presence.entry, next(parts))))]
        frames += [PresenceDiff(channel, tuple(map(self._presence.entry, part)), (), ()) for part in parts]
        return frames

    def _diff_frames(self, joined: tuple[PresenceEntry, ...], updated: tuple[PresenceState, ...],
                     left: tuple[str, ...]) -> list[Frame]:
        """One tick's diff, as several consecutive diffs if it does not fit in a message."""
        items: list[PresenceEntry | PresenceState | str] = [*joined, *updated, *left]
        if len(items) <= 64 and sum(map(self._diff_item_bytes, items)) <= self._budget:
            return [PresenceDiff(0, joined, updated, left)]  # the usual case, in one frame
        return [
            PresenceDiff(
                0,
                tuple(i for i in part if isinstance(i, PresenceEntry)),
                tuple(i for i in part if isinstance(i, PresenceState)),
                tuple(i for i in part if isinstance(i, str)),
            )
            for part in chunks(items, self._diff_item_bytes, self._budget)
        ]

    def _diff_item_bytes(self, item: PresenceEntry | PresenceState | str) -> int:
        if isinstance(item, PresenceEntry):
            return self._presence.entry_bytes(item.session)
        if isinstance(item, PresenceState):
            return self._presence.state_bytes(item.session)
        return len(item) + ENTRY_OVERHEAD

    def _cursor_frames(self, channel: int, cursors: dict[str, tuple[Any, int]]) -> list[Frame]:
        return [
            Cursors(channel, tuple(CursorPosition(sid, cursors[sid][0]) for sid in part))
            for part in chunks(list(cursors), lambda sid: cursors[sid][1], self._budget)
        ]

    def _typing_frame(self, channel: int) -> TypingState:
        """The full set of typers, or as many as one frame holds, those typing longest first
        (spec §5.5)."""
        return TypingState(channel, tuple(prefix(list(self._typing), lambda sid: len(sid) + ENTRY_OVERHEAD, self._budget)))

    def removed(self, member: Member) -> None:
        """The member is no longer the room's: its cursor and typing go at once."""
        sid = member.session.id
        dropped = self._cursors.pop(sid, None)
        if dropped is not None:
            self._cursor_bytes -= dropped[1]
        if dropped is not None or sid in self._moved:
            self._moved[sid] = (None, 1 + len(sid) + ENTRY_OVERHEAD)
            self._awareness.changed(sid)
        if self._typing.pop(sid, None) is not None:
            self._typing_changed = True
        if self._awareness_waiting:
            self._awareness_waiting = {c: m for c, m in self._awareness_waiting.items() if m is not member}

    def left(self, sid: str, *, disconnected: bool) -> None:
        """Its presence leaves at once, or lingers for the grace if it disconnected."""
        if disconnected:
            self._presence.linger(sid, trio.current_time() + self._config.presence_grace)
            self._deadlines_changed.set()
            if self._replicate is not None:
                self._out_lingering.add(sid)
        else:
            self._presence.leave(sid)

    def presence(self) -> tuple[PresenceEntry, ...]:
        return self._presence.snapshot()

    # -- presence, cursors, typing ----------------------------------------------------------

    def set_presence(
        self, member: Member, state: dict[str, Any] | None, patch: dict[str, Any] | None, size: int | None = None
    ) -> None:
        """Replace the member's presence state, or merge `patch` into it (spec §4.2). `size`:
        the state's `presence_size`, when the caller already measured it (a Yjs session, to
        refuse an awareness state before it claims a client id).

        Raises:
            RequestError: PRESENCE_TOO_LARGE, the state would take more than the server's
                `limits.max_presence_bytes` (spec §5.4); it is unchanged.
        """
        if self._members.get(member.session) is not member:
            return  # a frame that raced the end of its membership
        sid = member.session.id
        new = dict(state) if state is not None else self._presence.patched(sid, patch or {})
        if size is None or state is None:
            size = self._check_size("presence state", new)
        self._check_room_budget(size - self._presence.raw_state_bytes(sid))
        self._presence.set(sid, new, size)
        self._awareness.changed(sid)
        self.want_tick()

    def move_cursor(self, member: Member, position: Any) -> None:
        """Raises RequestError PRESENCE_TOO_LARGE, as `set_presence` does."""
        if self._members.get(member.session) is not member:
            return  # a frame that raced the end of its membership
        sid = member.session.id
        moved = (position, self._check_size("cursor position", position) + len(sid) + ENTRY_OVERHEAD)
        old = self._cursors.get(sid, (None, 0))[1]
        if position is None:
            self._cursors.pop(sid, None)
            self._cursor_bytes -= old
        else:
            self._check_room_budget(moved[1] - old)
            self._cursors[sid] = moved
            self._cursor_bytes += moved[1] - old
        self._moved[sid] = moved
        self._awareness.changed(sid)
        self.want_tick()

    def set_typing(self, member: Member, on: bool) -> None:
        if self._members.get(member.session) is not member:
            return  # a frame that raced the end of its membership
        sid = member.session.id
        if on:
            if sid not in self._typing:
                self._typing_changed = True
            self._typing[sid] = trio.current_time() + self._config.typing_expiry
            self._deadlines_changed.set()
        elif self._typing.pop(sid, None) is not None:
            self._typing_changed = True
        if self._typing_changed:
            self.want_tick()

    def _check_room_budget(self, growth: int) -> None:
        """A room's presence and cursors together stay within max_room_presence_bytes: what
        every joiner is sent at once (spec §5.4)."""
        limit = self._config.max_room_presence_bytes
        if self._over_budget(growth):
            raise RequestError(
                ErrorCode.PRESENCE_TOO_LARGE,
                f"this room's presence and cursors would pass the server's {limit}-byte limit for a room; nothing changed",
            )

    def _over_budget(self, growth: int) -> bool:
        limit = self._config.max_room_presence_bytes
        return growth > 0 and self._presence.total_bytes + self._cursor_bytes + growth > limit

    def _check_size(self, what: str, value: Any) -> int:
        return presence_size(what, value, self._config.presence_limit)

    def want_tick(self) -> None:
        self._tick_wanted.set()

    def flush_before_event(self, session: str) -> None:
        """Send now what waits for the tick if `session`'s own presence changed: what a member
        did before it published is seen first (spec §5.4; a name set just before a chat
        message names it, instead of arriving a tick later)."""
        if self._presence.changed(session):
            self._flush_ephemeral()

    async def ticker(self) -> None:
        while True:
            await self._tick_wanted.wait()
            await sleep_about(max(self._config.tick, len(self._members) / self._config.ephemeral_messages_per_second))
            self._tick_wanted = trio.Event()
            self._flush_ephemeral()

    def _flush_ephemeral(self) -> None:
        frames: list[ChannelFrame] = []
        joined: tuple[PresenceEntry, ...] = ()
        updated: tuple[PresenceState, ...] = ()
        left: tuple[str, ...] = ()
        moved = self._moved
        typing_changed = self._typing_changed
        if self._presence.dirty:
            joined, updated, left = self._presence.take_diff()
            for sid in left:
                self._awareness.changed(sid)  # its entry becomes a null state
            frames += map(ChannelFrame, self._diff_frames(joined, updated, left))
        if moved:
            frames += map(ChannelFrame, self._cursor_frames(0, moved))
            self._moved = {}
        if typing_changed:
            self._typing_changed = False
            frames.append(ChannelFrame(self._typing_frame(0)))
        if self._replicate is not None:
            self._send_local(joined, updated, left, moved, typing_changed)
        if self._owner:
            for sid in left:
                self._owner.pop(sid, None)  # its leave is announced: nothing is kept for it
        if not frames:
            return
        self._fanout.ephemeral(self.name, list(self._members.values()), frames, self._refresher)
        self._metrics.add("fanout_frames", len(self._members) * len(frames), "ephemeral")
        for sid in left:  # its null awareness state went out with the diff
            client_id = self._awareness.release(sid)
            waiting = self._awareness_waiting.pop(client_id, None) if client_id is not None else None
            if waiting is not None and self._members.get(waiting.session) is waiting:
                waiting.session.query_awareness(waiting)

    def _refresher(self, member: Member) -> Callable[[], list[Frame]]:
        def full_state() -> list[Frame]:
            if self._members.get(member.session) is not member:
                return []
            ch = member.channel
            return [*self._snapshot_frames(ch), *self._cursor_frames(ch, self._cursors), self._typing_frame(ch)]

        return full_state

    async def sweeper(self) -> None:
        while True:
            deadlines = [t for t in (self._presence.next_expiry(), *self._typing.values()) if t is not None]
            with trio.move_on_at(min(deadlines, default=math.inf)):
                await self._deadlines_changed.wait()
                self._deadlines_changed = trio.Event()
            now = trio.current_time()
            if self._presence.expire(now):
                self.want_tick()
            expired = [s for s, t in self._typing.items() if t <= now]
            for sid in expired:
                del self._typing[sid]
            if expired:
                self._typing_changed = True
                self.want_tick()

    # -- Yjs awareness (spec §13) ------------------------------------------------------------

    def claim_awareness(self, member: Member, client_id: int, clock: int, hidden: bool) -> bool:
        """A Yjs member's awareness entry for `client_id` (`hidden`: a null state). False if
        it may not speak for that id, or the clock does not move on; then it is ignored
        (spec §13: a client speaks only for itself). An id whose holder disconnected passes
        to a session of the same identity at once (a quick reconnect), and to anyone once
        the holder's presence has left; such a session is asked to send its state again."""
        sid = member.session.id
        holder = self._awareness.holder(client_id)
        if holder is not None and holder != sid and not hidden and not self._awareness.bound(sid):
            if self._may_take_over(holder, member.session.identity):
                self._awareness.release(holder)
            else:
                self._awareness_waiting[client_id] = member
        claimed = self._awareness.claim(sid, client_id, clock, hidden)
        if claimed and self._replicate is not None:
            self._out_awareness.add(sid)
        return claimed

    def awareness_id(self, member: Member) -> int | None:
        """The client id a Yjs member speaks for (spec §13), None before its first state."""
        return self._awareness.bound_id(member.session.id)

    def _may_take_over(self, holder: str, identity: Identity) -> bool:
        if holder in self._owner:
            if not self._presence.lingering(holder) and holder in self._presence:
                return False  # connected to a peer process: a client speaks only for itself
        elif any(m.session.id == holder for m in self._members.values()):
            return False  # still connected: a client speaks only for itself
        return holder not in self._presence or self._presence.entry(holder).identity.get("id") == identity.get("id")

    def renew_awareness(self) -> None:
        """Yjs clients drop states not renewed within 30 s: renew those of native members."""
        self._awareness.renew()

    def awareness_entry(self, sid: str) -> AwarenessEntry | None:
        """The awareness a Yjs client sees for a session: its presence state, its cursor and
        the identity the server stamped (which no client can set); a null state once it
        left; None if it shows none (a Yjs client that has not spoken for itself)."""
        cached = self._awareness.cached(sid)
        if cached is not None:
            return cached
        state_json = None
        if sid in self._presence:
            entry = self._presence.entry(sid)
            state: dict[str, Any] = dict(entry.state)
            if sid in self._cursors:
                state["cursor"] = self._cursors[sid][0]
            state["identity"] = entry.identity
            state_json = json.dumps(state, default=_json_default, allow_nan=False)
        return self._awareness.entry(sid, state_json)

    def awareness_sessions(self) -> list[str]:
        return self._presence.sessions()

    # -- peer processes (scale-out): what this process's sessions do, what theirs do -------

    def _send_local(
        self,
        joined: tuple[PresenceEntry, ...],
        updated: tuple[PresenceState, ...],
        left: tuple[str, ...],
        moved: dict[str, tuple[Any, int]],
        typing_changed: bool,
    ) -> None:
        """Tell the peers what this flush changed of local sessions (never what came from a
        peer: that is theirs to tell)."""
        assert self._replicate is not None
        owner, book = self._owner, self._presence
        presence: list[PresenceRecord] = []
        for e in joined:
            if e.session not in owner:
                presence.append(self._record(e.session, e.identity, e.state))
        for u in updated:
            if u.session not in owner:
                presence.append(self._record(u.session, None, u.state))
        told = {r.session for r in presence}
        for sid in self._out_lingering:
            if sid in book and sid not in told and sid not in owner:
                presence.append(self._record(sid, None, None))
        self._out_lingering.clear()
        typing = None
        if typing_changed:
            typers = tuple(s for s in self._typing if s not in owner)
            if typers != self._sent_typing:
                typing = self._sent_typing = typers
        claims = tuple(self._claims(self._out_awareness))
        self._out_awareness.clear()
        state = PeerState(
            presence=tuple(presence),
            left=tuple(s for s in left if s not in owner),
            cursors=tuple((s, m[0]) for s, m in moved.items() if s not in owner),
            typing=typing,
            awareness=claims,
        )
        if state:
            self._replicate(encode_peer_state(state))

    def _record(self, sid: str, identity: dict[str, Any] | None, state: dict[str, Any] | None) -> PresenceRecord:
        return PresenceRecord(sid, identity, state, self._presence.lingering(sid), not self._awareness.is_native(sid))

    def _claims(self, sids: Iterable[str]) -> Iterator[AwarenessClaim]:
        for sid in sids:
            shown = self._awareness.shown(sid)
            if shown is not None and sid in self._presence and sid not in self._owner:
                yield AwarenessClaim(sid, *shown)

    def local_state(self) -> bytes:
        """A body with the whole state of this process's own sessions (presence, cursors,
        typing, awareness claims), for a peer that just loaded the room; its `apply_remote`
        replaces whatever it held for this process."""
        owner, book = self._owner, self._presence
        local = [sid for sid in book.sessions() if sid not in owner]
        return encode_peer_state(PeerState(
            full=True,
            presence=tuple(self._record(sid, book.entry(sid).identity, book.state(sid)) for sid in local),
            cursors=tuple((sid, c[0]) for sid, c in self._cursors.items() if sid not in owner),
            typing=tuple(s for s in self._typing if s not in owner),
            awareness=tuple(self._claims(local)),
        ))

    def apply_remote(self, process: str, body: bytes) -> None:
        """Merge what peer `process` says of its sessions (a body of its `replicate` or
        `local_state`): its sessions then appear to members exactly like local ones, from
        the next tick. A body that does not decode is logged and dropped whole; a record
        that names a session that is not that peer's, or that would pass a size limit
        (`max_presence_bytes` per state or cursor, `max_room_presence_bytes` for the room),
        is logged and skipped. Never raises (anything escaping is a bug)."""
        try:
            state = decode_peer_state(body)
        except BadPeerState as exc:
            logger.warning("room %r: dropped a presence body from process %r: %s", self.name, process, exc)
            return
        if self._merge(process, state):
            self.want_tick()

    def drop_process(self, process: str) -> None:
        """Every session of `process` leaves (its presence, cursor and typing): the peer is
        gone (its heartbeat lapsed) or no longer holds the room. Members see an ordinary leave
        at the next tick."""
        gone = [sid for sid, p in self._owner.items() if p == process and sid in self._presence]
        for sid in gone:
            self._remote_leave(sid)
        if gone:
            logger.info("room %r: process %r left the room, and its %d sessions with it", self.name, process, len(gone))
            self.want_tick()

    def _merge(self, process: str, state: PeerState) -> bool:
        changed = False
        if state.full:  # what the body does not list is gone
            listed = {r.session for r in state.presence}
            for sid in [s for s, p in self._owner.items() if p == process and s not in listed and s in self._presence]:
                self._remote_leave(sid)
                changed = True
            pointed = {sid for sid, _ in state.cursors}
            for sid in [s for s in self._cursors if self._owner.get(s) == process and s not in pointed]:
                changed |= self._remote_cursor(process, sid, None)
        for record in state.presence:
            changed |= self._remote_presence(process, record)
        for sid in state.left:
            if self._owner.get(sid) == process and sid in self._presence:
                self._remote_leave(sid)
                changed = True
        for sid, position in state.cursors:
            changed |= self._remote_cursor(process, sid, position)
        if state.typing is not None or state.full:
            changed |= self._remote_typing(process, state.typing or ())
        for claim in state.awareness:
            changed |= self._remote_claim(process, claim)
        return changed

    def _theirs(self, process: str, sid: str, what: str) -> bool:
        """Whether `sid` is a present session of `process` (else the record is skipped:
        silently if it is one that just left, or one this process never heard of)."""
        owner = self._owner.get(sid)
        if owner == process:
            return sid in self._presence
        if owner is not None or sid in self._presence:
            logger.warning("room %r: process %r sent a %s for session %r, not one of its own", self.name, process, what, sid)
        return False

    def _remote_presence(self, process: str, record: PresenceRecord) -> bool:
        sid, book = record.session, self._presence
        owner = self._owner.get(sid)
        changed = False
        if (owner is None and sid in book) or owner not in (None, process):
            logger.warning("room %r: process %r sent presence for session %r, not one of its own", self.name, process, sid)
            return False
        if sid not in book:
            if record.identity is None:
                return False  # a change of a session whose join this process missed: its full state will say
            if wire_size(record.identity) > self._config.presence_limit:
                logger.warning("room %r: process %r sent an identity over the size limit (session %r)", self.name, process, sid)
                return False
            # A peer's reconnecting session displaces a lingering one of its identity here too,
            # as its owner does: members of every process see the same handover.
            book.join(sid, record.identity, displace=not record.lingering)
            self._owner[sid] = process
            if not record.own_awareness:
                self._awareness.add_native(sid)
            changed = True
        if record.state is not None and (changed or record.state != book.state(sid)):
            size = wire_size(record.state)
            if size > self._config.presence_limit or self._over_budget(size - book.raw_state_bytes(sid)):
                logger.warning("room %r: a presence state of %d bytes from process %r is over a limit (session %r); skipped",
                               self.name, size, process, sid)
            else:
                book.set(sid, dict(record.state), size)
                self._awareness.changed(sid)
                changed = True
        if record.lingering and not book.lingering(sid):
            book.linger(sid, math.inf)  # its owner runs the grace and sends the leave
        return changed

    def _remote_leave(self, sid: str) -> None:
        """A peer's session leaves: its presence, cursor and typing, at once."""
        self._presence.leave(sid)
        dropped = self._cursors.pop(sid, None)
        if dropped is not None:
            self._cursor_bytes -= dropped[1]
        if dropped is not None or sid in self._moved:
            self._moved[sid] = (None, 1 + len(sid) + ENTRY_OVERHEAD)
        if self._typing.pop(sid, None) is not None:
            self._typing_changed = True

    def _remote_cursor(self, process: str, sid: str, position: Any) -> bool:
        if not self._theirs(process, sid, "cursor"):
            return False
        old = self._cursors.get(sid, (None, 0))[1]
        if position is None:
            if self._cursors.pop(sid, None) is None:
                return False
            self._cursor_bytes -= old
            moved: tuple[Any, int] = (None, 1 + len(sid) + ENTRY_OVERHEAD)
        else:
            size = wire_size(position)
            moved = (position, size + len(sid) + ENTRY_OVERHEAD)
            if size > self._config.presence_limit or self._over_budget(moved[1] - old):
                logger.warning("room %r: a cursor of %d bytes from process %r is over a limit (session %r); skipped",
                               self.name, size, process, sid)
                return False
            self._cursors[sid] = moved
            self._cursor_bytes += moved[1] - old
        self._moved[sid] = moved
        self._awareness.changed(sid)
        return True

    def _remote_typing(self, process: str, typers: tuple[str, ...]) -> bool:
        """The peer's typers are exactly `typers` now (its owner expires them)."""
        now = {sid for sid in typers if self._theirs(process, sid, "typing")}
        changed = False
        for sid in [s for s in self._typing if self._owner.get(s) == process and s not in now]:
            del self._typing[sid]
            changed = True
        for sid in typers:
            if sid in now and sid not in self._typing:
                self._typing[sid] = math.inf
                changed = True
        self._typing_changed |= changed
        return changed

    def _remote_claim(self, process: str, claim: AwarenessClaim) -> bool:
        """A peer's Yjs session shows `claim.client_id`. The peer checked it may (spec §13);
        an id a session here still held passes to it silently when that session is gone or
        lingers (a reconnect to another process: no null state in between)."""
        sid = claim.session
        if not self._theirs(process, sid, "awareness claim"):
            return False
        if self._awareness.bound_id(sid) not in (None, claim.client_id):
            logger.warning("room %r: process %r's session %r claims a second awareness id", self.name, process, sid)
            return False
        holder = self._awareness.holder(claim.client_id)
        if holder is not None and holder != sid:
            if holder not in self._owner and any(m.session.id == holder for m in self._members.values()):
                logger.info("room %r: process %r's session %r claims awareness id %d, held by connected session %r here",
                            self.name, process, sid, claim.client_id, holder)
                return False
            self._awareness.release(holder)
        return self._awareness.adopt(sid, claim.client_id, claim.clock, claim.hidden)
