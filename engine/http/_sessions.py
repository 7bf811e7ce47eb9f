"""The HTTP transports' routes (spec §14): sessions carried by plain HTTP requests, for
clients that cannot open a WebSocket or only want to listen (EventSource, fetch, curl).

    POST   /v1/sessions                  a hello → the session, its key and the welcome
    GET    /v1/events?room=R&token=T     a new session joined to rooms, as an event stream
    GET    /v1/sessions/ID/events?key=K  the session's event stream (SSE; Last-Event-ID resumes)
    GET    /v1/sessions/ID/poll?key=K&after=P   long-polling
    POST   /v1/sessions/ID/frames?key=K  frames from the client; the answers in the response
    DELETE /v1/sessions/ID?key=K         end the session

The session itself is an ordinary native session (sessions/_native.py) with the SSE wire;
what carries it across requests is its HttpTransport (transports/_http.py).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import urllib.parse
from collections.abc import Callable
from typing import Any

import h11
import trio

from plait.protocol import (
    MAX_HELLO_BYTES,
    SUPPORTED_VERSIONS,
    CloseCode,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Join,
    LocalProtocolError,
    RemoteProtocolError,
    TransportClosed,
    decode_counted,
    decode_json,
    decode_json_counted,
    encode,
    encode_json,
    frame_to_json,
)

from .._config import EngineConfig
from .._limits import ConnectionCounts, Slot
from ..transports import Decoded, HttpTransport, InboundFull, json_of_event
from ._admission import take_slot
from ._cors import Origins
from ._exchange import Exchange, Refusal, header
from ._sse import EventStreamSink

logger = logging.getLogger("plait.http")

PREFIX = "/v1/"
MSGPACK_TYPE = "application/msgpack"
JSON_TYPES = frozenset({"application/json", "text/plain", "application/x-www-form-urlencoded", ""})
"""Bodies read as JSON: text/plain lets a page's fetch skip the CORS preflight, and
`curl -d` sends form-urlencoded unless told otherwise."""
MAX_POLL_TIMEOUT = 120.0
ALLOWED_METHODS = {"sessions": "POST", "events": "GET", "ID": "DELETE", "poll": "GET", "frames": "POST"}
"""What a 405 names in its Allow header, by the route's last part (`ID`: the session itself)."""
IGNORED_BODY_BYTES = 64 * 1024
"""A GET, DELETE or OPTIONS has no body worth reading; one up to this is read and dropped."""
MAX_QUERY_FIELDS = 70


ENDED_REMEMBERED = 4096
"""Ended sessions whose close code a later request is told (410), newest kept."""


def _refuse(status: int, reason: str, code: int | None = None) -> Refusal:
    return Refusal(status, reason, code=code, as_json=True)


