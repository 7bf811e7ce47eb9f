"""Coalesced timed wake-ups (engine/_wakeups.py): what a room's presence tick sleeps on."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from plait.engine._wakeups import SLOT, anchor, sleep_about


async def test_a_sleeper_wakes_after_its_time_and_within_a_slot_of_it(autojump_clock: trio.testing.MockClock) -> None:
    for offset, seconds in [(0.0, 0.05), (0.05, 0.05), (0.023, 0.05), (0.0071, 0.3), (0.01, 0.0)]:
        await trio.sleep(offset)  # wake-ups on and off the slots' edges
        start = trio.current_time()
        await sleep_about(seconds)
        woke = trio.current_time() - start
        assert seconds - 1e-9 <= woke <= seconds + SLOT + 1e-9, (start, seconds, woke)


async def test_sleepers_in_one_slot_wake_together_and_each_in_its_own_order(autojump_clock: trio.testing.MockClock) -> None:
    woke: dict[str, float] = {}

    async def sleeper(name: str, seconds: float) -> None:
        await sleep_about(seconds)
        woke[name] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper, "late", 0.5)
        await trio.sleep(0.001)
        nursery.start_soon(sleeper, "a", 0.052)  # a slot before the pending one: woken first
        nursery.start_soon(sleeper, "b", 0.055)  # the same slot as a
        await trio.sleep(0.001)
        nursery.start_soon(sleeper, "c", 0.1)
    assert woke["a"] == woke["b"] == pytest.approx(0.06)
    assert woke["c"] == pytest.approx(0.11)
    assert woke["late"] == pytest.approx(0.5)


async def test_a_cancelled_sleeper_leaves_the_others_on_time(autojump_clock: trio.testing.MockClock) -> None:
    woke: list[float] = []

    async def sleeper() -> None:
        await sleep_about(0.05)
        woke.append(trio.current_time())

    with trio.move_on_after(0.02):
        await sleep_about(0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        with trio.move_on_after(0.01) as cancelled:
            await sleep_about(0.05)
    assert cancelled.cancelled_caught
    assert woke == [pytest.approx(0.07)]


@pytest.mark.parametrize("seconds", [-1.0, -math.inf])
async def test_a_negative_duration_is_refused_as_trio_sleep_refuses_it(seconds: float) -> None:
    with pytest.raises(ValueError, match="0 s or more"):
        await sleep_about(seconds)


async def test_long_or_endless_sleeps_are_trio_s_own(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(10) as endless:
        await sleep_about(math.inf)
    assert endless.cancelled_caught


async def test_slots_anchored_at_a_trace_s_start_fall_at_the_same_offsets_from_it(autojump_clock: trio.testing.MockClock) -> None:
    """A recording (real clock) and its replay (MockClock) anchor the slots at their start: a
    tick then comes at the same offset in both, and the replay's order of frames matches."""
    await trio.sleep(0.0037)
    anchor(trio.current_time())
    start = trio.current_time()
    await trio.sleep(0.0121)
    await sleep_about(0.05)
    assert trio.current_time() - start == pytest.approx(0.07)
