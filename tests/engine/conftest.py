"""Engine tests run under an autojump MockClock over in-memory transports: no sockets, no real
sleeps. Session ids are deterministic (s1, s2, ...)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from plait.engine import Engine, EngineConfig, Hooks
from plait.storage import MemoryStore, Store

from .client import DocClient

CONFIG = EngineConfig(heartbeat=10, presence_grace=3, typing_expiry=5, room_idle_grace=7, tick=0.05)


def counter_ids() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"s{next(numbers)}"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def engine(autojump_clock: trio.testing.MockClock, store: MemoryStore) -> AsyncIterator[Engine]:
    with trio.fail_after(600):
        async with Engine(store=store, config=CONFIG, session_ids=counter_ids()) as eng:
            yield eng


Connect = Callable[[], Awaitable[DocClient]]


@pytest.fixture
def connect(engine: Engine) -> Connect:
    async def open_client(token: str | None = None) -> DocClient:
        client = DocClient(engine.connect_memory())
        await client.hello(token)
        return client

    return open_client  # type: ignore[return-value]


def make_engine(store: Store | None = None, hooks: Hooks | None = None, **config: float) -> Engine:
    merged = EngineConfig(**{**{f: getattr(CONFIG, f) for f in CONFIG.__dataclass_fields__}, **config})  # type: ignore[arg-type]
    return Engine(store=store or MemoryStore(), hooks=hooks, config=merged, session_ids=counter_ids())


@asynccontextmanager
async def running_engine(store: Store | None = None, hooks: Hooks | None = None, **config: float) -> AsyncIterator[Engine]:
    """`async with make_engine(...)` under a deadline on Trio's clock, so that an engine that
    never exits (a hook or a client holding up its shutdown) fails the test instead of hanging it."""
    with trio.fail_after(600):
        async with make_engine(store, hooks, **config) as engine:
            yield engine


def record_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Wrap `module.name` so that each call records the length of its first argument (a
    message, an update) before it runs: what a test asserts was, or was not, read."""
    calls: list[int] = []
    real = getattr(module, name)

    def recorded(data: Any, *args: Any) -> Any:
        calls.append(len(data))
        return real(data, *args)

    monkeypatch.setattr(module, name, recorded)
    return calls