class HttpSessions:
    """The routes under `/v1/`, and the sessions they carry.

    Args:
        config: the engine's settings (grace, resume window, poll timeout, limits).
        start: serves a new session on a transport; returns its id (the engine's).
        accepting: whether the engine takes new sessions (False while it shuts down).
        per_ip: connections open per peer address, shared with the WebSockets (a session
            holds its place from its start until it ends: `ended`).
    """

    def __init__(
        self,
        config: EngineConfig,
        start: Callable[[HttpTransport], str],
        accepting: Callable[[], bool],
        per_ip: ConnectionCounts | None = None,
    ) -> None:
        self.config = config
        self._start = start
        self._accepting = accepting
        self._per_ip = per_ip if per_ip is not None else ConnectionCounts(config.max_connections_per_ip)
        self._slots: dict[str, Slot] = {}
        self._transports: dict[str, HttpTransport] = {}
        self._ended_sessions: dict[str, tuple[str, int, str]] = {}
        """Recently ended sessions: id -> (key, close code, reason)."""
        self._opening = 0
        self.origins = Origins(config.allow_origins)
        self._limits = config.codec_limits

    def ended(self, session_id: str) -> None:
        """The session has ended (the engine calls this): its address's place is free."""
        slot = self._slots.pop(session_id, None)
        if slot is not None:
            slot.release()

    def forget(self, session_id: str) -> None:
        """The session has ended and its last words were had (the engine calls this). How it
        ended is kept for the requests that come after (ENDED_REMEMBERED sessions)."""
        self.ended(session_id)
        transport = self._transports.pop(session_id, None)
        if transport is not None and transport.closed is not None:
            self._ended_sessions[session_id] = (transport.key, transport.closed.code, transport.closed.reason[:200])
            while len(self._ended_sessions) > ENDED_REMEMBERED:
                del self._ended_sessions[next(iter(self._ended_sessions))]

    def __len__(self) -> int:
        return len(self._transports)

    async def handle(self, ex: Exchange, request: h11.Request) -> None:
        """Answer one request under `/v1/`.

        Raises:
            Refusal: the request is refused (the caller answers and closes).
        """
        target = request.target.decode("ascii", "replace")
        path, _, query_text = target.partition("?")
        try:
            query = urllib.parse.parse_qs(query_text, max_num_fields=MAX_QUERY_FIELDS, errors="strict")
        except ValueError as exc:  # UnicodeDecodeError too: a room or token that is not text
            raise _refuse(400, f"bad query: {exc}"[:300], ErrorCode.INVALID_FIELD if isinstance(exc, UnicodeError) else None) from None
        method = request.method.decode("ascii", "replace")
        if method != "POST":
            await ex.body(IGNORED_BODY_BYTES)  # read past it, so the connection can take the next request
        if method == "OPTIONS":
            ex.cors = self.origins.preflight(request)
            await ex.respond(204, b"", "text/plain")
            return
        ex.cors = self.origins.check(request)
        parts = path[len(PREFIX) :].split("/")
        match parts, method:
            case ["sessions"], "POST":
                await self._create(ex, request, query)
            case ["events"], "GET":
                await self._subscribe(ex, request, query)
            case ["sessions", session_id], "DELETE":
                transport = self._session(session_id, request, query)
                await transport.aclose(1000, "the client ended the session")
                transport.told_closed()
                await ex.respond_json(200, {"session": session_id, "closed": True})
            case ["sessions", session_id, "events"], "GET":
                transport = self._session(session_id, request, query)
                await self._events(ex, request, session_id, transport, self._last_event(request, session_id))
            case ["sessions", session_id, "poll"], "GET":
                await self._poll(ex, self._session(session_id, request, query), query)
            case ["sessions", session_id, "frames"], "POST":
                await self._frames(ex, request, self._session(session_id, request, query))
            case (["sessions"] | ["events"] | ["sessions", _] | ["sessions", _, "events" | "poll" | "frames"]), _:
                allowed = ALLOWED_METHODS[parts[-1] if len(parts) != 2 else "ID"]
                raise Refusal(405, f"{method} is not served at {path[:200]}; {allowed} is", (("Allow", allowed),), as_json=True)
            case _:
                raise _refuse(404, f"nothing is served at {path[:200]} (spec §14 lists the routes)")

    # -- sessions ---------------------------------------------------------------------------

    def _session(self, session_id: str, request: h11.Request, query: dict[str, list[str]]) -> HttpTransport:
        """The session `session_id`, if the request gives its key.

        Raises:
            Refusal: 404 no such session (or it ended), 403 a missing or wrong key.
        """
        transport = self._transports.get(session_id)
        key = _one(query, "key") or header(request, b"plait-key")
        if transport is None:
            ended = self._ended_sessions.get(session_id)
            if ended is not None and key is not None and hmac.compare_digest(key.encode(), ended[0].encode()):
                # Its stream or poll took the last words, and this request came before the
                # client read them: it must not take the session for lost and reconnect.
                raise _refuse(410, f"the session ended ({ended[1]}: {ended[2]})", ended[1])
            raise _refuse(404, f"no session {session_id[:64]!r}: it ended, or never was; open a new one")
        if key is None or not transport.check_key(key):
            raise _refuse(403, "the session's key is missing or wrong (the key= its creation gave)")
        return transport

    async def _open(self, ex: Exchange, hello: bytes | str, joins: str | None) -> tuple[str, HttpTransport, bytes]:
        """Start a session with `hello` (then `joins`, a message of join frames); its id, its
        transport and its first message (the welcome).

        Raises:
            Refusal: 503 shutting down; 429 the client's address holds max_connections_per_ip
                already; the handshake's refusal (401 UNAUTHENTICATED, 429 TOO_MANY_CONNECTIONS,
                400 a bad hello, 500 a failing hook), with the error's code.
        """
        if not self._accepting():
            raise Refusal(503, "the server is shutting down; connect to another, or again shortly", (("Retry-After", "5"),), as_json=True)
        c = self.config
        if len(self._transports) + self._opening >= c.max_http_sessions:
            full = f"the server holds {c.max_http_sessions} HTTP sessions; try again shortly"
            raise Refusal(503, full, (("Retry-After", "5"),), as_json=True)
        slot = take_slot(self._per_ip, ex.peer, as_json=True)  # held by the session until it ends
        transport = HttpTransport(
            PREFIX + "sessions",
            secrets.token_urlsafe(16),
            grace=c.http_session_grace,
            resume_window=c.resume_window,
            resume_bytes=c.resume_bytes,
            inbound_bytes=c.max_message_bytes,
        )
        transport.put(hello)
        try:
            session_id = self._start(transport)
        except BaseException:
            slot.release()
            raise
        self._slots[session_id] = slot  # released when the session ends (ended)
        self._opening += 1  # counted against the limit while its handshake runs
        try:
            first = await transport.first(c.handshake_timeout + c.hook_timeout)
        finally:
            self._opening -= 1
        if first is None or not first.startswith(b"event: welcome\n"):
            closed = transport.closed
            await transport.aclose(1000, "handshake refused")
            raise _handshake_refusal(first, closed)
        self._transports[session_id] = transport
        if joins is not None:
            transport.put(joins)
        return session_id, transport, first

    async def _create(self, ex: Exchange, request: h11.Request, query: dict[str, list[str]]) -> None:
        body = await ex.body(min(MAX_HELLO_BYTES, self.config.max_message_bytes))  # spec §5.1
        hello = self._hello(ex, body, _content_type(request), _token(request, query))
        session_id, transport, welcome = await self._open(ex, hello, None)
        key = transport.key
        base = f"{PREFIX}sessions/{session_id}"
        await ex.respond_json(
            201,
            {
                "session": session_id,
                "key": key,
                "position": 1,
                "welcome": json.loads(json_of_event(welcome)),
                "events": f"{base}/events?key={key}",
                "poll": f"{base}/poll?key={key}",
                "frames": f"{base}/frames?key={key}",
            },
        )

    def _hello(self, ex: Exchange, body: bytes, content_type: str, token: str | None) -> bytes | str:
        """The hello message: the body's (JSON or msgpack), or one made for an empty body; a
        token from the header or query fills a hello that has none.

        Raises:
            Refusal: 400 a body that is not one hello, 415 another content type.
        """
        if not body:
            return _json(Hello(SUPPORTED_VERSIONS, token, {}))
        frames = self._decode(ex, body, content_type)[0]
        if len(frames) != 1 or not isinstance(frames[0], Hello):
            raise _refuse(400, "the body is one hello frame (spec §5.1), or nothing", ErrorCode.UNEXPECTED_FRAME)
        hello = frames[0]
        if hello.token is None and token is not None:
            hello = Hello(hello.versions, token, hello.client)
        return _json(hello)

    def _decode(self, ex: Exchange, body: bytes, content_type: str) -> Decoded:
        """A body's frames and values (spec §3.4), the values counted toward the connection's
        pace (`Exchange.read_frames`).

        Raises:
            Refusal: 400 with the code of spec §3.4 for what does not decode; 415.
        """
        try:
            if content_type == MSGPACK_TYPE:
                decoded = decode_counted(body, self._limits)
            elif content_type in JSON_TYPES:
                decoded = decode_json_counted(body, self._limits)
            else:
                raise Refusal(415, f"frames are {MSGPACK_TYPE} or application/json, not {content_type[:100]}", as_json=True)
        except RemoteProtocolError as exc:
            raise _refuse(400, f"{exc.code.name}: {exc.message}", exc.code) from None
        ex.read_frames(len(decoded[0]), decoded[1])
        return decoded

    async def _subscribe(self, ex: Exchange, request: h11.Request, query: dict[str, list[str]]) -> None:
        """`GET /v1/events?room=R...`: a new session joined to the rooms, as an event stream
        (what `curl -N` and a passive page want). Its SSE ids name the session, so a browser's
        reconnect with Last-Event-ID resumes it while it lives; after, it starts anew."""
        rooms = query.get("room", [])
        if not rooms:
            raise _refuse(400, "name the rooms to follow: /v1/events?room=NAME (repeat room= for more)")
        if len(rooms) > self.config.max_rooms_per_connection:
            raise _refuse(400, f"at most {self.config.max_rooms_per_connection} rooms", ErrorCode.TOO_MANY_ROOMS)
        last = _parse_last_event_id(header(request, b"last-event-id"))
        if last is not None:
            session_id, key, position = last
            transport = self._transports.get(session_id)
            if transport is not None and transport.check_key(key) and transport.closed is None:
                await self._events(ex, request, session_id, transport, position, announce=True)
                return
        hello = _json(Hello(SUPPORTED_VERSIONS, _token(request, query), {}))
        joins = _json([Join(ref, room, None, None) for ref, room in enumerate(rooms, 1)])
        session_id, transport, _ = await self._open(ex, hello, joins)
        await self._events(ex, request, session_id, transport, None, announce=True, lost=last is not None)

    # -- the event stream -------------------------------------------------------------------

    def _last_event(self, request: h11.Request, session_id: str) -> int | None:
        last = _parse_last_event_id(header(request, b"last-event-id"))
        if last is None:
            return None
        if last[0] != session_id:
            raise _refuse(400, "Last-Event-ID is from another session")
        return last[2]

    async def _events(
        self,
        ex: Exchange,
        request: h11.Request,
        session_id: str,
        transport: HttpTransport,
        after: int | None,
        *,
        announce: bool = False,
        lost: bool = False,
    ) -> None:
        """Stream the session's frames as Server-Sent Events until it ends, the client goes,
        or another stream replaces this one (spec §14.2)."""
        consumer = transport.attach()
        try:
            prefix = f"id: {session_id}.{transport.key}.".encode()
            preamble = [f"retry: {int(self.config.sse_retry * 1000)}\n\n".encode()]
            if announce:
                preamble.append(_meta("session", {"session": session_id, "key": transport.key}))
            if after is not None or lost:
                complete = after is not None and transport.retains(after)
                preamble.append(_meta("resumed", {"complete": complete, "position": after}))
                if not complete:
                    after = transport.earliest - 1
            if after is None:
                after = transport.taken
            await ex.start_stream("text/event-stream", (("X-Accel-Buffering", "no"),))
            sink = EventStreamSink(ex, prefix)
            async with trio.open_nursery() as nursery:
                # A client that goes is noticed at once, not when a write fails (up to 2H
                # later): the session's grace starts from when it went.
                nursery.start_soon(_until_hangup, ex, nursery.cancel_scope)
                await sink.send(ex.chunk(b"".join(preamble)))
                entries = transport.take_now(consumer, after)
                if entries:
                    await sink.send(sink.events(entries))
                if transport.push_to(consumer, sink):  # from now on each frame is written as it is sent
                    await sink.run(transport, consumer, self.config.heartbeat)
                await sink.send(ex.chunk(_meta("close", _ending(transport, consumer))))
                if transport.closed is not None:
                    transport.told_closed()
                await ex.end_stream()
                nursery.cancel_scope.cancel()
        finally:
            transport.detach(consumer)

    # -- long-polling -----------------------------------------------------------------------

    async def _poll(self, ex: Exchange, transport: HttpTransport, query: dict[str, list[str]]) -> None:
        """`GET .../poll?after=P[&timeout=S]`: what the session sent after position P, at once
        if there is any, else within `timeout` seconds (default long_poll_timeout) (spec §14.4)."""
        given = _one(query, "after") is not None
        after = _int(query, "after", transport.taken)
        timeout = min(float(_int(query, "timeout", int(self.config.long_poll_timeout))), MAX_POLL_TIMEOUT)
        complete = transport.retains(after)
        if not complete:
            after = transport.earliest - 1
        elif given:
            transport.confirm(after)
        consumer = transport.attach()
        try:
            # A gap is news in itself: the client must re-sync, so it hears at once.
            entries = (await transport.take(consumer, after, timeout) if complete else transport.take_now(consumer, after)) or []
        finally:
            transport.detach(consumer)
        position = entries[-1][0] if entries else after
        closed = _ending(transport, consumer) if transport.closed is not None and position >= transport.last_position else None
        if closed is not None and closed["code"] == CloseCode.TOO_SLOW:
            complete = False  # what its outbox held when it was cut off never reached the log
        frames = b",".join(json_of_event(data) for _, data in entries)
        head = json.dumps({"position": position, "complete": complete, "closed": closed}, separators=(",", ":"))
        await ex.respond(200, head[:-1].encode() + b',"frames":[' + frames + b"]}", "application/json")
        if closed is not None:
            transport.told_closed()

    # -- frames from the client ---------------------------------------------------------------

    async def _frames(self, ex: Exchange, request: h11.Request, transport: HttpTransport) -> None:
        """`POST .../frames`: the body is one message (JSON or msgpack, by Content-Type), read
        by the session as if it came on a WebSocket; the answer holds the answers to its
        requests (ack, error, joined) once all came, or what came within hook_timeout + 5 s
        (spec §14.3). A body that does not decode is refused (400) and the session is untouched."""
        content_type = _content_type(request)
        body = await ex.body(self.config.max_message_bytes)
        try:
            transport.check_room(len(body))  # before the body is decoded: a refused one costs nothing
        except TransportClosed as closed:
            raise _refuse(410, f"the session has ended ({closed.code}: {closed.reason[:200]})", closed.code) from None
        except InboundFull as full:
            reason = f"{full}: send this again once the requests before it are answered"
            raise Refusal(429, reason, (("Retry-After", "1"),), code=ErrorCode.RATE_LIMITED, as_json=True) from None
        decoded = self._decode(ex, body, content_type)
        requests = [(ref, isinstance(f, Join)) for f in decoded[0] if (ref := getattr(f, "ref", None)) is not None]
        waiting = transport.expect(requests)
        # Nothing was awaited since check_room, so it is taken; with its frames, decoded once.
        transport.put(body if content_type == MSGPACK_TYPE else body.decode(), decoded)
        answers = await transport.answers(waiting, self.config.hook_timeout + 5)
        if transport.closed is not None and len(answers) < len(requests):
            code, reason = transport.closed.code, transport.closed.reason
            raise _refuse(410, f"the session ended ({code}: {reason}) before answering; its stream or poll says why", code)
        if content_type == MSGPACK_TYPE:
            await ex.respond(200, encode(answers) if answers else b"", MSGPACK_TYPE)
        else:
            await ex.respond_json(200, [frame_to_json(f) for f in answers])


