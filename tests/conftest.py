"""Suite-wide rules: every async test runs under a deadline on Trio's clock (virtual under
MockClock), so a test that waits for something that never happens fails instead of hanging."""

from __future__ import annotations

import functools
import inspect
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from tests.servers import PostgresServer, RedisServer, postgres_server, redis_server

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    # Run as a background job (`cmd &` in a script, nohup), the suite starts with SIGINT ignored,
    # and every server and client it starts would inherit that and ignore the Ctrl-C that the
    # tests of a graceful stop send: they hung until killed. A handler is reset to the default
    # in a child, so the children get Ctrl-C back.
    signal.signal(signal.SIGINT, signal.default_int_handler)

TEST_DEADLINE = 120.0
"""Seconds on Trio's clock. Under autojump this is virtual time, spent in milliseconds."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fn = getattr(item, "obj", None)
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(fn):
            item.obj = _with_deadline(fn)


def _with_deadline(fn: Any) -> Any:
    @functools.wraps(fn)
    async def run(**kwargs: Any) -> Any:
        with trio.fail_after(TEST_DEADLINE):
            return await fn(**kwargs)

    return run


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server for the whole run, started on first use (tests/servers.py)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def redis(redis_session: RedisServer) -> RedisServer:
    """A private Redis (tests/servers.py), started once per run and emptied for each test."""
    redis_session.flush()
    return redis_session
