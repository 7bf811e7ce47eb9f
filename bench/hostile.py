"""Hostile input: does `plait serve` keep serving, lose nothing and log no internal error while
many connections send it garbage, on both endpoints?

Good clients (bench/js/load.mjs: native and Yjs documents, one room) edit all along. Meanwhile
hostile connections to `/` (native msgpack protocol) and `/yjs/ROOM` (y-websocket) send, in
rotation (each family below runs from the first second):

    native_random     random bytes as messages, before and after hello
    native_mutated    valid frames mutated: truncated, bytes flipped or inserted, a field of
                      the wrong type, huge length headers, extension types, batches over the limit
    native_utf8       invalid UTF-8 in every string field (room, hello.client, presence, event name)
    native_stale      frames for a channel just left (in the same message as the leave, and
                      after), and for channels never opened, in the good clients' room
    native_values     NaN, +-Infinity in presence, patches, cursors, events, hello.client
    native_limits     update floods (rate limit), too many frames, too many rooms, joined twice
    yjs_random        random bytes as y-websocket messages
    yjs_mutated       valid y-messages mutated (huge varint lengths, unknown types and steps...)
    yjs_forgery       awareness entries under the ids of the good clients (Yjs and native),
                      with clock 2**53-1, null states for others, clocks past 2**53
    yjs_values        awareness states with NaN, Infinity, 1e999, integers past 64 bits,
                      invalid UTF-8, deep nesting, oversized states, a forged identity
    yjs_surrogates    awareness states holding a lone UTF-16 surrogate ("\\ud800") in a
                      value, a key, a cursor
    yjs_after_close   a document update sent after the WebSocket close frame
    ws_violations     WebSocket-level violations on both paths (unmasked, RSV bits, reserved
                      opcodes, fragmented or long control frames, bad close codes, invalid
                      UTF-8 text, lengths of 2**63 or just over the limit, ping floods)
    http              broken upgrade requests and room paths
    crdt_bytes        well-formed frames carrying random or mutated Yjs update and state-vector
                      bytes (native update/sync_step1/join, y-websocket step 1/2/update); one
                      connection at a time, every answer timed
    floods            for a second, as fast as the server reads, what no rate once counted:
                      messages of 4,096 fragments, WebSocket pings or pongs, typing frames for
                      a channel left or never opened

and, at fixed times, the state-vector bomb (the 9 bytes ece3c5baf359480059) in
join.state_vector, in sync_step1 and in a y-websocket sync step 1, each timed and its RSS
measured. A probe connection pings the server every 50 ms: its longest wait is the longest
time the server did not answer anyone. An observer in the good room reads awareness as a Yjs
client would and reports forged or invalid states.

At the end: is the server still running, does a fresh plait.client join and get an edit
acked, did the good clients converge with every edit (and none of the stale frames' text),
how many ERROR/CRITICAL lines did the server log (the first few are shown), the server's peak
RSS and CPU, and what was sent. Every loop is bounded; the run takes --seconds plus about 40 s.

    .venv/bin/python bench/hostile.py [--seconds 60] [--workers 24] [--exclude FAMILY ... | --only FAMILY ...]
                                      [--bombs NAME ...] [--strict] [--diagnose] [--keep-log FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import psutil
import pycrdt
import trio
from _harness import Load, Measured, machine, mib, table  # type: ignore[import-not-found]
from _rawws import BINARY, CLOSE, CONT, PING, PONG, TEXT, Closed, RawWebSocket, Refused, frame, upgrade_request  # type: ignore[import-not-found]
from _soak import LogServer, describe, logged_server  # type: ignore[import-not-found]
from fanout import analyse  # type: ignore[import-not-found]

from plait.protocol import (
    Ack,
    AwarenessEntry,
    ChannelClosed,
    Error,
    ErrorCode,
    Hello,
    Join,
    Joined,
    Ping,
    Pong,
    RemoteProtocolError,
    Welcome,
    YAwareness,
    YSync,
    YSyncStep,
    decode,
    decode_y,
    encode,
    encode_awareness,
    encode_sync,
)

GOOD = "hostile-good"
FUZZ_ROOMS = 8
BOMB = bytes.fromhex("ece3c5baf359480059")
MAX_CLOCK = 2**53 - 1
ANSWER = 1.0
"""Seconds a hostile connection waits for the server's answer to what it sent."""
SLOW = 1.0
"""An answer slower than this is listed with the input that caused it."""
INTERNAL_CLOSES = {4009, 1011}
HELLO = encode(Hello((1,), None, {"name": "hostile"}))


# -- what the hostile connections learn and count --------------------------------------------


@dataclass
class Family:
    connections: int = 0
    messages: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    internal: list[str] = field(default_factory=list)
    """Inputs answered with INTERNAL (3999) or closed with 4009/1011, as hex."""
    slow: list[tuple[float, str]] = field(default_factory=list)

    def slow_answer(self, seconds: float, sent: bytes) -> None:
        self.slow.append((seconds, show(sent)))
        self.slow.sort(reverse=True)
        del self.slow[5:]


def show(data: bytes, limit: int = 96) -> str:
    return data[:limit].hex() + (f"...(+{len(data) - limit} bytes)" if len(data) > limit else "")


class Conn:
    """A hostile connection: a RawWebSocket that counts what it sends and notes every answer."""

    def __init__(self, ws: RawWebSocket, family: Family, native: bool) -> None:
        self.ws, self.family, self.native = ws, family, native
        self.last: bytes = b""
        self.ended: str | None = None

    async def send(self, data: bytes, raw: bool = False) -> bool:
        """Send `data` as one binary message (or as raw bytes). False once the connection is gone."""
        if self.ended:
            return False
        self.last = data
        self.family.messages += 1
        try:
            await (self.ws.send_raw(data) if raw else self.ws.send_binary(data))
            return True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.end("dropped while sending")
            return False

    def end(self, outcome: str) -> None:
        if self.ended is None:
            self.ended = outcome
            self.family.outcomes[outcome] += 1

    async def answer(self, timeout: float = ANSWER, until: Callable[[Any], bool] | None = None) -> list[Any]:
        """Read for up to `timeout` seconds (or until a frame satisfies `until`); notes error
        codes and how the connection ended. Returns the native frames (or y-messages) read."""
        got: list[Any] = []
        started = time.monotonic()
        deadline = trio.current_time() + timeout
        while not self.ended:
            message = await self.ws.receive(max(0.0, deadline - trio.current_time()))
            if message is None:
                break
            if isinstance(message, Closed):
                self.end(f"close {message.code}" if message.code else "dropped")
                if message.code in INTERNAL_CLOSES:
                    self._internal()
                break
            if isinstance(message, str):
                self.family.outcomes["text from server"] += 1
                continue
            try:
                items: list[Any] = decode(message) if self.native else [decode_y(message)]
            except RemoteProtocolError:
                self.family.outcomes["undecodable from server"] += 1
                continue
            for item in items:
                if isinstance(item, Error):
                    name = ErrorCode(item.code).name if item.code in ErrorCode._value2member_map_ else item.code
                    self.family.outcomes[f"error {name}"] += 1
                    if item.code == ErrorCode.INTERNAL:
                        self._internal()
                elif isinstance(item, Ping):
                    await self.send(encode(Pong(item.nonce)))
            got += items
            if until is not None and any(until(i) for i in items):
                break
        elapsed = time.monotonic() - started
        if elapsed > SLOW and (until is not None or self.ended):
            self.family.slow_answer(elapsed, self.last)
        return got

    def _internal(self) -> None:
        if len(self.family.internal) < 5:
            self.family.internal.append(show(self.last, 200))

    async def close(self) -> None:
        if not self.ended:
            closed = await self.ws.close(timeout=1.0)
            self.end(f"close {closed.code}" if closed.code else "closed by us")
        else:
            await self.ws.abort()


