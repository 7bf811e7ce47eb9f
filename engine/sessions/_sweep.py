"""The heartbeat sweep's schedule: which connections to look at in each sweep (a timing wheel).

The engine sweeps eight times per heartbeat interval H (spec §5.7: silence is noticed up to H/8
late). Looking at every connection in every sweep cost an idle server more than its pings did
(bench/idle.py: 10,000 connections, a 20-40 ms sweep every 1.9 s, most of it reading sessions
that had nothing due). Instead each look says when the session next needs one
(`Sweepable.keep_alive` returns the time: its ping, its silence limit, its credential's
expiry; the next sweep while it is behind on writing), and the session is filed under the
first sweep at or after that time. An idle connection is looked at about once per ping.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Protocol

from plait.protocol import CloseCode

logger = logging.getLogger("plait.engine")

SWEEPS_PER_INTERVAL = 8
"""Sweeps per heartbeat interval (spec §5.7's H/8)."""
SLOTS = 2 * SWEEPS_PER_INTERVAL
"""How many sweeps ahead a session can be filed: 2H, the silence limit. One due later is
looked at then and filed again."""


class Sweepable(Protocol):
    id: str
    sweep_slot: int
    """The slot the session is filed under (SweepSchedule's; -1: none)."""

    def keep_alive(self, now: float) -> float:
        """Do what is due at `now` (Trio's clock); return when the next look is needed."""
        ...

    def close(self, code: int, reason: str = "") -> None: ...


class SweepSchedule:
    """Args:
        interval: seconds between sweeps (H / SWEEPS_PER_INTERVAL).
        sessions: the live sessions by id; one that has left it is dropped from the schedule
            when its slot comes (the schedule holds ids, not sessions: an ended session is not
            kept alive by it).
    """

    def __init__(self, interval: float, sessions: Mapping[str, Sweepable]) -> None:
        self.interval = interval
        self._sessions = sessions
        self._slots: list[list[str]] = [[] for _ in range(SLOTS)]
        self._sweeps = 0
        """Sweeps done; the next is the one filed under slot `_sweeps % SLOTS`."""

    def soon(self, session: Sweepable) -> None:
        """Look at `session` in the next sweep (a new session, or one that has just begun to
        fall behind, or whose credential changed)."""
        slot = self._sweeps % SLOTS
        if session.sweep_slot != slot:
            session.sweep_slot = slot
            self._slots[slot].append(session.id)

    def sweep(self, now: float) -> None:
        """Look at every session filed under this sweep, and file each again. One session's
        bug (keep_alive raising) closes that session INTERNAL_ERROR, never stops the sweep."""
        slot = self._sweeps % SLOTS
        self._sweeps += 1
        due, self._slots[slot] = self._slots[slot], []
        sessions = self._sessions
        for session_id in due:
            session = sessions.get(session_id)
            if session is None or session.sweep_slot != slot:  # ended, or filed elsewhere since
                continue
            session.sweep_slot = -1
            try:
                next_look = session.keep_alive(now)
            except Exception as exc:
                logger.error("session %s: heartbeat failed", session.id, exc_info=exc)
                session.close(CloseCode.INTERNAL_ERROR, "internal error")
                continue
            self._file(session, next_look, now)

    def _file(self, session: Sweepable, at: float, now: float) -> None:
        if session.sweep_slot != -1:  # filed during its look (soon): the next sweep, the soonest
            return
        # The first sweep at or after `at` (sweeps come every `interval` from now, or a little
        # later: never early). A sliver under a whole interval is a float's error, not time.
        ahead = math.ceil((at - now) / self.interval - 1e-9) if at < math.inf else SLOTS
        ahead = min(max(ahead, 1), SLOTS - 1)
        slot = (self._sweeps - 1 + ahead) % SLOTS
        session.sweep_slot = slot
        self._slots[slot].append(session.id)
