"""A TCP proxy on 127.0.0.1 that tests use to cut connections, as a flaky network would."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class Proxy:
    """Forwards 127.0.0.1:port to the target. `delay` holds every chunk back that long (in
    order), like a slow link; `cut()` drops every connection at once."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self.connections = 0
        self.down = False
        """While True, new connections are closed at once (with cut(): a link down a while)."""
        self._scopes: list[trio.CancelScope] = []

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](1000)

        async def deliver() -> None:
            async for due, data in receive:
                await trio.sleep_until(due)
                await sink.send_all(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver)
                async with send:
                    while data := await source.receive_some(65536):
                        await send.send((trio.current_time() + self.delay, data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.down:  # refused: the link is down
            await client.aclose()
            return
        self.connections += 1
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            async with client, await trio.open_tcp_stream("127.0.0.1", self.target_port) as upstream:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, upstream)
                    await self._pipe(upstream, client)
                    nursery.cancel_scope.cancel()
        self._scopes.remove(scope)

    def cut(self) -> None:
        """Drop every connection now, with no WebSocket close: an abrupt network failure."""
        for scope in self._scopes:
            scope.cancel()


@asynccontextmanager
async def proxy_to(port: int, delay: float = 0.0) -> AsyncIterator[Proxy]:
    proxy = Proxy(port, delay)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, proxy._handle, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        yield proxy
        nursery.cancel_scope.cancel()
