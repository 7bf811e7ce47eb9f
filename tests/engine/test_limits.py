"""Connection limits per user (max_connections_per_user, spec §5.1) and the counting under them
(engine/_limits.py): exact however sessions end, or an address or user is locked out for good.

Rules: in-memory transports under an autojump MockClock (tests/engine/conftest.py); the counts
themselves are checked against a model with hypothesis. Real sockets and the per-address
limit: tests/e2e/test_admission.py.
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from plait.engine._limits import UNCOUNTED, ConnectionCounts, Slot
from plait.engine.testing import TokenHooks
from plait.protocol import CloseCode, Error, ErrorCode, Hello, TransportClosed, Welcome

from .client import DocClient, YjsClient
from .conftest import running_engine

KEY = "k" * 24


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abc"), st.integers(0, 20)), max_size=200), st.integers(1, 4))
def test_counts_follow_every_take_and_release(ops: list[tuple[bool, str, int]], limit: int) -> None:
    counts = ConnectionCounts(limit)
    held: list[tuple[str, Slot]] = []
    model: dict[str, int] = {}
    for take, key, pick in ops:
        if take:
            slot = counts.take(key)
            if model.get(key, 0) >= limit:
                assert slot is None
            else:
                assert slot is not None
                held.append((key, slot))
                model[key] = model.get(key, 0) + 1
        elif held:
            key, slot = held.pop(pick % len(held))
            slot.release()
            slot.release()  # a second release gives nothing back twice
            model[key] -= 1
            if not model[key]:
                del model[key]
        assert {k: counts.count(k) for k in "abc" if counts.count(k)} == model
        assert len(counts) == len(model)  # keys with nothing open are forgotten


def test_no_limit_counts_nothing() -> None:
    counts = ConnectionCounts(0)
    slots = [counts.take("a") for _ in range(1000)]
    assert all(slot is UNCOUNTED for slot in slots) and len(counts) == 0
    for slot in slots:
        assert slot is not None
        slot.release()


async def test_a_user_past_the_limit_is_refused_after_authenticating(autojump_clock: trio.testing.MockClock) -> None:
    async with running_engine(hooks=TokenHooks(), max_connections_per_user=2) as engine:
        a1, a2 = DocClient(engine.connect_memory()), DocClient(engine.connect_memory())
        await a1.hello("ada")
        await a2.hello("ada")
        a3 = DocClient(engine.connect_memory())
        await a3.send(Hello((1,), "ada", {}))
        error = await a3.expect(Error, code=ErrorCode.TOO_MANY_CONNECTIONS)
        assert "2 sessions" in error.message
        assert await a3.wait_closed() == CloseCode.TOO_MANY_CONNECTIONS
        # A refused token never reaches the count; neither does a client that never says hello.
        bad = DocClient(engine.connect_memory())
        await bad.send(Hello((1,), "bad", {}))
        assert await bad.wait_closed() == CloseCode.UNAUTHENTICATED
        silent = DocClient(engine.connect_memory())
        assert await silent.wait_closed() == CloseCode.HANDSHAKE_TIMEOUT
        # y-websocket sessions count with native ones.
        y = YjsClient(engine.connect_memory("/yjs/notes?token=ada"))
        with pytest.raises(TransportClosed) as closed:
            await y.next()
        assert closed.value.code == CloseCode.TOO_MANY_CONNECTIONS


async def test_sessions_that_end_any_way_free_their_place(autojump_clock: trio.testing.MockClock) -> None:
    async with running_engine(hooks=TokenHooks(), max_connections_per_user=1) as engine:
        users = engine._services.users

        async def ada(client: DocClient) -> Welcome | Error:
            await client.send(Hello((1,), "ada", {}))
            frame = await client.receive()
            assert isinstance(frame, (Welcome, Error))
            return frame

        # Closed by the client.
        first = DocClient(engine.connect_memory())
        assert isinstance(await ada(first), Welcome)
        await first.transport.aclose()
        # Gone silent: closed HEARTBEAT_TIMEOUT after 2H.
        silent = DocClient(engine.connect_memory())
        assert isinstance(await ada(silent), Welcome)
        assert isinstance(await ada(DocClient(engine.connect_memory())), Error)
        assert await silent.wait_closed() == CloseCode.HEARTBEAT_TIMEOUT
        assert users.count("ada") == 0
        # Detached (an HTTP session between requests): the place is kept through the grace,
        # then freed.
        detached = DocClient(engine.connect_memory(detach_grace=10.0, resume_key=KEY))
        assert isinstance(await ada(detached), Welcome)
        await detached.transport.aclose(CloseCode.GOING_AWAY, "network changed")  # not a normal close: it detaches
        await trio.sleep(5)
        assert users.count("ada") == 1
        await trio.sleep(10)
        assert users.count("ada") == 0
        # Closed by the server (shutting down) with the rest: nothing left counted.
        last = DocClient(engine.connect_memory())
        assert isinstance(await ada(last), Welcome)
        assert users.count("ada") == 1
    assert len(users) == 0
