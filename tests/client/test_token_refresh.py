"""connect(token=FUNCTION): the SDK asks for a fresh token at every connection and whenever the
server says the session's token expires soon, and sends it in `refresh` (spec §5.9). Against an
in-memory engine under MockClock, with hooks whose tokens say when they expire ("NAME/T": user
NAME until T seconds of Trio's clock, which is also the engine's wall clock here).
tests/e2e/test_jwt.py does the same with real JWTs over a real socket."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from plait.client import ClientState, ConnectionClosed
from plait.engine import Engine, EngineConfig, Hooks, Identity, Unauthenticated
from plait.storage import MemoryStore

from ..engine.conftest import counter_ids
from .cable import Cable, client_for

H = 20.0


class TimedTokens(Hooks):
    """Token "NAME/T": user NAME, expiring at T on the engine's wall clock; "bad" is refused."""

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        if token is None or token == "bad" or "/" not in token:
            raise Unauthenticated("token refused")
        return {"id": token.partition("/")[0]}

    async def expires_at(self, token: str | None, identity: Identity) -> float | None:
        return float((token or "").partition("/")[2])


def timed_engine() -> Engine:
    return Engine(
        store=MemoryStore(), hooks=TimedTokens(), config=EngineConfig(heartbeat=H, presence_grace=3),
        session_ids=counter_ids(), wall_clock=trio.current_time,
    )


async def test_a_token_function_keeps_the_session_alive_across_expiries(autojump_clock: MockClock) -> None:
    calls: list[float] = []

    def fresh() -> str:
        calls.append(trio.current_time())
        return f"ada/{trio.current_time() + 30}"

    async with timed_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, token=fresh) as client, client.join("r") as room:
            await room.synced()
            await trio.sleep(100)  # past three of the tokens' lifetimes
            assert client.state is ClientState.OPEN and cable.opened == 1 and client.attempts == 0
            assert len(calls) >= 4  # the connection's, and a refresh before each expiry
            room.text.insert(0, "still here")
            await room.flushed()


async def test_an_async_token_function_is_awaited(autojump_clock: MockClock) -> None:
    calls = 0

    async def fresh() -> str:
        nonlocal calls
        calls += 1
        await trio.sleep(0.5)  # fetching it from a login service
        return f"ada/{trio.current_time() + 30}"

    async with timed_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, token=fresh) as client, client.join("r") as room:
            await room.synced()
            await trio.sleep(70)
            assert client.state is ClientState.OPEN and cable.opened == 1
            assert calls >= 3


async def test_the_token_function_is_called_for_every_connection(autojump_clock: MockClock) -> None:
    tokens: list[str] = []

    def fresh() -> str:
        tokens.append(f"ada/{trio.current_time() + 1000}")
        return tokens[-1]

    async with timed_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, token=fresh) as client, client.join("r") as room:
            await room.synced()
            await cable.cut()
            await client.wait_state(ClientState.RECONNECTING)
            await client.wait_state(ClientState.OPEN)
            await room.synced()
            assert cable.opened == 2 and len(tokens) == 2


async def test_a_fixed_token_cannot_be_refreshed_and_the_session_ends(autojump_clock: MockClock, caplog: pytest.LogCaptureFixture) -> None:
    """A string token: the server's token_expiring is logged, the session closes 4012, and the
    reconnect's (expired) token is refused for good."""
    async with timed_engine() as engine:
        cable = Cable(engine)
        with caplog.at_level(logging.WARNING, logger="plait.client"):
            async with client_for(cable, token="ada/30") as client, client.join("r") as room:
                await room.synced()
                await client.wait_state(ClientState.CLOSED)
                assert isinstance(client.closed_error, ConnectionClosed)
                assert client.closed_error.code == 4003  # the reconnect: expired, refused
        assert any("cannot refresh it" in r.message for r in caplog.records)


async def test_a_refused_refresh_is_tried_again_until_one_is_taken(autojump_clock: MockClock) -> None:
    answers = iter(["ada/30", "mallory/1000", "bad", "ada/2000"])

    async with timed_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, token=lambda: next(answers)) as client, client.join("r") as room:
            await room.synced()
            await trio.sleep(60)  # past 30: the third answer was taken, before it
            assert client.state is ClientState.OPEN and cable.opened == 1


async def test_a_failing_token_function_fails_the_attempt_and_is_retried(autojump_clock: MockClock) -> None:
    outcomes: list[Any] = [OSError("login service down"), 42, "x" * 9000, "ada/1000"]

    def fresh() -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async with timed_engine() as engine:
        cable = Cable(engine)
        async with client_for(cable, token=fresh) as client, client.join("r") as room:
            await room.synced()
            assert not outcomes and client.state is ClientState.OPEN
            assert client.attempts == 3 and len(client.delays) == 3  # each failure backed off
            assert cable.opened == 1  # no connection was opened without a token


def test_connect_refuses_a_token_that_is_neither_text_nor_a_function() -> None:
    async def main() -> None:
        async with timed_engine() as engine:
            with pytest.raises(ValueError, match="token must be"):
                async with client_for(Cable(engine), token=42):
                    pass

    trio.run(main, clock=MockClock(autojump_threshold=0))
