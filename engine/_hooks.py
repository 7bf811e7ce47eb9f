"""Hooks an embedding application implements: authentication, authorisation, events.

Subclass `Hooks` and override what you need; every method has a safe default (anonymous users,
full access, events unchanged). Hooks run on the Trio thread and may await.
"""

from __future__ import annotations

import itertools
from typing import Any

import pycrdt

from plait.protocol import Access, ErrorCode

from ._errors import RequestError

Identity = dict[str, Any]
"""Who is behind a session: a map with at least "id" (a string). Stamped on presence/events."""


class Unauthenticated(Exception):
    """Raise from `Hooks.authenticate` to refuse a token (close 4003)."""


class EventRejected(RequestError):
    """Raise from `Hooks.on_event` to refuse an event.

    Args:
        message: for people; sent in the error frame.
        code: ErrorCode.EVENT_REJECTED, or an application code in 4000..4999.
    """

    def __init__(self, message: str, code: int = ErrorCode.EVENT_REJECTED) -> None:
        if code != ErrorCode.EVENT_REJECTED and not 4000 <= code <= 4999:
            raise ValueError("application error codes are 4000..4999")
        super().__init__(code, message)


class Hooks:
    """Default hooks: every connection is an anonymous user with write access everywhere."""

    def __init__(self) -> None:
        self._anonymous = itertools.count(1)

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        """Turn the hello's token into an identity, or raise Unauthenticated."""
        return {"id": f"anon-{next(self._anonymous)}"}

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        """The identity's access to a room: Access.WRITE, Access.READ, or None (FORBIDDEN)."""
        return Access.WRITE

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: Any) -> Any:
        """Return the payload to broadcast (possibly transformed) or raise EventRejected."""
        return payload

    async def on_room_loaded(self, room: str, doc: pycrdt.Doc) -> None:  # type: ignore[type-arg]
        """A room was loaded from the store, before anyone joins. Edits made to `doc` here (a
        template for a new room, say) are stored and sent like any other. Raising refuses the
        room (joins get STORAGE_UNAVAILABLE) and leaves the stored data untouched."""

    async def on_room_stored(self, room: str, snapshot: bytes) -> None:
        """A new snapshot of the room's document was stored (compaction, or the room unloading):
        the place to mirror documents elsewhere. Errors here are logged, never fail the room."""
