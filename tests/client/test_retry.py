"""Reconnecting: every attempt is observable (state, error, next delay), delays grow with full
jitter even when each connection dies right after its handshake, and a close the server says
not to retry (spec §9) stops the client with that close code's meaning."""

from __future__ import annotations

from typing import Any

import trio
from trio.testing import MockClock

from plait.client import ClientState, ConnectionChanged, ConnectionClosed
from plait.engine import Hooks, Identity, MemoryTransport, Unauthenticated
from plait.protocol import CloseCode, TransportClosed

from ..engine.conftest import make_engine
from .cable import Cable, client_for


async def test_each_failed_attempt_reports_its_error_and_the_next_delay(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine)
        cable.down = True
        async with client_for(cable) as client:
            changes = client.changes()
            seen: list[ConnectionChanged] = []
            async for change in changes:
                seen.append(change)
                if len(seen) == 6:
                    break
            cable.down = False
            await client.wait_state(ClientState.OPEN)
    assert [c.state for c in seen] == ["reconnecting"] * 6
    assert [c.attempt for c in seen] == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(c.error, OSError) and "network is down" in str(c.error) for c in seen)
    bounds = [min(4, 0.5 * 2**i) for i in range(6)]  # Backoff(base=0.5, cap=4) in client_for
    assert all(c.delay is not None and 0 <= c.delay <= b for c, b in zip(seen, bounds, strict=True))


class HangsUpAfterWelcome:
    """A server that welcomes, then closes at once with GOING_AWAY, every time."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.received = 0

    async def send_message(self, data: bytes) -> None:
        await self.inner.send_message(data)

    async def receive_message(self) -> bytes | str:
        if self.received:
            await self.inner.aclose(1000)
            raise TransportClosed(CloseCode.GOING_AWAY, "going away")
        self.received += 1
        return await self.inner.receive_message()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.aclose(code, reason)


async def test_a_connection_that_drops_right_after_its_handshake_still_backs_off(autojump_clock: MockClock) -> None:
    async with make_engine() as engine:
        cable = Cable(engine, wrap=HangsUpAfterWelcome)  # type: ignore[arg-type]
        async with client_for(cable) as client:
            start = trio.current_time()
            attempts = []
            async for change in client.changes():
                if change.state == "reconnecting":
                    attempts.append(change.attempt)
                    if len(attempts) == 8:
                        break
    # The count is not reset by a handshake that does not last: delays grow to the cap,
    # instead of a retry every quarter second for ever.
    assert attempts == list(range(1, 9))
    assert trio.current_time() - start > 4


class Refuses(Hooks):
    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        raise Unauthenticated("who are you")


async def test_a_close_not_to_retry_stops_with_its_meaning(autojump_clock: MockClock) -> None:
    async with make_engine(hooks=Refuses()) as engine:
        cable = Cable(engine)
        async with client_for(cable) as client:
            async for change in client.changes():
                if change.state == "closed":
                    break
            await trio.sleep(60)
    assert isinstance(change.error, ConnectionClosed)
    assert change.error.code == CloseCode.UNAUTHENTICATED
    assert not change.error.retryable
    assert "4003" in str(change.error) and "who are you" in str(change.error)
    assert client.closed_error is change.error
    assert cable.opened == 1
