"""One HTTP/1.1 connection's requests and answers, through h11 (the HTTP transports' routes
use it; a WebSocket upgrade leaves it at its first request).

`Exchange` is what a route (engine/http/_router.py) sees of a request's connection; `H11Exchange`
implements it over a socket of the engine's own port, `plait.engine.asgi`'s exchange over an
ASGI server's http scope.

Every refusal is a `Refusal`: a status and a reason, given to the client in its body (JSON
on the `/v1/` routes, plain text elsewhere).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

import h11
import trio

from plait.protocol import ErrorCode

logger = logging.getLogger("plait.http")

MAX_HEADER_BYTES = 16 * 1024
"""A request's line and headers together; more is refused with 431."""
RECEIVE_BYTES = 64 * 1024

Headers = tuple[tuple[str, str], ...]


@dataclass(slots=True)  # not frozen: raising sets __traceback__ (contextlib's __aexit__ does)
class Refusal(Exception):
    """An HTTP answer that refuses the request (`code`: a spec §8/§9 code, when one says why)."""

    status: int
    reason: str
    headers: Headers = ()
    code: int | None = None
    as_json: bool = False


def too_large(limit: int) -> Refusal:
    return Refusal(413, f"the body is over {limit} bytes, the most this request may carry", code=ErrorCode.FRAME_TOO_LARGE, as_json=True)


class Exchange(Protocol):
    """What a route sees of one request: its body, and the answer, whole or streamed.

    Raises (every method): trio.BrokenResourceError, trio.ClosedResourceError when the
    connection is gone.
    """

    cors: Headers
    """Headers every answer to the current request carries (CORS); a route sets them."""
    peer: str | None
    """The client's IP address, when known (per-address limits count by it)."""
    deadline: float
    """When the current request's body must have come (trio time; the handshake timeout)."""

    @property
    def socket(self) -> trio.socket.SocketType | None:
        """The connection's socket when a streamed answer may be written to it without
        waiting (`write_now`, after `start_stream`); None when every write must be awaited."""
        ...

    async def body(self, limit: int) -> bytes:
        """The request's body, at most `limit` bytes. Raises Refusal: 413 past `limit`, 400
        a body that cannot be parsed, 408 one that has not all come by `deadline`."""
        ...

    def read_frames(self, frames: int, values: int) -> None:
        """Count a body just decoded, its frames and their values (spec §3.4), toward how fast
        this connection's requests are read (RequestPace; under ASGI the server in front paces
        them)."""
        ...

    async def respond(self, status: int, body: bytes, content_type: str, headers: Headers = ()) -> None:
        """A whole answer (to a HEAD request, its head alone, with the length of `body`)."""
        ...

    async def respond_json(self, status: int, obj: object, headers: Headers = ()) -> None: ...

    async def start_stream(self, content_type: str, headers: Headers = ()) -> None:
        """The head of an answer whose body follows in parts (`send`), until `end_stream`."""
        ...

    def chunk(self, data: bytes) -> bytes:
        """`data` framed as the streamed answer's next part, for `send` or the socket."""
        ...

    async def send(self, data: bytes) -> None:
        """Write parts of the streamed answer (as `chunk` framed them), waiting for the peer."""
        ...

    async def end_stream(self) -> None: ...

    async def wait_hangup(self) -> None:
        """Return when the client goes away (what it sends meanwhile is dropped): a streamed
        answer's reader."""
        ...


