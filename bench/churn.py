"""Churn: does the server give memory back once the rooms and sessions it served are gone?

`distinct`: 6,000 connect-join-set-presence-leave cycles (native; every third over /yjs/),
each to a room of its own, then wait until every room has unloaded (room_idle_grace, 10 s
by default, after its last member). `one-room`: one native member keeps a room loaded while
6,000 sessions visit it the same way. Reports the server's RSS at the start (after a warm-up
cycle of each kind, and its unload), its peak, once the visits are over, and once the rooms
have unloaded and the server has given memory back (engine/_reclaim.py: `plait serve` looks
every 15 s, and does it at the second look that finds its load at half its peak or less); the
goal is RSS after unload within 10 % of the start. The server runs as `plait serve` does, on
the C allocator on glibc (engine/_cli.py); `PYTHONMALLOC=pymalloc` in the environment keeps
Python's own.

A native cycle: connect, hello, join (with an empty document's state vector), answer the
server's sync_step1, presence_set, [an acked one-character update with --edit], leave (acked),
close. A /yjs/ cycle: connect to /yjs/ROOM, send an awareness state, [an update], a sync step 2
and a sync step 1, wait for the server's step 2 (so all of it was handled), close.

    .venv/bin/python bench/churn.py [--cycles 6000] [--variants distinct one-room] [--edit] [--rounds 2] [--diagnose]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pycrdt
import trio
from _harness import machine, mib, table  # type: ignore[import-not-found]
from _rawws import Closed, RawWebSocket  # type: ignore[import-not-found]
from _soak import LogServer, describe, logged_server, wait_for  # type: ignore[import-not-found]

from plait.protocol import (
    Ack,
    AwarenessEntry,
    ChannelClosed,
    Error,
    Hello,
    Join,
    Joined,
    Leave,
    Ping,
    Pong,
    PresenceDiff,
    PresenceSet,
    PresenceSnapshot,
    SyncStep2,
    Update,
    Welcome,
    YSync,
    YSyncStep,
    decode,
    decode_y,
    encode,
    encode_awareness,
    encode_sync,
)

HELLO = encode(Hello((1,), None, {"name": "churn"}))
EMPTY_SV = b"\x00"
EMPTY_UPDATE = b"\x00\x00"
STEP_TIMEOUT = 15.0
"""Seconds one step of a cycle may take before the cycle counts as failed."""
RECLAIM_WAIT = 45.0
"""Seconds to wait for the server to give memory back once its load has dropped (two looks,
15 s apart, and some margin)."""
RECLAIMED = re.compile(r"^memory reclaimed: .* collected (\d+) objects in ([\d.]+) ms, trimmed the heap in ([\d.]+) ms$")


def one_char_update() -> bytes:
    doc = pycrdt.Doc()
    doc.get("text", type=pycrdt.Text).insert(0, "x")
    return doc.get_update()


UPDATE = one_char_update()


class CycleFailed(Exception):
    pass


@dataclass
class Tally:
    native: int = 0
    yjs: int = 0
    failures: list[str] = field(default_factory=list)
    failed: int = 0

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.failures) < 5:
            self.failures.append(what)


async def frames_until(ws: RawWebSocket, done: Any, what: str) -> list[Any]:
    """Native frames received until `done(frame)` holds; errors and closes fail the cycle."""
    seen: list[Any] = []
    deadline = trio.current_time() + STEP_TIMEOUT
    while True:
        message = await ws.receive(max(0.0, deadline - trio.current_time()))
        if message is None:
            raise CycleFailed(f"no {what} within {STEP_TIMEOUT:.0f} s")
        if isinstance(message, Closed):
            raise CycleFailed(f"closed {message.code} {message.reason!r} waiting for {what}")
        if isinstance(message, str):
            raise CycleFailed("text message")
        for f in decode(message):
            if isinstance(f, (Error, ChannelClosed)):
                raise CycleFailed(f"{f!r} waiting for {what}")
            if isinstance(f, Ping):
                await ws.send_binary(encode(Pong(f.nonce)))
            seen.append(f)
            if done(f):
                return seen


async def native_cycle(port: int, room: str, n: int, edit: bool) -> None:
    ws = await RawWebSocket.connect(port, "/", timeout=STEP_TIMEOUT)
    try:
        await ws.send_binary(HELLO)
        await frames_until(ws, lambda f: isinstance(f, Welcome), "welcome")
        await ws.send_binary(encode(Join(1, room, EMPTY_SV, None, None)))
        frames = await frames_until(ws, lambda f: isinstance(f, PresenceSnapshot), "the join's presence snapshot")
        channel = next(f.channel for f in frames if isinstance(f, Joined))
        out: list[Any] = [SyncStep2(channel, None, EMPTY_UPDATE), PresenceSet(channel, 2, {"name": f"churn-{n}", "n": n})]
        if edit:
            out.append(Update(channel, 3, UPDATE))
        out.append(Leave(channel, 4))
        await ws.send_binary(encode(out))
        await frames_until(ws, lambda f: isinstance(f, Ack) and f.ref == 4, "the leave's ack")
    finally:
        await ws.close(timeout=STEP_TIMEOUT)


async def yjs_cycle(port: int, room: str, n: int, edit: bool) -> None:
    ws = await RawWebSocket.connect(port, f"/yjs/{room}", timeout=STEP_TIMEOUT)
    try:
        client_id = 1_000_000 + n
        out = [encode_awareness([AwarenessEntry(client_id, 1, json.dumps({"name": f"churn-{n}", "n": n}))])]
        if edit:
            out.append(encode_sync(YSyncStep.UPDATE, UPDATE))
        out += [encode_sync(YSyncStep.STEP2, EMPTY_UPDATE), encode_sync(YSyncStep.STEP1, EMPTY_SV)]
        for message in out:
            await ws.send_binary(message)
        deadline = trio.current_time() + STEP_TIMEOUT
        while True:  # the answer to our step 1 comes after everything before it was handled
            message = await ws.receive(max(0.0, deadline - trio.current_time()))
            if message is None or isinstance(message, (Closed, str)):
                raise CycleFailed(f"no sync step 2 from /yjs/: {message!r}")
            y = decode_y(message)
            if isinstance(y, YSync) and y.step is YSyncStep.STEP2:
                break
    finally:
        await ws.close(timeout=STEP_TIMEOUT)


async def run_cycles(port: int, rooms: list[str], yjs_share: float, edit: bool, concurrency: int, tally: Tally) -> None:
    """One cycle per entry of `rooms`, `concurrency` at a time; every k-th one over /yjs/."""
    every = round(1 / yjs_share) if yjs_share > 0 else 0
    position = iter(range(len(rooms)))

    async def worker() -> None:
        for i in position:
            yjs = every > 0 and i % every == every - 1
            try:
                if yjs:
                    await yjs_cycle(port, rooms[i], i, edit)
                    tally.yjs += 1
                else:
                    await native_cycle(port, rooms[i], i, edit)
                    tally.native += 1
            except (CycleFailed, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                tally.fail(f"cycle {i} ({'yjs' if yjs else 'native'}, {rooms[i]!r}): {type(exc).__name__}: {exc}")

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


class Holder:
    """The member that keeps the one room loaded: reads everything (a member that stops
    reading is closed as too slow), pings, and keeps the room's presence as it sees it."""

    def __init__(self, ws: RawWebSocket) -> None:
        self.ws = ws
        self.present: set[str] = set()
        self.me = ""
        self.failure: str | None = None

    @classmethod
    async def join(cls, port: int, room: str) -> Holder:
        ws = await RawWebSocket.connect(port, "/")
        holder = cls(ws)
        await ws.send_binary(HELLO)
        [welcome] = [f for f in await frames_until(ws, lambda f: isinstance(f, Welcome), "welcome") if isinstance(f, Welcome)]
        holder.me = welcome.session
        await ws.send_binary(encode(Join(1, room, EMPTY_SV, None, None)))
        frames = await frames_until(ws, lambda f: isinstance(f, PresenceSnapshot), "the holder's snapshot")
        channel = next(f.channel for f in frames if isinstance(f, Joined))
        holder.see(frames)
        await ws.send_binary(encode([SyncStep2(channel, None, EMPTY_UPDATE), PresenceSet(channel, None, {"name": "holder"})]))
        return holder

    def see(self, frames: list[Any]) -> None:
        for f in frames:
            if isinstance(f, PresenceSnapshot):
                self.present = {e.session for e in f.entries}
            elif isinstance(f, PresenceDiff):
                self.present |= {e.session for e in f.joined}
                self.present -= set(f.left)

    async def run(self) -> None:
        last_ping = trio.current_time()
        while True:
            message = await self.ws.receive(1.0)
            if isinstance(message, Closed) or isinstance(message, str):
                self.failure = f"holder: {message!r}"
                return
            if message is not None:
                frames = decode(message)
                self.see(frames)
                for f in frames:
                    if isinstance(f, Ping):
                        await self.ws.send_binary(encode(Pong(f.nonce)))
                    elif isinstance(f, (Error, ChannelClosed)):
                        self.failure = f"holder: {f!r}"
            if trio.current_time() - last_ping > 5:
                last_ping = trio.current_time()
                await self.ws.send_binary(encode(Ping(1)))

    def alone(self) -> bool:
        return self.present == {self.me}


