"""Recording a server's conversations as a trace (spec §10).

One trace per server run, all connections interleaved in the order the server saw them:
room state depends on every connection, so only the full interleaving replays exactly (a trace
per connection would lose it; a trace per room cannot hold a connection in two rooms).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import IO, Any

import trio

from plait.storage import RoomData, Store, StoredEvent

from plait.protocol import (
    PROTOCOL_VERSION,
    Close,
    Open,
    Operation,
    ProtocolError,
    Raw,
    Stored,
    TraceHeader,
    TraceRecord,
    TraceWriter,
    Frame,
    decode,
    decode_json,
)

from ._wakeups import anchor


logger = logging.getLogger("plait.record")


class TraceRecorder:
    """Writes every connection's traffic to one trace. Times are seconds on Trio's clock since
    the recorder was created (so under MockClock they are exact).

    A recorder that cannot write (the disk is full, the file was closed) logs why once and
    stops recording; it never fails the connection it was recording.
    """

    def __init__(self, out: IO[str], settings: dict[str, Any]) -> None:
        self.failed = False
        self._rooms_seen: set[str] = set()
        self._out = out
        self._writer = TraceWriter(out, TraceHeader(PROTOCOL_VERSION, settings))
        self._start = trio.current_time()
        anchor(self._start)  # ticks at the offsets a replay, anchored at its own start, gives

    def _t(self) -> float:
        return round(trio.current_time() - self._start, 6)

    def opened(self, conn: str, path: str) -> None:
        self._write(TraceRecord(self._t(), conn, "in", Open(path)))

    def message(
        self, conn: str, direction: str, data: bytes | str, frames_of: Callable[[bytes | str], list[Frame]] | None = None
    ) -> None:
        """One whole message; recorded frame by frame, or raw if it is not valid frames.
        `frames_of` reads it (the session's wire); by default msgpack, or JSON for text."""
        t = self._t()
        try:
            if frames_of is not None:
                frames = frames_of(data)
            else:
                frames = decode(data) if isinstance(data, bytes) else decode_json(data)
        except ProtocolError:
            raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
            self._write(TraceRecord(t, conn, direction, Raw(raw)))  # type: ignore[arg-type]
            return
        for frame in frames:
            self._write(TraceRecord(t, conn, direction, frame))  # type: ignore[arg-type]

    def stored(self, room: str, data: RoomData) -> None:
        """What the store held for a room when it first loaded (spec §10.1), once per room:
        a replay starts from it, so a trace made on a server with existing data replays."""
        if room in self._rooms_seen:
            return
        self._rooms_seen.add(room)
        if data.snapshot is None and not data.updates and not data.events:
            return
        events = tuple((e.seq, e.body) for e in data.events)
        self._write(TraceRecord(self._t(), "", "in", Stored(room, data.snapshot, data.updates, events)))

    def operation(self, op: str, args: dict[str, Any]) -> None:
        """Something the server's operator did (Engine.set_access, ...): a replay does it again."""
        self._write(TraceRecord(self._t(), "", "in", Operation(op, args)))

    def closed(self, conn: str, direction: str, code: int, reason: str) -> None:
        self._write(TraceRecord(self._t(), conn, direction, Close(code, reason)))  # type: ignore[arg-type]

    def _write(self, record: TraceRecord) -> None:
        if self.failed:
            return
        try:
            self._writer.write(record)
            self._out.flush()
        except Exception as exc:
            self.failed = True
            logger.error("recording stopped: the trace could not be written", exc_info=exc)


class RecordingStore:
    """The engine's store while recording: every room's first load is written to the trace;
    everything else goes to the store as it is."""

    def __init__(self, store: Store, recorder: TraceRecorder) -> None:
        self._store = store
        self._recorder = recorder

    async def load(self, room: str) -> RoomData:
        data = await self._store.load(room)
        self._recorder.stored(room, data)
        return data

    async def append(self, room: str, updates: Sequence[bytes]) -> None:
        await self._store.append(room, updates)

    async def compact(self, room: str, snapshot: bytes, covered: int) -> None:
        await self._store.compact(room, snapshot, covered)

    async def append_events(self, room: str, events: Sequence[StoredEvent], keep: int) -> None:
        await self._store.append_events(room, events, keep)

    async def delete(self, room: str) -> None:
        await self._store.delete(room)
