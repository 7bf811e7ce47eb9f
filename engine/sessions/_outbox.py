"""A session's outbound queue: bounded, batching, and coalescing ephemeral frames when lagging.

Frames arrive already encoded (fan-out encodes once). The writer takes everything queued as one
message. Two kinds of frame go in:
- ordered frames (document updates, acks, errors, events): never dropped. If the queue passes
  its byte budget the session is too slow and `put` reports overflow; the session then closes
  with TOO_SLOW (spec §9) and the client resyncs on reconnect.
- ephemeral frames (presence diffs, cursors, typing): while the queue is short they are queued
  like the rest; once it is long (the client lags), they are not queued at all. The channel is
  marked stale instead, and when the writer catches up it asks the room for the channel's full
  current ephemeral state, so the client jumps to the latest state (latest wins).
"""

from __future__ import annotations

from collections.abc import Callable

Refresh = Callable[[], list[bytes]]
"""Produces a channel's full ephemeral state as encoded frames."""


def _nothing() -> None:
    pass


class Outbox:
    """Frames waiting for the writer. `ready` is called when the outbox goes from nothing to
    send to something (the session then starts its writer, which takes until it is empty).
    A list, not a deque: an idle connection's empty outbox should cost bytes, not a block."""

    __slots__ = ("_frames", "_bytes", "_exempt", "_stale", "_max_bytes", "_lag_frames", "_solo_bytes", "_ready", "overflowed")

    def __init__(self, max_bytes: int, lag_frames: int, solo_bytes: int = 2**62,
                 ready: Callable[[], None] = _nothing) -> None:
        self._frames: list[bytes] = []
        self._bytes = 0
        self._exempt = 0
        """Bytes queued outside the budget (a join's catch-up), not yet taken."""
        self._stale: dict[int, Refresh] = {}
        self._max_bytes = max_bytes
        self._lag_frames = lag_frames
        self._solo_bytes = solo_bytes
        self._ready = ready
        self.overflowed = False

    def detach(self) -> None:
        """Forget `ready` (the session's own method, so the two formed a reference cycle): once
        the session has ended, reference counting frees it at once, instead of a collection
        that plait serve makes rare (engine/_cli.py tune_gc)."""
        self._ready = _nothing

    def __len__(self) -> int:
        return len(self._frames)

    def __bool__(self) -> bool:
        return bool(self._frames or self._stale)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def catching_up(self) -> bool:
        """Whether an exempt catch-up queued before is still waiting, in part."""
        return self._exempt > 0

    @property
    def lagging(self) -> bool:
        return len(self._frames) >= self._lag_frames

    def put(self, data: bytes, exempt: bool = False) -> bool:
        """Queue an ordered frame. Returns False (and sets `overflowed`) past the byte budget.
        An `exempt` frame (a join's catch-up: the document, the missed events, the room's
        presence, each bounded by its own limit) is queued whatever the budget, and does not
        count toward it until it is sent."""
        if not exempt and self._bytes - self._exempt + len(data) > self._max_bytes:
            self.overflowed = True
            return False
        self._frames.append(data)
        self._bytes += len(data)
        if exempt:
            self._exempt += len(data)
        if len(self._frames) == 1:
            self._ready()
        return True

    def put_ephemeral(self, data: bytes, channel: int, refresh: Refresh) -> bool:
        """Queue an ephemeral frame, or mark its channel stale if the session lags."""
        if channel in self._stale:
            return True
        if self.lagging:
            self._stale[channel] = refresh
            return True
        return self.put(data)

    def requeue(self, frames: list[bytes]) -> None:
        """Put frames taken but not delivered back at the front, in order (a transport that
        failed under them; the session waits for another). Never refused for the budget:
        they were in it already."""
        self._frames[:0] = frames
        self._bytes += sum(map(len, frames))

    def forget_channel(self, channel: int) -> None:
        self._stale.pop(channel, None)

    def forget_stale(self) -> None:
        """Refresh no stale channel: the session is ending (its goodbye sends what is queued)."""
        self._stale.clear()

    def take(self, max_frames: int, max_bytes: int) -> list[bytes]:
        """Take as many frames as fit in one message ([] if there is nothing to send). A frame
        of `solo_bytes` or more is taken alone, so that sending it never copies it into a
        batch. Stale channels (see above) are refreshed once the queue is short again."""
        if self._stale and not self.lagging:
            for refresh in self._stale.values():
                for data in refresh():
                    self._frames.append(data)
                    self._bytes += len(data)
            self._stale.clear()
        frames = self._frames
        count, size = 0, 0
        limit = min(len(frames), max_frames)
        while count < limit:
            n = len(frames[count])
            solo = n >= self._solo_bytes
            if count and (solo or size + n > max_bytes):
                break
            size += n
            count += 1
            if solo:
                break
        batch = frames[:count]
        del frames[:count]
        self._bytes -= size
        # The oldest frames go first; counting what is taken against the exempt bytes first
        # can only make the budget apply sooner, never later.
        self._exempt = max(0, self._exempt - size)
        return batch
