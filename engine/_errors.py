"""Errors the engine turns into Error frames."""

from __future__ import annotations

from plait.protocol import ErrorCode


class RequestError(Exception):
    """A request failed in a way the client is told about; the connection stays open."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RoomUnavailable(RequestError):
    """The room could not be loaded (or failed); joins are refused, stored data untouched."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.STORAGE_UNAVAILABLE, message)
