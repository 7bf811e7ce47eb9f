"""The per-connection state machine, for either side (spec/protocol.md §6).

Frames in, frames out, no I/O: the engine and the client feed it every frame they receive and
every frame they are about to send, and it says whether the protocol allows it.

Rule 1: every state change is a row of TRANSITIONS; nothing else moves `state`.
Rule 2: a fatal error (ErrorCode.fatal) makes the state a sticky ERROR; any later call raises.
Rule 3: channels are never reused on one connection, so a frame for a channel this side already
        left is stale, not wrong: `receive` reports it as `Stale` and the caller drops it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Final, NoReturn, final

from ._codec import DEFAULT_LIMITS, ChannelFrame, CodecLimits, decode, encode, encode_frame, encode_trusted
from ._errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from ._frames import (
    SUPPORTED_VERSIONS,
    Ack,
    ChannelClosed,
    Error,
    Frame,
    FrameKind,
    Hello,
    Joined,
    Leave,
    Sender,
    Welcome,
)


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class SessionState(Enum):
    AWAIT_HELLO = "await-hello"
    AWAIT_WELCOME = "await-welcome"
    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


class Direction(Enum):
    SEND = "send"
    RECEIVE = "receive"


S = SessionState
_HELLO, _WELCOME, _ERROR = FrameKind.HELLO, FrameKind.WELCOME, FrameKind.ERROR
ANY: Final = None
"""In TRANSITIONS, a row for any frame kind the state does not name itself."""

TRANSITIONS: Final[dict[tuple[Role, SessionState, Direction, FrameKind | None], SessionState]] = {
    # spec §6: the client speaks first; nothing but Hello may precede the handshake.
    (Role.CLIENT, S.AWAIT_HELLO, Direction.SEND, _HELLO): S.AWAIT_WELCOME,
    (Role.CLIENT, S.AWAIT_WELCOME, Direction.RECEIVE, _WELCOME): S.OPEN,
    (Role.CLIENT, S.AWAIT_WELCOME, Direction.RECEIVE, _ERROR): S.CLOSED,
    (Role.CLIENT, S.AWAIT_HELLO, Direction.RECEIVE, _ERROR): S.CLOSED,
    (Role.SERVER, S.AWAIT_HELLO, Direction.RECEIVE, _HELLO): S.AWAIT_WELCOME,
    (Role.SERVER, S.AWAIT_WELCOME, Direction.SEND, _WELCOME): S.OPEN,
    (Role.SERVER, S.AWAIT_WELCOME, Direction.SEND, _ERROR): S.CLOSED,
    (Role.SERVER, S.AWAIT_HELLO, Direction.SEND, _ERROR): S.CLOSED,  # a first frame that is not hello
    (Role.CLIENT, S.OPEN, Direction.SEND, ANY): S.OPEN,
    (Role.CLIENT, S.OPEN, Direction.RECEIVE, ANY): S.OPEN,
    (Role.SERVER, S.OPEN, Direction.SEND, ANY): S.OPEN,
    (Role.SERVER, S.OPEN, Direction.RECEIVE, ANY): S.OPEN,
}

_HANDSHAKE_KINDS: Final = frozenset({_HELLO, _WELCOME})


def _next_state(
    role: Role, state: SessionState, direction: Direction, kind: FrameKind
) -> SessionState | None:
    if state is SessionState.OPEN and kind not in _HANDSHAKE_KINDS:
        return SessionState.OPEN  # the (role, OPEN, direction, ANY) rows, without four hashes
    exact = TRANSITIONS.get((role, state, direction, kind))
    if exact is not None:
        return exact
    if kind in _HANDSHAKE_KINDS:
        return None  # only ever legal where a row names them
    return TRANSITIONS.get((role, state, direction, ANY))


@final
class Stale:
    """`receive`'s answer for a frame on a channel this side already left: drop it."""

    __slots__ = ()


STALE: Final = Stale()


