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
from .._logs import log_subject
from .._metrics import NO_METRICS, Metrics, Traffic
from .._record import TraceRecorder
from ..room import Room


def _no_probe(arrived: float) -> None:
    pass


def _no_sweep(session: Any) -> None:
    pass


class Flushable(Protocol):
    def flush_nowait(self) -> None: ...


FANOUT_SAMPLE_EVERY = 16
"""The fan-out latency is measured for one message in this many that carry document updates
or an event (Flusher.probe): a clock read per recipient written is affordable that often."""


PROBED_RECIPIENTS = 8
"""Recipients whose write a sampled flush times (Flusher._flush)."""


class Flusher:
    """Writes for the connections a fan-out reached, all in one task (Peer._wake_writer).

    Args:
        nursery: where that task runs (the engine's; asked for at each flush).
        metrics: where the sampled fan-out latency goes (`fanout_seconds`).
    """

    def __init__(self, nursery: Callable[[], trio.Nursery], metrics: Metrics = NO_METRICS) -> None:
        self._nursery = nursery
        self._to_flush: list[Flushable] = []
        self._metrics = metrics
        self._countdown = FANOUT_SAMPLE_EVERY
        self._probe: float | None = None
        """When the sampled message was read, while its flush is pending."""

    def probe(self, arrived: float) -> None:
        """A message that carries document updates or an event, read at `arrived`
        (trio.current_time()), has been handled: its fan-out is queued, and the flush that
        writes it is pending. One in FANOUT_SAMPLE_EVERY is measured: the time from `arrived`
        to the connections that flush writes (fanout_seconds; PROBED_RECIPIENTS of them). Connections written by a writer
        task of their own (a socket that did not take everything, a large message, a memory or
        HTTP transport) are not measured."""
        self._countdown -= 1
        if self._countdown > 0 or not self._to_flush or self._metrics is NO_METRICS:
            return
        self._countdown = FANOUT_SAMPLE_EVERY
        if self._probe is None:
            self._probe = arrived

    def flush_soon(self, peer: Flushable) -> None:
        """Have `peer` write what it queued once the tasks that are running now have run
        (Peer._wake_writer): one task writes for every connection a fan-out reached."""
        if not self._to_flush:
            self._nursery().start_soon(self._flush)
        self._to_flush.append(peer)

    async def _flush(self) -> None:
        log_subject(None)  # it writes for many sessions: not the one whose task started it
        peers, self._to_flush = self._to_flush, []
        probe, self._probe = self._probe, None
        if probe is None:
            for peer in peers:
                peer.flush_nowait()
            return
        # At most PROBED_RECIPIENTS observations, spread over the flush, the last included:
        # a report costs a microsecond or two, and a big room's flush writes hundreds.
        step = max(1, len(peers) // PROBED_RECIPIENTS)
        last = len(peers) - 1
        for i, peer in enumerate(peers):
            peer.flush_nowait()
            if i % step == step - 1 or i == last:
                self._metrics.observe("fanout_seconds", trio.current_time() - probe)


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
        self.traffic = Traffic()
        """Messages, frames and bytes in and out of every session (engine/_metrics.py)."""
        self.probe_fanout: Callable[[float], None] = _no_probe
        """Flusher.probe, when the engine measures the fan-out latency."""
        self.sweep_soon: Callable[[Any], None] = _no_sweep
        """SweepSchedule.soon: have the heartbeat sweep look at a session at its next pass."""
        self.read_at = 0.0
        """When a session last read a message (trio.current_time()): the one it handles now,
        unless it waited since (an event's publish may), when the sample is a little short.
        One float for the engine, not one per session (an idle connection's bytes count)."""
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

    def access_now(self, identity: Identity, room: str, authorized: Access | None) -> Access | None:
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