async def open_conn(port: int, path: str, family: Family, native: bool) -> Conn | None:
    family.connections += 1
    try:
        ws = await RawWebSocket.connect(port, path, timeout=10)
    except (Refused, OSError, trio.TooSlowError) as exc:
        family.outcomes[f"not connected: {str(exc)[:24] if isinstance(exc, Refused) else type(exc).__name__}"] += 1
        return None
    return Conn(ws, family, native)


async def native_session(port: int, family: Family, room: str | None = None, sv: bytes | None = b"\x00") -> tuple[Conn, int | None] | None:
    """Connected, welcomed and (with `room`) joined: the connection and its channel."""
    conn = await open_conn(port, "/", family, True)
    if conn is None:
        return None
    await conn.send(HELLO)
    await conn.answer(5.0, lambda f: isinstance(f, Welcome))
    if room is None:
        return conn, None
    await conn.send(encode(Join(1, room, sv, None, None)))
    frames = await conn.answer(5.0, lambda f: isinstance(f, (Joined, Error)))
    joined = [f for f in frames if isinstance(f, Joined)]
    return conn, (joined[0].channel if joined else None)


def fuzz_room(rng: random.Random) -> str:
    return f"hostile-fuzz-{rng.randrange(FUZZ_ROOMS)}"


# -- material: valid documents, frames and messages to mutate ----------------------------------


def sample_doc(rng: random.Random) -> pycrdt.Doc:
    doc = pycrdt.Doc()
    text = doc.get("text", type=pycrdt.Text)
    text.insert(0, "".join(rng.choice("abcdef") for _ in range(rng.randint(1, 12))))
    if rng.random() < 0.5 and len(text) > 2:
        del text[0:1]
    if rng.random() < 0.3:
        doc.get("m", type=pycrdt.Map)["k"] = rng.randint(0, 9)
    return doc


def stale_update() -> bytes:
    """An update inserting "STALE" into the good room's text: valid against any document, so
    the only thing keeping it out is the server ignoring the channel it came on. The good
    clients only ever type lower-case letters."""
    doc = pycrdt.Doc()
    doc.get("text", type=pycrdt.Text).insert(0, "STALE")
    return doc.get_update()


STALE_UPDATE = stale_update()
VALUE_PALETTE: list[Any] = [None, True, -1, 0, 2**64 - 1, -(2**63), 1.5, "s", b"\x00\xff", [], {}, [[[[[[1]]]]]],
                            {"a": {"b": [1, {"c": None}]}}, "x" * 300, 2**32, -(2**31)]


def native_corpus(rng: random.Random, channel: int) -> list[list[Any]]:
    """Valid frames as wire arrays, for `channel`."""
    doc = sample_doc(rng)
    ref = rng.randint(1, 2**32 - 1)
    return [
        [22, channel, ref, doc.get_update()],
        [21, channel, ref, doc.get_update()],
        [20, channel, doc.get_state()],
        [30, channel, ref, {"name": "mallory", "n": 1.5, "tags": ["a", "b"]}],
        [31, channel, None, {"name": None, "x": 1}],
        [40, channel, {"index": rng.randint(0, 100)}],
        [42, channel, True],
        [50, channel, ref, "chat", {"text": "hi"}, "key-1"],
        [12, channel, ref],
        [10, ref, fuzz_room(rng), doc.get_state(), 3, "e1"],
        [3, 7],
        [4, 7],
        [1, [1], None, {"name": "again"}],
    ]


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    how = rng.randrange(6)
    if how == 0 and b:
        del b[rng.randrange(len(b)) :]
    elif how == 1 and b:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == 2:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randint(1, 8))
    elif how == 3 and len(b) > 1:
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 4)]
    elif how == 4 and b:
        b[rng.randrange(len(b))] = rng.choice([0xC1, 0xC7, 0xC8, 0xC9, 0xD4, 0xD8, 0xDC, 0xDD, 0xDE, 0xDF, 0xC6, 0xDB, 0xFF])
    else:
        b += rng.randbytes(rng.randint(1, 16))
    return bytes(b)


def mutate_native(rng: random.Random, array: list[Any]) -> bytes:
    """One valid frame, made invalid (or odd) one of several ways."""
    how = rng.randrange(8)
    if how <= 1:
        return mutate_bytes(rng, msgpack.packb(array, use_bin_type=True))
    if how == 2 and len(array) > 1:  # a field of the wrong type
        array = list(array)
        array[rng.randrange(1, len(array))] = rng.choice([*VALUE_PALETTE, msgpack.ExtType(1, b"x"), {1: 2}, msgpack.Timestamp(0)])
        return msgpack.packb(array, use_bin_type=True)
    if how == 3:  # a field too many or too few
        array = [*array, None] if rng.random() < 0.5 else list(array)[:-1]
        return msgpack.packb(array, use_bin_type=True)
    if how == 4:  # a length header far beyond the bytes present
        header = rng.choice([b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                             b"\xc5\xff\xff", b"\xdc\xff\xff", b"\xc6\x7f\xff\xff\xff"])
        return b"\x94\x16\x01\xc0" + header + b"\x00" * rng.randint(0, 8)
    if how == 5:  # more frames than a message may hold, or a valid frame then garbage
        one = msgpack.packb([3, 1])
        return one * 1025 if rng.random() < 0.5 else one + rng.randbytes(rng.randint(1, 8))
    if how == 6:  # kind out of range
        array = list(array)
        array[0] = rng.choice([0, 7, 9, 99, 255, 2**32, -1, "update", 22.0])
        return msgpack.packb(array, use_bin_type=True)
    nested: Any = 1
    for _ in range(rng.choice([33, 100, 1000])):
        nested = [nested]
    return msgpack.packb([30, array[1] if len(array) > 1 and isinstance(array[1], int) else 1, None, {"deep": nested}])


def invalid_utf8(rng: random.Random) -> bytes:
    return rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"abc\x80", b"\xe2\x82"])


def with_bad_string(array: list[Any], rng: random.Random) -> bytes:
    """`array` packed with its string "\\x01" replaced by invalid UTF-8 of the same str header."""
    bad = invalid_utf8(rng)
    packed = msgpack.packb(array, use_bin_type=True)
    marker = msgpack.packb("\x01" * len(bad))
    return packed.replace(marker, bytes([marker[0]]) + bad, 1)


def y_corpus(rng: random.Random) -> list[bytes]:
    doc = sample_doc(rng)
    me = rng.randint(1, 2**32)
    return [
        encode_sync(YSyncStep.STEP1, doc.get_state()),
        encode_sync(YSyncStep.STEP2, doc.get_update()),
        encode_sync(YSyncStep.UPDATE, doc.get_update()),
        encode_awareness([AwarenessEntry(me, 1, json.dumps({"name": "mallory"}))]),
        b"\x03",
        b"\x02\x00\x05hello",
    ]


