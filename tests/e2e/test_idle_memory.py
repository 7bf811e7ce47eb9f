"""What an idle native WebSocket connection costs the server in memory (issue 21's goal: at most
12 KiB of RSS each, bench/idle.py). Clients in a process of their own, over real sockets on
127.0.0.1, so that only the server's allocations are traced here."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import tracemalloc

import pytest
import trio
import trio.testing

from plait.engine import Engine

pytestmark = pytest.mark.slow

CONNECTIONS = 300

# Raw sockets: each connection upgrades, says hello, reads its welcome, then only stays open.
CLIENTS = textwrap.dedent("""
    import os, socket, sys
    from plait.protocol import Hello, encode
    port, n = int(sys.argv[1]), int(sys.argv[2])
    hello = encode(Hello((1,), None, {}))
    mask = os.urandom(4)
    frame = bytes([0x82, 0x80 | len(hello)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(hello))
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n")
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        if not head.partition(b"\\r\\n\\r\\n")[2]:
            s.sendall(frame)
            assert s.recv(4096)  # the welcome
        socks.append(s)
    print("ready", flush=True)
    sys.stdin.read()  # open until the test is done
""")


async def test_an_idle_connection_holds_under_eleven_and_a_half_kilobytes_of_objects() -> None:
    async with Engine() as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            clients = await trio.lowlevel.open_process([sys.executable, "-c", CLIENTS, str(port), str(CONNECTIONS)],
                                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                assert clients.stdout is not None
                with trio.fail_after(60):
                    line = b""
                    while not line.endswith(b"\n"):
                        chunk = await clients.stdout.receive_some()
                        assert chunk, "the clients exited"
                        line += chunk
                assert line == b"ready\n"
                await trio.testing.wait_all_tasks_blocked()
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                clients.kill()
                await clients.wait()
                await clients.stdin.aclose()  # type: ignore[union-attr]
                await clients.stdout.aclose()  # type: ignore[union-attr]
        finally:
            tracemalloc.stop()
        nursery.cancel_scope.cancel()
    per_connection = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / CONNECTIONS
    # About 11.1 KB today, which with the C allocator's headers is 12 KiB of RSS (bench/README).
    # Each coroutine frame kept while waiting, or cancel scope, is 250-650 bytes.
    assert per_connection < 11_500, f"{per_connection:.0f} bytes per idle connection"
