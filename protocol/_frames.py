"""Every frame of protocol v1, one frozen dataclass per kind (spec/protocol.md §4).

A frame travels as a msgpack array `[kind, field1, field2, ...]` in the order the fields are
declared here. Room-scoped frames put the channel right after the kind, and request frames put
their `ref` right after that, so a server can route and authorise a frame from its first bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, ClassVar, Final, final

from ._errors import ErrorCode, RemoteProtocolError
from ._fields import (
    UINT53_MAX,
    Bin,
    Bool,
    FieldType,
    ListOf,
    Map,
    Optional,
    Record,
    Str,
    UInt,
    Value,
    field_names,
    field_types,
    wire,
)

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)

MAX_ROOM_NAME: Final = 256
MAX_EVENT_NAME: Final = 128
MAX_TOKEN: Final = 8192
MAX_SESSION_ID: Final = 64
MAX_EPOCH: Final = 64
MAX_MESSAGE_TEXT: Final = 1024
MAX_IDEMPOTENCY_KEY: Final = 128
MAX_VERSIONS: Final = 16
MAX_LIST: Final = 10_000  # presence entries, cursor moves, typers in one frame
MAX_PRESENCE_BYTES: Final = 64 * 1024
"""The default `Limits.max_presence_bytes` (spec §5.4)."""

_CONTROL_CHARS: Final = frozenset(chr(c) for c in range(32)) | {"\x7f"}


def check_room_name(name: str) -> None:
    """The rule for room names on every endpoint (spec §5.2): 1..256 characters, none of them
    a control character (U+0000..U+001F, U+007F) or a lone surrogate (spec §3.3).

    Raises:
        RemoteProtocolError: INVALID_ROOM_NAME (not fatal: the join is refused).
    """
    if not 1 <= len(name) <= MAX_ROOM_NAME:
        raise RemoteProtocolError(f"room names are 1..{MAX_ROOM_NAME} characters", ErrorCode.INVALID_ROOM_NAME)
    if not _CONTROL_CHARS.isdisjoint(name):
        raise RemoteProtocolError("room names have no control characters", ErrorCode.INVALID_ROOM_NAME)
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise RemoteProtocolError(
                "room names are Unicode text: no lone surrogate", ErrorCode.INVALID_ROOM_NAME
            ) from None


class FrameKind(IntEnum):
    """The first element of every frame (spec §4). 0 is reserved."""

    HELLO = 1
    WELCOME = 2
    PING = 3
    PONG = 4
    ERROR = 5
    ACK = 6
    TOKEN_EXPIRING = 7
    REFRESH = 8
    JOIN = 10
    JOINED = 11
    LEAVE = 12
    CHANNEL_CLOSED = 13
    ACCESS_CHANGED = 14
    SYNC_STEP1 = 20
    SYNC_STEP2 = 21
    UPDATE = 22
    PRESENCE_SET = 30
    PRESENCE_PATCH = 31
    PRESENCE_SNAPSHOT = 32
    PRESENCE_DIFF = 33
    CURSOR_MOVE = 40
    CURSORS = 41
    TYPING = 42
    TYPING_STATE = 43
    PUBLISH = 50
    EVENT = 51


class Sender(Enum):
    """Which side may send a frame kind."""

    CLIENT = "client"
    SERVER = "server"
    BOTH = "both"


class Access(IntEnum):
    """What a member may do in a room (spec §4.2 joined.access). Everyone sees everything and
    has presence, a cursor and typing; READ stops there, COMMENT also publishes events (a
    viewer who can chat), WRITE also edits the document."""

    READ = 1
    WRITE = 2
    COMMENT = 3

    @property
    def may_publish(self) -> bool:
        return self is not Access.READ


CHANNEL = UInt()
REF = UInt()
OPT_REF = Optional(UInt())
SESSION = Str(MAX_SESSION_ID, min_len=1)
SEQ = UInt(UINT53_MAX)


class Frame:
    """Base of every frame. Subclasses are frozen, slotted, final dataclasses."""

    __slots__ = ()
    KIND: ClassVar[FrameKind]
    SENDER: ClassVar[Sender]
    FIELDS: ClassVar[tuple[FieldType, ...]]
    NAMES: ClassVar[tuple[str, ...]]
    FLAT: ClassVar[bool]
    """No nested records: the wire array is just the field values (the fast path)."""
    ROOM_SCOPED: ClassVar[bool]


def _nests(ftype: FieldType) -> bool:
    if isinstance(ftype, Optional):
        return _nests(ftype.inner)
    return isinstance(ftype, (Record, ListOf))


FRAME_TYPES: dict[int, type[Frame]] = {}
FRAME_NAMES: dict[str, type[Frame]] = {}


def _frame(kind: FrameKind, sender: Sender) -> Any:
    def register(cls: type[Frame]) -> type[Frame]:
        cls.KIND = kind
        cls.SENDER = sender
        cls.FIELDS = field_types(cls)
        names = list(field_names(cls))
        cls.NAMES = tuple(names)
        cls.FLAT = not any(_nests(t) for t in cls.FIELDS)
        cls.ROOM_SCOPED = bool(names) and names[0] == "channel"
        assert kind not in FRAME_TYPES, kind
        FRAME_TYPES[kind] = cls
        FRAME_NAMES[kind.name.lower()] = cls
        return cls

    return register


# -- nested records ------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Limits:
    """What the server enforces on this connection, announced in Welcome (spec §5.1)."""

    max_message_bytes: int = wire(UInt())
    max_frames_per_message: int = wire(UInt())
    max_rooms: int = wire(UInt())
    events_per_second: int = wire(UInt())
    updates_per_second: int = wire(UInt())
    max_presence_bytes: int = wire(UInt())
    """The most a session's presence state (after a patch is merged) or its cursor position
    may take, msgpack-encoded (spec §5.4, PRESENCE_TOO_LARGE)."""
    frames_per_second: int = wire(UInt())
    """Every other frame a connection sends (presence, cursors, typing, ping, join, leave,
    sync_step1), per second (spec §5.8)."""
    max_document_bytes: int = wire(UInt())
    """The largest a room's document may grow (spec §5.3, DOCUMENT_TOO_LARGE)."""