def mutate_y(rng: random.Random, message: bytes) -> bytes:
    how = rng.randrange(5)
    if how <= 1:
        return mutate_bytes(rng, message)
    if how == 2:  # a varint length far beyond the bytes present, or past 2**53
        huge = rng.choice([b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x80\x80\x80\x80\x10"])
        return message[:2] + huge + message[3:]
    if how == 3:  # unknown type or step
        return rng.choice([bytes([rng.randint(4, 127)]), b"\x00" + bytes([rng.randint(3, 127)])]) + message[2:]
    # an awareness update claiming many entries and holding one
    return b"\x01" + bytes([len(message) + 4]) + b"\xff\xff\xff\x0f" + message[2:] if len(message) < 120 else message + b"\x00"


# -- the attack families --------------------------------------------------------------------


@dataclass
class Ctx:
    port: int
    rng: random.Random
    family: Family
    observer: Observer


async def native_random(ctx: Ctx) -> None:
    conn = await open_conn(ctx.port, "/", ctx.family, True)
    if conn is None:
        return
    if ctx.rng.random() < 0.7:
        await conn.send(HELLO)
        await conn.answer(2.0, lambda f: isinstance(f, Welcome))
    for _ in range(ctx.rng.randint(1, 5)):
        size = ctx.rng.choice([ctx.rng.randint(0, 16), ctx.rng.randint(0, 256), ctx.rng.randint(1000, 5000)])
        if not await conn.send(ctx.rng.randbytes(size)):
            break
        await conn.answer()
    await conn.close()


async def native_mutated(ctx: Ctx) -> None:
    session = await native_session(ctx.port, ctx.family, fuzz_room(ctx.rng))
    if session is None:
        return
    conn, channel = session
    for _ in range(ctx.rng.randint(1, 8)):
        corpus = native_corpus(ctx.rng, channel or 1)
        if not await conn.send(mutate_native(ctx.rng, ctx.rng.choice(corpus))):
            break
        await conn.answer()
    await conn.close()


async def native_utf8(ctx: Ctx) -> None:
    rng = ctx.rng
    conn = await open_conn(ctx.port, "/", ctx.family, True)
    if conn is None:
        return
    where = rng.randrange(6)
    if where == 0:
        await conn.send(with_bad_string([1, [1], None, {"\x01": 1}], rng))  # hello.client key
    elif where == 1:
        await conn.send(with_bad_string([1, [1], "\x01", {}], rng))  # hello.token
    else:
        await conn.send(HELLO)
        await conn.answer(2.0, lambda f: isinstance(f, Welcome))
        if where == 2:
            await conn.send(with_bad_string([10, 1, "\x01", None, None, None], rng))  # join.room
        else:
            await conn.send(encode(Join(1, fuzz_room(rng), None, None, None)))
            frames = await conn.answer(2.0, lambda f: isinstance(f, Joined))
            channel = next((f.channel for f in frames if isinstance(f, Joined)), 1)
            bad = {3: [30, channel, None, {"name": "\x01"}], 4: [50, channel, 2, "\x01", None, None],
                   5: [40, channel, {"\x01": 1}]}[where]
            await conn.send(with_bad_string(bad, rng))
    await conn.answer()
    await conn.close()


async def native_stale(ctx: Ctx) -> None:
    session = await native_session(ctx.port, ctx.family, GOOD)
    if session is None:
        return
    conn, channel = session
    if channel is None:
        await conn.close()
        return
    sv = pycrdt.Doc().get_state()

    def stale(ch: int) -> list[list[Any]]:
        return [[22, ch, 11, STALE_UPDATE], [22, ch, None, STALE_UPDATE], [21, ch, 12, STALE_UPDATE], [20, ch, sv],
                [30, ch, 13, {"stale": True}], [31, ch, None, {"stale": True}], [40, ch, {"index": 0}], [42, ch, True],
                [50, ch, 14, "stale", {"x": 1}, None], [12, ch, 15]]

    def pack(arrays: list[list[Any]]) -> bytes:
        return b"".join(msgpack.packb(a, use_bin_type=True) for a in arrays)

    # The leave and stale frames in one message, then stale frames alone.
    await conn.send(pack([[12, channel, 2], *stale(channel)]))
    await conn.answer(0.5)
    await conn.send(pack(stale(channel)))
    await conn.answer(0.3)
    # Rejoin (a new channel), leave without a ref, and at once frames on both old channels.
    await conn.send(encode(Join(3, GOOD, b"\x00", None, None)))
    frames = await conn.answer(2.0, lambda f: isinstance(f, (Joined, Error)))
    second = next((f.channel for f in frames if isinstance(f, Joined)), None)
    if second is not None:
        await conn.send(pack([[12, second, None], *stale(second), *stale(channel)]))
        await conn.answer(0.3)
    # Channels never opened.
    for ch in (0, (second or channel) + 5, 2**32 - 1):
        await conn.send(pack(stale(ch)[:3]))
    await conn.answer(0.5)
    await conn.close()


NONFINITE = [math.nan, math.inf, -math.inf]


async def native_values(ctx: Ctx) -> None:
    rng = ctx.rng
    bad = rng.choice(NONFINITE)
    if rng.random() < 0.15:
        conn = await open_conn(ctx.port, "/", ctx.family, True)
        if conn is None:
            return
        await conn.send(msgpack.packb([1, [1], None, {"x": bad}]))
        await conn.answer()
        await conn.close()
        return
    session = await native_session(ctx.port, ctx.family, GOOD)
    if session is None:
        return
    conn, channel = session
    ch = channel or 1
    packer = rng.choice([lambda a: msgpack.packb(a, use_bin_type=True), lambda a: msgpack.packb(a, use_single_float=True)])
    arrays = [[30, ch, 2, {"x": bad}], [30, ch, None, {"nested": [1, {"y": bad}]}], [31, ch, 3, {"x": bad}],
              [40, ch, bad], [40, ch, {"index": bad}], [50, ch, 4, "n", bad, None], [50, ch, 5, "n", {"v": [bad]}, "k"]]
    await conn.send(packer(rng.choice(arrays)))
    await conn.answer()
    await conn.close()


async def native_limits(ctx: Ctx) -> None:
    rng = ctx.rng
    room = fuzz_room(rng)
    session = await native_session(ctx.port, ctx.family, room)
    if session is None:
        return
    conn, channel = session
    ch = channel or 1
    how = rng.randrange(4)
    if how == 0:  # updates far over the rate: RATE_LIMITED, then closed
        doc = pycrdt.Doc()
        text = doc.get("text", type=pycrdt.Text)
        updates: list[bytes] = []
        doc.observe(lambda event: updates.append(event.update))
        for _ in range(400):
            text.insert(0, "u")
        for i, update in enumerate(updates):
            if not await conn.send(encode_raw([22, ch, i + 10, update])):
                break
        await conn.answer(2.0)
    elif how == 1:
        await conn.send(msgpack.packb([3, 1]) * 1025)
        await conn.answer()
    elif how == 2:  # more rooms than allowed
        for i in range(70):
            if not await conn.send(encode(Join(100 + i, f"{room}-{i}", None, None, None))):
                break
        await conn.answer(2.0)
    else:
        await conn.send(encode(Join(5, room, None, None, None)))  # joined twice
        await conn.answer()
    await conn.close()


def encode_raw(array: list[Any]) -> bytes:
    return msgpack.packb(array, use_bin_type=True)


async def yjs_random(ctx: Ctx) -> None:
    conn = await open_conn(ctx.port, f"/yjs/{fuzz_room(ctx.rng)}", ctx.family, False)
    if conn is None:
        return
    for _ in range(ctx.rng.randint(1, 5)):
        if not await conn.send(ctx.rng.randbytes(ctx.rng.choice([ctx.rng.randint(0, 16), ctx.rng.randint(0, 300)]))):
            break
        await conn.answer(0.5)
    await conn.close()


async def yjs_mutated(ctx: Ctx) -> None:
    conn = await open_conn(ctx.port, f"/yjs/{fuzz_room(ctx.rng)}", ctx.family, False)
    if conn is None:
        return
    for _ in range(ctx.rng.randint(1, 6)):
        if not await conn.send(mutate_y(ctx.rng, ctx.rng.choice(y_corpus(ctx.rng)))):
            break
        await conn.answer(0.5)
    await conn.close()


def awareness_message(entries: list[tuple[int, int, bytes]]) -> bytes:
    """An awareness message from raw entries (client id, clock, state bytes: any bytes)."""
    def varuint(n: int) -> bytes:
        out = bytearray()
        while n > 0x7F:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out)

    body = varuint(len(entries)) + b"".join(varuint(c) + varuint(k) + varuint(len(s)) + s for c, k, s in entries)
    return b"\x01" + varuint(len(body)) + body


async def yjs_forgery(ctx: Ctx) -> None:
    rng = ctx.rng
    conn = await open_conn(ctx.port, f"/yjs/{GOOD}", ctx.family, False)
    if conn is None:
        return
    seen = await conn.answer(1.0, lambda m: isinstance(m, YAwareness))
    ids = sorted({e.client_id for m in seen if isinstance(m, YAwareness) for e in m.entries} | set(ctx.observer.baseline))
    if not ids:
        await conn.close()
        return
    forged = json.dumps({"name": "mallory", "forged": True, "identity": {"id": "admin"}}).encode()
    me = rng.randint(1, 2**31)
    victims = sorted(ctx.observer.baseline) or ids  # the good clients' ids, Yjs and native
    how = rng.randrange(5)
    if how <= 1:  # speak first for a good client (a connection binds to the first id it claims)
        victim = rng.choice(victims)
        entries = [(victim, MAX_CLOCK, forged)] + [(i, MAX_CLOCK, forged) for i in ids if i != victim]
    elif how == 2:  # own id first, then the others', or null states for them (removals)
        other = forged if rng.random() < 0.5 else b"null"
        entries = [(me, 1, b"{}")] + [(i, MAX_CLOCK, other) for i in ids]
    elif how == 3:  # past what a JavaScript number holds
        entries = [(rng.choice(ids), MAX_CLOCK + 1, forged)]
    else:  # own id at the highest clock, then again at the same clock
        entries = [(me, MAX_CLOCK, forged)]
    await conn.send(awareness_message(entries))
    if how == 4:
        await conn.send(awareness_message([(me, MAX_CLOCK, b'{"again": 1}')]))
    await conn.answer(1.5)  # long enough for a tick to carry a forged state to the others
    await conn.close()


AWARENESS_VALUES = [b"NaN", b'{"x": NaN}', b'{"x": Infinity}', b'{"x": -Infinity}', b'{"x": 1e999}', b'{"x": -1e999}',
                    b'{"cursor": {"index": NaN}}', b'{"x": 100000000000000000000000000000}', b'{"x": -9223372036854775809}',
                    b'{"x": "\xff"}', b'{"\xc0\xaf": 1}', b'{"x": ' + b"[" * 40 + b"]" * 40 + b"}",
                    b'{"x": "' + b"a" * 70_000 + b'"}', b"[1, 2]", b'"just a string"', b'{"identity": {"id": "admin"}}',
                    b'{"x": 1e-400}', b'{"x": 9007199254740993}', b"{", b"", b'{"x": 1} trailing', b'{"a": 1, "a": 2}',
                    b'{"x": ' + b"9" * 5000 + b"}"]
SURROGATES = [b'{"x": "\\ud800"}', b'{"\\udfff": 1}', b'{"cursor": "\\udbff"}', b'{"name": "ok \\ud83d"}']


async def yjs_awareness_value(ctx: Ctx, values: list[bytes]) -> None:
    conn = await open_conn(ctx.port, f"/yjs/{GOOD}", ctx.family, False)
    if conn is None:
        return
    await conn.send(awareness_message([(ctx.rng.randint(1, 2**31), 1, ctx.rng.choice(values))]))
    await conn.answer(0.5)
    await conn.close()


async def yjs_values(ctx: Ctx) -> None:
    await yjs_awareness_value(ctx, AWARENESS_VALUES)


async def yjs_surrogates(ctx: Ctx) -> None:
    await yjs_awareness_value(ctx, SURROGATES)


async def yjs_after_close(ctx: Ctx) -> None:
    conn = await open_conn(ctx.port, f"/yjs/{GOOD}", ctx.family, False)
    if conn is None:
        return
    await conn.answer(0.2)
    after = frame(BINARY, encode_sync(YSyncStep.UPDATE, STALE_UPDATE))
    await conn.send(frame(CLOSE, struct.pack("!H", 1000)) + after, raw=True)
    await conn.answer(1.0)
    await conn.close()


def violations(rng: random.Random) -> list[bytes]:
    data = HELLO
    return [
        frame(BINARY, data, mask=False),
        frame(BINARY, data, rsv=rng.randint(1, 7)),
        frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]), data),
        frame(PING, b"p" * 126),
        frame(PING, b"p", fin=False),
        frame(CONT, data),
        frame(BINARY, data[:2], fin=False) + frame(BINARY, data[2:]),
        frame(TEXT, b"\xff\xfe"),
        frame(TEXT, b"\xe2\x82", fin=False) + frame(CONT, b"\xff"),
        frame(TEXT, b"a text message"),
        frame(CLOSE, b"\x03"),
        frame(CLOSE, struct.pack("!H", rng.choice([0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535]))),
        frame(CLOSE, struct.pack("!H", 1000) + b"\xff\xfe"),
        frame(BINARY, b"abc", length=2**63 + 5),
        frame(BINARY, b"abc", length=2**40),
        frame(BINARY, b"abc", length=16 * 2**20 + 1),
        frame(BINARY, b""),
        frame(PING, b"x") * 200,
        frame(BINARY, data)[:3],
        frame(BINARY, data, fin=False) + frame(PING, b"in between") + frame(CONT, b""),
        frame(BINARY, b"\x00" * 5, length=5)[:2] + b"\x00\x05" + b"\x00" * 9,  # a length in a non-minimal form
    ]