# -- helpers ----------------------------------------------------------------------------------


async def _until_hangup(ex: Exchange, scope: trio.CancelScope) -> None:
    """Cancel `scope` when the client closes the connection (what it sends meanwhile, it has
    no business sending on an event stream's connection, is dropped)."""
    await ex.wait_hangup()
    scope.cancel()


def _json(frames: Frame | list[Frame]) -> str:
    """Frames made from the request (a token, room names), in JSON.

    Raises:
        Refusal: 400 with the code of a field the protocol does not allow (a token or room
            name too long, say), as the same field in a hello or join body gets.
    """
    try:
        return encode_json(frames)
    except LocalProtocolError as exc:
        raise _refuse(400, f"{exc.code.name}: {exc.message}", exc.code) from None


def _meta(kind: str, data: dict[str, Any]) -> bytes:
    """An event of the transport's own (no id: it is not a position)."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _ending(transport: HttpTransport, consumer: int) -> dict[str, Any]:
    if transport.closed is not None:
        return {"code": transport.closed.code, "reason": transport.closed.reason}
    return {"code": None, "reason": "another stream or poll took over this session"}


def _handshake_refusal(first: bytes | None, closed: TransportClosed | None) -> Refusal:
    if first is None:  # closed without a word: the handshake timed out (a hook that hangs)
        how = f" ({closed.code}: {closed.reason})" if closed is not None else ""
        return _refuse(500, f"the session ended before its handshake{how}", closed.code if closed is not None else None)
    try:
        (error,) = decode_json(json_of_event(first))
    except (RemoteProtocolError, ValueError):
        return _refuse(500, "the handshake failed")
    if not isinstance(error, Error):
        return _refuse(500, "the handshake failed")
    status = {int(ErrorCode.UNAUTHENTICATED): 401, int(ErrorCode.INTERNAL): 500, int(ErrorCode.TOO_MANY_CONNECTIONS): 429}.get(
        error.code, 400
    )
    return _refuse(status, error.message, error.code)


def _parse_last_event_id(value: str | None) -> tuple[str, str, int] | None:
    """`SESSION.KEY.POSITION` (spec §14.2), or None."""
    if not value:
        return None
    session_id, _, rest = value.strip().partition(".")
    key, _, position = rest.rpartition(".")
    if not session_id or not key or not position.isdigit() or len(position) > 18:
        return None
    return session_id, key, int(position)


def _content_type(request: h11.Request) -> str:
    value = header(request, b"content-type") or ""
    return value.partition(";")[0].strip().lower()


def _token(request: h11.Request, query: dict[str, list[str]]) -> str | None:
    auth = header(request, b"authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return _one(query, "token")


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    value = _one(query, name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 18:
        raise _refuse(400, f"{name}= is a whole number of 0 or more")
    return int(value)