class H11Exchange:
    """The h11 side of one connection: read a request and its body, answer it (`Exchange`).

    Raises (every method): trio.BrokenResourceError, trio.ClosedResourceError when the
    connection is gone.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.received = bytearray()
        """The bytes of the first request as they came (a WebSocket handshake reads them)."""
        self.cors: Headers = ()
        """Headers every answer to the current request carries (CORS)."""
        self.request: h11.Request | None = None
        self._chunked = False
        self.deadline = float("inf")
        """When the current request's body must have come (the handshake timeout)."""
        self.peer = peer_address(stream)
        self.read_bytes = 0
        """Bytes read from the connection so far."""
        self.frames_read = 0
        """Frames of the bodies decoded so far (`read_frames`)."""
        self.values_read = 0
        """Their values."""

    def read_frames(self, frames: int, values: int) -> None:
        self.frames_read += frames
        self.values_read += values

    async def next_request(self) -> h11.Request | None:
        """The next request's line and headers; None when the client closed the connection
        between requests.

        Raises:
            Refusal: 400 for what h11 cannot parse, 431 for headers too large.
        """
        first = self.conn.their_state is h11.IDLE and not self.received
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise Refusal(exc.error_status_hint, f"bad request: {exc}") from None
            if event is h11.NEED_DATA:
                data = bytes(await self.stream.receive_some(RECEIVE_BYTES))
                if not data:
                    return None
                self.read_bytes += len(data)
                if first:
                    self.received += data
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed):
                return None
            if not isinstance(event, h11.Request):  # pragma: no cover - h11 gives a request first
                raise Refusal(400, "bad request")
            self.request = event
            if _head_bytes(event) > MAX_HEADER_BYTES:
                # h11 bounds only what is still incomplete; a request read in one go is checked here.
                raise Refusal(431, f"bad request: the request line and headers are over {MAX_HEADER_BYTES} bytes")
            return event

    async def body(self, limit: int) -> bytes:
        """The request's body, at most `limit` bytes.

        Raises:
            Refusal: 413 past `limit`, 400 for a body h11 cannot parse (bad chunks), 408 for
                one that has not all come by `deadline` (one byte a second, say).
        """
        length = self.content_length
        request = self.request
        if not length and request is not None and header(request, b"transfer-encoding") is None:
            end = self.conn.next_event()  # no body (a GET): its end is already here, no timer needed
            assert isinstance(end, h11.EndOfMessage), end
            return b""
        if length is not None and length > limit:
            raise too_large(limit)
        with trio.move_on_at(self.deadline):
            return await self._body(limit)
        raise Refusal(408, "the request's body did not come in time", as_json=True)

    @property
    def content_length(self) -> int | None:
        """The current request's Content-Length (h11 checked it is a number), if it gave one."""
        request = self.request
        value = header(request, b"content-length") if request is not None else None
        return int(value) if value is not None else None

    async def _body(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise Refusal(exc.error_status_hint, f"bad request body: {exc}", as_json=True) from None
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise trio.BrokenResourceError("the client closed the connection inside a request")
                self.read_bytes += len(data)
                self.conn.receive_data(bytes(data))
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise too_large(limit)
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:  # pragma: no cover - h11 gives data, then the end
                raise Refusal(400, "bad request body", as_json=True)

    async def respond(self, status: int, body: bytes, content_type: str, headers: Headers = ()) -> None:
        """A whole answer (`Cache-Control: no-store` unless `headers` give a Cache-Control)."""
        head = [("Content-Type", content_type), ("Content-Length", str(len(body))), *no_store(headers), *self.cors, *headers]
        data = self.conn.send(h11.Response(status_code=status, headers=head, reason=HTTPStatus(status).phrase.encode()))
        if body and (self.request is None or self.request.method != b"HEAD"):  # HEAD: the head GET would have
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def respond_json(self, status: int, obj: object, headers: Headers = ()) -> None:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        await self.respond(status, body, "application/json", headers)

    async def refuse(self, refusal: Refusal, request: h11.Request | None) -> None:
        """Answer with the refusal and its reason (no body for HEAD), and close: written out
        here rather than through h11, which will not answer a request it could not parse."""
        # A client looping on a refusal must not flood the log: only the server's own failures show.
        logger.log(logging.WARNING if refusal.status >= 500 else logging.DEBUG, "refused a request: %d %s", refusal.status, refusal.reason)
        if refusal.as_json:
            obj: dict[str, object] = {"status": refusal.status, "error": refusal.reason}
            if refusal.code is not None:
                obj["code"] = refusal.code
                known = ErrorCode._value2member_map_.get(refusal.code)
                if isinstance(known, ErrorCode):
                    obj["name"] = known.name
            body = json.dumps(obj, ensure_ascii=False).encode()
            content_type = "application/json"
        else:
            body = (refusal.reason + "\n").encode()
            content_type = "text/plain; charset=utf-8"
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *self.cors,
            *refusal.headers,
        ]
        head = f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
        data = head.encode("latin-1") + (b"" if request is not None and request.method == b"HEAD" else body)
        await self.stream.send_all(data)

    # -- a streamed answer (an event stream) ----------------------------------------------------

    async def start_stream(self, content_type: str, headers: Headers = ()) -> None:
        head = [("Content-Type", content_type), ("Cache-Control", "no-store"), *self.cors, *headers]
        data = self.conn.send(h11.Response(status_code=200, headers=head))
        # h11 chose the framing of a body of unknown length: chunks for HTTP/1.1, else the end
        # of the connection.
        self._chunked = b"\r\ntransfer-encoding: chunked\r\n" in data.lower()
        await self.stream.send_all(data)

    def chunk(self, data: bytes) -> bytes:
        """`data` framed for the streamed answer as h11 chose (RFC 9112 §7.1), here rather
        than through h11, which costs a fan-out to many streams a tenth of its time per frame;
        h11 still writes the head and the last chunk."""
        return b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data

    async def end_stream(self) -> None:
        await self.stream.send_all(self.conn.send(h11.EndOfMessage()))

    @property
    def socket(self) -> trio.socket.SocketType | None:
        stream = self.stream
        return stream.socket if isinstance(stream, trio.SocketStream) else None

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def wait_hangup(self) -> None:
        try:
            while await self.stream.receive_some(RECEIVE_BYTES):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def reusable(self) -> bool:
        """Whether another request may follow on this connection (then it is made ready)."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


def no_store(headers: Headers) -> Headers:
    """`Cache-Control: no-store`, what an answer carries unless its route chose (`headers`): a
    protocol's answers are never to be cached; the demo's files are, until they change."""
    if any(name.lower() == "cache-control" for name, _ in headers):
        return ()
    return (("Cache-Control", "no-store"),)


def _head_bytes(request: h11.Request) -> int:
    """About what the request line and headers took on the wire."""
    return len(request.method) + len(request.target) + 12 + sum(len(n) + len(v) + 4 for n, v in request.headers)


def header(request: h11.Request, name: bytes) -> str | None:
    """A request header's value (the first), decoded; None if absent."""
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def peer_address(stream: trio.abc.Stream) -> str | None:
    """The IP address of the socket under `stream` (through TLS); None for a stream with no
    socket (in-memory, in tests) or one already gone."""
    while not isinstance(stream, trio.SocketStream):
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return None
        stream = inner
    try:
        name = stream.socket.getpeername()
    except OSError:
        return None
    return str(name[0]) if isinstance(name, tuple) else None
