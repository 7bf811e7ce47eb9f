"""This process's heartbeat key, kept alive from a thread of its own (architecture: Scale-out).

A busy process (thousands of connections opening or closing at once) can go seconds without
its event loop running any given task. Beaten only from the loop, its key then lapsed and the
other processes took it for dead: its members left their presence and every room it shared
resynced, at the moment it was busiest. So a thread beats too, with its own Trio loop and Redis
connection: the key lives as long as the process does, and its loop still makes progress. The
loop says so (`progress()`); a loop that makes none for `stuck_after` seconds (a hook stuck in
a busy loop, a deadlock) stops the thread's beats, and the process is dead to the others.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import trio

logger = logging.getLogger("plait.cluster")


class Heartbeat:
    """Sets `key` (PX `3 * interval`) every `interval` seconds from its own thread, while the
    event loop made progress within `stuck_after` seconds; also records the beats of the loop
    (`beaten()`) to tell whether the key may have lapsed (`lapsed()`).

    Use: `start()` once the key was set; `stop()` before the key is deleted.
    """

    def __init__(self, connect: Any, key: bytes, interval: float, stuck_after: float) -> None:
        """`connect`: makes a coredis client (the thread's own; the loop's cannot be shared)."""
        self._connect = connect
        self._key = key
        self._interval = interval
        self._stuck_after = stuck_after
        self._progress_at = time.monotonic()
        self._beaten_at = time.monotonic()
        self._lapsed = False
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._running = threading.Event()

    def progress(self) -> None:
        """The event loop ran: the thread may beat for `stuck_after` seconds more."""
        self._progress_at = time.monotonic()

    def beaten(self) -> None:
        """The key was set just now (by either side)."""
        now = time.monotonic()
        if now - self._beaten_at > 3 * self._interval:
            self._lapsed = True  # the others may have given this process up for dead
        self._beaten_at = now

    def lapsed(self) -> bool:
        """Whether the key may have lapsed since the last call (a gap between beats longer
        than its life)."""
        lapsed, self._lapsed = self._lapsed, False
        return lapsed

    def start(self) -> None:
        self.progress()
        self.beaten()
        self._thread = threading.Thread(target=trio.run, args=(self._run,), name="plait-heartbeat", daemon=True)
        self._thread.start()
        self._running.wait(5)

    def stop(self) -> None:
        """Stop beating (within a second; the key then lives out its PX)."""
        thread, token, scope = self._thread, self._token, self._scope
        if thread is None or token is None or scope is None:
            return
        try:
            trio.from_thread.run_sync(scope.cancel, trio_token=token)
        except trio.RunFinishedError:
            pass
        thread.join(5)
        self._thread = None

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self._scope:
            self._running.set()
            while True:
                try:
                    async with self._connect() as client:
                        while True:
                            await trio.sleep(self._interval)
                            if time.monotonic() - self._progress_at < self._stuck_after:
                                await client.set(self._key, b"1", px=int(self._interval * 3000))
                                self.beaten()
                except Exception as exc:  # the loop's own beats notice Redis failing, and say so
                    logger.debug("cluster: the heartbeat thread could not beat: %s", exc)
                    await trio.sleep(self._interval)
