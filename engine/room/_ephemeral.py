"""A room's ephemeral strand: presence, cursors, typing, and Yjs awareness (spec §5.4, §13)."""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from plait.protocol import (
    FRAME_OVERHEAD,
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
    encoded_size,
)

from .._config import EngineConfig
from .._errors import RequestError
from .._hooks import Identity
from .._metrics import NO_METRICS, Metrics
from ._awareness import Awareness
from ._chunks import chunks, prefix
from ._fanout import Fanout
from ._member import Member, MemberSession
from ._presence import ENTRY_OVERHEAD, PresenceBook

logger = logging.getLogger("plait.room")


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON")


def presence_size(what: str, value: Any, limit: int) -> int:
    """The encoded size of a presence state or cursor position (spec §5.4).

    Raises:
        RequestError: PRESENCE_TOO_LARGE, over `limit` bytes.
    """
    size = encoded_size(value)
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
    """

    def __init__(
        self, name: str, config: EngineConfig, members: dict[MemberSession, Member], fanout: Fanout, metrics: Metrics = NO_METRICS
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
        self._budget = config.max_message_bytes - FRAME_OVERHEAD
        """What one frame's list may take, so that the frame fits in a message (spec §3.2)."""
        self._typing: dict[str, float] = {}
        self._typing_changed = False
        self._tick_wanted = trio.Event()
        self._deadlines_changed = trio.Event()
        self._awareness = Awareness()
        self._awareness_waiting: dict[int, Member] = {}
        """Client id -> a Yjs member refused it because a disconnected session held it."""

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
        if growth > 0 and self._presence.total_bytes + self._cursor_bytes + growth > limit:
            raise RequestError(
                ErrorCode.PRESENCE_TOO_LARGE,
                f"this room's presence and cursors would pass the server's {limit}-byte limit for a room; nothing changed",
            )

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
            await trio.sleep(max(self._config.tick, len(self._members) / self._config.ephemeral_messages_per_second))
            self._tick_wanted = trio.Event()
            self._flush_ephemeral()

    def _flush_ephemeral(self) -> None:
        frames: list[ChannelFrame] = []
        left: tuple[str, ...] = ()
        if self._presence.dirty:
            joined, updated, left = self._presence.take_diff()
            for sid in left:
                self._awareness.changed(sid)  # its entry becomes a null state
            frames += map(ChannelFrame, self._diff_frames(joined, updated, left))
        if self._moved:
            frames += map(ChannelFrame, self._cursor_frames(0, self._moved))
            self._moved = {}
        if self._typing_changed:
            self._typing_changed = False
            frames.append(ChannelFrame(self._typing_frame(0)))
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
        return self._awareness.claim(sid, client_id, clock, hidden)

    def awareness_id(self, member: Member) -> int | None:
        """The client id a Yjs member speaks for (spec §13), None before its first state."""
        return self._awareness.bound_id(member.session.id)

    def _may_take_over(self, holder: str, identity: Identity) -> bool:
        if any(m.session.id == holder for m in self._members.values()):
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