async def ws_violations(ctx: Ctx) -> None:
    rng = ctx.rng
    native = rng.random() < 0.5
    path = "/" if native else f"/yjs/{fuzz_room(rng)}"
    conn = await open_conn(ctx.port, path, ctx.family, native)
    if conn is None:
        return
    if native and rng.random() < 0.5:
        await conn.send(HELLO)
        await conn.answer(2.0, lambda f: isinstance(f, Welcome))
    options = violations(rng)
    pick = rng.randrange(len(options))
    await conn.send(options[pick], raw=True)
    if pick == len(options) - 3:  # a partial frame, then the socket goes
        await conn.ws.abort()
        conn.end("aborted by us")
        return
    await conn.answer(1.0)
    await conn.close()


def http_requests(rng: random.Random, port: int) -> list[bytes]:
    ok = upgrade_request("/", port)
    return [
        ok.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
        ok.replace(b"Sec-WebSocket-Key", b"X-Nothing"),
        ok.replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: !!"),
        ok.replace(b"\r\n\r\n", b"\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"),
        ok.replace(b"HTTP/1.1", b"HTTP/1.0"),
        ok.replace(b"GET", b"POST"),
        ok.replace(b"\r\n\r\n", b"\r\nno colon here\r\n\r\n"),
        rng.randbytes(rng.randint(1, 2000)) + b"\r\n\r\n",
        upgrade_request("/yjs/%FF%FE", port),
        upgrade_request("/yjs/a%00b", port),
        upgrade_request("/yjs/" + "r" * 300, port),
        upgrade_request("/yjs/", port),
        upgrade_request("/yjs/%", port),
        upgrade_request("/yjs/x?token=" + "t" * 9000, port),
        upgrade_request("/nowhere", port),
        upgrade_request("/" + "p" * 10_000, port),
        upgrade_request("/yjs/\u00e9t\u00e9", port),
    ]


