"""Typed client errors: one class per protocol error code, so apps can `except Forbidden:`."""

from __future__ import annotations

from plait.protocol import ABNORMAL_CLOSURE, CloseCode, ErrorCode


class PlaitError(Exception):
    """Base of every error the client raises."""


class RequestFailed(PlaitError):
    """The server answered a request with an error frame.

    Attributes:
        code: the numeric error code (an ErrorCode, or an application code 4000-4999).
        message: the server's text, for people.
    """

    code: int = 0

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def copy(self) -> RequestFailed:
        """A fresh instance, to raise in another task (an exception object raised in two
        tasks would collect both tracebacks)."""
        return type(self)(self.message, self.code)


class MalformedFrame(RequestFailed):
    code = ErrorCode.MALFORMED_FRAME


class UnknownKind(RequestFailed):
    code = ErrorCode.UNKNOWN_KIND


class UnexpectedFrame(RequestFailed):
    code = ErrorCode.UNEXPECTED_FRAME


class FrameTooLarge(RequestFailed):
    """A message over the server's `max_message_bytes` (spec §3.2). The client raises it
    itself, at once and before sending anything, for a request that could never fit:
    `publish`, `set_presence`, `move_cursor` (document edits go in parts, spec §3.2)."""

    code = ErrorCode.FRAME_TOO_LARGE


class UnsupportedVersion(RequestFailed):
    code = ErrorCode.UNSUPPORTED_VERSION


class InvalidField(RequestFailed):
    code = ErrorCode.INVALID_FIELD


class TooDeep(RequestFailed):
    code = ErrorCode.TOO_DEEP


class UnknownChannel(RequestFailed):
    code = ErrorCode.UNKNOWN_CHANNEL


class InvalidUpdate(RequestFailed):
    code = ErrorCode.INVALID_UPDATE


class InvalidRoomName(RequestFailed):
    code = ErrorCode.INVALID_ROOM_NAME


class Unauthenticated(RequestFailed):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(RequestFailed):
    code = ErrorCode.FORBIDDEN


class TooManyRooms(RequestFailed):
    code = ErrorCode.TOO_MANY_ROOMS


class RateLimited(RequestFailed):
    code = ErrorCode.RATE_LIMITED


class AlreadyJoined(RequestFailed):
    code = ErrorCode.ALREADY_JOINED


class EventRejected(RequestFailed):
    """The server's event hook refused the event (also used for application codes 4000-4999)."""

    code = ErrorCode.EVENT_REJECTED


class DocumentTooLarge(RequestFailed):
    """The update would make the room's document larger than the server allows."""

    code = ErrorCode.DOCUMENT_TOO_LARGE


class PresenceTooLarge(RequestFailed):
    """A presence state (after a patch is merged) or a cursor position over the server's
    `limits.max_presence_bytes` (spec §5.4). The client raises it itself, at once and before
    sending anything; the previous state is kept."""

    code = ErrorCode.PRESENCE_TOO_LARGE


class RoomDeleted(RequestFailed):
    """The server's operator deleted the room (spec §5.2): the room is left, and is not
    joined again on its own (its document would bring the deleted one back)."""

    code = ErrorCode.ROOM_DELETED


class TokenExpired(RequestFailed):
    """The session's token expired without a refresh the server accepted (spec §5.9); the
    connection closes with 4012 and the client reconnects, asking its token callable for a
    fresh one (`connect(token=...)`)."""

    code = ErrorCode.TOKEN_EXPIRED


class SlowConsumer(RequestFailed):
    code = ErrorCode.SLOW_CONSUMER


class StorageUnavailable(RequestFailed):
    code = ErrorCode.STORAGE_UNAVAILABLE


class ShuttingDown(RequestFailed):
    code = ErrorCode.SHUTTING_DOWN


class InternalError(RequestFailed):
    code = ErrorCode.INTERNAL


ERROR_TYPES: dict[int, type[RequestFailed]] = {
    cls.code: cls
    for cls in (
        MalformedFrame, UnknownKind, UnexpectedFrame, FrameTooLarge, UnsupportedVersion,
        InvalidField, TooDeep, UnknownChannel, InvalidUpdate, InvalidRoomName, Unauthenticated,
        Forbidden, TooManyRooms, RateLimited, AlreadyJoined, EventRejected, DocumentTooLarge, PresenceTooLarge, RoomDeleted,
        TokenExpired, SlowConsumer, StorageUnavailable, ShuttingDown, InternalError,
    )
}


