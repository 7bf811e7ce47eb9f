"""What a room's parts share: the room's state, its members, and the two small interfaces
between a room and the sessions in it.

A room never imports a session (dependencies run one way: sessions -> room). It reaches a
member's connection only through `MemberSession`, which the sessions layer implements; a
session reaches its room through `MemberRoom`, which Room implements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from plait.protocol import Access, AwarenessEntry, ChannelFrame, Frame

from .._hooks import Identity


class RoomState(Enum):
    LOADING = "loading"
    LIVE = "live"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


Refresh = Callable[[], list[Frame]]
"""A member's full ephemeral state, for a session that lags (deliver_ephemeral)."""


class MemberSession(Protocol):
    """What a room needs of a member's session: who it is, and how frames reach it."""

    id: str
    identity: Identity
    OWN_AWARENESS: bool
    """Whether the client speaks its own Yjs awareness (y-websocket), or the room derives it
    from presence (spec §13)."""
    CONFIRMS_BY_ECHO: bool
    """Whether the client's updates are confirmed by sending them back once durable
    (y-websocket, spec §13) rather than by acks (native, §4.1)."""

    def read_values(self, values: int) -> None:
        """Count what was read of the client's last message beyond its bytes (values, spec
        §3.4; a document update's structs and deleted ranges, §5.3) toward its read rate
        (§5.8)."""

    def deliver(self, member: Member, shared: ChannelFrame) -> None:
        """A frame fanned out to the whole room, encoded once."""

    def deliver_ephemeral(self, member: Member, shared: list[ChannelFrame], refresh: Refresh) -> None:
        """One tick's presence/cursor/typing frames: may be coalesced into `refresh()` when
        lagging."""

    def deliver_frames(self, member: Member, frames: list[Frame]) -> None:
        """Frames for this member only (join sequence, acks, answers)."""

    def deliver_ack(self, member: Member, ref: int, value: int | None) -> None:
        """The answer to a request, once its effect is durable (spec §4.1)."""

    def send_error(self, ref: int | None, channel: int | None, code: int, message: str) -> None:
        """An error frame outside any member's ordered answers."""

    def close_channel(self, member: Member, code: int, message: str) -> None:
        """The server ends a membership (spec §5.2)."""

    def access_changed(self, member: Member) -> None:
        """The member's access changed to `member.access` while it was in the room (spec §5.2)."""

    def query_awareness(self, member: Member) -> None:
        """Ask the client to send its awareness state again (y-websocket only)."""

    def refuse(self, code: int, message: str, ref: int | None = None, channel: int | None = None) -> None:
        """Refuse what the client sent (spec §8), in the session's protocol: its one error
        boundary decides the frame or the close, and counts it."""


class MemberRoom(Protocol):
    """What a member's session may ask of its room (Room implements it)."""

    name: str

    def remove_member(self, member: Member, *, disconnected: bool) -> None: ...

    def change_access(self, member: Member, access: Access | None) -> bool: ...

    def awareness_id(self, member: Member) -> int | None: ...

    def sync_step1(self, member: Member, state_vector: bytes) -> None: ...

    def apply_client_update(self, member: Member, update: bytes, ref: int | None) -> None: ...

    def apply_client_updates(self, member: Member, items: list[tuple[bytes, int | None]]) -> None: ...

    def ack(self, member: Member, ref: int, value: int | None = None) -> None: ...

    def refuse(self, member: Member, ref: int, code: int, message: str) -> None: ...
    async def answered(self, member: Member) -> None: ...

    def set_presence(
        self, member: Member, state: dict[str, Any] | None, patch: dict[str, Any] | None, size: int | None = None
    ) -> None: ...

    def move_cursor(self, member: Member, position: Any) -> None: ...

    def set_typing(self, member: Member, on: bool) -> None: ...

    async def publish(self, member: Member | None, ref: int | None, name: str, payload: Any, key: str | None) -> int: ...

    def claim_awareness(self, member: Member, client_id: int, clock: int, hidden: bool) -> bool: ...

    def renew_awareness(self) -> None: ...

    def awareness_entry(self, sid: str) -> AwarenessEntry | None: ...

    def awareness_sessions(self) -> list[str]: ...


@dataclass(eq=False, slots=True)
class Member:
    session: MemberSession
    room: MemberRoom
    channel: int
    access: Access
