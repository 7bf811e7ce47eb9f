"""A Plait server with application hooks that `plait serve` has no flag for, for the SDK's
tests (js/test/hooks.test.mjs): plait.engine.testing.TokenHooks, which refuses events named
`rejected` (EVENT_REJECTED) and `app-error` (application code 4000) and reads access from the
token (`ro:NAME` read, `co:NAME` comment). Prints the serving line `plait serve` prints; stops
on SIGTERM or SIGINT.

    python hooked_server.py
"""

from __future__ import annotations

import signal

import trio

from plait.engine import Engine
from plait.engine.testing import TokenHooks
from plait.storage import MemoryStore


async def main() -> None:
    async with Engine(store=MemoryStore(), hooks=TokenHooks()) as engine:
        port = await engine.nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        print(f"plait: serving on ws://127.0.0.1:{port}/", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        engine.nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
