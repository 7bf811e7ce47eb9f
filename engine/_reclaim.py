"""Giving memory back to the system once many rooms and sessions have gone (bench/README.md,
"Churn").

What the rooms and sessions that ended leave behind: objects in reference cycles, which wait
for a collection that the thresholds `plait serve` sets (engine/_cli.py `tune_gc`) make rare;
the interpreter's free lists and its attribute lookup cache, which hold memory, and names made
at run time, until a full collection or a clear; and the C heap's free pages, which glibc keeps
until `malloc_trim`. Each of these, scattered over the memory the busiest moment used, keeps
that memory in the process (an allocator gives back whole pages or arenas, never part of one).

A full collection walks every object the server allocated since it started, pausing the Trio
thread, so it runs only when it pays: after at least as many rooms and sessions ended as are
live now (the cost is amortised over what ended) or once the engine is empty, when the load has
stayed at half its peak or less for a whole interval, and never more than a `RECLAIM_DUTY`
share of the time.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import Final

import trio

logger = logging.getLogger("plait.engine")

RECLAIM_DUTY: Final = 0.001
"""A reclaim that paused the Trio thread for t seconds is followed by none for t / RECLAIM_DUTY."""


def glibc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim` (returns the heap's free pages to the system), or None elsewhere."""
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, ValueError):  # not glibc (or not a POSIX system)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def collect_all() -> int:
    """A full collection after clearing the attribute lookup cache (it keeps a reference to
    every name it caches: names made at run time stay alive, wherever they were allocated,
    until another name takes their slot). Returns the number of objects collected."""
    clear_type_cache = getattr(sys, "_clear_type_cache", None)  # CPython
    if clear_type_cache is not None:
        clear_type_cache()
    return gc.collect()


class Reclaimer:
    """Decides when the engine gives memory back, and does it.

    The engine reports every room or session that starts (`started`, with its load: rooms
    loaded plus sessions open) and every one that ends (`ended`). `run` looks every `interval`
    seconds and reclaims when, at this look and the one before, the load is at most half its
    peak since the last reclaim and either at least `after` rooms and sessions (and at least as
    many as the load) ended since then, or the load is 0 and something ended.

    Reclaiming is `collect()` then `trim(0)`, if there is a trim (glibc's malloc_trim), on the
    Trio thread; the pause is measured and logged at INFO.

    Args:
        interval: seconds between looks (Trio's clock).
        after: rooms and sessions that must have ended, unless the engine is empty.
        collect: the collection; returns the number of objects it freed.
        trim: returns the C heap's free memory to the system; None where there is none.
    """

    def __init__(
        self,
        interval: float,
        after: int,
        *,
        collect: Callable[[], int] = collect_all,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self.interval = interval
        self.after = after
        self.collect = collect
        self.trim = trim
        self.reclaims = 0
        """How many times memory was reclaimed."""
        self._peak = 0
        self._ended = 0
        self._quiet_before = False
        self._not_before = -float("inf")

    def started(self, load: int) -> None:
        if load > self._peak:
            self._peak = load

    def ended(self) -> None:
        self._ended += 1

    def _quiet(self, load: int) -> bool:
        if self._ended == 0 or 2 * load > self._peak:
            return False
        return load == 0 or self._ended >= max(self.after, load)

    async def run(self, load: Callable[[], int]) -> None:
        """Look every `interval` seconds, reclaiming when it pays, until cancelled."""
        while True:
            await trio.sleep(self.interval)
            now = load()
            quiet = self._quiet(now)
            due = quiet and self._quiet_before and trio.current_time() >= self._not_before
            self._quiet_before = quiet
            if due:
                self.reclaim(now)

    def reclaim(self, load: int) -> None:
        ended, peak = self._ended, self._peak
        began = trio.current_time()
        collected = self.collect()
        collected_at = trio.current_time()
        # On the Trio thread too: a worker thread would not spare it, since every allocation
        # waits for the heap's lock while the trim holds it.
        if self.trim is not None:
            self.trim(0)
        done = trio.current_time()
        self._peak, self._ended, self._quiet_before = load, 0, False
        self._not_before = done + (done - began) / RECLAIM_DUTY
        self.reclaims += 1
        logger.info(
            "memory reclaimed: %d rooms and sessions ended (load %d, peak %d); collected %d objects in %.1f ms, "
            "trimmed the heap in %.1f ms",
            ended, load, peak, collected, (collected_at - began) * 1000, (done - collected_at) * 1000,
        )
