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

from collections import deque
from collections.abc import Callable

import trio

Refresh = Callable[[], list[bytes]]
"""Produces a channel's full ephemeral state as encoded frames."""


class Outbox:
    def __init__(self, max_bytes: int, lag_frames: int, solo_bytes: int = 2**62) -> None:
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._stale: dict[int, Refresh] = {}
        self._max_bytes = max_bytes
        self._lag_frames = lag_frames
        self._solo_bytes = solo_bytes
        self._wakeup = trio.Event()
        self.overflowed = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def lagging(self) -> bool:
        return len(self._frames) >= self._lag_frames

    def put(self, data: bytes) -> bool:
        """Queue an ordered frame. Returns False (and sets `overflowed`) past the byte budget."""
        if self._bytes + len(data) > self._max_bytes:
            self.overflowed = True
            self._wakeup.set()
            return False
        self._frames.append(data)
        self._bytes += len(data)
        self._wakeup.set()
        return True

    def put_ephemeral(self, data: bytes, channel: int, refresh: Refresh) -> bool:
        """Queue an ephemeral frame, or mark its channel stale if the session lags."""
        if channel in self._stale:
            return True
        if self.lagging:
            self._stale[channel] = refresh
            self._wakeup.set()
            return True
        return self.put(data)

    def drain(self) -> list[bytes]:
        """Take every queued frame at once (for the last message before a close)."""
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        self._stale.clear()
        return frames

    def forget_channel(self, channel: int) -> None:
        self._stale.pop(channel, None)

    def close(self) -> None:
        """No more frames will come: `take` returns what is left, then []."""
        self.closed = True
        self._wakeup.set()

    async def take(self, max_frames: int, max_bytes: int) -> list[bytes]:
        """Wait for frames, then take as many as fit in one message (at least one);
        [] once closed and empty. A frame of `solo_bytes` or more is taken alone, so that
        sending it never copies it into a batch."""
        while not self._frames and not self._stale:
            if self.closed:
                return []
            if self._wakeup.is_set():
                self._wakeup = trio.Event()
            await self._wakeup.wait()
        if not self.lagging and self._stale:
            for refresh in self._stale.values():
                for data in refresh():
                    self._frames.append(data)
                    self._bytes += len(data)
            self._stale.clear()
        batch: list[bytes] = []
        size = 0
        while self._frames and len(batch) < max_frames:
            nxt = self._frames[0]
            solo = len(nxt) >= self._solo_bytes
            if batch and (solo or size + len(nxt) > max_bytes):
                break
            self._frames.popleft()
            self._bytes -= len(nxt)
            size += len(nxt)
            batch.append(nxt)
            if solo:
                break
        if not batch and not self.closed:
            # Only stale channels, whose refresh produced nothing: wait again.
            return await self.take(max_frames, max_bytes)
        return batch
