"""What the engine gives every session, injected: the session's collaborators.

Dependencies run one way: the Engine above its sessions, which use rooms and transports. A
session reaches rooms through `hold_room`, the application's hooks through `authenticate` and
`authorize`, the trace recorder through `record_*`, and the engine's shared writer through
`flush_soon`; it never sees the Engine, and nothing it is given calls back into one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import trio

from plait.protocol import Access, Frame

from .._config import EngineConfig
from .._hooks import CONNECTION_IDENTITY, Hooks, Identity, Unauthenticated, call_hook, checked_access, checked_expiry, checked_identity
from .._limits import ConnectionCounts
from .._metrics import NO_METRICS, Metrics
from .._record import TraceRecorder
from ..room import Room


class Flushable(Protocol):
    def flush_nowait(self) -> None: ...


class Flusher:
    """Writes for the connections a fan-out reached, all in one task (Peer._wake_writer).

    Args:
        nursery: where that task runs (the engine's; asked for at each flush).
    """

    def __init__(self, nursery: Callable[[], trio.Nursery]) -> None:
        self._nursery = nursery
        self._to_flush: list[Flushable] = []

    def flush_soon(self, peer: Flushable) -> None:
        """Have `peer` write what it queued once the tasks that are running now have run
        (Peer._wake_writer): one task writes for every connection a fan-out reached."""
        if not self._to_flush:
            self._nursery().start_soon(self._flush)
        self._to_flush.append(peer)

    async def _flush(self) -> None:
        peers, self._to_flush = self._to_flush, []
        for peer in peers:
            peer.flush_nowait()


class SessionServices:
    """A session's collaborators, made once by the engine and shared by every session.

    Args:
        config: timings and limits.
        hooks: the application's hooks (authenticate, authorize).
        hold_room: the live room of a name, held while the block runs (RoomRegistry.hold).
        flush_soon: have a connection write what it queued, in the engine's shared writer task.
        recorder: records every connection's traffic as a trace (`plait serve --record`), or None.
        metrics: where sessions report what they open, close and refuse (engine/_metrics.py).
        wall_clock: unix seconds now (`time.time`): only to turn a credential's wall-clock
            expiry (`Hooks.expires_at`) into a deadline on Trio's clock, once per
            authentication, so that sessions are timed by Trio (and MockClock in tests).
    """

    def __init__(
        self,
        config: EngineConfig,
        hooks: Hooks,
        hold_room: Callable[[str], AbstractAsyncContextManager[Room]],
        flush_soon: Callable[[Flushable], None],
        recorder: TraceRecorder | None = None,
        metrics: Metrics = NO_METRICS,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.wall_clock = wall_clock
        self.metrics = metrics
        self.hooks = hooks
        self.hold_room = hold_room
        self.flush_soon = flush_soon
        self.recorder = recorder
        self.users = ConnectionCounts(config.max_connections_per_user)
        """Sessions open per identity id (spec §5.1)."""
        self.large_sends = trio.CapacityLimiter(config.concurrent_large_sends)
        """Large messages are sent a few at a time, whatever the number of connections."""
        self.access_overrides: dict[tuple[str, str], Access | None] = {}
        """(identity id, room) -> the access the server's operator set (Engine.set_access),
        which wins over `Hooks.authorize` until cleared."""

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        """The identity `Hooks.authenticate` gives a token, unless the application serving
        the connection vouches for one (CONNECTION_IDENTITY). Raises Unauthenticated (refused)
        or HookFailed (the hook misbehaved: logged)."""
        vouch = CONNECTION_IDENTITY.get()
        if vouch is not None:
            vouched = await call_hook("identity_from_scope", vouch, self.config.hook_timeout, (Unauthenticated,))
            if vouched is not None:
                return checked_identity(vouched, self.config.presence_limit)
        identity = await call_hook(
            "authenticate", lambda: self.hooks.authenticate(token, client), self.config.hook_timeout, (Unauthenticated,)
        )
        return checked_identity(identity, self.config.presence_limit)

    async def credential_deadline(self, token: str | None, identity: Identity) -> float | None:
        """When the credential that gave `identity` expires, on Trio's clock (None: never),
        from `Hooks.expires_at`'s wall-clock answer (spec §5.9).

        Raises:
            Unauthenticated: it has already expired.
            HookFailed: the hook misbehaved (logged).
        """
        expiry = checked_expiry(
            await call_hook("expires_at", lambda: self.hooks.expires_at(token, identity), self.config.hook_timeout)
        )
        if expiry is None:
            return None
        remaining = expiry - self.wall_clock()
        if remaining <= 0:
            raise Unauthenticated("token expired")
        return trio.current_time() + remaining

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        """The access the operator set (`access_overrides`), else `Hooks.authorize`'s answer.
        Raises HookFailed if the hook misbehaved (logged)."""
        key = (identity["id"], room)
        if key in self.access_overrides:
            return self.access_overrides[key]
        access = await call_hook("authorize", lambda: self.hooks.authorize(identity, room), self.config.hook_timeout)
        return checked_access(access)

    def access_now(self, identity: Identity, room: str, authorized: Access) -> Access | None:
        """The access a member is admitted with: what `authorize` said, unless the operator set
        another since (the join awaited the hook and the room's loading meanwhile)."""
        return self.access_overrides.get((identity["id"], room), authorized)

    # -- recording (plait serve --record) -----------------------------------------------------

    def record_opened(self, session: str, path: str) -> None:
        if self.recorder is not None:
            self.recorder.opened(session, path)

    def record_message(
        self, session: str, direction: str, data: bytes | str, frames_of: Callable[[bytes | str], list[Frame]] | None = None
    ) -> None:
        if self.recorder is not None:
            self.recorder.message(session, direction, data, frames_of)

    def record_closed(self, session: str, direction: str, code: int, reason: str) -> None:
        if self.recorder is not None:
            self.recorder.closed(session, direction, code, reason)
