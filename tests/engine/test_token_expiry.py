"""Credentials that expire during a session (spec §5.9), in an engine under MockClock.

Rules of this module: the engine's wall clock is `T0 + trio.current_time()` (T0: real time when
the test's engine starts), so JWT `exp` claims and the engine agree while Trio's clock jumps. PyJWT checks
`exp` against real time, which does not move during a test; the engine checks it against its
own wall clock, which does. Heartbeat H is 60 s, so the sweep runs every 7.5 s and a silent
client is not closed for 120 s: the tests need no pings.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
import trio
from trio.testing import MockClock

from plait.engine import Engine, EngineConfig, Hooks, JwtHooks
from plait.engine._hooks import Identity
from plait.protocol import (
    Access,
    AccessChanged,
    Ack,
    ChannelClosed,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Join,
    Joined,
    Ping,
    Pong,
    PresenceDiff,
    Refresh,
    TokenExpiring,
    TransportClosed,
    Update,
)
from plait.storage import MemoryStore

from .client import DocClient, RawClient, YjsClient
from .conftest import counter_ids

SECRET = b"0123456789abcdef" * 4
H = 60.0
SWEEP = H / 8
T0 = time.time()
"""Real time when the test's engine started (jwt_engine): the engine's wall clock then."""


def token(exp_in: float, sub: str = "ada", **claims: Any) -> str:
    """A token expiring `exp_in` seconds after T0 on the engine's wall clock."""
    return jwt.encode({"sub": sub, "exp": T0 + exp_in, "rooms": {"r": "write"}, **claims}, SECRET, algorithm="HS256")


@asynccontextmanager
async def jwt_engine(hooks: Hooks | None = None, wall_offset: float = 0.0) -> AsyncIterator[Engine]:
    global T0
    T0 = time.time()  # now, not at import: PyJWT checks exp against real time
    start = trio.current_time()
    with trio.fail_after(3600):
        async with Engine(
            store=MemoryStore(),
            hooks=hooks or JwtHooks.from_secret(SECRET),
            config=EngineConfig(heartbeat=H, presence_grace=3, tick=0.05),
            session_ids=counter_ids(),
            wall_clock=lambda: T0 + wall_offset + trio.current_time() - start,
        ) as engine:
            yield engine


async def until_closed(client: RawClient) -> tuple[list[Any], int]:
    """Every frame until the server closes, and the close code (bounded)."""
    frames = []
    for _ in range(1000):
        try:
            frames.append(await client.receive())
        except TransportClosed as exc:
            return frames, exc.code
    raise AssertionError("never closed")


async def test_a_refresh_before_expiry_keeps_the_session(autojump_clock: MockClock) -> None:
    async with jwt_engine() as engine:
        start = trio.current_time()
        client = DocClient(engine.connect_memory())
        await client.hello(token(30))
        await client.send(Join(1, "b", None, None))
        await client.expect(Error, ref=1, code=ErrorCode.FORBIDDEN)  # the first token grants only "r"
        # Warned a third of the lifetime (10 s) before, at the first sweep from 20 s on.
        warning = await client.wait_for(TokenExpiring)
        assert 20 <= trio.current_time() - start < 20 + SWEEP
        assert warning.expires_in_ms == pytest.approx((start + 30 - trio.current_time()) * 1000, abs=1)
        await client.send(Refresh(7, token(90, rooms={"r": "write", "b": "read"})))
        await client.expect(Ack, ref=7)
        refreshed_at = trio.current_time() - start
        await trio.sleep_until(start + 45)  # past the first token's exp: still open
        await client.send(Ping(5))
        await client.wait_for(Pong)
        # Later joins are authorised with the fresh token's grants.
        await client.send(Join(8, "b", None, None))
        joined = await client.wait_for(Joined)
        assert joined.ref == 8 and joined.access == Access.READ
        # The fresh token's exp replaced the old one: warned before 90 (a third of what was
        # left at the refresh, at most 30 s), closed at 90.
        await client.wait_for(TokenExpiring)
        warn_at = 90 - min(30, (90 - refreshed_at) / 3)
        assert warn_at <= trio.current_time() - start < warn_at + SWEEP
        frames, code = await until_closed(client)
        assert code == CloseCode.TOKEN_EXPIRED
        assert 90 <= trio.current_time() - start < 90 + SWEEP
        assert [f for f in frames if isinstance(f, Error)][-1].code == ErrorCode.TOKEN_EXPIRED


