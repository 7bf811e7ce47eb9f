"""Plait inside an ASGI application (Starlette, FastAPI) served by Hypercorn's Trio worker.

    collab = PlaitApp(Engine(store=SQLiteStore("plait.db")), identity_from_scope=user_of)
    app = FastAPI(lifespan=collab.lifespan)
    app.mount("/collab", collab)
    # hypercorn -k trio module:app

`PlaitApp` is an ASGI application. Mounted at a prefix, it serves what `plait serve` serves on
its port, relative to the mount (the scope's `root_path`): the native protocol over WebSocket
at `/`, y-websocket at `/yjs/ROOM` (spec §13), the HTTP transports under `/v1/` (spec §14), and
every other route on `engine.router` (health, metrics, the server API), each through the same
code as on the engine's own port. Run as the top-level application it also answers the ASGI
lifespan itself.

The engine lives in the application's lifespan: `lifespan` holds `async with engine` open in
the server's lifespan task, so the engine's nursery (its rooms, the HTTP transports' sessions)
is a child of that task; WebSocket sessions run in the server's connection tasks. Hypercorn
shuts down in this order: it stops accepting, gives open connections `graceful_timeout`
seconds, cancels the rest (each WebSocket session, cancelled, says GOING_AWAY as it goes),
then ends the lifespan: the engine closes what sessions remain with GOING_AWAY and flushes
and unloads every room before the lifespan completes.

Plait is Trio code: under an asyncio server (uvicorn, or hypercorn without `-k trio`) the
lifespan, and any request, fails with `NotOnTrio`, whose message says to use `hypercorn -k trio`.
"""

from __future__ import annotations

import inspect
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import h11
import trio

from plait.protocol import ABNORMAL_CLOSURE, CloseCode, TransportClosed

from ._engine import Engine
from ._hooks import CONNECTION_IDENTITY, Identity
from .http import Refusal
from .http._exchange import Headers, no_store, too_large
from .http._server import _route as refusal_for
from .http._server import upgrade_refusal
from .transports._websocket import _short

