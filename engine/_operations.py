"""What an operator sees of a running engine: its rooms and its sessions (spec/api.md).

These are snapshots, read on the Trio thread when asked (`Engine.rooms`, `Engine.sessions`);
they hold names and numbers, never the live objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plait.protocol import Access

from ._hooks import ACCESS_BY_NAME
from .room import Room
from .sessions import Peer, YjsSession
from .transports import HttpTransport, MemoryTransport

ACCESS_NAMES = {access: name for name, access in ACCESS_BY_NAME.items() if access is not None}
"""How the server API and `plait admin` name an access (joined.access, spec §4.2)."""


@dataclass(frozen=True, slots=True)
class Membership:
    room: str
    channel: int
    access: Access

    def to_json(self) -> dict[str, Any]:
        return {"room": self.room, "channel": self.channel, "access": ACCESS_NAMES[self.access]}


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One session (a connection, or an HTTP session across its requests)."""

    id: str
    user: str | None
    """Its identity's id; None while its handshake runs."""
    identity: dict[str, Any]
    protocol: str
    """`native` or `yjs` (spec §13)."""
    transport: str
    """`websocket`, `http` (spec §14) or `memory` (in-process)."""
    rooms: tuple[Membership, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "identity": self.identity,
            "protocol": self.protocol,
            "transport": self.transport,
            "rooms": [m.to_json() for m in self.rooms],
        }


def session_info(peer: Peer) -> SessionInfo:
    transport = peer.transport
    kind = "http" if isinstance(transport, HttpTransport) else "memory" if isinstance(transport, MemoryTransport) else "websocket"
    user = peer.identity.get("id")
    return SessionInfo(
        peer.id,
        user if isinstance(user, str) else None,
        dict(peer.identity),
        "yjs" if isinstance(peer, YjsSession) else "native",
        kind,
        tuple(Membership(m.room.name, m.channel, m.access) for m in peer.memberships()),
    )


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """One room loaded in this engine."""

    name: str
    state: str
    """`loading`, `live`, `draining` (storing before it unloads)."""
    members: int
    """Memberships (sessions in the room)."""
    users: int
    """Distinct identity ids among them."""
    document_bytes: int
    """The document's size, about (Yjs v1 encoding; exact after a compaction)."""
    idle_seconds: float
    """Since a member last joined or left, the document last changed, or an event was published."""
    head: int
    """The room's latest event sequence (spec §5.6)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "members": self.members,
            "users": self.users,
            "document_bytes": self.document_bytes,
            "idle_seconds": round(self.idle_seconds, 3),
            "head": self.head,
        }


def room_info(room: Room, now: float) -> RoomInfo:
    members = room.members()
    return RoomInfo(
        room.name,
        room.state.value,
        len(members),
        len({m.session.identity.get("id") for m in members}),
        room.document_bytes,
        max(0.0, now - room.last_activity),
        room.head,
    )