def error_for(code: int, message: str) -> RequestFailed:
    """The typed error for an error frame's code."""
    if 4000 <= code <= 4999:
        return EventRejected(message, code)
    cls = ERROR_TYPES.get(code, RequestFailed)
    return cls(message, code)


# Spelled out, not computed from ERROR_TYPES, so that type checkers see `plait.client.Forbidden`
# (tests/client/test_exceptions.py checks that it lists every class of ERROR_TYPES).
__all__ = [
    "PlaitError", "RequestFailed", "ConnectionClosed", "RoomLeft", "DocumentReplaced", "EditsNotAcknowledged", "OfflineQueueFull",
    "EventsLost", "error_for",
    "MalformedFrame", "UnknownKind", "UnexpectedFrame", "FrameTooLarge", "UnsupportedVersion",
    "InvalidField", "TooDeep", "UnknownChannel", "InvalidUpdate", "InvalidRoomName", "Unauthenticated",
    "Forbidden", "TooManyRooms", "RateLimited", "AlreadyJoined", "EventRejected", "DocumentTooLarge", "PresenceTooLarge", "RoomDeleted",
    "TokenExpired", "SlowConsumer", "StorageUnavailable", "ShuttingDown", "InternalError",
]


class ConnectionClosed(PlaitError):
    """The connection ended, or the client stopped for good.

    Waiting calls raise it once the client has stopped: closed by the app, or refused by the
    server with a close code that says not to retry (spec §9). It also says why an attempt
    failed in `ConnectionChanged.error`.

    Attributes:
        code: the WebSocket close code (1006 when the connection dropped without one; None when
            there was no connection to close).
        retryable: whether the client tries again after this.
    """

    def __init__(self, message: str, code: int | None = None, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self._retryable = retryable

    @property
    def retryable(self) -> bool:
        if self._retryable is not None:
            return self._retryable
        if self.code is None:
            return False
        return self.code not in CloseCode._value2member_map_ or CloseCode(self.code).retryable

    @classmethod
    def from_close(cls, code: int, reason: str = "", refusal: str | None = None, *, local: bool = False) -> ConnectionClosed:
        """Why a connection ended, in words: the close code, its name, and the server's reason
        (or the message of the error frame it sent before closing); `local` when this client
        closed it, refusing a message from the server."""
        name = CloseCode(code).name if code in CloseCode._value2member_map_ else None
        if code == ABNORMAL_CLOSURE:
            what = "the connection dropped"
            name = "no close frame"
        elif local:
            what = "this client closed the connection: the server sent a message over the limit it announced (a server bug)"
        else:
            what = "the server closed the connection"
        detail = refusal or reason
        label = f"{code} {name}" if name else str(code)
        error = cls(f"{what}: {detail} ({label})" if detail else f"{what} ({label})", code)
        if not error.retryable:
            error.message += ", not retried"
            error.args = (error.message,)
        return error

    def __str__(self) -> str:
        return self.message


class RoomLeft(PlaitError):
    """The room was left: its `join` block has ended (and with it, or before, perhaps the
    client's `connect` block). Its document is no longer kept in step with the server, so
    every call that would send or wait (`flushed`, `synced`, `publish`, `set_presence`,
    `move_cursor`, `set_typing`) raises this at once: an edit made to `room.doc` now is never
    sent, and `flushed()` says so rather than return as if it were acknowledged (spec §7.1).
    A publish still waiting when the block ends raises it too. Join the room again for a live
    `Room`."""


class DocumentReplaced(PlaitError):
    """An edit was made to a document the room gave up at a reset (DocumentReset): a
    reference taken before it (`t = room.text`, a map from `room.doc.get(...)`) still points
    into the old document, whose edits are never sent. `flushed()` raises this once for such
    edits instead of returning as if they were acknowledged; re-read `room.doc` (spec §7.1)."""


class EditsNotAcknowledged(PlaitError):
    """A `join` block ended with local edits the server had not acknowledged within the
    client's `close_timeout` (offline, or a large edit still going out in parts): they may be
    lost, or only partly stored. Raised when the block is left, unless it raised already.

    Attributes:
        edits: how many local transactions were waiting, at most.
    """

    def __init__(self, message: str, edits: int) -> None:
        super().__init__(message)
        self.edits = edits


class OfflineQueueFull(PlaitError):
    """Too many publishes are waiting for a connection; the app should back off."""


class EventsLost(PlaitError):
    """An `events()` or `changes()` iterator fell too far behind and items were dropped."""
