"""Coalesced timed wake-ups: many tasks that each wait a short while, where a few milliseconds
more do not matter (a room's presence tick), wake from one timer per time slot instead of a
timer each.

`trio.sleep` gives every sleeper a cancel scope with a deadline, and its expiry raises and
catches a Cancelled: on this project's 2-core machine, a thousand rooms ticking once a second
spent 4-8 % of a server's CPU in Trio's deadline expiry alone (bench/README.md, "Presence
ticks"). Here a sleeper waits on the Event of the slot its wake-up falls in, and one task per
Trio run sets each slot's Event when it comes: one timer per slot that has sleepers.
"""

from __future__ import annotations

import heapq
import math

import trio

SLOT = 0.01
"""Seconds: a wake-up comes at most this much after the time asked for (and never before it
by more than a float's rounding)."""


class _Slots:
    """The run's pending slots (numbered `SLOT`s of Trio's clock), each with the Event its
    sleepers wait on; `run` sets them as they come. Holds nothing of anyone's, and cannot
    fail: it lives as a system task of the run (trio.lowlevel.spawn_system_task) so that
    a wake-up needs no nursery of its caller's."""

    def __init__(self) -> None:
        self.origin = 0.0
        """Where the slots start (Trio's clock): a trace's start, so that a recorded trace
        replays with its ticks where they were (anchor)."""
        self._events: dict[float, trio.Event] = {}
        self._due: list[float] = []
        self._earlier = trio.Event()
        """Set when a slot before every pending one is added: `run` waits for an earlier
        time."""

    def event_for(self, when: float) -> trio.Event:
        slot = math.ceil((when - self.origin) / SLOT - 1e-6)  # 0.1 + 0.05 is 0.15000000000000002: 15, not 16
        at = self.origin + slot * SLOT
        event = self._events.get(at)
        if event is None:
            event = self._events[at] = trio.Event()
            if not self._due or at < self._due[0]:
                self._earlier.set()
            heapq.heappush(self._due, at)
        return event

    async def run(self) -> None:
        while True:
            with trio.move_on_at(self._due[0] if self._due else math.inf):
                await self._earlier.wait()
            if self._earlier.is_set():
                self._earlier = trio.Event()
            now = trio.current_time()
            while self._due and self._due[0] <= now:
                self._events.pop(heapq.heappop(self._due)).set()


_SLOTS: trio.lowlevel.RunVar[_Slots] = trio.lowlevel.RunVar("plait_wakeup_slots")


def _slots() -> _Slots:
    try:
        return _SLOTS.get()
    except LookupError:
        slots = _Slots()
        _SLOTS.set(slots)
        trio.lowlevel.spawn_system_task(slots.run, name="plait wake-up slots")
        return slots


def anchor(origin: float) -> None:
    """Start this Trio run's slots at `origin` (Trio's clock): a trace recorder and a replay
    anchor them at the trace's start, so that a tick falls at the same offset in both."""
    _slots().origin = origin


async def sleep_about(seconds: float) -> None:
    """Sleep at least `seconds`, and at most SLOT more (Trio's clock: a MockClock works).
    Cancellable as trio.sleep is. An hour or more, infinity or NaN: trio.sleep's, as it is.

    Raises:
        ValueError: `seconds` is negative (as trio.sleep).
    """
    if seconds < 0:
        raise ValueError(f"sleep_about needs a duration of 0 s or more, not {seconds}")
    if not seconds < 3600:
        await trio.sleep(seconds)
        return
    await _slots().event_for(trio.current_time() + seconds).wait()
