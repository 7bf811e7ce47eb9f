"""Replaying traces against a fresh engine under Trio's MockClock (spec §10.2).

    from plait.engine.testing import assert_replays
    def test_bug_1234():
        assert_replays("tests/traces/bug-1234.jsonl")

The replayer feeds each inbound record (`dir: in`) at its recorded time and compares what the
engine sends on each connection with the recorded outbound records, in order. It needs no
normalisation of session ids: the replay engine hands out the recorded ids, in the order the
connections opened. After each inbound message it waits until the engine is idle, so the
interleaving of connections is exactly the recorded one and the result is deterministic.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from plait.protocol import (
    Access,
    Close,
    Frame,
    Joined,
    Open,
    Operation,
    Raw,
    Stored,
    Trace,
    TraceError,
    TraceRecord,
    TransportClosed,
    decode,
    encode,
    frame_to_json,
    read_trace,
)
from plait.storage import MemoryStore, StorageUnavailable, Store, StoredEvent

from ._config import EngineConfig
from ._engine import Engine
from ._errors import RequestError
from ._hooks import EventRejected, Hooks, Identity, Unauthenticated
from ._record import TraceRecorder
from ._wakeups import anchor
from .sessions._wire import JSON, SSE
from .transports import MemoryTransport

REPLAY_SETTINGS = {"hooks", "check_times", "time_tolerance", "unread", "buffer", "description", "store_fails", "end"}
"""Header settings that steer the replayer rather than the engine."""


class TokenHooks(Hooks):
    """Hooks for traces and demos, driven by the token: no token = anonymous, `bad` =
    refused, `ro:NAME` = read-only, `co:NAME` = comment (publish, not edit), `no:NAME` = no access, anything else = that user id.
    `exp=T:NAME` is user NAME whose credential expires at T on the engine's wall clock (spec
    §5.9; a replay's wall clock reads 0 when it begins, so T is seconds into the trace).
    Events named `rejected` are refused (EVENT_REJECTED); `app-error` with application code 4000."""

    def __init__(self) -> None:
        super().__init__()
        self._access: dict[str, Access | None] = {}

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        if token is None:
            return await super().authenticate(token, client)
        if token == "bad":
            raise Unauthenticated("token refused")
        kind, _, name = token.rpartition(":")
        self._access[name] = {"ro": Access.READ, "co": Access.COMMENT, "no": None}.get(kind, Access.WRITE)
        return {"id": name}

    async def expires_at(self, token: str | None, identity: Identity) -> float | None:
        kind = (token or "").rpartition(":")[0]
        return float(kind[4:]) if kind.startswith("exp=") else None

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        return self._access.get(identity["id"], Access.WRITE)

    async def on_event(self, room: str, identity: Identity | None, name: str, payload: Any) -> Any:
        if name == "rejected":
            raise EventRejected("events named 'rejected' are refused")
        if name == "app-error":
            raise EventRejected("the application refused this event", 4000)
        return payload


def config_from_settings(settings: dict[str, Any]) -> EngineConfig:
    """EngineConfig from a trace header's settings; unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = set(settings) - known - REPLAY_SETTINGS
    if unknown:
        raise ValueError(f"unknown trace settings: {sorted(unknown)}")
    return EngineConfig(**{k: v for k, v in settings.items() if k in known})


def settings_from_config(config: EngineConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


@dataclass(frozen=True)
class Mismatch:
    conn: str
    index: int
    """Position among that connection's outbound records."""
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"conn {self.conn}, outbound #{self.index}:\n  expected: {self.expected}\n  actual:   {self.actual}"


@dataclass
class ReplayResult:
    trace: Trace
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def report(self) -> str:
        if self.ok:
            return "trace replayed: every outbound frame matched"
        return "\n".join(["trace replay mismatch:", *map(str, self.mismatches)])


def _show(body: Any, t: float | None = None) -> str:
    if body is None:
        return "(nothing)"
    if isinstance(body, Frame):
        text = json.dumps(frame_to_json(body), default=repr)
    elif isinstance(body, Close):
        text = f"close {body.code}"
    else:
        text = repr(body)
    return text if t is None else f"{text} at t={t:g}"


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, Close) and isinstance(actual, Close):
        return expected.code == actual.code
    return bool(expected == actual)


