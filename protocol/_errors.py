"""Error codes, close codes and the ProtocolError hierarchy.

The registry and the meaning of every code live in spec/protocol.md §8 (errors) and §9 (close
codes); this module is the code's copy of those tables and the two must change together.
"""

from __future__ import annotations

from enum import IntEnum
from typing import final


class ErrorCode(IntEnum):
    """Stable numeric error codes carried by `Error` frames (spec/protocol.md §8).

    1xxx: the peer broke the protocol. 2xxx: room, auth and limits. 3xxx: server-side trouble.
    4000-4999: reserved for applications (hooks may reject with them).
    """

    MALFORMED_FRAME = 1001
    UNKNOWN_KIND = 1002
    UNEXPECTED_FRAME = 1003
    FRAME_TOO_LARGE = 1004
    UNSUPPORTED_VERSION = 1005
    INVALID_FIELD = 1006
    TOO_DEEP = 1007
    UNKNOWN_CHANNEL = 1008
    INVALID_UPDATE = 1009

    INVALID_ROOM_NAME = 2001
    UNAUTHENTICATED = 2002
    FORBIDDEN = 2003
    TOO_MANY_ROOMS = 2004
    RATE_LIMITED = 2005
    ALREADY_JOINED = 2006
    EVENT_REJECTED = 2007
    DOCUMENT_TOO_LARGE = 2008
    PRESENCE_TOO_LARGE = 2009
    ROOM_DELETED = 2010
    """The server's operator deleted the room; its channel is closed (spec §5.2)."""
    TOKEN_EXPIRED = 2011
    TOO_MANY_CONNECTIONS = 2012
    NOT_FOUND = 2013
    """(Server API, spec/api.md) no room, session or user of that name."""

    SLOW_CONSUMER = 3001
    STORAGE_UNAVAILABLE = 3002
    SHUTTING_DOWN = 3003
    INTERNAL = 3999

    @property
    def fatal(self) -> bool:
        """Whether the connection MUST be closed after this error (spec §8: codes 1001-1007)."""
        return self in _FATAL_ERRORS

    @property
    def close_code(self) -> CloseCode:
        """The WebSocket close code used when this error ends a connection."""
        return _CLOSE_FOR_ERROR.get(self, CloseCode.PROTOCOL_ERROR)


APPLICATION_ERROR_RANGE = range(4000, 5000)


class CloseCode(IntEnum):
    """WebSocket close codes Plait uses (spec/protocol.md §9)."""

    NORMAL = 1000
    MESSAGE_TOO_BIG = 1009
    """RFC 6455: a WebSocket message over max_message_bytes, refused before it was read."""
    PROTOCOL_ERROR = 4001
    UNSUPPORTED_VERSION = 4002
    UNAUTHENTICATED = 4003
    HANDSHAKE_TIMEOUT = 4004
    HEARTBEAT_TIMEOUT = 4005
    TOO_SLOW = 4006
    RATE_LIMITED = 4007
    GOING_AWAY = 4008
    INTERNAL_ERROR = 4009
    FORBIDDEN = 4010
    DOCUMENT_TOO_LARGE = 4011
    TOKEN_EXPIRED = 4012
    """The session's credential expired and was not refreshed in time (spec §5.9): reconnect
    with a fresh token."""
    DISCONNECTED = 4013
    """The server's operator ended the session (spec/api.md); not retried automatically."""
    TOO_MANY_CONNECTIONS = 4014
    """The user holds as many sessions as the server allows (spec §5.1); retry with backoff."""

    @property
    def retryable(self) -> bool:
        """Whether a client SHOULD reconnect after this close (spec §9)."""
        return self not in _FINAL_CLOSES


_FATAL_ERRORS = frozenset(
    {
        ErrorCode.MALFORMED_FRAME,
        ErrorCode.UNKNOWN_KIND,
        ErrorCode.UNEXPECTED_FRAME,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.INVALID_FIELD,
        ErrorCode.TOO_DEEP,
    }
)

_CLOSE_FOR_ERROR = {
    ErrorCode.UNSUPPORTED_VERSION: CloseCode.UNSUPPORTED_VERSION,
    ErrorCode.UNAUTHENTICATED: CloseCode.UNAUTHENTICATED,
    ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
    ErrorCode.SLOW_CONSUMER: CloseCode.TOO_SLOW,
    ErrorCode.SHUTTING_DOWN: CloseCode.GOING_AWAY,
    ErrorCode.INTERNAL: CloseCode.INTERNAL_ERROR,
    ErrorCode.STORAGE_UNAVAILABLE: CloseCode.INTERNAL_ERROR,
    ErrorCode.FORBIDDEN: CloseCode.FORBIDDEN,
    ErrorCode.DOCUMENT_TOO_LARGE: CloseCode.DOCUMENT_TOO_LARGE,
    ErrorCode.ROOM_DELETED: CloseCode.DISCONNECTED,
    ErrorCode.TOO_MANY_CONNECTIONS: CloseCode.TOO_MANY_CONNECTIONS,
    ErrorCode.TOKEN_EXPIRED: CloseCode.TOKEN_EXPIRED,
}


def close_code_for(code: int) -> CloseCode:
    """The close code that reports error `code` where no error frame can (the y-websocket
    endpoint, spec §13): the table of spec §9, PROTOCOL_ERROR for the peer's mistakes."""
    known = ErrorCode._value2member_map_.get(code)
    return known.close_code if isinstance(known, ErrorCode) else CloseCode.PROTOCOL_ERROR

_FINAL_CLOSES = frozenset(
    {
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNSUPPORTED_VERSION,
        CloseCode.UNAUTHENTICATED,
        CloseCode.FORBIDDEN,
        CloseCode.DOCUMENT_TOO_LARGE,
        CloseCode.DISCONNECTED,
    }
)


class ProtocolError(Exception):
    """Something broke the protocol. Abstract: raise a subclass.

    Attributes:
        code: the ErrorCode an Error frame for this failure carries.
    """

    def __init__(self, msg: str, code: ErrorCode = ErrorCode.MALFORMED_FRAME) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise Local- or RemoteProtocolError")
        super().__init__(msg)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


@final
class LocalProtocolError(ProtocolError):
    """*We* tried something the protocol forbids: a bug or a misuse of the API."""


@final
class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; `.code` goes on the Error frame."""


class TransportClosed(Exception):
    """A connection is gone, whoever closed it; `code` is the WebSocket close code (1006 when
    no close frame arrived). Transports on both sides raise it; it lives here so the engine
    and the client agree on it without depending on each other."""

    def __init__(self, code: int, reason: str = "", *, local: bool = False) -> None:
        super().__init__(f"connection closed ({code}) {reason}".strip())
        self.code = code
        self.reason = reason
        self.local = local
        """Whether this side closed it, refusing what the peer sent (a message over its
        limit), rather than the peer."""


ABNORMAL_CLOSURE = 1006
"""RFC 6455: the connection ended without a close frame."""
