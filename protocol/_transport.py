"""The one shape of a connection that carries whole messages, for both sides (spec §2).

Sans-I/O like the rest of protocol/: this is a type, not an implementation. The engine's
transports (WebSocket, memory; engine/transports/) and the client's WebSocket satisfy it.
"""

from __future__ import annotations

from typing import Protocol

from ._errors import CloseCode


class Transport(Protocol):
    """Whole messages in order, each way. Once the connection is gone, whoever closed it,
    every method raises `TransportClosed` (with the close code, 1006 when no close frame
    arrived); nothing else escapes for a closed connection."""

    async def send_message(self, data: bytes | str) -> None:
        """A binary message, or a text message for a `str` (spec §3.5: JSON)."""
        ...

    async def receive_message(self) -> bytes | str: ...

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close with `code` and `reason` (a WebSocket close frame, spec §9)."""
        ...