class Connection:
    """One side of one connection.

    Args:
        role: which side this object plays.
        limits: decoding limits for `receive_data`.
    """

    _offered: tuple[int, ...] = SUPPORTED_VERSIONS
    """The versions this client's hello offered (spec §5.1: the server picks one of them). A
    class default, set on the instance only by a client's hello: a server holds one of these
    per connection, and a ninth attribute would double its dict (bench/idle.py)."""

    def __init__(self, role: Role, limits: CodecLimits = DEFAULT_LIMITS) -> None:
        self.role = role
        self.limits = limits
        self.state = SessionState.AWAIT_HELLO
        self.version: int | None = None
        self._channels: dict[int, bool] = {}
        """Every channel opened on this connection: True while open, False once left (an
        empty dict is a third of an empty set's size, and a server holds one per connection)."""
        self._peer = Sender.SERVER if role is Role.CLIENT else Sender.CLIENT
        self._own = Sender.CLIENT if role is Role.CLIENT else Sender.SERVER

    @property
    def channels(self) -> frozenset[int]:
        """The channels open now."""
        return frozenset(channel for channel, is_open in self._channels.items() if is_open)

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Frame]:
        """Decode a message and `receive` each frame; stale frames are left out.

        Raises:
            RemoteProtocolError: the message or one of its frames breaks the protocol. On a
                non-fatal code the frames before the bad one were already accepted.
        """
        self._check_usable()
        try:
            frames = decode(data, self.limits)
        except RemoteProtocolError:
            self.state = SessionState.ERROR
            raise
        return [f for f in frames if self.receive(f) is not STALE]

    def receive(self, frame: Frame) -> Frame | Stale:
        """Account for a frame the peer sent.

        Returns:
            The frame, or STALE if it concerns a channel this side already left.

        Raises:
            RemoteProtocolError: the peer may not send this frame now.
        """
        self._check_usable()
        try:
            return self._receive(frame)
        except RemoteProtocolError as exc:
            if exc.code.fatal:
                self.state = SessionState.ERROR
            raise

    def _receive(self, frame: Frame) -> Frame | Stale:
        kind = frame.KIND
        if frame.SENDER is self._own:
            raise RemoteProtocolError(
                f"{type(frame).__name__} is sent only by the {self._own.value}",
                ErrorCode.UNEXPECTED_FRAME,
            )
        nxt = _next_state(self.role, self.state, Direction.RECEIVE, kind)
        if nxt is None:
            raise RemoteProtocolError(
                f"{type(frame).__name__} not allowed in state {self.state.value}",
                ErrorCode.UNEXPECTED_FRAME,
            )
        if isinstance(frame, Hello):
            self.version = self._negotiate(frame)
        elif isinstance(frame, Welcome):
            if frame.version not in self._offered:
                raise RemoteProtocolError(
                    f"the server chose version {frame.version}, which this client did not offer ({list(self._offered)})",
                    ErrorCode.UNSUPPORTED_VERSION,
                )
            self.version = frame.version
        if frame.ROOM_SCOPED and not isinstance(frame, Joined):
            channel: int = frame.channel  # type: ignore[attr-defined]
            if not self._channels.get(channel):
                if channel in self._channels:
                    return STALE
                raise RemoteProtocolError(f"channel {channel} is not open", ErrorCode.UNKNOWN_CHANNEL)
        if isinstance(frame, Joined):
            self._channels[frame.channel] = True
        elif isinstance(frame, (Leave, ChannelClosed)):
            self._close_channel(frame.channel)
        self.state = nxt
        return frame

    def _negotiate(self, hello: Hello) -> int:
        # spec §5.1: the server picks the highest version both sides support.
        common = set(hello.versions) & set(SUPPORTED_VERSIONS)
        if not common:
            raise RemoteProtocolError(
                f"none of the offered versions {list(hello.versions)} is supported; "
                f"this server speaks {list(SUPPORTED_VERSIONS)}",
                ErrorCode.UNSUPPORTED_VERSION,
            )
        return max(common)

    # -- sending --------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Account for a frame this side is about to send.

        Raises:
            LocalProtocolError: this side may not send the frame now.
        """
        if self.state is SessionState.ERROR and isinstance(frame, Error):
            return  # the report of the fatal error that put us here (spec §6), then the close
        self._check_usable()
        kind = frame.KIND
        if frame.SENDER is self._peer:
            raise LocalProtocolError(
                f"{type(frame).__name__} is sent only by the {self._peer.value}",
                ErrorCode.UNEXPECTED_FRAME,
            )
        nxt = _next_state(self.role, self.state, Direction.SEND, kind)
        if nxt is None:
            raise LocalProtocolError(
                f"cannot send {type(frame).__name__} in state {self.state.value}",
                ErrorCode.UNEXPECTED_FRAME,
            )
        if isinstance(frame, Joined):
            self._channels[frame.channel] = True
        elif frame.ROOM_SCOPED and not self._channels.get(frame.channel):  # type: ignore[attr-defined]
            raise LocalProtocolError(
                f"channel {frame.channel} is not open",  # type: ignore[attr-defined]
                ErrorCode.UNKNOWN_CHANNEL,
            )
        if isinstance(frame, (Leave, ChannelClosed)):
            self._close_channel(frame.channel)
        elif isinstance(frame, Welcome):
            self.version = frame.version
        elif isinstance(frame, Hello):
            self._offered = tuple(frame.versions)
        self.state = nxt

    def send_frame(self, frame: Frame) -> bytes:
        """`send` one frame and encode it (the fields checked as a decoder will).

        Raises:
            LocalProtocolError: this side may not send it now, or a field is invalid.
        """
        self.send(frame)
        return encode_frame(frame)

    def send_shared(self, shared: ChannelFrame, channel: int) -> bytes:
        """A room's frame, encoded once for all its members, for this side's `channel`: the
        fan-out's route through the state machine, which checks only what can change per
        connection (open, the channel joined; the frame itself was checked when encoded).

        Raises:
            LocalProtocolError: not open, or `channel` is not open.
        """
        self.check_shared(channel)
        return shared.for_channel(channel)

    def check_shared(self, channel: int) -> None:
        """What `send_shared` checks, for a caller that encodes the frame for another wire
        (JSON, spec §3.5).

        Raises:
            LocalProtocolError: not open, or `channel` is not open.
        """
        if self.state is not SessionState.OPEN:
            self._not_open()
        if not self._channels.get(channel):
            raise LocalProtocolError(f"channel {channel} is not open", ErrorCode.UNKNOWN_CHANNEL)

    def send_ack(self, ref: int, value: int | None) -> bytes:
        """An Ack for a request this side received (its ref was checked then), encoded
        without checking its fields again: the hot path of every acknowledged update.

        Raises:
            LocalProtocolError: not open.
        """
        self.check_open()
        return encode_trusted(Ack(ref, value))

    def check_open(self) -> None:
        """Raise LocalProtocolError unless open (what `send_ack` checks)."""
        if self.state is not SessionState.OPEN:
            self._not_open()

    def send_data(self, frames: Frame | Iterable[Frame]) -> bytes:
        """`send` each frame and encode them as one message."""
        batch = [frames] if isinstance(frames, Frame) else list(frames)
        for frame in batch:
            self.send(frame)
        return encode(batch, self.limits)

    def error_frame(self, exc: ProtocolError, ref: int | None = None) -> Error:
        """The Error frame that reports `exc` to the peer."""
        return Error(ref=ref, channel=None, code=int(exc.code), message=exc.message[:1024])

    def close(self) -> None:
        """The transport closed; nothing more may be sent or received."""
        if self.state is not SessionState.ERROR:
            self.state = SessionState.CLOSED

    # -- helpers --------------------------------------------------------------------------

    def _close_channel(self, channel: int) -> None:
        self._channels[channel] = False

    def _not_open(self) -> NoReturn:
        self._check_usable()
        raise LocalProtocolError(f"cannot send room frames in state {self.state.value}", ErrorCode.UNEXPECTED_FRAME)

    def _check_usable(self) -> None:
        if self.state is SessionState.ERROR:
            raise LocalProtocolError("connection is in the ERROR state", ErrorCode.UNEXPECTED_FRAME)
        if self.state is SessionState.CLOSED:
            raise LocalProtocolError("connection is closed", ErrorCode.UNEXPECTED_FRAME)


def state_diagram() -> str:
    """A Mermaid state diagram generated from TRANSITIONS, as spec/protocol.md §6 shows it."""
    lines = ["stateDiagram-v2", "    [*] --> await_hello"]
    for (role, src, direction, kind), dst in TRANSITIONS.items():
        if src is dst:
            continue
        label = f"{role.value} {direction.value}s {kind.name.lower() if kind else 'any'}"
        lines.append(f"    {src.name.lower()} --> {dst.name.lower()}: {label}")
    lines.append("    open --> open: any other frame, either side")
    lines.append("    open --> closed: transport closed")
    lines.append("    await_hello --> error: fatal protocol error (any state)")
    return "\n".join(lines)