class _FailingStore(MemoryStore):
    """For traces of storage failures (setting `store_fails`: "load" or "append")."""

    def __init__(self, fails: str) -> None:
        super().__init__()
        self._fails = fails

    async def load(self, room: str) -> Any:
        if self._fails == "load":
            raise StorageUnavailable("injected load failure")
        return await super().load(room)

    async def append(self, room: str, updates: Any) -> None:
        if self._fails == "append":
            raise StorageUnavailable("injected append failure")
        await super().append(room, updates)


async def _restore_stored(store: Store, trace: Trace) -> None:
    """Put into the replay's store what the recording server's store held for each room when
    the room first loaded (spec §10.2)."""
    seen: set[str] = set()
    for record in trace.records:
        body = record.body
        if not isinstance(body, Stored) or body.room in seen:
            continue
        seen.add(body.room)
        if body.snapshot is not None:
            await store.append(body.room, [body.snapshot])
            await store.compact(body.room, body.snapshot, 1)
        if body.updates:
            await store.append(body.room, list(body.updates))
        if body.events:
            events = [StoredEvent(seq, data) for seq, data in body.events]
            await store.append_events(body.room, events, len(events))


async def replay(
    trace: Trace,
    *,
    hooks: Hooks | None = None,
    store: Store | None = None,
    recorder: TraceRecorder | None = None,
) -> ReplayResult:
    """Replay under the current Trio run, which must use a MockClock (see `replay_trace`).
    With `recorder`, the run is also recorded (how spec/traces are made from their inputs)."""
    settings = trace.header.settings
    if store is None and "store_fails" in settings:
        store = _FailingStore(settings["store_fails"])
    store = store or MemoryStore()
    await _restore_stored(store, trace)
    config = config_from_settings(settings)
    if hooks is None:
        hooks = TokenHooks() if settings.get("hooks") == "tokens" else Hooks()
    unread = set(settings.get("unread", ()))
    check_times = bool(settings.get("check_times", False))
    tolerance = float(settings.get("time_tolerance", 1e-6))
    opens = iter([r.conn for r in trace.records if isinstance(r.body, Open)])
    expected: dict[str, list[TraceRecord]] = {}
    for record in trace.records:
        if record.dir == "out":
            expected.setdefault(record.conn, []).append(record)
    actual: dict[str, list[tuple[float, Frame | Close]]] = {}
    transports: dict[str, MemoryTransport] = {}
    closed_by_client: set[str] = set()
    # Replay runs until the last record, or `end` if later: time-driven answers (expiry,
    # timeouts) after the last inbound frame are part of the trace too.
    end = max([r.t for r in trace.records] + [float(settings.get("end", 0.0))])

    # New event histories get the recorded epochs, in the order they first appear (spec §10.2).
    recorded_epochs = dict.fromkeys(r.body.epoch for r in trace.records if isinstance(r.body, Joined))
    epochs = itertools.chain(recorded_epochs, (f"e{n}" for n in itertools.count(1)))
    origin = trio.current_time()
    engine = Engine(
        wall_clock=lambda: trio.current_time() - origin,  # TokenHooks' `exp=T:` is seconds into the trace
        store=store,
        hooks=hooks,
        config=config,
        session_ids=lambda: next(opens),
        epochs=lambda: next(epochs),
        recorder=recorder,
    )
    async with engine:
        start = trio.current_time()
        anchor(start)  # ticks where the recording had them (engine/_wakeups.py)

        async def read(conn: str, transport: MemoryTransport) -> None:
            got = actual.setdefault(conn, [])
            while True:
                try:
                    data = await transport.receive_message()
                except TransportClosed as exc:
                    if conn not in closed_by_client:
                        got.append((trio.current_time() - start, Close(exc.code, exc.reason)))
                    return
                now = trio.current_time() - start
                got.extend((now, frame) for frame in frames_of_output(data))

        async with trio.open_nursery() as nursery:
            for record in trace.records:
                if record.dir != "in":
                    continue
                body = record.body
                if isinstance(body, Stored):
                    continue  # in the store from the start (_restore_stored)
                await trio.sleep_until(start + record.t)
                if isinstance(body, Operation):
                    await perform(engine, body)
                elif isinstance(body, Open):
                    transport = engine.connect_memory(body.path, buffer=int(settings.get("buffer", 16)))
                    transports[record.conn] = transport
                    if record.conn not in unread:
                        nursery.start_soon(read, record.conn, transport)
                else:
                    transport = transports[record.conn]
                    try:
                        if isinstance(body, Close):
                            closed_by_client.add(record.conn)
                            await transport.aclose(body.code, body.reason)
                        elif isinstance(body, Raw):
                            await transport.send_message(body.data)
                        else:
                            await transport.send_message(encode(body))
                    except TransportClosed:
                        pass  # the server already closed it; the outbound records say so
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep_until(start + end)
            await trio.testing.wait_all_tasks_blocked()
            for conn in unread:
                nursery.start_soon(read, conn, transports[conn])
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        snapshot = {conn: list(frames) for conn, frames in actual.items()}
        engine.recorder = None  # the shutdown's GOING_AWAY closes are not part of the trace

    result = ReplayResult(trace)
    for conn in sorted(set(expected) | set(snapshot)):
        want = expected.get(conn, [])
        got = snapshot.get(conn, [])
        for index in range(max(len(want), len(got))):
            w = want[index] if index < len(want) else None
            g = got[index] if index < len(got) else None
            same = w is not None and g is not None and _same(w.body, g[1])
            if same and check_times and abs(w.t - g[0]) > tolerance:  # type: ignore[union-attr, index]
                same = False
            if not same:
                result.mismatches.append(
                    Mismatch(
                        conn,
                        index,
                        _show(w.body if w else None, w.t if w and check_times else None),
                        _show(g[1] if g else None, g[0] if g and check_times else None),
                    )
                )
                break  # the first difference per connection is the useful one
    return result