async def http(ctx: Ctx) -> None:
    ctx.family.connections += 1
    ctx.family.messages += 1
    request = ctx.rng.choice(http_requests(ctx.rng, ctx.port))
    try:
        ws = await RawWebSocket.connect(ctx.port, "/", timeout=5, request=request)
    except Refused as exc:
        status = str(exc)
        ctx.family.outcomes[f"refused {status[9:12]}" if status.startswith("HTTP/") else "dropped during the upgrade"] += 1
        return
    except (OSError, trio.TooSlowError) as exc:
        ctx.family.outcomes[type(exc).__name__] += 1
        return
    conn = Conn(ws, ctx.family, True)  # a room name the y-websocket endpoint refuses is closed after the upgrade
    await conn.answer(1.0)
    if not conn.ended:
        conn.end("upgraded, open")
    await conn.close()


async def crdt_bytes(ctx: Ctx) -> None:
    """Well-formed frames whose Yjs bytes are random or mutated; every answer timed."""
    rng = ctx.rng
    native = rng.random() < 0.5
    room = fuzz_room(rng)

    def payload(kind: str) -> bytes:
        base = sample_doc(rng)
        valid = base.get_state() if kind == "sv" else base.get_update()
        return rng.randbytes(rng.randint(0, 20)) if rng.random() < 0.4 else mutate_bytes(rng, valid)

    if native:
        session = await native_session(ctx.port, ctx.family, room)
        if session is None:
            return
        conn, channel = session
        ch = channel or 1
        for i in range(rng.randint(1, 4)):
            which = rng.randrange(3)
            if which == 0:
                message = encode_raw([22, ch, 100 + i, payload("update")])
            elif which == 1:
                message = encode_raw([20, ch, payload("sv")])
            else:
                message = encode_raw([10, 100 + i, f"{room}-sv-{rng.randrange(4)}", payload("sv"), None, None])
            if not await conn.send(message):
                break
            await conn.answer(60.0, lambda f: isinstance(f, (Ack, Error, Joined)) or (which == 1 and getattr(f, "KIND", 0) == 21))  # noqa: B023 (awaited here)
        await conn.close()
    else:
        conn = await open_conn(ctx.port, f"/yjs/{room}", ctx.family, False)
        if conn is None:
            return
        await conn.answer(0.3)
        step = rng.choice([YSyncStep.STEP1, YSyncStep.STEP2, YSyncStep.UPDATE])
        message = encode_sync(step, payload("sv" if step is YSyncStep.STEP1 else "update"))
        await conn.send(message)
        # A step 1 asks for an answer; after an update, a step 1 of our own times its handling.
        if step is not YSyncStep.STEP1:
            await conn.send(encode_sync(YSyncStep.STEP1, b"\x00"))
            conn.last = message
        await conn.answer(60.0, lambda m: isinstance(m, YSync) and m.step is YSyncStep.STEP2)
        await conn.close()


async def floods(ctx: Ctx) -> None:
    """For a second, as fast as the server reads: what no rate once counted (2026-12-03). A
    message of 4,096 fragments, all but the last empty; WebSocket pings or pongs; typing frames
    for a channel left, or never opened."""
    rng = ctx.rng
    session = await native_session(ctx.port, ctx.family, fuzz_room(rng))
    if session is None:
        return
    conn, channel = session
    ch = channel or 1
    how = rng.randrange(4)
    if how == 0:
        data = frame(BINARY, b"", fin=False) + frame(CONT, b"", fin=False) * 4094 + frame(CONT, encode_raw([3, 1]))
    elif how == 1:
        data = frame(rng.choice([PING, PONG]), b"x" * 8) * 4096
    else:
        if how == 2:
            await conn.send(encode_raw([12, ch, 2]))  # leave
            await conn.answer(0.5)
        data = frame(BINARY, encode_raw([42, ch if how == 2 else ch + 7, True]) * 1024)
    with trio.move_on_after(1.0):
        while await conn.send(data, raw=True):
            pass
    await conn.answer(1.0)
    await conn.close()


async def dense(ctx: Ctx) -> None:
    """Values of one byte each, within every byte limit (2026-12-03): a message whose array
    header claims millions of nils, or nested arrays of 300,000 empty ones (both past the
    values a message may hold, spec §3.4), before hello or after it, in msgpack or JSON; or,
    for a second, events of 200,000 nils as fast as the server reads them (§5.8)."""
    rng = ctx.rng
    how = rng.randrange(5)
    publish = b"\x96" + encode_raw([50, 1, 7, "x"])[1:]  # publish(channel 1, ref 7, "x", payload, key): all but the last two
    empties = b"\xdc\x00\x05" + (b"\xdc\xea\x60" + b"\x90" * 60_000) * 5
    if how in (0, 1):  # before hello: the first message
        conn = await open_conn(ctx.port, "/", ctx.family, True)
        if conn is None:
            return
        body = b"\xdd" + (2_000_000).to_bytes(4, "big") + b"\xc0" * 2_000_000 if how == 0 else empties
        await conn.send(publish + body + b"\xc0")
    else:
        session = await native_session(ctx.port, ctx.family, fuzz_room(rng))
        if session is None:
            return
        conn, channel = session
        if how == 2:
            await conn.send(publish + empties + b"\xc0")
        elif how == 3:
            text = b'{"kind":"publish","channel":1,"ref":7,"name":"x","key":null,"payload":[' + b"[]," * 300_000 + b"[]]}"
            await conn.send(frame(TEXT, text), raw=True)
        else:
            nils = b"\xdd" + (200_000).to_bytes(4, "big") + b"\xc0" * 200_000
            with trio.move_on_after(1.0):
                while await conn.send(b"\x96" + encode_raw([50, channel or 1, 7, "x"])[1:] + nils + b"\xc0"):
                    pass
    await conn.answer(1.0)
    await conn.close()