async def test_no_refresh_closes_the_session_at_expiry_never_before(autojump_clock: MockClock) -> None:
    async with jwt_engine() as engine:
        start = trio.current_time()
        watcher = DocClient(engine.connect_memory())
        await watcher.hello(token(1000, sub="bob"))
        await watcher.join("r")
        client = DocClient(engine.connect_memory())
        await client.hello(token(60))
        await client.join("r")
        frames, code = await until_closed(client)
        closed_at = trio.current_time() - start
        assert code == CloseCode.TOKEN_EXPIRED and CloseCode.TOKEN_EXPIRED.retryable
        assert 60 <= closed_at < 60 + SWEEP
        assert [type(f) for f in frames if isinstance(f, (TokenExpiring, Error))] == [TokenExpiring, Error]
        assert frames[-1] == Error(None, None, ErrorCode.TOKEN_EXPIRED, "token expired: reconnect with a fresh token")
        # Its presence leaves the room like any closed connection's.
        for _ in range(1000):
            diff = await watcher.wait_for(PresenceDiff)
            if diff.left:
                assert diff.left == ("s2",)
                break


async def test_a_refresh_for_another_user_is_refused_and_changes_nothing(autojump_clock: MockClock) -> None:
    async with jwt_engine() as engine:
        start = trio.current_time()
        client = DocClient(engine.connect_memory())
        await client.hello(token(60))
        await client.send(Refresh(1, token(600, sub="mallory")))
        error = await client.expect(Error, ref=1, code=ErrorCode.UNAUTHENTICATED)
        assert "another user" in error.message
        await client.send(Refresh(2, "garbage"))
        await client.expect(Error, ref=2, code=ErrorCode.UNAUTHENTICATED)
        await client.send(Refresh(3, jwt.encode({"sub": "ada", "exp": T0 + 600}, b"k" * 64, algorithm="HS256")))
        await client.expect(Error, ref=3, code=ErrorCode.UNAUTHENTICATED)
        # Not fatal: the session goes on, and still ends at the first token's expiry.
        await client.send(Ping(9))
        await client.expect(Pong, nonce=9)
        _, code = await until_closed(client)
        assert code == CloseCode.TOKEN_EXPIRED
        assert 60 <= trio.current_time() - start < 60 + SWEEP


async def test_a_refresh_with_a_token_already_expired_is_refused(autojump_clock: MockClock) -> None:
    async with jwt_engine() as engine:
        client = DocClient(engine.connect_memory())
        await client.hello(token(60))
        await trio.sleep(45)
        await client.send(Refresh(1, token(40)))  # valid by real time, expired by the engine's
        error = await client.wait_for(Error)  # after the token_expiring of 40 s
        assert (error.ref, error.code, error.message) == (1, ErrorCode.UNAUTHENTICATED, "token expired")


async def test_a_hello_with_an_expired_token_is_refused(autojump_clock: MockClock) -> None:
    async with jwt_engine(wall_offset=100) as engine:  # the engine's clock is 100 s ahead
        client = DocClient(engine.connect_memory())
        await client.send(Hello((1,), token(60), {}))
        error = await client.expect(Error)
        assert (error.code, error.message) == (ErrorCode.UNAUTHENTICATED, "token expired")
        assert await client.wait_closed() == CloseCode.UNAUTHENTICATED


class Expiring(Hooks):
    """Custom hooks use the same machinery: a token "NAME/SECONDS" expires SECONDS after T0."""

    def __init__(self, answer: Any = None) -> None:
        super().__init__()
        self.answer = answer

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        return {"id": (token or "anon").partition("/")[0]}

    async def expires_at(self, token: str | None, identity: Identity) -> Any:
        if self.answer is not None:
            return self.answer
        seconds = (token or "").partition("/")[2]
        return T0 + float(seconds) if seconds else None


async def test_custom_hooks_expire_sessions_through_expires_at(autojump_clock: MockClock) -> None:
    async with jwt_engine(Expiring()) as engine:
        start = trio.current_time()
        forever = DocClient(engine.connect_memory())
        await forever.hello("ada")
        client = DocClient(engine.connect_memory())
        await client.hello("bob/30")
        await client.wait_for(TokenExpiring)
        await client.send(Refresh(1, "bob/90"))
        await client.expect(Ack, ref=1)
        _, code = await until_closed(client)
        assert code == CloseCode.TOKEN_EXPIRED and 90 <= trio.current_time() - start < 90 + SWEEP
        # A credential that never expires is never asked for again.
        await forever.send(Ping(1))
        frames = [await forever.receive()]
        assert not any(isinstance(f, TokenExpiring) for f in frames)


