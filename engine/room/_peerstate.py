"""The body a process sends its peers about the ephemeral state of its own sessions in a room:
presence, cursors, typing and Yjs awareness claims (scale-out; spec §5.4, §5.5, §13). Pure:
bytes in, a checked `PeerState` out, and back; no clock, no I/O.

A body is a msgpack map:

    {"v": 1,                        # this format's version
     "full": bool,                  # the whole state of the sender's sessions (else changes)
     "p": [[sid, identity|nil, state|nil, lingering, own_awareness], ...],
                                    # presence: identity on a join (and in a full body),
                                    # state when it joined or changed; lingering: disconnected,
                                    # within its grace; own_awareness: a Yjs session
     "l": [sid, ...],               # sessions whose presence left
     "c": [[sid, position|nil], ...],   # cursors moved (nil: removed)
     "t": [sid, ...] | nil,         # the sender's typers, all of them, when the set changed
     "a": [[sid, client_id, clock, hidden], ...]}   # Yjs sessions' awareness claims

`decode_peer_state` is total: a body either decodes to a PeerState whose every field has the right
shape, or raises BadPeerState. Peers are trusted, but code has bugs; a bad body must never reach
a room's state half applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack

from plait.protocol import MAX_DEPTH, ProtocolError, check_value

VERSION: Final = 1
MAX_SESSION_ID: Final = 256
"""Characters a session id may take in a body."""
MAX_CLIENT_ID: Final = 2**53 - 1  # lib0 varuints are JavaScript numbers


class BadPeerState(ValueError):
    """A body that does not decode, or whose fields have the wrong shapes."""


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    session: str
    identity: dict[str, Any] | None
    """On a join, and for every session of a full body."""
    state: dict[str, Any] | None
    """When it joined or its state changed."""
    lingering: bool
    """It disconnected; its owner keeps it for the grace, then sends its leave."""
    own_awareness: bool
    """A Yjs session: it speaks its own awareness (`awareness` records)."""


@dataclass(frozen=True, slots=True)
class AwarenessClaim:
    session: str
    client_id: int
    clock: int
    """The clock its owner shows (the client's own plus the owner's offset)."""
    hidden: bool


@dataclass(frozen=True, slots=True)
class PeerState:
    full: bool = False
    presence: tuple[PresenceRecord, ...] = ()
    left: tuple[str, ...] = ()
    cursors: tuple[tuple[str, Any], ...] = ()
    typing: tuple[str, ...] | None = None
    awareness: tuple[AwarenessClaim, ...] = ()

    def __bool__(self) -> bool:
        """Whether it says anything (a full body always does: 'nothing is left')."""
        return self.full or bool(self.presence or self.left or self.cursors or self.awareness) or self.typing is not None


def encode_peer_state(replica: PeerState) -> bytes:
    body = {
        "v": VERSION,
        "full": replica.full,
        "p": [[r.session, r.identity, r.state, r.lingering, r.own_awareness] for r in replica.presence],
        "l": list(replica.left),
        "c": [[sid, position] for sid, position in replica.cursors],
        "t": None if replica.typing is None else list(replica.typing),
        "a": [[a.session, a.client_id, a.clock, a.hidden] for a in replica.awareness],
    }
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def decode_peer_state(data: bytes) -> PeerState:
    """Raises BadPeerState; anything else escaping is a bug."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadPeerState(f"a body is bytes, not {type(data).__name__}")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise BadPeerState(f"not msgpack: {type(exc).__name__}: {exc}") from exc
    if not isinstance(body, dict):
        raise BadPeerState("a body is a map")
    if body.get("v") != VERSION:
        raise BadPeerState(f"version {body.get('v')!r}, not {VERSION}")
    typing = body.get("t")
    return PeerState(
        full=_bool(body.get("full", False), "full"),
        presence=tuple(_presence(r) for r in _list(body.get("p", []), "p")),
        left=tuple(_sid(s) for s in _list(body.get("l", []), "l")),
        cursors=tuple(_cursor(c) for c in _list(body.get("c", []), "c")),
        typing=None if typing is None else tuple(_sid(s) for s in _list(typing, "t")),
        awareness=tuple(_claim(a) for a in _list(body.get("a", []), "a")),
    )


def _list(value: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise BadPeerState(f"{what}: a list{'' if length is None else f' of {length}'} expected, got {_show(value)}")
    return value


def _bool(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise BadPeerState(f"{what}: a boolean expected, got {_show(value)}")
    return value


def _int(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_CLIENT_ID:
        raise BadPeerState(f"{what}: an integer in 0..2**53-1 expected, got {_show(value)}")
    return value


def _sid(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_SESSION_ID:
        raise BadPeerState(f"a session id expected, got {_show(value)}")
    return value


def _value(value: Any, what: str) -> Any:
    try:
        check_value(value, MAX_DEPTH)
    except ProtocolError as exc:
        raise BadPeerState(f"{what}: {exc}") from exc
    return value


def _map(value: Any, what: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadPeerState(f"{what}: a map expected, got {_show(value)}")
    return _value(value, what)  # type: ignore[no-any-return]


def _presence(value: Any) -> PresenceRecord:
    sid, identity, state, lingering, own = _list(value, "presence record", 5)
    return PresenceRecord(
        _sid(sid), _map(identity, "identity"), _map(state, "state"), _bool(lingering, "lingering"), _bool(own, "own_awareness")
    )


def _cursor(value: Any) -> tuple[str, Any]:
    sid, position = _list(value, "cursor record", 2)
    return _sid(sid), _value(position, "cursor position")


def _claim(value: Any) -> AwarenessClaim:
    sid, client_id, clock, hidden = _list(value, "awareness record", 4)
    return AwarenessClaim(_sid(sid), _int(client_id, "client id"), _int(clock, "clock"), _bool(hidden, "hidden"))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