logger = logging.getLogger("plait.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
IdentityFromScope = Callable[[Scope], "Identity | Awaitable[Identity | None] | None"]
"""Who is behind a request, by the application's own auth: an identity (a map with a string
"id"), None to leave it to the hello's token and `Hooks.authenticate`, or raise
`Unauthenticated` to refuse the connection. May be a coroutine function."""

NO_STATUS_RECEIVED = 1005  # RFC 6455: a close frame without a code
WRITE_GRACE = 2.0
"""How long a close, or the end of an answer, may wait behind a write the client does not read."""
TRIO_ONLY = (
    "Plait runs on Trio, and this ASGI server runs the application on asyncio (uvicorn, or "
    "hypercorn without -k trio). Serve it with Hypercorn's Trio worker: hypercorn -k trio MODULE:APP"
)


class NotOnTrio(RuntimeError):
    """The ASGI server does not run the application on Trio."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: {TRIO_ONLY}")


def require_trio(what: str) -> None:
    """Raises NotOnTrio unless called inside `trio.run` (`what` starts the message)."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise NotOnTrio(what) from None


class PlaitApp:
    """The ASGI application of one engine.

    Args:
        engine: the engine to serve; entered and exited by `lifespan`, not before.
        identity_from_scope: the application's own auth, turned into the identity of the
            sessions a request opens (see `IdentityFromScope`); called with the ASGI scope
            (a Starlette `scope["user"]` or `scope["session"]`, headers your middleware
            checked) at each session's handshake, before `Hooks.authenticate`, and contained
            as a hook is (an exception or a wrong shape refuses the handshake with INTERNAL,
            past `hook_timeout` too). Refused: close 4003 on a WebSocket, 401 over HTTP.
    """

    def __init__(self, engine: Engine, *, identity_from_scope: IdentityFromScope | None = None) -> None:
        self.engine = engine
        self.identity_from_scope = identity_from_scope
        self._running = False

    @property
    def websocket_max_message_size(self) -> int:
        """The largest WebSocket message any of the engine's endpoints takes (y-websocket's: a
        whole document). Give Hypercorn this as `websocket_max_message_size` (its default is
        16 MiB): Hypercorn closes a connection 1009 past its own limit before Plait sees the
        message; below it, Plait's limit for the endpoint holds (1009 too)."""
        return max(self.engine.max_message_bytes("/"), self.engine.max_message_bytes("/yjs/"))

    # -- lifespan -----------------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """The engine, running while the block runs: `FastAPI(lifespan=plait.lifespan)`, or
        inside your own lifespan, `async with plait.lifespan(app): yield`. On exit it shuts the
        engine down (GOING_AWAY to sessions, every room flushed).

        Raises:
            NotOnTrio: not run by Trio (uvicorn, hypercorn without -k trio).
            RuntimeError: the engine runs already.
            StorageError: the store cannot be opened (Engine.__aenter__).
        """
        require_trio("Plait's lifespan")
        if self._running:
            raise RuntimeError("this Plait engine is running already (one lifespan per engine)")
        async with self.engine:
            self._running = True
            try:
                yield
            finally:
                self._running = False

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, when this is the server's application: a failure is
        sent as `lifespan.startup.failed` with its message (what the server shows), then raised."""
        message = await receive()
        assert message["type"] == "lifespan.startup", message
        started = False
        try:
            async with self.lifespan():
                started = True
                await send({"type": "lifespan.startup.complete"})
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
        except Exception as exc:
            await send({"type": "lifespan.shutdown.failed" if started else "lifespan.startup.failed", "message": str(exc)})
            raise
        await send({"type": "lifespan.shutdown.complete"})

    # -- requests -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind not in ("http", "websocket"):
            return
        try:
            require_trio("a request to Plait")
        except NotOnTrio as exc:
            logger.error("%s", exc)
            await _refuse_outright(scope, receive, send, 500, str(exc))
            return
        if not self._running:
            reason = (
                "Plait's engine is not running: run its lifespan (FastAPI(lifespan=plait.lifespan), "
                "or `async with plait.lifespan(app)` in yours)"
            )
            logger.error("%s", reason)
            await _refuse_outright(scope, receive, send, 503, reason)
            return
        identity = self._identity_of(scope)
        token = CONNECTION_IDENTITY.set(identity) if identity is not None else None
        try:
            if kind == "websocket":
                await self._websocket(scope, receive, send)
            else:
                await self._http(scope, receive, send)
        finally:
            if identity is not None:
                identity.forget()
                assert token is not None
                CONNECTION_IDENTITY.reset(token)

    def _identity_of(self, scope: Scope) -> ScopeIdentity | None:
        return ScopeIdentity(self.identity_from_scope, scope) if self.identity_from_scope is not None else None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        if (await receive())["type"] != "websocket.connect":
            return  # the client went during the handshake
        if not engine.accepting:
            await _refuse_websocket(scope, send, 503, "the server is shutting down; connect to another, or again shortly")
            return
        target = relative_target(scope)
        refused = upgrade_refusal(target.partition("?")[0])
        if refused is not None:
            await _refuse_websocket(scope, send, refused.status, refused.reason)
            return
        try:  # the checks of the engine's own port (spec §2): the page's origin, the address's connections
            slot = engine.admission.admit(_request(scope, target), _client_address(scope))
        except (Refusal, h11.LocalProtocolError) as exc:
            status, reason = (exc.status, exc.reason) if isinstance(exc, Refusal) else (400, f"bad request: {exc}")
            await _refuse_websocket(scope, send, status, reason)
            return
        try:
            sender = Sender(send, engine.nursery)
            transport = AsgiWebSocket(target, receive, sender, engine.max_message_bytes(target))
            try:
                await sender.send({"type": "websocket.accept"})
                await engine.serve_transport(transport)
            finally:
                with trio.CancelScope(shield=True):
                    await transport.finish()
        finally:
            slot.release()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        target = relative_target(scope)
        path = target.partition("?")[0]
        sender = Sender(send, engine.nursery)
        ex = AsgiExchange(receive, sender, trio.current_time() + engine.config.handshake_timeout, _client_address(scope))
        request: h11.Request | None = None
        try:
            try:
                request = _request(scope, target)
            except h11.LocalProtocolError as exc:
                raise Refusal(400, f"bad request: {exc}") from None
            route = engine.router.find(path)
            if route is None:
                raise refusal_for(request, engine.accepting) or Refusal(404, "not found")
            try:
                await route(ex, request)
            except (Refusal, trio.BrokenResourceError, trio.ClosedResourceError):
                raise
            except Exception as exc:  # this request's failure (500), never the server's
                logger.error("%s %s failed", scope.get("method"), target[:200], exc_info=exc)
                if ex.started:
                    return
                raise Refusal(500, "internal error", as_json=True) from None
        except Refusal as refusal:
            if not ex.started:
                with trio.move_on_after(WRITE_GRACE):
                    await ex.refuse(refusal, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went
        finally:
            with trio.move_on_after(WRITE_GRACE, shield=True):
                await sender.wait_idle()
            sender.stop()


class ScopeIdentity:
    """`identity_from_scope` for one request, as CONNECTION_IDENTITY holds it. Every task
    started from the request's task (a room loaded by its session, say) keeps a copy of the
    context, so the scope is let go when the request ends: its sessions' handshakes (the
    only callers) are over by then."""

    __slots__ = ("_hook", "_scope")

    def __init__(self, hook: IdentityFromScope, scope: Scope) -> None:
        self._hook: IdentityFromScope | None = hook
        self._scope: Scope | None = scope

    async def __call__(self) -> Identity | None:
        if self._hook is None or self._scope is None:
            return None
        value = self._hook(self._scope)
        if inspect.isawaitable(value):
            value = await value
        return value  # the hook's contract; checked_identity checks the shape

    def forget(self) -> None:
        self._hook = self._scope = None


# -- writing ------------------------------------------------------------------------------------


class Sender:
    """The ASGI `send` of one connection, written by a task of its own, one message at a time.

    Hypercorn writes a message to the socket inside a shielded cancel scope, so a task that
    calls `send` for a client that does not read cannot be cancelled until the connection
    closes, and the connection closes only when the application returns. The session's writer
    (and a close, a TOO_SLOW) must not wait on that: `send` here hands the message over and
    waits, cancellably, only while the one before it is still being written. At most one
    message is in the server's hands at a time: nothing is buffered beyond it.

    Args:
        send: the server's ASGI send.
        nursery: where the writing task runs (the engine's: it must outlive the request's
            task, which ends first when a write is stuck).
    """

    def __init__(self, send: Send, nursery: trio.Nursery) -> None:
        self._send = send
        self._message: Message | None = None
        self._busy = False
        self._ready = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._stopped = False
        self.broken = False
        """A write failed: the client is gone (what some servers raise; Hypercorn drops it)."""
        self.writing = False
        """A message is in the server's hands (a stuck write, while the client does not read)."""
        nursery.start_soon(self._run)

    async def send(self, message: Message) -> None:
        """Hand `message` over once the one before it is written.

        Raises:
            trio.BrokenResourceError: the client is gone.
        """
        while self._busy:
            await self._idle.wait()
        if self.broken or self._stopped:
            raise trio.BrokenResourceError("the client is gone")
        self._busy = True
        self._idle = trio.Event()
        self._message = message
        self._ready.set()
        await trio.lowlevel.checkpoint()

    async def wait_idle(self) -> None:
        """Return once every message handed over is written."""
        while self._busy:
            await self._idle.wait()

    @property
    def busy(self) -> bool:
        return self._busy

    def stop(self) -> None:
        """No more messages; the task ends once the one it writes is written (or the
        connection closes under it)."""
        self._stopped = True
        self._ready.set()

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            message, self._message = self._message, None
            if message is not None:
                self.writing = True
                try:
                    await self._send(message)
                except Exception as exc:  # a server's way of saying the client went
                    logger.debug("an ASGI send failed: %r", exc)
                    self.broken = True
                finally:
                    self.writing = False
                    self._busy = False
                    self._idle.set()
            if self._stopped:
                return


# -- WebSocket ----------------------------------------------------------------------------------


class AsgiWebSocket:
    """A WebSocket of an ASGI server as a Plait `Transport` (engine/transports/_base.py).

    Receiving checks each message against the endpoint's limit (`max_message_bytes`: the
    engine's, by path) and closes 1009 MESSAGE_TOO_BIG past it. Sending waits while the
    message before it is still being written (`Sender`): the session's bounded outbox holds
    what waits, and its TOO_SLOW applies as on the engine's own port.
    """

    def __init__(self, path: str, receive: Receive, sender: Sender, max_message_bytes: int) -> None:
        self.path = path
        self._receive = receive
        self._sender = sender
        self._max = max_message_bytes
        self._closed: TransportClosed | None = None
        self._close_sent = False

    async def receive_message(self) -> bytes | str:
        if self._closed is not None:
            raise self._error()
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            data: bytes | str | None = message.get("bytes")
            if data is None:
                data = message.get("text") or ""
                size = len(data.encode()) if len(data) * 4 > self._max else len(data)
            else:
                size = len(data)
            if size > self._max:
                reason = f"message over {self._max} bytes"
                await self.aclose(CloseCode.MESSAGE_TOO_BIG, reason)
                raise TransportClosed(CloseCode.MESSAGE_TOO_BIG, reason, local=True)
            return data
        if kind == "websocket.disconnect":
            self._closed = TransportClosed(int(message.get("code", ABNORMAL_CLOSURE)), str(message.get("reason") or ""))
            self._close_sent = True  # nothing more can be sent
        else:
            self._closed = TransportClosed(ABNORMAL_CLOSURE, f"unexpected ASGI message {kind}")
        raise self._error()

    async def send_message(self, data: bytes | str) -> None:
        if self._closed is not None:
            raise self._error()
        message: Message = {"type": "websocket.send", "bytes" if isinstance(data, bytes) else "text": data}
        try:
            await self._sender.send(message)
        except trio.BrokenResourceError:
            self._closed = TransportClosed(ABNORMAL_CLOSURE)
            raise self._error() from None

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send a close with `code` once the message being written is out (WRITE_GRACE at
        most: a client that does not read gets its connection dropped by `finish`)."""
        if self._closed is None:
            self._closed = TransportClosed(code, reason)
        if self._close_sent:
            return
        with trio.move_on_after(WRITE_GRACE):
            await self._sender.wait_idle()
            self._close_sent = True
            try:
                await self._sender.send({"type": "websocket.close", "code": int(code), "reason": _short(reason)})
                await self._sender.wait_idle()
            except trio.BrokenResourceError:
                pass

    async def finish(self) -> None:
        """After the session: make sure the server ends the connection when the application
        returns. When a write is stuck on a client that does not read, the close goes to the
        server directly: it then knows the application closed the socket (Hypercorn writes
        nothing more and drops the connection, which ends the stuck write)."""
        if not self._close_sent:
            self._close_sent = True
            with trio.move_on_after(0 if self._sender.writing else WRITE_GRACE):
                try:
                    await self._sender._send({"type": "websocket.close", "code": CloseCode.GOING_AWAY, "reason": ""})
                except Exception as exc:
                    logger.debug("closing an ASGI WebSocket: %r", exc)
        self._sender.stop()

    def _error(self) -> TransportClosed:
        closed = self._closed or TransportClosed(ABNORMAL_CLOSURE)
        return TransportClosed(closed.code, closed.reason)


# -- HTTP ---------------------------------------------------------------------------------------


class AsgiExchange:
    """One ASGI http request as the routes' `Exchange` (engine/http/_exchange.py)."""

    socket = None  # every write goes through the server's send

    def __init__(self, receive: Receive, sender: Sender, deadline: float, peer: str | None) -> None:
        self.peer = peer
        self._receive = receive
        self._sender = sender
        self.deadline = deadline
        self.cors: Headers = ()
        self.started = False
        self._body_read = False

    def read_frames(self, frames: int, values: int) -> None:
        pass  # the ASGI server reads the connection: requests are paced there, if anywhere

    async def body(self, limit: int) -> bytes:
        if self._body_read:
            return b""
        with trio.move_on_at(self.deadline):
            return await self._body(limit)
        raise Refusal(408, "the request's body did not come in time", as_json=True)

    async def _body(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise trio.BrokenResourceError("the client closed the connection inside a request")
            data = bytes(message.get("body", b""))
            size += len(data)
            if size > limit:
                raise too_large(limit)
            parts.append(data)
            if not message.get("more_body", False):
                self._body_read = True
                return b"".join(parts)

    async def _start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.started = True
        encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        await self._sender.send({"type": "http.response.start", "status": status, "headers": encoded})

    async def respond(self, status: int, body: bytes, content_type: str, headers: Headers = ()) -> None:
        head = [("Content-Type", content_type), ("Content-Length", str(len(body))), *no_store(headers), *self.cors, *headers]
        await self._start(status, head)
        await self._sender.send({"type": "http.response.body", "body": body, "more_body": False})

    async def respond_json(self, status: int, obj: object, headers: Headers = ()) -> None:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        await self.respond(status, body, "application/json", headers)

    async def refuse(self, refusal: Refusal, request: h11.Request | None) -> None:
        """Answer with the refusal and its reason (JSON on the `/v1/` routes, else text)."""
        logger.log(logging.WARNING if refusal.status >= 500 else logging.DEBUG, "refused a request: %d %s", refusal.status, refusal.reason)
        if refusal.as_json:
            obj: dict[str, object] = {"status": refusal.status, "error": refusal.reason}
            if refusal.code is not None:
                obj["code"] = refusal.code
            body, content_type = json.dumps(obj, ensure_ascii=False).encode(), "application/json"
        else:
            body, content_type = (refusal.reason + "\n").encode(), "text/plain; charset=utf-8"
        if request is not None and request.method == b"HEAD":
            body = b""
        await self.respond(refusal.status, body, content_type, refusal.headers)

    async def start_stream(self, content_type: str, headers: Headers = ()) -> None:
        await self._start(200, [("Content-Type", content_type), ("Cache-Control", "no-store"), *self.cors, *headers])

    def chunk(self, data: bytes) -> bytes:
        return data  # the server frames the body

    async def send(self, data: bytes) -> None:
        await self._sender.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end_stream(self) -> None:
        await self._sender.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def wait_hangup(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass


# -- the scope ----------------------------------------------------------------------------------


def relative_target(scope: Scope) -> str:
    """The request's target as Plait's routes see it: the path under the mount (the scope's
    `root_path`), still percent-encoded as it came, with its query (`/yjs/a%20b?token=T`)."""
    root = str(scope.get("root_path") or "")
    path = str(scope.get("path") or "/")
    relative = path[len(root) :] if root and path.startswith(root) else path
    raw = scope.get("raw_path")
    encoded = None
    if raw:
        raw_text = bytes(raw).decode("latin-1").partition("?")[0]
        for prefix in (root, urllib.parse.quote(root)):
            if raw_text.startswith(prefix):
                encoded = raw_text[len(prefix) :]
                break
    if encoded is None:
        encoded = urllib.parse.quote(relative, safe="/:@!$&'()*+,;=-._~")
    if not encoded.startswith("/"):
        encoded = "/" + encoded
    query = bytes(scope.get("query_string") or b"").decode("latin-1")
    return encoded + ("?" + query if query else "")


def _client_address(scope: Scope) -> str | None:
    """The client's address as the ASGI server saw it (behind a proxy, the proxy's, unless
    the server is told to trust its forwarded headers: Hypercorn's ProxyFixMiddleware)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def _request(scope: Scope, target: str) -> h11.Request:
    """The request as the routes read it (an h11.Request: method, target, headers).

    Raises:
        h11.LocalProtocolError: what h11 would not take (a header that is not one).
    """
    headers = [(bytes(name), bytes(value)) for name, value in scope.get("headers", ())]
    if not any(name.lower() == b"host" for name, _ in headers):
        server = scope.get("server") or ("localhost", None)
        headers.append((b"host", str(server[0]).encode()))
    version = str(scope.get("http_version", "1.1"))
    return h11.Request(
        method=str(scope.get("method", "GET")),
        target=target.encode("latin-1"),
        headers=headers,
        http_version="1.1" if version not in ("1.0", "1.1") else version,
    )


async def _refuse_outright(scope: Scope, receive: Receive, send: Send, status: int, reason: str) -> None:
    """Answer without the engine (it does not run, or cannot): a status and why, as JSON."""
    if scope["type"] == "websocket":
        if (await receive())["type"] == "websocket.connect":
            await _refuse_websocket(scope, send, status, reason)
        return
    body, head = _json_answer(status, reason)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _refuse_websocket(scope: Scope, send: Send, status: int, reason: str) -> None:
    """Refuse a WebSocket before it opens: with an HTTP answer that says why where the server
    can send one (the ASGI `websocket.http.response` extension: Hypercorn can), else with a
    bare close (a 403)."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body, head = _json_answer(status, reason)
        await send({"type": "websocket.http.response.start", "status": status, "headers": head})
        await send({"type": "websocket.http.response.body", "body": body, "more_body": False})
    else:
        code = CloseCode.GOING_AWAY if status == 503 else CloseCode.INTERNAL_ERROR
        await send({"type": "websocket.close", "code": code, "reason": _short(reason)})


def _json_answer(status: int, reason: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = json.dumps({"status": status, "error": reason}).encode()
    return body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


__all__ = [
    "PlaitApp", "IdentityFromScope", "NotOnTrio", "require_trio",
    "AsgiExchange", "AsgiWebSocket", "ScopeIdentity", "Sender", "relative_target",
]
