"""Token buckets: a sustained rate with a burst of one second's worth (spec §5.8)."""

from __future__ import annotations


class TokenBucket:
    """Pure bookkeeping; the caller passes `now` (trio.current_time() in the engine)."""

    __slots__ = ("rate", "capacity", "_tokens", "_stamp")

    def __init__(self, rate: float, now: float, capacity: float | None = None) -> None:
        self.rate = rate
        self.capacity = rate if capacity is None else capacity
        self._tokens = self.capacity
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are enough; say whether there were."""
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False