@final
@dataclass(frozen=True, slots=True)
class PresenceEntry:
    """One session's presence: who (stamped by the server) and its state (set by the client)."""

    session: str = wire(SESSION)
    identity: dict[str, Any] = wire(Map())
    state: dict[str, Any] = wire(Map())


@final
@dataclass(frozen=True, slots=True)
class PresenceState:
    session: str = wire(SESSION)
    state: dict[str, Any] = wire(Map())


@final
@dataclass(frozen=True, slots=True)
class CursorPosition:
    session: str = wire(SESSION)
    position: Any = wire(Value())


# -- connection ----------------------------------------------------------------------------


@final
@_frame(FrameKind.HELLO, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class Hello(Frame):
    versions: tuple[int, ...] = wire(ListOf(UInt(), MAX_VERSIONS))
    token: str | None = wire(Optional(Str(MAX_TOKEN)))
    client: dict[str, Any] = wire(Map())


@final
@_frame(FrameKind.WELCOME, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    version: int = wire(UInt())
    session: str = wire(SESSION)
    heartbeat_ms: int = wire(UInt())
    limits: Limits = wire(Record(Limits))


@final
@_frame(FrameKind.PING, Sender.BOTH)
@dataclass(frozen=True, slots=True)
class Ping(Frame):
    nonce: int = wire(UInt())


@final
@_frame(FrameKind.PONG, Sender.BOTH)
@dataclass(frozen=True, slots=True)
class Pong(Frame):
    nonce: int = wire(UInt())


@final
@_frame(FrameKind.ERROR, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class Error(Frame):
    ref: int | None = wire(OPT_REF)
    channel: int | None = wire(Optional(CHANNEL))
    code: int = wire(UInt(4999))
    message: str = wire(Str(MAX_MESSAGE_TEXT))


@final
@_frame(FrameKind.ACK, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class Ack(Frame):
    ref: int = wire(REF)
    value: int | None = wire(Optional(SEQ))


@final
@_frame(FrameKind.TOKEN_EXPIRING, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class TokenExpiring(Frame):
    """The session's credential expires in `expires_in_ms` milliseconds: send `Refresh` with a
    fresh token before then, or the session is closed TOKEN_EXPIRED (spec §5.9)."""

    expires_in_ms: int = wire(UInt())


@final
@_frame(FrameKind.REFRESH, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class Refresh(Frame):
    """A fresh token for this session (spec §5.9): answered by ack, or by error(ref, nil,
    UNAUTHENTICATED) if refused, which is not fatal."""

    ref: int = wire(REF)
    token: str = wire(Str(MAX_TOKEN))


# -- rooms ---------------------------------------------------------------------------------


@final
@_frame(FrameKind.JOIN, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class Join(Frame):
    ref: int = wire(REF)
    room: str = wire(Str(MAX_ROOM_NAME, min_len=1))
    state_vector: bytes | None = wire(Optional(Bin()))
    since: int | None = wire(Optional(SEQ))
    epoch: str | None = wire(Optional(Str(MAX_EPOCH)), default=None)


@final
@_frame(FrameKind.JOINED, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class Joined(Frame):
    ref: int = wire(REF)
    channel: int = wire(CHANNEL)
    access: int = wire(UInt(max(Access)))
    head: int = wire(SEQ)
    resumed: bool | None = wire(Optional(Bool()))
    epoch: str = wire(Str(MAX_EPOCH, min_len=1))


@final
@_frame(FrameKind.LEAVE, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class Leave(Frame):
    channel: int = wire(CHANNEL)
    ref: int | None = wire(OPT_REF)


@final
@_frame(FrameKind.CHANNEL_CLOSED, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class ChannelClosed(Frame):
    channel: int = wire(CHANNEL)
    code: int = wire(UInt(4999))
    message: str = wire(Str(MAX_MESSAGE_TEXT))


@final
@_frame(FrameKind.ACCESS_CHANGED, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class AccessChanged(Frame):
    """The member's access to the room changed while it was in it (spec §5.2): from now on
    what it sends is judged by `access`, as if `joined` had carried it."""

    channel: int = wire(CHANNEL)
    access: int = wire(UInt(max(Access)))


# -- documents -----------------------------------------------------------------------------


@final
@_frame(FrameKind.SYNC_STEP1, Sender.BOTH)
@dataclass(frozen=True, slots=True)
class SyncStep1(Frame):
    channel: int = wire(CHANNEL)
    state_vector: bytes = wire(Bin())


@final
@_frame(FrameKind.SYNC_STEP2, Sender.BOTH)
@dataclass(frozen=True, slots=True)
class SyncStep2(Frame):
    channel: int = wire(CHANNEL)
    ref: int | None = wire(OPT_REF)
    update: bytes = wire(Bin())


@final
@_frame(FrameKind.UPDATE, Sender.BOTH)
@dataclass(frozen=True, slots=True)
class Update(Frame):
    channel: int = wire(CHANNEL)
    ref: int | None = wire(OPT_REF)
    update: bytes = wire(Bin())


# -- presence, cursors, typing -------------------------------------------------------------


@final
@_frame(FrameKind.PRESENCE_SET, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class PresenceSet(Frame):
    channel: int = wire(CHANNEL)
    ref: int | None = wire(OPT_REF)
    state: dict[str, Any] = wire(Map())


@final
@_frame(FrameKind.PRESENCE_PATCH, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class PresencePatch(Frame):
    channel: int = wire(CHANNEL)
    ref: int | None = wire(OPT_REF)
    patch: dict[str, Any] = wire(Map())


@final
@_frame(FrameKind.PRESENCE_SNAPSHOT, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class PresenceSnapshot(Frame):
    channel: int = wire(CHANNEL)
    entries: tuple[PresenceEntry, ...] = wire(ListOf(Record(PresenceEntry), MAX_LIST))


@final
@_frame(FrameKind.PRESENCE_DIFF, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class PresenceDiff(Frame):
    channel: int = wire(CHANNEL)
    joined: tuple[PresenceEntry, ...] = wire(ListOf(Record(PresenceEntry), MAX_LIST))
    updated: tuple[PresenceState, ...] = wire(ListOf(Record(PresenceState), MAX_LIST))
    left: tuple[str, ...] = wire(ListOf(SESSION, MAX_LIST))


@final
@_frame(FrameKind.CURSOR_MOVE, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class CursorMove(Frame):
    channel: int = wire(CHANNEL)
    position: Any = wire(Value())


@final
@_frame(FrameKind.CURSORS, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class Cursors(Frame):
    channel: int = wire(CHANNEL)
    moves: tuple[CursorPosition, ...] = wire(ListOf(Record(CursorPosition), MAX_LIST))


@final
@_frame(FrameKind.TYPING, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class Typing(Frame):
    channel: int = wire(CHANNEL)
    on: bool = wire(Bool())


@final
@_frame(FrameKind.TYPING_STATE, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class TypingState(Frame):
    channel: int = wire(CHANNEL)
    sessions: tuple[str, ...] = wire(ListOf(SESSION, MAX_LIST))


# -- events --------------------------------------------------------------------------------


@final
@_frame(FrameKind.PUBLISH, Sender.CLIENT)
@dataclass(frozen=True, slots=True)
class Publish(Frame):
    channel: int = wire(CHANNEL)
    ref: int = wire(REF)
    name: str = wire(Str(MAX_EVENT_NAME, min_len=1))
    payload: Any = wire(Value())
    key: str | None = wire(Optional(Str(MAX_IDEMPOTENCY_KEY, min_len=1)))


@final
@_frame(FrameKind.EVENT, Sender.SERVER)
@dataclass(frozen=True, slots=True)
class Event(Frame):
    channel: int = wire(CHANNEL)
    seq: int = wire(SEQ)
    name: str = wire(Str(MAX_EVENT_NAME, min_len=1))
    payload: Any = wire(Value())
    session: str | None = wire(Optional(SESSION))
    user: str | None = wire(Optional(Str(MAX_SESSION_ID * 4)))




def grammar(cls: type) -> str:
    """A frame's (or nested record's) wire grammar as spec/protocol.md §4 writes it, generated
    from its fields so the spec and the code cannot drift apart (a test checks the spec)."""
    fields = ", ".join(
        f"{name}: {ftype.spec_name}"
        for name, ftype in zip(field_names(cls), field_types(cls), strict=True)
    )
    if issubclass(cls, Frame):
        return f"{cls.KIND.name.lower()} := [{int(cls.KIND)}, {fields}]"
    return f"{cls.__name__} := [{fields}]"


RECORD_TYPES: Final = (Limits, PresenceEntry, PresenceState, CursorPosition)
