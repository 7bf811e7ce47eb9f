"""What a room's parts share: the room's state and its members."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from plait.protocol import Access

if TYPE_CHECKING:
    from .._peer import Peer as Session
    from ._lifecycle import Room


class RoomState(Enum):
    LOADING = "loading"
    LIVE = "live"
    DRAINING = "draining"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(eq=False, slots=True)
class Member:
    session: Session
    room: Room
    channel: int
    access: Access
