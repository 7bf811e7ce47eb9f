"""A server that takes the TCP connection and never answers the WebSocket upgrade (a frozen
process, a proxy holding it): the SDK fails the attempt and retries, and `plait client` still
quits at once. Real sockets on 127.0.0.1, Trio's MockClock for the waits."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing
from trio.testing import MockClock

from plait.client import Backoff, connect
from plait.client._cli import run


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A port whose connections are accepted and then never answered."""
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, hold, 0)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()
    for stream in held:
        await trio.aclose_forcefully(stream)


async def test_an_unanswered_upgrade_fails_the_attempt_and_is_retried(autojump_clock: MockClock) -> None:
    async with silent_server() as port:
        backoff = Backoff(base=0.5, cap=4, rng=random.Random(1))
        async with connect(f"ws://127.0.0.1:{port}/", backoff=backoff) as client:
            changes = client.changes()
            start = trio.current_time()
            for _ in range(10):
                change = await changes.__anext__()
                if change.state == "reconnecting":
                    break
            assert change.state == "reconnecting" and "no answer to the WebSocket upgrade" in str(change.error)
            assert 10 <= trio.current_time() - start < 12


async def test_plait_client_quits_at_once_while_the_upgrade_is_unanswered(autojump_clock: MockClock) -> None:
    async with silent_server() as port:
        keyboard, stdin = trio.testing.memory_stream_one_way_pair()
        screen: list[str] = []

        class Out:
            def write(self, text: str) -> None:
                screen.append(text)

            def flush(self) -> None:
                pass

        status: list[int] = []

        async def client() -> None:
            status.append(await run(f"ws://127.0.0.1:{port}/", "demo", None, None, stdin, Out(),  # type: ignore[arg-type]
                                    backoff=Backoff(base=0.5, cap=4, rng=random.Random(1))))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            await trio.sleep(1)  # connecting: the upgrade is not answered
            start = trio.current_time()
            await keyboard.send_all(b"/quit\n")
            with trio.fail_after(30):
                while not status:
                    await trio.sleep(0.5)
            # When the attempt under way gives up (the handshake timeout, 10 s): it hung before.
            assert trio.current_time() - start <= 10
        assert status == [0] and "quitting" in "".join(screen)