@dataclass
class Outcome:
    variant: str
    tally: Tally
    seconds: float
    start: int
    peak: int
    after_visits: list[int]
    """Per round, once the visits are over (and, for one-room, their presence has left)."""
    after_unload: list[int]
    """Per round for `distinct`; for `one-room` once the holder too has left, at the end."""
    rooms_live: int
    rooms_unloaded: int
    sessions_open: int
    sessions_closed: int
    errors: list[str]
    reclaims: list[tuple[int, float, float]]
    """Each time the server gave memory back: objects collected, ms collecting, ms trimming."""
    diagnoses: list[list[str]] = field(default_factory=list)


def rss_row(o: Outcome) -> list[Any]:
    cycles = o.tally.native + o.tally.yjs
    return [o.variant, f"{cycles:,} ({o.tally.native:,} + {o.tally.yjs:,})", f"{cycles / o.seconds:,.0f}",
            mib(o.start), mib(o.peak), " -> ".join(map(mib, o.after_visits)), " -> ".join(map(mib, o.after_unload)),
            f"{o.after_unload[-1] / o.start:.3f}",
            f"{len(o.reclaims)}" + (f" ({max(r[0] for r in o.reclaims):,} objects, {max(r[1] for r in o.reclaims):.0f}"
                                    f" + {max(r[2] for r in o.reclaims):.0f} ms)" if o.reclaims else ""),
            f"{o.rooms_live:,} / {o.rooms_unloaded:,}", f"{o.sessions_open:,} / {o.sessions_closed:,}", o.tally.failed, len(o.errors)]


