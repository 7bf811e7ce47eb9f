"""One TCP connection on the engine's port: its HTTP requests, then what serves them.

Requests are parsed by h11 (engine/http/_exchange.py). A WebSocket upgrade, on any path, is
handed to `websockets`' sans-I/O protocol for its handshake (the path then picks the protocol:
engine.serve_transport), and the WebSocket runs in engine/transports/_websocket.py. Plain
requests on a route (engine/http/_router.py: the HTTP transports under `/v1/`, spec §14; health;
the server API) are answered, several per connection (keep-alive). Any other request gets an
HTTP status with a reason in its body, and the connection closes:

- `/` and `/yjs/ROOM` without an upgrade: 426 Upgrade Required (GET, HEAD) or 405;
- any other path: 404;
- a request h11 cannot parse: 400 (431 for headers over 16 KiB);
- while the engine shuts down: 503;
- no complete request (head and body) within the handshake timeout: 408;
- an upgrade from a web page of an origin not allowed (engine/http/_cors.py): 403;
- an upgrade from an address that holds max_connections_per_ip connections already: 429.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11
import trio
from websockets.frames import Frame
from websockets.http11 import Request
from websockets.server import ServerProtocol

from plait.protocol import YJS_PATH, ErrorCode

from .._config import EngineConfig
from .._limits import UNCOUNTED, Slot
from .._metrics import NO_METRICS, Metrics
from ..transports._websocket import CONTROL_FRAMES_PER_SECOND, WebSocketStream
from ._admission import Admission
from ._exchange import H11Exchange, Refusal
from ._router import Route, Router
from ._sessions import PREFIX

logger = logging.getLogger("plait.http")

WEBSOCKET_PATHS = ("/", YJS_PATH)
"""The endpoints (spec §2): `/` for the native protocol, `/yjs/ROOM` for y-websocket. A
WebSocket upgrade is served on any path (every other path is native, behind a proxy that adds a
prefix, say); a plain request only on these."""

Handler = Callable[[WebSocketStream], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RequestPace:
    """How fast one HTTP connection's requests are read (spec §14.5), as a WebSocket's frames
    are (§5.8): `requests_per_second` (a body's frames past its first count as requests too),
    and what they bring at `bytes_per_second` (a body's values, spec §3.4, each as
    `bytes_per_value` bytes), after a burst of `burst` seconds' worth. Past it the next
    request is read later; nothing is refused. One keep-alive connection asking as fast as it
    could held the core at 80-90 %, and opened sessions of 64 rooms each faster than they
    expired (22,661 rooms in 30 s). The defaults are EngineConfig's."""

    requests_per_second: float = 200
    bytes_per_second: float = 16 * 1024 * 1024
    bytes_per_value: float = 256
    burst: float = 1.0

    @classmethod
    def of(cls, config: EngineConfig) -> RequestPace:
        return cls(
            config.frames_per_second,
            config.read_bytes_per_second,
            config.read_bytes_per_value,
            max(1.0, config.max_message_bytes / config.read_bytes_per_second),
        )

    def cost(self, frames: int, read_bytes: int, values: int) -> float:
        """Seconds one request costs that brought `read_bytes`, and a body of `frames` frames
        holding `values` values: a frame beyond the first counts as one more request, as on
        a WebSocket every frame counts toward frames_per_second."""
        requests = max(1, frames)
        return requests / self.requests_per_second + (read_bytes + values * self.bytes_per_value) / self.bytes_per_second


async def serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    accepting: Callable[[], bool],
    handshake_timeout: float,
    max_message_bytes: Callable[[str], int],
    control_frames_per_second: float = CONTROL_FRAMES_PER_SECOND,
    router: Router | None = None,
    admission: Admission | None = None,
    metrics: Metrics = NO_METRICS,
    pace: RequestPace = RequestPace(),
) -> None:
    """Run one TCP connection: its requests, then `handler` with the WebSocket if one was
    opened (and `admission` admitted it). The socket is closed when this returns, whatever
    happened. Each request (its head and body) must arrive within `handshake_timeout` seconds,
    and they are read at `pace`. Every refusal is counted (`http_refusals`, by status). The
    WebSocket reads at most `control_frames_per_second` pings and pongs a second
    (WebSocketStream)."""
    try:
        # In a coroutine of its own: nothing of the requests' handling (the h11 state, a cancel
        # scope) stays referenced by this frame for the life of a WebSocket (bench/idle.py).
        upgraded = await _serve_requests(
            stream, accepting, handshake_timeout, (max_message_bytes, control_frames_per_second), router, admission, metrics, pace
        )
        if upgraded is not None:
            websocket, slot = upgraded
            del upgraded  # held for the connection's life otherwise (bench/idle.py)
            try:
                await handler(websocket)
            finally:
                slot.release()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_requests(
    stream: trio.abc.Stream,
    accepting: Callable[[], bool],
    handshake_timeout: float,
    limits: tuple[Callable[[str], int], float],
    router: Router | None,
    admission: Admission | None,
    metrics: Metrics,
    pace: RequestPace,
) -> tuple[WebSocketStream, Slot] | None:
    """Answer requests until one opens a WebSocket (returned, with the place it holds among
    its address's connections), one is refused, or the client closes the connection (None)."""
    ex = H11Exchange(stream)
    first = True
    paid_until = -math.inf  # when what this connection's requests brought is paid for at `pace`
    read_before = (0, 0, 0)  # the frames, bytes and values read when it was last paid for
    while True:
        request: h11.Request | None = None
        try:
            deadline = trio.current_time() + handshake_timeout
            with trio.move_on_at(deadline):
                request = await ex.next_request()
                if request is None:
                    return None
                path = request.target.partition(b"?")[0].decode("ascii", "replace")
                route = router.find(path) if router is not None and not _is_upgrade(request) else None
                if route is None:
                    refusal = _route(request, accepting())
                    if refusal is not None:
                        raise refusal
                    if not first:
                        raise Refusal(400, "open a WebSocket on a connection of its own, not after other requests")
                    slot = admission.admit(request, ex.peer) if admission is not None else UNCOUNTED
                    websocket: WebSocketStream | None = None
                    try:
                        websocket = await _upgrade(stream, bytes(ex.received), *limits)
                    finally:
                        if websocket is None:  # refused, failed or cancelled: the place is free again
                            slot.release()
                    return (websocket, slot) if websocket is not None else None
            if request is None:  # the deadline passed
                if first or ex.conn.their_state is not h11.IDLE:
                    raise Refusal(408, f"no complete request within {handshake_timeout:g} s")
                return None  # an idle keep-alive connection
            assert route is not None  # a plain request on a route
            ex.deadline = deadline
            await _contained(route, ex, request)
        except Refusal as refusal:
            metrics.add("http_refusals", 1, str(refusal.status))
            with trio.move_on_after(1):
                await ex.refuse(refusal, request)
            return None
        first = False
        if not ex.reusable():
            return None
        now = trio.current_time()
        read = (ex.frames_read - read_before[0], ex.read_bytes - read_before[1], ex.values_read - read_before[2])
        paid_until = max(paid_until, now - pace.burst) + pace.cost(*read)
        read_before = (ex.frames_read, ex.read_bytes, ex.values_read)
        if paid_until > now:
            await trio.sleep(paid_until - now)


