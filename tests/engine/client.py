"""A raw protocol client for engine tests: frames in, frames out, over any transport.

It is deliberately thin (no reconnects, no document logic) so tests see exactly what the server
sends. Every wait is bounded by the test's deadline on Trio's clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import pycrdt
import trio

from plait.engine import Engine, Transport, TransportClosed
from plait.protocol import (
    Ack,
    AwarenessEntry,
    Connection,
    Frame,
    Hello,
    Join,
    Joined,
    PresenceSnapshot,
    Role,
    SyncStep2,
    Update,
    Welcome,
    YAwareness,
    YMessage,
    YSync,
    YSyncStep,
    decode,
    decode_y,
    encode,
    encode_awareness,
    encode_sync,
)

F = TypeVar("F", bound=Frame)


class RawClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.conn = Connection(Role.CLIENT)
        self.inbox: list[Frame] = []
        self.welcome: Welcome | None = None
        self.closed: TransportClosed | None = None
        self._ref = 0

    def next_ref(self) -> int:
        self._ref += 1
        return self._ref

    async def send(self, *frames: Frame) -> None:
        for frame in frames:
            self.conn.send(frame)
        await self.transport.send_message(encode(list(frames)))

    async def send_raw(self, data: bytes | str) -> None:
        await self.transport.send_message(data)  # type: ignore[arg-type]

    async def _fill(self) -> None:
        data = await self.transport.receive_message()
        assert isinstance(data, bytes)
        for frame in decode(data):
            self.inbox.append(frame)

    async def receive(self) -> Frame:
        while not self.inbox:
            await self._fill()
        frame = self.inbox.pop(0)
        self.conn.receive(frame)
        return frame

    async def expect(self, cls: type[F], **fields: Any) -> F:
        """The next frame, which must be a `cls` with these field values."""
        frame = await self.receive()
        assert isinstance(frame, cls), f"expected {cls.__name__}, got {frame!r}"
        for name, value in fields.items():
            assert getattr(frame, name) == value, f"{name}: {getattr(frame, name)!r} != {value!r} in {frame!r}"
        return frame

    async def wait_for(self, cls: type[F], limit: int = 1000) -> F:
        """Skip frames until one of type `cls` arrives (bounded)."""
        for _ in range(limit):
            frame = await self.receive()
            if isinstance(frame, cls):
                return frame
        raise AssertionError(f"no {cls.__name__} in {limit} frames")

    async def wait_closed(self, limit: int = 10_000) -> int:
        """Read until the server closes the connection; return the close code."""
        for _ in range(limit):
            try:
                await self._fill()
            except TransportClosed as exc:
                self.closed = exc
                return exc.code
        raise AssertionError("connection never closed")

    async def hello(self, token: str | None = None) -> Welcome:
        await self.send(Hello(versions=(1,), token=token, client={"name": "test"}))
        self.welcome = await self.expect(Welcome)
        return self.welcome

    async def join(
        self, room: str, state_vector: bytes | None = b"\x00", since: int | None = None, epoch: str | None = None
    ) -> Joined:
        ref = self.next_ref()
        await self.send(Join(ref, room, state_vector, since, epoch))
        return await self.expect(Joined, ref=ref)


class DocClient(RawClient):
    """A RawClient that keeps a pycrdt document in step with one room."""

    def __init__(self, transport: Transport) -> None:
        super().__init__(transport)
        self.doc = pycrdt.Doc()
        self.text = self.doc.get("text", type=pycrdt.Text)

    def apply(self, update: bytes) -> None:
        self.doc.apply_update(update)


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON (JavaScript's JSON.parse refuses it)")


def parse_js_json(text: str) -> Any:
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are syntax errors."""
    return json.loads(text, parse_constant=_not_json)