async def settle(what: str, check: Any, timeout: float) -> None:
    if not await wait_for(check, timeout):
        print(f"  churn: {what} did not happen within {timeout:.0f} s", file=sys.stderr)


DIAG = re.compile(r"^DIAG rss=(\S+) collected=(\d+) rss_after_gc=(\S+) rss_after_trim=(\S+)$")


async def diagnose(ls: LogServer, variant: str, point: str) -> list[str]:
    """Ask a --diagnose server where its memory is; one row of the diagnosis table."""
    seen = ls.log.read_text(errors="replace").count("DIAG end")
    ls.server.popen.send_signal(signal.SIGUSR1)
    await settle("the server's diagnosis", lambda: ls.log.read_text(errors="replace").count("DIAG end") > seen, 30)
    text = ls.log.read_text(errors="replace")
    block = text[text.rfind("DIAG rss=") : text.rfind("DIAG end")]
    head = DIAG.match(block.splitlines()[0]) if block else None
    stat = lambda name: (m.group(1) if (m := re.search(rf"# {name}\s+=\s+([\d,]+)", block)) else "?")  # noqa: E731
    unused = re.search(r"(\d+) unused pools \* (\d+) bytes", block)
    if head is None:
        return [variant, point, "?", "?", "?", "?", "?", "?", "?"]
    return [variant, point, f"{head[1]} MiB", head[2], f"{head[3]} MiB", f"{head[4]} MiB", stat("arenas allocated current"),
            f"{int(stat('bytes in allocated blocks').replace(',', '')) / 2**20:.1f} MiB"
            if stat("bytes in allocated blocks") != "?" else "?",
            f"{int(unused[1]) * int(unused[2]) / 2**20:.1f} MiB" if unused else "?"]


