"""Clients of the HTTP transports (spec §14) for the tests, as a page would write them with
`EventSource` and `fetch`: httpx over real sockets, the frames in their JSON form."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import pycrdt
import trio

from plait.engine import Engine, EngineConfig
from plait.engine.testing import TokenHooks
from plait.protocol import Frame, SyncStep1, SyncStep2, Update, decode_json, encode_json


@asynccontextmanager
async def serving(config: EngineConfig) -> AsyncIterator[int]:
    """An engine with the trace hooks (tokens `bad`, `ro:NAME`, ...) serving on a free port of
    127.0.0.1; the port."""
    async with Engine(config=config, hooks=TokenHooks()) as engine, trio.open_nursery() as nursery:
        yield await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def http_client(port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client


@dataclass
class SseEvent:
    type: str
    data: str
    id: str | None


class SseParser:
    """An event stream parsed as a browser does (the HTML standard's rules, minus what Plait
    never sends): `event:`, `data:`, `id:` fields, comments, a blank line dispatches."""

    def __init__(self) -> None:
        self._buffer = b""
        self._kind, self._data, self.last_id = "message", list[str](), None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        out = []
        while b"\n" in self._buffer:
            raw, _, self._buffer = self._buffer.partition(b"\n")
            line = raw.decode().rstrip("\r")
            if line == "":
                if self._data:
                    out.append(SseEvent(self._kind, "\n".join(self._data), self.last_id))
                self._kind, self._data = "message", []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    self._kind = value
                elif name == "data":
                    self._data.append(value)
                elif name == "id":
                    self.last_id = value
        return out


@asynccontextmanager
async def event_stream(
    port: int, target: str, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[SseEvent]]]:
    """GET an event stream over a socket of its own (h11 as the client): (status, headers,
    the events as they come). The stream ends when the server ends it or the block exits."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        head = [("Host", f"127.0.0.1:{port}"), ("Accept", "text/event-stream"), *(headers or {}).items()]
        await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=head)) + conn.send(h11.EndOfMessage()))
        parser = SseParser()

        async def next_event() -> h11.Response | h11.Data | h11.EndOfMessage | None:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    continue
                return event  # type: ignore[return-value]

        response = await next_event()
        assert isinstance(response, h11.Response), response
        response_headers = {k.decode().lower(): v.decode() for k, v in response.headers}

        pending: list[SseEvent] = []

        class Events:  # not an async generator: one left unfinished must not warn when collected
            def __aiter__(self) -> Events:
                return self

            async def __anext__(self) -> SseEvent:
                while not pending:
                    event = await next_event()
                    if not isinstance(event, h11.Data):
                        raise StopAsyncIteration
                    pending.extend(parser.feed(bytes(event.data)))
                return pending.pop(0)

        if response.status_code != 200:
            body = await next_event()
            response_headers["body"] = bytes(body.data).decode() if isinstance(body, h11.Data) else ""
        yield response.status_code, response_headers, Events()


@dataclass
class HttpPeer:
    """One HTTP session: opened by POST, fed by an event stream or long-polls, frames POSTed."""

    http: httpx.AsyncClient
    session: str = ""
    key: str = ""
    frames: list[Frame] = field(default_factory=list)
    meta: list[SseEvent] = field(default_factory=list)
    last_id: str | None = None
    position: int = 0
    doc: pycrdt.Doc = field(default_factory=pycrdt.Doc)
    changed: trio.Event = field(default_factory=trio.Event)
    ref: int = 0

    async def open(self, token: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.http.post("/v1/sessions", headers=headers)
        assert response.status_code == 201, response.text
        body = response.json()
        self.session, self.key = body["session"], body["key"]
        return body

    def url(self, route: str) -> str:
        return f"/v1/sessions/{self.session}/{route}?key={self.key}"

    def next_ref(self) -> int:
        self.ref += 1
        return self.ref

    async def send(self, *frames: Frame) -> list[dict[str, Any]]:
        """POST frames; the answers the response holds, as JSON objects."""
        response = await self.http.post(self.url("frames"), content=encode_json(list(frames)), headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        return response.json()

    def received(self, frame: Frame) -> None:
        self.frames.append(frame)
        if isinstance(frame, (SyncStep2, Update)):
            self.doc.apply_update(frame.update)
        self._changed()

    async def stream(self, port: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the session's event stream (resuming from `last_id` if set) until it ends."""
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        async with event_stream(port, self.url("events"), headers) as (status, response_headers, events):
            assert status == 200, response_headers
            assert response_headers["content-type"].startswith("text/event-stream")
            task_status.started()
            async for event in events:
                if event.id is None:
                    self.meta.append(event)
                    self._changed()
                    if event.type == "close":
                        return
                    continue
                self.last_id = event.id
                (frame,) = decode_json(event.data)
                self.received(frame)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def poll_forever(self) -> None:
        """Long-poll until the session ends."""
        while True:
            response = await self.http.get(self.url("poll") + f"&after={self.position}&timeout=2")
            assert response.status_code == 200, response.text
            body = response.json()
            for obj in body["frames"]:
                (frame,) = decode_json(json.dumps(obj))
                self.received(frame)
            self.position = body["position"]
            if body["closed"] is not None:
                return

    async def wait_for(self, check: Any, timeout: float = 10) -> None:
        """Until `check()` holds (re-checked at every frame received)."""
        with trio.fail_after(timeout):
            while not check():
                await self.changed.wait()

    def of_kind(self, cls: type[Frame]) -> list[Any]:
        return [f for f in self.frames if isinstance(f, cls)]

    def local_update(self, channel: int, edit: Any) -> Update:
        """Make an edit to the local document; the update frame that carries it."""
        before = self.doc.get_state()
        edit(self.doc)
        return Update(channel, self.next_ref(), self.doc.get_update(before))

    def sync_step1(self, channel: int) -> SyncStep1:
        return SyncStep1(channel, self.doc.get_state())