async def _contained(handle: Route, ex: H11Exchange, request: h11.Request) -> None:
    """Run a route: what goes wrong in it is this request's failure (500), never the engine's."""
    try:
        await handle(ex, request)
    except (Refusal, trio.BrokenResourceError, trio.ClosedResourceError):
        raise
    except Exception as exc:
        if _client_gone(exc):  # from a route's nursery (an event stream's writer): not a failure
            raise trio.ClosedResourceError("the client went away") from None
        # The path alone: a query may hold a session's key (spec §14.1).
        path = request.target.partition(b"?")[0][:200].decode("ascii", "replace")
        logger.error("%s %s failed", request.method.decode(), path, exc_info=exc)
        if ex.conn.our_state is not h11.SEND_RESPONSE:
            raise trio.ClosedResourceError("the answer had begun") from None
        raise Refusal(500, "internal error", code=ErrorCode.INTERNAL, as_json=True) from None


def _route(request: h11.Request, accepting: bool) -> Refusal | None:
    """None for a WebSocket upgrade to serve; else the refusal (a plain request outside
    `/v1/`)."""
    path = request.target.decode("ascii", "replace").partition("?")[0].partition("#")[0]
    if _is_upgrade(request):
        if not accepting:
            return Refusal(503, "the server is shutting down; connect to another, or again shortly", (("Retry-After", "5"),))
        return upgrade_refusal(path)  # None: native on any path but /yjs/... (engine.serve_transport)
    return plain_refusal(path, request.method)