@pytest.mark.parametrize("answer", ["soon", float("nan"), float("inf"), [1], True], ids=repr)
async def test_an_expires_at_hook_that_misbehaves_fails_the_handshake_alone(autojump_clock: MockClock, answer: Any) -> None:
    async with jwt_engine(Expiring(answer)) as engine:
        client = DocClient(engine.connect_memory())
        await client.send(Hello((1,), "bob/30", {}))
        await client.expect(Error, code=ErrorCode.INTERNAL)
        assert await client.wait_closed() == CloseCode.INTERNAL_ERROR


async def test_a_y_websocket_session_is_closed_at_expiry(autojump_clock: MockClock) -> None:
    """spec §13: y-websocket cannot refresh; its session ends 4012 when the token expires."""
    async with jwt_engine() as engine:
        start = trio.current_time()
        client = YjsClient(engine.connect_memory(f"/yjs/r?token={token(30)}"))
        code = None
        for _ in range(10_000):
            try:
                await client.next()
            except TransportClosed as exc:
                code = exc.code
                break
        assert code == CloseCode.TOKEN_EXPIRED
        assert 30 <= trio.current_time() - start < 30 + SWEEP


class Composed(Hooks):
    """An application's own hooks that delegate tokens to a JwtHooks and decide rooms itself."""

    def __init__(self) -> None:
        super().__init__()
        self.jwt = JwtHooks.from_secret(SECRET)

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        identity = await self.jwt.authenticate(token, client)
        return {**identity, "team": "red"}

    async def expires_at(self, token: str | None, identity: Identity) -> float | None:
        return await self.jwt.expires_at(token, identity)

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return Access.READ if room.startswith(identity["team"]) else None


class Subclassed(JwtHooks):
    """A JwtHooks whose authorize asks the application first, then the token."""

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        if room == "announcements":
            return Access.READ
        return await super().authorize(identity, room)


async def test_custom_hooks_that_compose_or_subclass_jwt_hooks_take_precedence(autojump_clock: MockClock) -> None:
    async with jwt_engine(Composed()) as engine:
        start = trio.current_time()
        client = DocClient(engine.connect_memory())
        await client.hello(token(30))
        assert (await client.join("red:1")).access == Access.READ  # the application's rule, not the token's
        await client.send(Join(2, "r", None, None))
        refusal = await client.wait_for(Error)  # after the first room's sync and presence
        assert (refusal.ref, refusal.code) == (2, ErrorCode.FORBIDDEN)
        _, code = await until_closed(client)  # expiry still comes from the token
        assert code == CloseCode.TOKEN_EXPIRED and 30 <= trio.current_time() - start < 30 + SWEEP
    async with jwt_engine(Subclassed.from_secret(SECRET)) as engine:
        client = DocClient(engine.connect_memory())
        await client.hello(token(30))
        assert (await client.join("announcements")).access == Access.READ
        await client.send(Join(2, "r", None, None))
        joined = await client.wait_for(Joined)
        assert (joined.ref, joined.access) == (2, Access.WRITE)


async def test_a_refresh_that_grants_less_changes_the_rooms_already_joined_at_once(autojump_clock: MockClock) -> None:
    async with jwt_engine() as engine:
        client = DocClient(engine.connect_memory())
        await client.hello(token(300, rooms={"r": "write", "s": "write", "t": "read"}))
        for ref, room in ((1, "r"), (2, "s"), (3, "t")):
            await client.send(Join(ref, room, None, None))
            await client.wait_for(Joined)
        # The fresh token: r read-only, s gone, t unchanged.
        await client.send(Refresh(9, token(600, rooms={"r": "read", "t": "read"})))
        await client.wait_for(Ack)
        changed = await client.wait_for(AccessChanged)
        assert (changed.channel, changed.access) == (1, Access.READ)
        closed = await client.wait_for(ChannelClosed)
        assert (closed.channel, closed.code) == (2, ErrorCode.FORBIDDEN)
        await client.send(Update(1, 10, b"\x01\x01\x09\x00\x04\x01\x04text\x01x\x00"))
        refusal = await client.wait_for(Error)
        assert (refusal.ref, refusal.code) == (10, ErrorCode.FORBIDDEN)
        assert [m.access for s in engine.sessions() for m in s.rooms] == [Access.READ, Access.READ]