FAMILIES: dict[str, Callable[[Ctx], Awaitable[None]]] = {
    "native_random": native_random, "native_mutated": native_mutated, "native_utf8": native_utf8,
    "native_stale": native_stale, "native_values": native_values, "native_limits": native_limits,
    "yjs_random": yjs_random, "yjs_mutated": yjs_mutated, "yjs_forgery": yjs_forgery, "yjs_values": yjs_values,
    "yjs_surrogates": yjs_surrogates, "yjs_after_close": yjs_after_close, "ws_violations": ws_violations, "http": http,
    "crdt_bytes": crdt_bytes, "floods": floods, "dense": dense,
}
SERIAL = {"crdt_bytes"}
"""Families run by one connection at a time (each may stall the server)."""


# -- watchers: the probe, the observer ---------------------------------------------------------


class Probe:
    """A native connection pinging every 50 ms: the longest wait for a pong is the longest the
    server left everyone waiting."""

    def __init__(self) -> None:
        self.rtts: list[tuple[float, float]] = []  # (when sent, seconds)
        self.lost: list[str] = []

    async def run(self, port: int) -> None:
        while True:  # a connection the server ends is counted and replaced
            family = Family()
            try:
                session = await native_session(port, family, "hostile-probe")
            except (OSError, trio.BrokenResourceError, trio.TooSlowError):
                session = None
            conn = session[0] if session else None
            nonce = 0
            while conn is not None and not conn.ended:
                nonce += 1
                sent = time.monotonic()
                if not await conn.send(encode(Ping(nonce))):
                    break
                await conn.answer(600.0, lambda f, n=nonce: isinstance(f, Pong) and f.nonce == n)
                if conn.ended:
                    break
                self.rtts.append((sent, time.monotonic() - sent))
                await trio.sleep(0.05)
            self.lost.append(str(conn.ended if conn else family.outcomes))
            await trio.sleep(0.5)

    def longest(self, since: float = 0.0, until: float = math.inf) -> float:
        return max((rtt for at, rtt in self.rtts if since <= at <= until or since <= at + rtt <= until), default=0.0)

    def stalls(self, over: float = 0.5) -> tuple[int, float]:
        long = [rtt for _, rtt in self.rtts if rtt > over]
        return len(long), sum(long)


class Observer:
    """A Yjs client in the good room that only reads awareness, as y-protocols applies it."""

    def __init__(self) -> None:
        self.states: dict[int, tuple[int, Any]] = {}  # client id -> (clock, state)
        self.baseline: dict[int, str] = {}  # the good clients' ids -> their identity
        self.forged: list[str] = []
        self.invalid: list[str] = []
        self.max_clock_ids: set[int] = set()
        self.lost: list[str] = []

    async def run(self, port: int) -> None:
        while True:  # a connection the server ends is counted and replaced
            try:
                ws = await RawWebSocket.connect(port, f"/yjs/{GOOD}")
                await ws.send_binary(encode_sync(YSyncStep.STEP1, b"\x00"))
            except (OSError, Refused, trio.BrokenResourceError, trio.TooSlowError) as exc:
                self.lost.append(f"cannot connect: {exc}")
                await trio.sleep(0.5)
                continue
            while True:
                message = await ws.receive(600.0)
                if isinstance(message, Closed):
                    self.lost.append(f"close {message.code} {message.reason}")
                    break
                if not isinstance(message, bytes):
                    continue
                y = decode_y(message)
                if isinstance(y, YAwareness):
                    for entry in y.entries:
                        self.see(entry)
            await ws.abort()
            await trio.sleep(0.5)

    def see(self, entry: AwarenessEntry) -> None:
        def refuse(constant: str) -> Any:
            raise ValueError(constant)

        try:
            state = json.loads(entry.state_json, parse_constant=refuse)
        except ValueError as exc:
            if len(self.invalid) < 5:
                self.invalid.append(f"client {entry.client_id}: {exc}: {entry.state_json[:80]!r}")
            return
        known = self.states.get(entry.client_id)
        if known is not None and entry.clock <= known[0] and not (entry.clock == known[0] and state is None):
            return  # what a Yjs client ignores
        self.states[entry.client_id] = (entry.clock, state)
        if entry.clock >= MAX_CLOCK and entry.client_id in self.baseline:
            self.max_clock_ids.add(entry.client_id)
        owner = self.baseline.get(entry.client_id)
        identity = state.get("identity", {}).get("id") if isinstance(state, dict) else None
        if owner is not None and state is not None and identity != owner and len(self.forged) < 5:
            self.forged.append(f"client {entry.client_id} (of {owner}) shown as {identity}: {entry.state_json[:80]}")

    def shown_wrongly(self) -> list[int]:
        """The good clients' ids whose current state (as a Yjs client holds it) is missing or
        carries someone else's identity."""
        return [cid for cid, owner in self.baseline.items()
                if not isinstance(state := self.states.get(cid, (0, None))[1], dict) or state.get("identity", {}).get("id") != owner]

    def take_baseline(self) -> None:
        self.baseline = {cid: s.get("identity", {}).get("id") for cid, (_, s) in self.states.items() if isinstance(s, dict)}


# -- the run -----------------------------------------------------------------------------------


@dataclass
class Bomb:
    name: str
    answered_after: float | None
    outcome: str
    probe_longest: float
    peak_rss: int
    rss_after: int


class Peak:
    """The server's peak RSS across the resets the bombs make (VmHWM, folded at each reset)."""

    def __init__(self, ls: LogServer) -> None:
        self.server, self.value = ls.server, 0

    def reset(self) -> None:
        self.value = self.read()
        try:
            self.server.reset_peak_rss()
        except OSError:
            pass  # the server is gone

    def read(self) -> int:
        try:
            return max(self.value, self.server.peak_rss())
        except (AssertionError, OSError):
            return self.value  # the server is gone


async def send_bomb(port: int, name: str, probe: Probe, peak: Peak) -> Bomb:
    family = Family()
    peak.reset()
    sent_at = time.monotonic()
    if name == "join.state_vector":
        session = await native_session(port, family)
        assert session is not None
        conn = session[0]
        sent_at = time.monotonic()
        await conn.send(encode(Join(1, "hostile-bomb-join", BOMB, None, None)))
        frames = await conn.answer(300.0, lambda f: isinstance(f, (Error, ChannelClosed)) or getattr(f, "KIND", 0) == 21)
    elif name == "sync_step1":
        session = await native_session(port, family, "hostile-bomb-step1")
        assert session is not None
        conn, channel = session
        sent_at = time.monotonic()
        await conn.send(encode_raw([20, channel or 1, BOMB]))
        frames = await conn.answer(300.0, lambda f: isinstance(f, Error) or getattr(f, "KIND", 0) == 21)
    else:
        conn_or = await open_conn(port, "/yjs/hostile-bomb-yjs", family, False)
        assert conn_or is not None
        conn = conn_or
        await conn.answer(0.3)
        sent_at = time.monotonic()
        await conn.send(encode_sync(YSyncStep.STEP1, BOMB))
        frames = await conn.answer(300.0, lambda m: isinstance(m, YSync) and m.step is YSyncStep.STEP2)
    done_at = time.monotonic()
    answered = done_at - sent_at if frames or conn.ended else None
    outcome = ", ".join(sorted(family.outcomes)) or ", ".join(type(f).__name__ for f in frames[-1:]) or "no answer"
    await conn.close()
    await trio.sleep(0.3)
    try:
        rss = peak.server.rss()
    except psutil.Error:
        rss = 0
    return Bomb(name, answered, outcome, probe.longest(sent_at, done_at + 0.5), peak.read(), rss)


