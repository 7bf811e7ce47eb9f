"""The heartbeat sweep's schedule (engine/sessions/_sweep.py): each session is looked at at the
first sweep at or after the time its last look asked for, never earlier and never skipped, and a
bug in one look closes that session only."""

from __future__ import annotations

import gc
import math
import weakref

import pytest

from plait.engine.sessions import SweepSchedule
from plait.engine.sessions._sweep import SLOTS
from plait.protocol import CloseCode

H = 15.0
INTERVAL = H / 8


class FakeSession:
    """Asks to be looked at `every` seconds after each look (an idle connection's ping)."""

    def __init__(self, session_id: str, every: float = 0.75 * H) -> None:
        self.id = session_id
        self.sweep_slot = -1
        self.every = every
        self.looks: list[float] = []
        self.closed: int | None = None

    def keep_alive(self, now: float) -> float:
        self.looks.append(now)
        return now + self.every

    def close(self, code: int, reason: str = "") -> None:
        self.closed = code


def run(schedule: SweepSchedule, sweeps: int, start: int = 1) -> None:
    for k in range(start, start + sweeps):
        schedule.sweep(k * INTERVAL)


def test_an_idle_session_is_looked_at_once_per_ping_not_at_every_sweep() -> None:
    sessions = {f"s{i}": FakeSession(f"s{i}") for i in range(100)}
    schedule = SweepSchedule(INTERVAL, sessions)
    for session in sessions.values():
        schedule.soon(session)
    run(schedule, 8 * 4)  # four heartbeat intervals
    for session in sessions.values():
        # The first sweep, then every 6th (0.75 H = 6 sweeps), each exactly when due.
        assert session.looks == [k * INTERVAL for k in (1, 7, 13, 19, 25, 31)]


@pytest.mark.parametrize("every", [0.1, INTERVAL, INTERVAL + 1e-6, 2.5 * INTERVAL, 3 * INTERVAL])
def test_a_look_comes_at_the_first_sweep_at_or_after_the_time_asked_never_before(every: float) -> None:
    session = FakeSession("s", every)
    schedule = SweepSchedule(INTERVAL, {"s": session})
    schedule.soon(session)
    run(schedule, 40)
    for before, after in zip(session.looks, session.looks[1:], strict=False):
        assert after >= before + every - 1e-9  # never early
        assert after < before + every + INTERVAL  # and no later than the sweep after
    assert len(session.looks) >= 40 // max(1, math.ceil(every / INTERVAL)) - 1


def test_a_session_due_beyond_the_wheel_is_looked_at_again_and_filed_again() -> None:
    session = FakeSession("s", math.inf)
    schedule = SweepSchedule(INTERVAL, {"s": session})
    schedule.soon(session)
    run(schedule, 3 * SLOTS)
    assert session.looks == [k * INTERVAL for k in (1, SLOTS, 2 * SLOTS - 1, 3 * SLOTS - 2)]


def test_soon_brings_a_look_forward_once_and_the_old_filing_is_not_looked_at() -> None:
    session = FakeSession("s")
    schedule = SweepSchedule(INTERVAL, {"s": session})
    schedule.soon(session)
    run(schedule, 1)  # looked at, filed 6 sweeps ahead
    schedule.soon(session)  # it fell behind on writing, say
    schedule.soon(session)
    run(schedule, 12, start=2)
    # Sweep 2 (brought forward, once), then every 6th from there: not also at sweep 7.
    assert session.looks == [k * INTERVAL for k in (1, 2, 8)]


def test_an_ended_session_is_dropped_and_not_kept_alive_by_the_schedule() -> None:
    sessions: dict[str, FakeSession] = {"s": FakeSession("s"), "t": FakeSession("t")}
    schedule = SweepSchedule(INTERVAL, sessions)
    for session in sessions.values():
        schedule.soon(session)
    run(schedule, 1)
    ended = weakref.ref(sessions.pop("s"))
    gc.collect()
    assert ended() is None  # the schedule holds ids, not sessions
    run(schedule, 12, start=2)
    assert len(sessions["t"].looks) == 3


def test_a_look_that_raises_closes_that_session_and_the_sweep_goes_on() -> None:
    class Broken(FakeSession):
        def keep_alive(self, now: float) -> float:
            raise RuntimeError("a bug")

    sessions: dict[str, FakeSession] = {"a": FakeSession("a"), "b": Broken("b"), "c": FakeSession("c")}
    schedule = SweepSchedule(INTERVAL, sessions)
    for session in sessions.values():
        schedule.soon(session)
    run(schedule, 1)
    assert sessions["b"].closed == CloseCode.INTERNAL_ERROR
    assert sessions["a"].looks == sessions["c"].looks == [INTERVAL]
    assert sessions["a"].closed is None and sessions["c"].closed is None
