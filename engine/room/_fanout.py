"""The Fanout seam: how a room's frames reach its members (architecture: Engine, Scale-out).

A room hands each frame to the fan-out once, encoded once (ChannelFrame), with the members it
is for; the fan-out hands the same bytes to every member's session queue. In-process, that is
all (LocalFanout). Across processes, a fan-out also carries the frame to the room's members
elsewhere: document updates on a stream that is never skipped, ephemeral frames on pub/sub;
hence one method per kind of frame, and the room's name with each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from plait.protocol import ChannelFrame, ErrorCode

from .._hooks import application_error
from ._member import Member, Refresh

logger = logging.getLogger("plait.room")


class Fanout(Protocol):
    def document(self, room: str, members: Sequence[Member], frames: Sequence[ChannelFrame]) -> None:
        """Document updates, in order, to `members` (everyone but their origin): never
        dropped; a session that cannot take them is closed (TOO_SLOW)."""

    def event(self, room: str, members: Sequence[Member], frame: ChannelFrame) -> None:
        """A sequenced event, to every member."""

    def ephemeral(
        self, room: str, members: Sequence[Member], frames: Sequence[ChannelFrame], refresh: Callable[[Member], Refresh]
    ) -> None:
        """Presence, cursor and typing frames of one tick, to every member: a session that
        lags may drop them for its member's `refresh(member)()`, the full state (latest wins)."""


class LocalFanout:
    """In-process fan-out: straight to each member's session."""

    __slots__ = ()

    def document(self, room: str, members: Sequence[Member], frames: Sequence[ChannelFrame]) -> None:
        for shared in frames:
            for member in members:
                member.session.deliver(member, shared)

    def event(self, room: str, members: Sequence[Member], frame: ChannelFrame) -> None:
        for member in members:
            member.session.deliver(member, frame)

    def ephemeral(
        self, room: str, members: Sequence[Member], frames: Sequence[ChannelFrame], refresh: Callable[[Member], Refresh]
    ) -> None:
        shared = list(frames)
        for member in members:
            member.session.deliver_ephemeral(member, shared, refresh(member))


class ContainedFanout:
    """A fan-out given to the engine (`Engine(fanout=...)`), so that nothing it raises reaches
    the room: the failure is logged, and the members it was for lose their channel
    (INTERNAL), so that they join again and resync (spec §5.2, §7) instead of missing frames
    unnoticed. The room's own change stands (applied, stored, acknowledged)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: Fanout) -> None:
        self._inner = inner

    def document(self, room: str, members: Sequence[Member], frames: Sequence[ChannelFrame]) -> None:
        self._contained(room, members, "document", lambda: self._inner.document(room, members, frames))

    def event(self, room: str, members: Sequence[Member], frame: ChannelFrame) -> None:
        self._contained(room, members, "event", lambda: self._inner.event(room, members, frame))

    def ephemeral(
        self, room: str, members: Sequence[Member], frames: Sequence[ChannelFrame], refresh: Callable[[Member], Refresh]
    ) -> None:
        self._contained(room, members, "ephemeral", lambda: self._inner.ephemeral(room, members, frames, refresh))

    @staticmethod
    def _contained(room: str, members: Sequence[Member], what: str, fan_out: Callable[[], None]) -> None:
        try:
            fan_out()
        except BaseException as exc:
            if not application_error(exc):
                raise
            _failed(room, members, what, exc)


def _failed(room: str, members: Sequence[Member], what: str, exc: BaseException) -> None:
    logger.error("room %r: the fan-out of a %s frame failed; its members join again", room, what, exc_info=exc)
    for member in list(members):
        member.room.remove_member(member, disconnected=False)
        member.session.close_channel(member, ErrorCode.INTERNAL, "the room's fan-out failed; join again to resync")
