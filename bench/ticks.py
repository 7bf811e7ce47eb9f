"""Workload: presence ticks, the timer underneath. 1,000 tasks (rooms) each woken once a
second (a presence change) then waiting a tick (50 ms) before their flush, as a room's
ephemeral ticker does; the timer is `trio.sleep` or Plait's coalesced `sleep_about`
(engine/_wakeups.py), alternated in one run. Prints the process's CPU for each: the difference
is what the timer costs, since everything else is the same.

    .venv/bin/python bench/ticks.py [--rooms 1000] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import trio
from _harness import machine  # type: ignore[import-not-found]

from plait.engine._wakeups import sleep_about

TICK = 0.05


async def measure(sleep: Callable[[float], Awaitable[None]], rooms: int, seconds: float) -> float:
    """CPU % of one core while `rooms` tickers each tick once a second."""
    wanted = [trio.Event() for _ in range(rooms)]

    async def ticker(i: int) -> None:
        while True:
            await wanted[i].wait()
            wanted[i] = trio.Event()
            await sleep(TICK)

    async with trio.open_nursery() as nursery:
        for i in range(rooms):
            nursery.start_soon(ticker, i)
        started, cpu = time.monotonic(), time.process_time()
        per_wake = max(1, rooms // 100)  # 100 wake-ups a second, spread
        changed = 0
        while time.monotonic() - started < seconds:
            for _ in range(per_wake):
                wanted[changed % rooms].set()
                changed += 1
            await trio.sleep(0.01)
        result = 100 * (time.process_time() - cpu) / (time.monotonic() - started)
        nursery.cancel_scope.cancel()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {"trio.sleep": [], "sleep_about": []}
    for _ in range(args.rounds):
        rows["trio.sleep"].append(trio.run(measure, trio.sleep, args.rooms, args.seconds))
        rows["sleep_about"].append(trio.run(measure, sleep_about, args.rooms, args.seconds))
    print(f"Machine: {machine()}\n")
    print(f"{args.rooms:,} rooms ticking once a second ({args.rooms:,} ticks/s), CPU % of one core, alternated:")
    for name, values in rows.items():
        print(f"  {name:12} " + ", ".join(f"{v:.1f} %" for v in values))


if __name__ == "__main__":
    main()