async def hostile_run(args: argparse.Namespace, ls: LogServer) -> dict[str, Any]:
    port, server = ls.server.port, ls.server
    families = {name: Family() for name in FAMILIES if name not in args.exclude}
    rotation = [name for name in families if name not in SERIAL]
    serial = [name for name in families if name in SERIAL]
    probe, observer, peak = Probe(), Observer(), Peak(ls)
    # The good clients edit 5 s past the hostile traffic: their awareness is judged in between.
    edits = max(1, int((args.seconds + 5) * args.edit_rate))
    good = [(1000 + i, GOOD) for i in range(args.good)]
    total_good = 2 * args.good
    config = {"workload": "fanout", "edits": edits, "editRate": args.edit_rate, "cursorRate": 2,
              "expectedEdits": total_good * edits, "drainMs": args.drain * 1000, "connectWidth": 1}
    loads = [Load(server, {**config, "protocol": "native", "url": f"ws://127.0.0.1:{port}/"}, good, 1),
             Load(server, {**config, "protocol": "yjs", "url": f"ws://127.0.0.1:{port}/yjs/"},
                  [(2000 + i, GOOD) for i in range(args.good)], 1)]
    measured: list[Measured] = []
    bombs: list[Bomb] = []
    harness: list[str] = []
    counter = iter(range(10**9))
    judged: list[int] = []
    judged_at: list[int] = []

    async with trio.open_nursery() as watchers:
        watchers.start_soon(probe.run, port)
        watchers.start_soon(observer.run, port)
        for load in loads:
            await trio.to_thread.run_sync(load.ready)
        await trio.sleep(1.0)
        observer.take_baseline()
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        peak.reset()
        deadline = trio.current_time() + args.seconds

        def alive() -> bool:
            return server.popen.poll() is None

        async def attacker(names: list[str]) -> None:
            while trio.current_time() < deadline and alive():
                n = next(counter)
                name = names[n % len(names)]
                ctx = Ctx(port, random.Random(f"{args.seed}-{n}"), families[name], observer)
                with trio.move_on_after(max(0.0, deadline - trio.current_time()) + 5):
                    try:
                        await FAMILIES[name](ctx)
                    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                        families[name].outcomes["connection error"] += 1
                    except Exception as exc:  # a bug in this script, not in the server
                        if len(harness) < 5:
                            harness.append(f"{name} #{n}: {type(exc).__name__}: {exc}")

        async def bomber() -> None:
            for i, name in enumerate(args.bombs):
                await trio.sleep_until(deadline - args.seconds + args.seconds * (i + 1) / (len(args.bombs) + 1))
                if not alive():
                    return
                try:
                    bombs.append(await send_bomb(port, name, probe, peak))
                except (OSError, AssertionError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                    harness.append(f"bomb {name}: {type(exc).__name__}: {exc}")

        async def run_load(load: Load) -> None:
            try:
                measured.append(await trio.to_thread.run_sync(load.run, args.seconds + args.drain + 300))
            except (Exception, SystemExit) as exc:  # the server died under it, most likely
                harness.append(f"good clients' load process: {type(exc).__name__}: {exc}")
                load.kill()

        async def judge() -> None:
            await trio.sleep_until(deadline + 2)
            judged.extend(observer.shown_wrongly())
            judged_at.append(len(observer.baseline))

        async with trio.open_nursery() as attackers:
            for load in loads:
                attackers.start_soon(run_load, load)
            if rotation:
                for _ in range(args.workers):
                    attackers.start_soon(attacker, rotation)
            if serial:
                attackers.start_soon(attacker, serial)
            attackers.start_soon(bomber)
            attackers.start_soon(judge)
        hostile_wall = time.monotonic() - t0
        try:
            hostile_cpu = server.cpu_seconds() - cpu0
        except psutil.Error:
            hostile_cpu = math.nan
        fresh = await fresh_client(port) if alive() else {"ok": False, "error": "the server is gone", "seconds": 0.0}
        watchers.cancel_scope.cancel()
    running = "yes" if alive() and await serving(port) else "no"
    if running == "no" and alive():
        running = "alive but not serving"
        if args.diagnose:
            server.popen.send_signal(signal.SIGUSR2)
            await trio.sleep(2)
    return {"families": families, "measured": measured, "bombs": bombs, "probe": probe, "observer": observer,
            "fresh": fresh, "running": running, "wall": hostile_wall, "cpu": hostile_cpu, "peak": peak.read(),
            "edits": edits, "clients": total_good, "harness": harness, "shown_wrongly": (judged, judged_at[0] if judged_at else 0)}


async def serving(port: int) -> bool:
    """Whether a new native connection is welcomed within 5 s."""
    try:
        conn = await open_conn(port, "/", Family(), True)
        if conn is None:
            return False
        await conn.send(HELLO)
        frames = await conn.answer(5.0, lambda f: isinstance(f, Welcome))
        await conn.close()
    except (OSError, trio.BrokenResourceError, trio.TooSlowError):
        return False
    return any(isinstance(f, Welcome) for f in frames)


async def fresh_client(port: int) -> dict[str, Any]:
    """A new plait.client session joins the good room, reads its text and gets an edit acked."""
    from plait.client import connect

    started = time.monotonic()
    try:
        with trio.fail_after(30):
            async with connect(f"ws://127.0.0.1:{port}/") as client, client.join(GOOD) as room:
                await room.synced()
                text = str(room.text)
                room.text.insert(len(room.text), "z")
                await room.flushed()
                return {"ok": True, "text": text, "seconds": time.monotonic() - started}
    except Exception as exc:  # what the check reports, whatever it is
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.monotonic() - started}