async def variant(name: str, args: argparse.Namespace) -> Outcome:
    with logged_server(*args.server_flags, diagnose=args.diagnose or args.default_gc) as ls:
        server, port = ls.server, ls.server.port
        counts = lambda: (lambda log: (log.count(r"^room .* live"), log.count(r"^room .* unloaded")))(ls.read())  # noqa: E731
        all_unloaded = lambda: (lambda c: c[0] == c[1])(counts())  # noqa: E731
        reclaims = lambda: ls.read().count(r"^memory reclaimed")  # noqa: E731

        async def reclaimed(since: int) -> None:
            await settle("the server giving memory back", lambda: reclaims() > since, RECLAIM_WAIT)
        diagnoses: list[list[str]] = []
        warm = Tally()
        holder: Holder | None = None
        after_visits: list[int] = []
        after_unload: list[int] = []
        async with trio.open_nursery() as nursery:
            if name == "one-room":
                holder = await Holder.join(port, "churn-hub")
                nursery.start_soon(holder.run)
                await run_cycles(port, ["churn-hub", "churn-hub"], 0.5, args.edit, 1, warm)
                await settle("the warm-up visitors' presence leaving", holder.alone, 30)
            else:
                await run_cycles(port, ["churn-warm-0", "churn-warm-1"], 0.5, args.edit, 1, warm)
                await settle("the warm-up rooms unloading", all_unloaded, 60)
                await reclaimed(0)  # as after the rounds: the same state to compare with
            await trio.sleep(1)
            start = server.rss()
            if args.diagnose:
                diagnoses.append(await diagnose(ls, name, "start"))
            server.reset_peak_rss()
            tally = Tally(failures=warm.failures, failed=warm.failed)
            seconds = 0.0  # cycling, not waiting for unloads
            for r in range(args.rounds):
                rooms = ["churn-hub"] * args.cycles if holder else [f"churn-{r}-{i}" for i in range(args.cycles)]
                t0 = time.monotonic()
                await run_cycles(port, rooms, args.yjs_share, args.edit, args.concurrency, tally)
                seconds += time.monotonic() - t0
                if holder is not None:
                    await settle("every visitor's presence leaving", holder.alone, 60)
                after_visits.append(server.rss())
                if holder is None:
                    before = reclaims()
                    await settle("every room unloading", all_unloaded, 60 + args.cycles / 100)
                    await reclaimed(before)
                    await trio.sleep(1)
                    after_unload.append(server.rss())
                if args.diagnose:
                    diagnoses.append(await diagnose(ls, name, f"round {r + 1}, {'rooms unloaded' if holder is None else 'visits over'}"))
            nursery.cancel_scope.cancel()  # the holder's reader
        if holder is not None:
            if holder.failure:
                tally.fail(holder.failure)
            before = reclaims()
            await holder.ws.close()
            await settle("the room unloading", all_unloaded, 60)
            await reclaimed(before)
            await trio.sleep(1)
            after_unload.append(server.rss())
            if args.diagnose:
                diagnoses.append(await diagnose(ls, name, "holder left, room unloaded"))
        peak = server.peak_rss()
        log = ls.read()
        return Outcome(name, tally, seconds, start, max(peak, start), after_visits, after_unload,
                       log.count(r"^room .* live"), log.count(r"^room .* unloaded"),
                       log.count(r"^session \S+ open"), log.count(r"^session \S+ closed"),
                       [describe(r) for r in log.errors()],
                       [(int(m[1]), float(m[2]), float(m[3])) for _, _, message, _ in log.records if (m := RECLAIMED.match(message))],
                       diagnoses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=6000)
    parser.add_argument("--variants", nargs="+", choices=["distinct", "one-room"], default=["distinct", "one-room"])
    parser.add_argument("--yjs-share", type=float, default=1 / 3, help="share of the cycles over /yjs/ (default 1/3)")
    parser.add_argument("--edit", action="store_true", help="each cycle also makes a one-character edit")
    parser.add_argument("--concurrency", type=int, default=16, help="cycles in flight at once")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the cycles (new rooms each round): RSS that grows every round is a leak, "
                             "RSS that stays where the first round left it is memory kept, not lost")
    parser.add_argument("--diagnose", action="store_true",
                        help="after each round ask the server where its memory is (bench/_diagserve.py: collects "
                             "garbage and trims the heap, so not for the headline numbers)")
    parser.add_argument("--default-gc", action="store_true",
                        help="the server keeps Python's default GC thresholds (plait serve raises them)")
    parser.add_argument("--server-flags", nargs=argparse.REMAINDER, default=[], help="passed to plait serve")
    args = parser.parse_args()
    if args.default_gc:
        os.environ["PLAIT_BENCH_DEFAULT_GC"] = "1"
    outcomes = [trio.run(variant, name, args) for name in args.variants]
    print(f"Machine: {machine()}\n")
    print(table(["variant", "cycles (native + yjs)", "cycles/s", "RSS start", "peak RSS", "RSS after the visits",
                 "RSS after unload", "after unload / start", "memory given back (most objects collected, longest collection + trim)",
                 "rooms loaded / unloaded", "sessions opened / closed", "failed cycles", "log errors"], [rss_row(o) for o in outcomes]))
    if args.diagnose:
        print()
        print(table(["variant", "when", "RSS", "gc.collect() freed", "RSS after it", "after malloc_trim(0)", "pymalloc arenas",
                     "live pymalloc blocks", "unused pools in arenas"], [d for o in outcomes for d in o.diagnoses]))
    for o in outcomes:
        for failure in o.tally.failures:
            print(f"  {o.variant}: {failure}", file=sys.stderr)
        for error in o.errors[:5]:
            print(f"  {o.variant}: server log: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