async def perform(engine: Engine, operation: Operation) -> None:
    """Do again what the server's operator did (spec §10: an `operation` record).

    Raises:
        TraceError: an operation this engine does not know, or arguments it does not take.
    """
    args = operation.args
    try:
        match operation.op:
            case "set_access":
                access = args["access"]
                engine.set_access(args["user"], args["room"], None if access is None else Access(access))
            case "clear_access":
                engine.clear_access(args["user"], args["room"])
            case "disconnect":
                engine.disconnect(session=args.get("session"), user=args.get("user"), reason=args.get("reason", ""))
            case "delete_room":
                await engine.delete_room(args["room"])
            case "publish":
                async with engine.room(args["room"]) as room:
                    await room.publish(args["name"], args["payload"], args.get("key"))
            case "update":
                async with engine.room(args["room"]) as room:
                    room.apply_update(args["update"])
            case _:
                raise TraceError(f"unknown operation {operation.op!r}")
    except RequestError:
        pass  # refused as it was when recorded (a hook's EventRejected, an invalid update)
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceError(f"operation {operation.op}: bad arguments {args!r:.200}: {exc}") from None


def replay_trace(trace: Trace | str | Path, *, hooks: Hooks | None = None) -> ReplayResult:
    """Replay a trace (or a trace file) in a fresh Trio run with an autojumping MockClock."""
    if not isinstance(trace, Trace):
        with open(trace, encoding="utf-8") as file:
            trace = read_trace(file)
    loaded = trace
    return trio.run(lambda: replay(loaded, hooks=hooks), clock=trio.testing.MockClock(autojump_threshold=0))


def assert_replays(trace: Trace | str | Path, *, hooks: Hooks | None = None) -> None:
    """Fail (AssertionError with a readable diff) unless the engine reproduces the trace."""
    result = replay_trace(trace, hooks=hooks)
    assert result.ok, result.report()


def frames_of_output(message: bytes | str) -> list[Frame]:
    """The frames of a message the engine sent, on any of a native session's wires: msgpack,
    JSON (text), or an HTTP session's event (spec §14)."""
    if isinstance(message, str):
        return JSON.decode(message)
    if message.startswith(b"event: "):
        return SSE.decode(message)
    return decode(message)


def replay_files(paths: Iterable[str | Path]) -> int:
    """`plait replay`: print a line per trace; the number that did not match."""
    failures = 0
    for path in paths:
        result = replay_trace(path)
        status = "ok" if result.ok else "MISMATCH"
        print(f"{status}: {path}")
        if not result.ok:
            failures += 1
            print(result.report())
    return failures
