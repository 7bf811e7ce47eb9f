"""Reconnect delays: exponential backoff with full jitter (bounded, configurable)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt n (0-based) is uniform in [0, min(cap, base * factor**n)].

    Args:
        base: the first attempt's upper bound, seconds.
        cap: no delay exceeds this, seconds.
        factor: growth per attempt.
        reset_after: a connection that stays open this long (seconds) starts the count again
            at attempt 0; one that drops sooner does not, so a server that accepts and then
            drops every connection at once is retried ever more slowly.
        rng: the random source (inject a seeded one to make tests exact).

    Raises:
        ValueError: a number that is not finite, a base or cap of 0 or less, a cap below the
            base, a factor below 1, a negative reset_after.
    """

    base: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    reset_after: float = 10.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        for name in ("base", "cap", "factor", "reset_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Backoff {name} must be a finite number, got {value!r}")
        if self.base <= 0 or self.cap < self.base or self.factor < 1 or self.reset_after < 0:
            raise ValueError(
                f"Backoff needs 0 < base <= cap, factor >= 1 and reset_after >= 0; got base={self.base}, cap={self.cap}, "
                f"factor={self.factor}, reset_after={self.reset_after}"
            )

    def bound(self, attempt: int) -> float:
        return min(self.cap, self.base * self.factor ** min(attempt, 64))

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0, self.bound(attempt))