def _client_gone(exc: BaseException) -> bool:
    """Whether `exc` only says the client went away (a group of such, from a nursery)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError))


def plain_refusal(path: str, method: bytes) -> Refusal:
    """The answer to a plain request (no upgrade) for `path` that no route serves: 426 at a
    WebSocket endpoint (GET, HEAD), 405 there for another method, 404 elsewhere (spec §2)."""
    websocket_path = path == WEBSOCKET_PATHS[0] or path.startswith(WEBSOCKET_PATHS[1])
    if not websocket_path:
        return Refusal(
            404,
            f"nothing is served at {path[:200]} over plain HTTP; Plait's WebSocket endpoints are / and /yjs/ROOM, "
            f"its HTTP transports are under {PREFIX}",
        )
    if method not in (b"GET", b"HEAD"):
        return Refusal(405, f"{method.decode('ascii', 'replace')[:20]} is not served here: open a WebSocket with GET", (("Allow", "GET"),))
    what = "Plait's y-websocket endpoint (spec §13)" if path != "/" else "Plait's WebSocket endpoint (spec/protocol.md)"
    return Refusal(426, f"this is {what}: connect with a WebSocket client", (("Upgrade", "websocket"),))


def upgrade_refusal(path: str) -> Refusal | None:
    """A WebSocket upgrade to `path` refused (spec §2): under `/v1/` are the HTTP transports,
    whose sessions speak Server-Sent Events, not a WebSocket's frames."""
    if path.startswith(PREFIX):
        return Refusal(404, f"{PREFIX} holds Plait's HTTP transports (spec §14); open a WebSocket at / or /yjs/ROOM (spec §2)")
    return None


def _is_upgrade(request: h11.Request) -> bool:
    upgrade = connection = False
    for name, value in request.headers:
        tokens = {t.strip() for t in value.lower().split(b",")}
        if name == b"upgrade" and b"websocket" in tokens:
            upgrade = True
        elif name == b"connection" and b"upgrade" in tokens:
            connection = True
    return upgrade and connection


async def _upgrade(
    stream: trio.abc.Stream, request_bytes: bytes, max_message_bytes: Callable[[str], int], control_frames_per_second: float
) -> WebSocketStream | None:
    """The WebSocket opening handshake, by `websockets` from the request's own bytes (and any
    frames the client sent right behind it)."""
    ws = ServerProtocol(max_size=max_message_bytes("/"))
    ws.receive_data(request_bytes)
    events = ws.events_received()
    if not events or not isinstance(request := events[0], Request):
        logger.info("refused a connection: %s", ws.handshake_exc)
        await stream.send_all(b"".join(ws.data_to_send()))
        return None
    # Frames the client sent right behind its request have been parsed already: the answer to
    # a ping (or a close) among them must follow the response, not precede it.
    early = ws.data_to_send()
    response = ws.accept(request)
    ws.send_response(response)
    answer = ws.data_to_send()
    await stream.send_all(b"".join(answer + early if response.status_code == 101 else answer))
    if response.status_code != 101:
        logger.info("refused a connection: %s %s", response.status_code, ws.handshake_exc or "")
        return None
    # Read by the parser at every frame (websockets ≥ 15 names it max_message_size).
    ws.max_message_size = ws.max_size = max_message_bytes(request.path)  # type: ignore[attr-defined]
    # The suspended parser keeps the request alive for the life of the connection; its
    # headers are a kilobyte and a half that nothing reads again.
    request.headers.clear()
    early_frames = [e for e in events[1:] if isinstance(e, Frame)]
    return WebSocketStream(stream, ws, request.path, early_frames, control_frames_per_second)