class YjsClient:
    """A y-websocket client seen the way Yjs sees the wire: a document, and awareness states
    kept by y-protocols' rule (applyAwarenessUpdate): an entry replaces a client's state only
    with a higher clock, and a null state at the same clock removes it. Every awareness state
    must parse as JavaScript's JSON.parse would, or `next` fails."""

    def __init__(self, transport: Transport, client_id: int = 777) -> None:
        self.transport = transport
        self.client_id = client_id
        self.doc = pycrdt.Doc(client_id=client_id)
        self.states: dict[int, Any] = {}
        self.clocks: dict[int, int] = {}
        self.entries: list[AwarenessEntry] = []
        """Every awareness entry received, in order."""
        self.closed: TransportClosed | None = None

    @property
    def text(self) -> str:
        return str(self.doc.get("text", type=pycrdt.Text))

    async def next(self) -> YMessage:
        data = await self.transport.receive_message()
        assert isinstance(data, bytes), f"y-websocket messages are binary, got {data!r}"
        message = decode_y(data)
        if isinstance(message, YAwareness):
            for entry in message.entries:
                self.entries.append(entry)
                state = parse_js_json(entry.state_json)
                current = self.clocks.get(entry.client_id, 0)
                if current < entry.clock or (current == entry.clock and state is None and entry.client_id in self.states):
                    if state is None:
                        self.states.pop(entry.client_id, None)
                    else:
                        self.states[entry.client_id] = state
                    self.clocks[entry.client_id] = entry.clock
        elif isinstance(message, YSync) and message.step != YSyncStep.STEP1:
            self.doc.apply_update(message.payload)
        return message

    async def until(self, check: Callable[[], bool], limit: int = 200) -> None:
        """Read messages until `check()` holds (bounded)."""
        for _ in range(limit):
            if check():
                return
            await self.next()
        raise AssertionError("condition never held")

    async def read_for(self, seconds: float, limit: int = 10_000) -> None:
        """Read whatever arrives for `seconds` of Trio's clock (bounded)."""
        with trio.move_on_after(seconds):
            for _ in range(limit):
                await self.next()

    async def say(self, state: Any, clock: int, client_id: int | None = None) -> None:
        """Send an awareness entry (`state` None: a null state), for our own id by default."""
        text = "null" if state is None else json.dumps(state)
        await self.send_awareness_json(text, clock, client_id)

    async def send_awareness_json(self, text: str, clock: int, client_id: int | None = None) -> None:
        cid = self.client_id if client_id is None else client_id
        await self.transport.send_message(encode_awareness([AwarenessEntry(cid, clock, text)]))

    async def edit(self, text: str) -> None:
        """Append `text` to the document and send the update, as y-websocket does."""
        before = self.doc.get_state()
        ytext = self.doc.get("text", type=pycrdt.Text)
        ytext.insert(len(ytext), text)
        await self.transport.send_message(encode_sync(YSyncStep.UPDATE, self.doc.get_update(before)))

    async def wait_closed(self, limit: int = 10_000) -> TransportClosed:
        """Read until the server closes the connection; the close (code and reason)."""
        for _ in range(limit):
            try:
                await self.next()
            except TransportClosed as exc:
                self.closed = exc
                return exc
        raise AssertionError("connection never closed")


async def yjs_client(engine: Engine, path: str = "/yjs/r", client_id: int = 777, buffer: int = 16) -> YjsClient:
    """A y-websocket client connected to `path` that has read the server's sync step 1."""
    client = YjsClient(engine.connect_memory(path, buffer), client_id)
    first = await client.next()
    assert isinstance(first, YSync) and first.step == YSyncStep.STEP1, first
    return client


async def until_text(client: DocClient, text: str, limit: int = 200) -> None:
    """Read (at most `limit` frames), applying document frames, until the client's "text" is
    `text`."""
    for _ in range(limit):
        if str(client.text) == text:
            return
        frame = await client.receive()
        if isinstance(frame, (Update, SyncStep2)):
            client.apply(frame.update)
    raise AssertionError(f"{str(client.text)!r} never became {text!r}")


def edit(doc: pycrdt.Doc, text: str) -> bytes:
    """Append `text` to the doc's "text" and return the update it made."""
    before = doc.get_state()
    ytext = doc.get("text", type=pycrdt.Text)
    ytext.insert(len(ytext), text)
    return doc.get_update(before)


async def assert_engine_serves(engine: Engine, room: str = "healthy") -> None:
    """The engine still serves: a new client connects, joins, edits and gets an ack, and a
    second member of the room receives the edit."""
    a, b = DocClient(engine.connect_memory()), DocClient(engine.connect_memory())
    for c in (a, b):
        await c.hello()
        await c.join(room)
        await c.wait_for(PresenceSnapshot)
    await a.send(Update(1, 1, edit(a.doc, "alive")))
    await a.wait_for(Ack)
    b.apply((await b.wait_for(Update)).update)
    assert str(b.text).endswith("alive")
    await a.transport.aclose()
    await b.transport.aclose()