def report(args: argparse.Namespace, run: dict[str, Any], ls: LogServer) -> bool:
    """Print the tables; True when every check passed."""
    log = ls.read()
    errors = log.errors()
    families: dict[str, Family] = run["families"]
    measured: list[Measured] = run["measured"]
    probe: Probe = run["probe"]
    observer: Observer = run["observer"]
    fresh = run["fresh"]
    merged = Measured([r for m in measured for r in m.results], 0, 0, 0, 0, 0)
    outcome = analyse(merged, run["clients"], run["edits"]) if len(measured) == 2 else None
    digests = {c["sha1"] for c in merged.clients}
    fresh_text = fresh.get("text", "")
    fresh_same = fresh["ok"] and digests == {hashlib.sha1(fresh_text.encode()).hexdigest()}
    stale_chars = sum(1 for ch in fresh_text if ch.isupper())
    wrongly, of = run["shown_wrongly"]
    internal = sum(len(f.internal) for f in families.values())
    stalls, stalled = probe.stalls()
    sent = sum(f.messages for f in families.values())
    load_errors = [e for m in measured for e in m.errors]

    checks = [
        ("server still running and serving (a new connection gets welcome)", run["running"] == "yes",
         "yes" if run["running"] == "yes" else f"**NO**: exited with {ls.server.popen.returncode}"
         if ls.server.popen.poll() is not None else f"**NO**: {run['running']}"),
        ("a fresh plait.client joins, syncs and gets an edit acked", fresh["ok"],
         f"yes, in {fresh['seconds']:.2f} s" if fresh["ok"] else f"**NO**: {fresh['error']}"),
        ("good clients converged, no edit lost", bool(outcome and outcome.converged and outcome.failed == 0 and fresh_same),
         (f"{'yes' if outcome.converged else '**NO**'}: {run['clients']} clients, {outcome.failed:,} of "
          f"{outcome.expected:,} deliveries lost, the fresh client's text {'identical' if fresh_same else '**differs**'}")
         if outcome else "**NO**: a load process did not finish"),
        ("good clients' own errors (closes, error frames)", not load_errors, f"{len(load_errors)}"),
        ("watchers (probe, observer) disconnected by the server", not probe.lost and not observer.lost,
         f"{len(probe.lost) + len(observer.lost)}"),
        ("text from stale-channel frames in the document", stale_chars == 0, f"{stale_chars} characters"),
        ("forged awareness shown to a Yjs client (another identity under a good client's id)", not observer.forged,
         f"{len(observer.forged)}" + (f", {len(observer.max_clock_ids)} ids now at clock 2**53-1" if observer.max_clock_ids else "")),
        ("good clients shown wrongly (missing, or another identity) to a Yjs client after the attacks", not wrongly,
         f"{len(wrongly)} of {of}"),
        ("awareness a Yjs client cannot parse (NaN, Infinity, invalid JSON)", not observer.invalid, f"{len(observer.invalid)}"),
        ("ERROR/CRITICAL lines (and uncaught tracebacks) in the server log", not errors,
         f"{len(errors)}" + (f" ({', '.join(f'{k} {v}' for k, v in Counter(r[0] for r in errors).items())})" if errors else "")),
        ("hostile connections answered INTERNAL (3999) or closed 4009/1011", internal == 0, f"{internal}"),
    ]
    print(f"Machine: {machine()}\n")
    print(f"Command: bench/hostile.py {' '.join(sys.argv[1:])}; {args.seconds:.0f} s of hostile traffic, "
          f"{run['clients']} good clients ({args.good} native + {args.good} Yjs, {args.edit_rate} edits/s each)\n")
    print(table(["check", "result"], [[name, shown] for name, _, shown in checks]))
    print()
    print(table(["measure", "value"], [
        ["hostile connections / messages", f"{sum(f.connections for f in families.values()):,} / {sent:,}"],
        ["good clients' edits", f"{run['clients'] * run['edits']:,}"],
        ["server CPU during the run (one core = 100 %)", f"{100 * run['cpu'] / run['wall']:.0f} %"],
        ["server peak RSS", mib(run["peak"])],
        ["probe: longest wait for a pong", f"{probe.longest():.2f} s"],
        ["probe: waits over 0.5 s (count, total)", f"{stalls}, {stalled:.1f} s"],
        ["server log lines by level", ", ".join(f"{k} {v:,}" for k, v in sorted(log.levels().items()))],
    ]))
    print()
    rows = []
    for name, f in families.items():
        top = ", ".join(f"{k} x{v}" for k, v in f.outcomes.most_common(4))
        slowest = f"{f.slow[0][0]:.1f} s" if f.slow else "-"
        rows.append([name, f"{f.connections:,}", f"{f.messages:,}", top, len(f.internal), slowest])
    print(table(["family", "connections", "messages", "most frequent outcomes", "internal", "slowest answer"], rows))
    if run["bombs"]:
        print()
        print(table(["state-vector bomb (9 bytes)", "answered after", "answer", "probe's longest wait", "server peak RSS", "RSS after"],
                    [[b.name, f"{b.answered_after:.2f} s" if b.answered_after is not None else "never", b.outcome,
                      f"{b.probe_longest:.2f} s", mib(b.peak_rss), mib(b.rss_after)] for b in run["bombs"]]))
    details = []
    for record in errors[:5]:
        details.append(f"server log: {describe(record)}")
    for name, f in families.items():
        # The last input of the connection; the cause may be another's (a room crash closes every member).
        details += [f"{name}: INTERNAL or 4009 after its input {hex_input}" for hex_input in f.internal[:3]]
        if name in SERIAL:  # elsewhere a slow answer is mostly the wait behind another's stall
            details += [f"{name}: answered after {sec:.1f} s: {hex_input}" for sec, hex_input in f.slow[:3]]
    details += [f"observer: forged: {x}" for x in observer.forged]
    details += [f"observer: invalid: {x}" for x in observer.invalid]
    details += [f"good client: {e}" for e in load_errors[:5]]
    details += [f"harness: {h}" for h in run["harness"]]
    text = ls.log.read_text(errors="replace")
    if "TASKS end" in text:
        details += ["server's Trio tasks: " + line for line in text[text.rfind("TASKS\n") + 6 : text.rfind("TASKS end")].splitlines()[:40]]
    details += [f"probe connection ended: {x}" for x in probe.lost[:3]]
    details += [f"observer connection ended: {x}" for x in observer.lost[:3]]
    if details:
        print("\nDetails:\n")
        for line in details:
            print(f"- {line}")
    return all(ok for _, ok, _ in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="hostile traffic for this long (default 60)")
    parser.add_argument("--workers", type=int, default=24, help="hostile connections at a time (default 24)")
    parser.add_argument("--good", type=int, default=2, help="good clients per protocol (default 2)")
    parser.add_argument("--edit-rate", type=float, default=10.0, help="edits/s per good client (default 10)")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds the good clients wait for late edits")
    parser.add_argument("--exclude", nargs="*", default=[], choices=list(FAMILIES), metavar="FAMILY",
                        help=f"families not to run: {', '.join(FAMILIES)}")
    parser.add_argument("--only", nargs="*", default=None, choices=list(FAMILIES), metavar="FAMILY",
                        help="run only these families (the others are excluded)")
    parser.add_argument("--bombs", nargs="*", default=["join.state_vector", "sync_step1", "yjs sync step 1"],
                        choices=["join.state_vector", "sync_step1", "yjs sync step 1"])
    parser.add_argument("--seed", default="1")
    parser.add_argument("--keep-log", type=Path, default=None, help="copy the server's log here")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless every check passed")
    parser.add_argument("--diagnose", action="store_true",
                        help="run the server under bench/_diagserve.py: if it is alive but not serving at the end, "
                             "list its Trio tasks")
    args = parser.parse_args()
    if args.only is not None:
        args.exclude = [name for name in FAMILIES if name not in args.only]
    with logged_server(keep_log=args.keep_log, diagnose=args.diagnose) as ls:
        run = trio.run(hostile_run, args, ls)
        passed = report(args, run, ls)
    sys.exit(0 if passed or not args.strict else 1)


if __name__ == "__main__":
    main()
