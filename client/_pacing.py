"""Pacing document updates below the server's announced rate (spec §5.8).

The server counts update frames per connection in a token bucket with a burst of one second's
worth (`welcome.limits.updates_per_second`) and refuses what goes over with RATE_LIMITED. The
client keeps its own, stricter bucket so that it seldom hears that: network jitter can bunch
frames that left evenly, so it aims below the limit. What waits for a token is merged into
one update frame when the token comes (client/_changes.py), so pacing costs latency, never
edits.
"""

from __future__ import annotations

import math
from typing import Final

SUSTAINED_SHARE: Final = 0.8
"""The share of the announced rate the client uses, sustained."""
BURST_SHARE: Final = 0.5
"""The client's burst, as a share of the announced one (one second's worth)."""


class Pacer:
    """A token bucket on the caller's clock (seconds; the client passes trio.current_time()).

    Args:
        rate: the server's announced frames per second; 0 means no limit.
        now: the current time.
    """

    __slots__ = ("rate", "capacity", "_tokens", "_stamp", "_hold_until")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate * SUSTAINED_SHARE
        self.capacity = max(1.0, rate * BURST_SHARE)
        self._tokens = self.capacity
        self._stamp = now
        self._hold_until = -math.inf

    def _refill(self, now: float) -> None:
        if self.rate > 0:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, now: float) -> bool:
        """Spend a token if one is there (and no hold is on); say whether it was."""
        if self.rate <= 0:
            return True
        if now < self._hold_until:
            return False
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def next_token_at(self, now: float) -> float:
        """When `take` can next succeed (`now` if it can already)."""
        if self.rate <= 0:
            return now
        self._refill(now)
        ready = now if self._tokens >= 1 else now + (1 - self._tokens) / self.rate
        return max(ready, self._hold_until)

    def slow_down(self) -> None:
        """Halve the pace (the server refused a frame for its rate: it counts differently
        than it announced, or frames bunched on the way). Kept until the next connection."""
        self.rate = max(1.0, self.rate / 2)
        self.capacity = max(1.0, self.capacity / 2)

    def hold(self, now: float, seconds: float) -> None:
        """The server said RATE_LIMITED: its bucket is empty, so empty ours and send nothing
        for `seconds` (a backoff delay, jittered by the caller)."""
        self._refill(now)
        self._tokens = 0.0
        self._hold_until = max(self._hold_until, now + seconds)
