"""The server API (spec/api.md): what a backend or an operator does to a running server over
HTTP and JSON, authenticated by an API key. Every route is a row of `ENDPOINTS`, from which
spec/openapi.json is generated (`python spec/make_openapi.py`; a test
checks they agree).

Every answer is JSON but a document read as Yjs; every refusal is
`{"status": HTTP status, "error": reason, "code": spec §8 code, "name": its name}`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h11

from plait.protocol import (
    APPLICATION_ERROR_RANGE,
    MAX_DEPTH,
    ErrorCode,
    ProtocolError,
    RemoteProtocolError,
    check_room_name,
    check_value,
    value_from_json,
    value_to_json,
)
from plait.storage import StorageError

from ._engine import Engine
from ._errors import RequestError
from ._handle import RoomHandle
from ._hooks import ACCESS_BY_NAME, MAX_IDENTITY_ID
from .http import Exchange, Refusal, header

logger = logging.getLogger("plait.api")

PREFIX = "/api/"
MIN_KEY = 16
"""Characters an API key has at least: a key anyone could guess is no key."""
KEY_RULE = f"an API key is {MIN_KEY} or more printable ASCII characters without spaces"
MAX_LIST = 10_000
"""Items a list answer holds at most (`limit`)."""
DOCUMENT_SLACK = 64 * 1024

_STATUS_FOR_CODE: dict[int, int] = {
    ErrorCode.INVALID_ROOM_NAME: 400,
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.TOO_DEEP: 400,
    ErrorCode.INVALID_UPDATE: 400,
    ErrorCode.MALFORMED_FRAME: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.DOCUMENT_TOO_LARGE: 413,
    ErrorCode.EVENT_REJECTED: 422,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.STORAGE_UNAVAILABLE: 503,
    ErrorCode.SHUTTING_DOWN: 503,
}


def refuse(status: int, reason: str, code: int, headers: tuple[tuple[str, str], ...] = ()) -> Refusal:
    return Refusal(status, reason, headers, code=code, as_json=True)


def _refusal_for(exc: RequestError) -> Refusal:
    status = 422 if exc.code in APPLICATION_ERROR_RANGE else _STATUS_FOR_CODE.get(exc.code, 500)
    return refuse(status, exc.message, exc.code)


# -- the routes -------------------------------------------------------------------------------------

SCHEMAS: dict[str, dict[str, Any]] = {
    "Access": {"type": "string", "enum": ["read", "comment", "write", "none"]},
    "Error": {
        "type": "object",
        "required": ["status", "error"],
        "properties": {
            "status": {"type": "integer"},
            "error": {"type": "string", "description": "for people"},
            "code": {"type": "integer", "description": "spec/protocol.md §8"},
            "name": {"type": "string"},
        },
    },
    "Room": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "state": {"type": "string", "enum": ["loading", "live", "draining", "stored"]},
            "members": {"type": "integer"},
            "users": {"type": "integer"},
            "document_bytes": {"type": "integer"},
            "idle_seconds": {"type": "number"},
            "head": {"type": "integer", "description": "latest event sequence"},
        },
    },
    "Session": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "user": {"type": ["string", "null"]},
            "identity": {"type": "object"},
            "protocol": {"type": "string", "enum": ["native", "yjs"]},
            "transport": {"type": "string", "enum": ["websocket", "http", "memory"]},
            "rooms": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "room": {"type": "string"},
                        "channel": {"type": "integer"},
                        "access": {"$ref": "#/components/schemas/Access"},
                    },
                },
            },
        },
    },
    "Event": {
        "type": "object",
        "properties": {
            "seq": {"type": "integer"},
            "name": {"type": "string"},
            "payload": {},
            "session": {"type": ["string", "null"]},
            "user": {"type": ["string", "null"]},
        },
    },
    "PresenceEntry": {
        "type": "object",
        "properties": {"session": {"type": "string"}, "identity": {"type": "object"}, "state": {"type": "object"}},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


@dataclass(frozen=True)
class Param:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    """`/api/rooms/{room}`: a `{name}` is one path segment, percent-encoded."""
    handler: str
    """The ServerApi method that answers."""
    summary: str
    response: dict[str, Any]
    request: dict[str, Any] | None = None
    request_type: str = "application/json"
    query: tuple[Param, ...] = ()
    status: int = 200
    response_type: str = "application/json"

    @property
    def segments(self) -> list[str]:
        return self.path[len(PREFIX) :].split("/")


ROOM_QUERY = (Param("limit", f"at most this many (1..{MAX_LIST}, default 1000)", {"type": "integer"}),)

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/api/rooms", "list_rooms", "Rooms loaded now, and with stored=true the names of stored rooms",
             _obj(rooms={"type": "array", "items": _ref("Room")}, stored={"type": "array", "items": {"type": "string"}}),
             query=(Param("stored", "also list stored room names (true/false)"),
                    Param("after", "stored names after this one (paging)"), *ROOM_QUERY)),
    Endpoint("GET", "/api/rooms/{room}", "get_room", "One room: loaded, or only stored (404 if neither)", _ref("Room")),
    Endpoint("DELETE", "/api/rooms/{room}", "delete_room",
             "Delete a room: members' channels closed (ROOM_DELETED), then its stored data deleted",
             _obj(room={"type": "string"}, deleted={"type": "boolean"})),
    Endpoint("POST", "/api/rooms/{room}/events", "publish",
             "Publish an event as the server; answered once durable, with its sequence number",
             _obj(room={"type": "string"}, seq={"type": "integer"}),
             request={"type": "object", "required": ["name"], "properties": {
                 "name": {"type": "string", "minLength": 1, "maxLength": 128},
                 "payload": {"description": "any JSON value (spec §3.3)"},
                 "key": {"type": "string", "minLength": 1, "maxLength": 128,
                         "description": "idempotency key: a retry with it publishes nothing more and gets the first seq"}}}),
    Endpoint("GET", "/api/rooms/{room}/events", "history", "The room's event history after a position (spec §7)",
             _obj(room={"type": "string"}, epoch={"type": "string"}, head={"type": "integer"},
                  complete={"type": "boolean"}, events={"type": "array", "items": _ref("Event")}),
             query=(Param("since", "the last seq seen (default 0)", {"type": "integer"}),
                    Param("epoch", "the epoch `since` came from"))),
    Endpoint("GET", "/api/rooms/{room}/presence", "presence", "Who is in the room now (empty if it is not loaded)",
             _obj(room={"type": "string"}, presence={"type": "array", "items": _ref("PresenceEntry")})),
    Endpoint("GET", "/api/rooms/{room}/document", "get_document",
             "The document as a Yjs update (v1), or as JSON with format=json",
             {"type": "string", "format": "binary"}, response_type="application/octet-stream",
             query=(Param("format", "yjs (default) or json"),
                    Param("types", "with format=json: root types, e.g. body:text,meta:map"),
                    Param("state_vector", "with format=yjs: base64 state vector; only what it lacks"))),
    Endpoint("POST", "/api/rooms/{room}/document", "apply_update",
             "Apply a Yjs update (v1) to the document, checked as a member's; answered once durable",
             _obj(room={"type": "string"}, document_bytes={"type": "integer"}),
             request={"type": "string", "format": "binary"}, request_type="application/octet-stream"),
    Endpoint("GET", "/api/rooms/{room}/sessions", "room_sessions", "The sessions in the room now",
             _obj(room={"type": "string"}, sessions={"type": "array", "items": _ref("Session")})),
    Endpoint("PUT", "/api/rooms/{room}/access/{user}", "set_access",
             "Set a user's access to the room, now (members told) and for later joins, over the authorize hook",
             _obj(room={"type": "string"}, user={"type": "string"}, access=_ref("Access"), changed={"type": "integer"}),
             request={"type": "object", "required": ["access"], "properties": {"access": _ref("Access")}}),
    Endpoint("DELETE", "/api/rooms/{room}/access/{user}", "clear_access",
             "Let the authorize hook decide the user's access again from its next join",
             _obj(room={"type": "string"}, user={"type": "string"}, cleared={"type": "boolean"})),
    Endpoint("GET", "/api/sessions", "list_sessions", "Sessions open now, or those of one user",
             _obj(sessions={"type": "array", "items": _ref("Session")}),
             query=(Param("user", "only this identity id's sessions"), *ROOM_QUERY)),
    Endpoint("DELETE", "/api/sessions/{session}", "disconnect_session",
             "End a session: its client is closed with 4013 DISCONNECTED",
             _obj(session={"type": "string"}, disconnected={"type": "integer"})),
    Endpoint("DELETE", "/api/users/{user}/sessions", "disconnect_user",
             "End every session of a user (4013 DISCONNECTED)",
             _obj(user={"type": "string"}, disconnected={"type": "integer"})),
)


def _match(segments: list[str]) -> tuple[list[Endpoint], dict[str, str]]:
    """The endpoints whose path matches (any method), and the path's named parts."""
    found: list[Endpoint] = []
    params: dict[str, str] = {}
    for endpoint in ENDPOINTS:
        pattern = endpoint.segments
        if len(pattern) != len(segments):
            continue
        named = {}
        for want, got in zip(pattern, segments, strict=True):
            if want.startswith("{"):
                named[want[1:-1]] = got
            elif want != got:
                break
        else:
            found.append(endpoint)
            params = named
    return found, params


def good_api_key(key: str) -> bool:
    return len(key) >= MIN_KEY and key.isascii() and key.isprintable() and " " not in key


def serve_api(engine: Engine, keys: Sequence[str]) -> None:
    """Serve the server API (spec/api.md) under `/api/` on the engine's port, to requests
    that give one of `keys` as `Authorization: Bearer KEY`.

    Raises:
        ValueError: no key, a key shorter than MIN_KEY characters or not printable ASCII, or
            the API is served already.
    """
    for key in keys:
        if not good_api_key(key):
            raise ValueError(KEY_RULE)
    if not keys:
        raise ValueError("give at least one API key")
    engine.router.add(PREFIX, ServerApi(engine, keys).handle)


class ServerApi:
    """The routes under `/api/` (spec/api.md).

    Args:
        engine: what the API acts on.
        keys: the API keys a request may give (`Authorization: Bearer KEY`).
    """

    def __init__(self, engine: Engine, keys: Sequence[str]) -> None:
        self._engine = engine
        self._keys = [key.encode() for key in keys]
        self._config = engine.config

    async def handle(self, ex: Exchange, request: h11.Request) -> None:
        target = request.target.decode("ascii", "replace")
        path, _, query_text = target.partition("?")
        method = request.method.decode("ascii", "replace")
        self._authenticate(request)
        try:
            segments = [urllib.parse.unquote(part, errors="strict") for part in path[len(PREFIX) :].split("/")]
            query = urllib.parse.parse_qs(query_text, max_num_fields=20, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise refuse(400, f"bad path or query: {exc}"[:300], ErrorCode.INVALID_FIELD) from None
        endpoints, params = _match(segments)
        if not endpoints:
            raise refuse(404, f"nothing is served at {path[:200]} (spec/api.md lists the routes)", ErrorCode.NOT_FOUND)
        endpoint = next((e for e in endpoints if e.method == method), None)
        if endpoint is None:
            allowed = ", ".join(e.method for e in endpoints)
            raise Refusal(405, f"{method} is not served at {path[:200]}; {allowed} is", (("Allow", allowed),), as_json=True)
        if "room" in params:
            try:
                check_room_name(params["room"])
            except RemoteProtocolError as exc:
                raise refuse(400, exc.message, exc.code) from None
        for name in ("user", "session"):
            if name in params and not _a_name(params[name]):
                raise refuse(400, f"a {name} id is 1..{MAX_IDENTITY_ID} characters, no control character", ErrorCode.INVALID_FIELD)
        binary = endpoint.request_type != "application/json"
        limit = self._config.max_document_bytes + DOCUMENT_SLACK if binary else self._config.max_message_bytes
        body = await ex.body(limit)
        route: Callable[..., Awaitable[None]] = getattr(self, "_" + endpoint.handler)
        try:
            await route(ex, request, body, query, **params)
        except RequestError as exc:
            raise _refusal_for(exc) from None
        except StorageError as exc:
            logger.error("server API: %s %s: the store failed", method, path[:200], exc_info=exc)
            raise refuse(503, "the store failed; try again", ErrorCode.STORAGE_UNAVAILABLE) from None

    def _authenticate(self, request: h11.Request) -> None:
        given = header(request, b"authorization") or ""
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise refuse(401, "give the API key as Authorization: Bearer KEY", ErrorCode.UNAUTHENTICATED,
                         (("WWW-Authenticate", 'Bearer realm="plait"'),))
        candidate = key.strip().encode("latin-1")
        # Compare with every key, in constant time: how long a refusal takes says nothing.
        if not any([hmac.compare_digest(candidate, known) for known in self._keys]):  # noqa: C419 (every key, always)
            raise refuse(401, "wrong API key", ErrorCode.UNAUTHENTICATED, (("WWW-Authenticate", 'Bearer realm="plait"'),))

    # -- rooms -----------------------------------------------------------------------------------

    async def _list_rooms(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]]) -> None:
        limit = _int(query, "limit", 1000, 1, MAX_LIST)
        answer: dict[str, Any] = {"rooms": [info.to_json() for info in self._engine.rooms()[:limit]]}
        if _bool(query, "stored"):
            after = _one(query, "after") or ""
            names = sorted(name for name in await self._engine.store.list_rooms() if name > after)
            answer["stored"] = names[:limit]
        await ex.respond_json(200, answer)

    async def _get_room(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str) -> None:
        info = self._engine.room_info(room)
        if info is not None:
            await ex.respond_json(200, info.to_json())
            return
        if room not in await self._engine.store.list_rooms():
            raise refuse(404, f"no room {room[:256]!r}: none is loaded or stored", ErrorCode.NOT_FOUND)
        await ex.respond_json(200, {"name": room, "state": "stored"})

    async def _delete_room(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str) -> None:
        await self._engine.delete_room(room)
        await ex.respond_json(200, {"room": room, "deleted": True})

    async def _publish(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str) -> None:
        obj = _json_object(body)
        name, payload, key = obj.get("name"), obj.get("payload"), obj.get("key")
        if not isinstance(name, str) or (key is not None and not isinstance(key, str)):
            raise refuse(400, '"name" must be a string, "key" a string if given', ErrorCode.INVALID_FIELD)
        async with self._engine.room(room) as handle:
            try:
                seq = await handle.publish(name, payload, key)
            except ValueError as exc:
                raise refuse(400, str(exc), ErrorCode.INVALID_FIELD) from None
            except ProtocolError as exc:
                raise refuse(400, exc.message, exc.code) from None
            await handle.flushed()
        await ex.respond_json(200, {"room": room, "seq": seq})

    async def _history(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str) -> None:
        since = _int(query, "since", 0, 0, 2**53 - 1)
        async with self._existing(room) as handle:
            history = handle.history(since, _one(query, "epoch"))
        events = [
            {"seq": e.seq, "name": e.name, "payload": value_to_json(e.payload), "session": e.session, "user": e.user}
            for e in history.events
        ]
        answer = {"room": room, "epoch": history.epoch, "head": history.head, "complete": history.complete, "events": events}
        await ex.respond_json(200, answer)

    async def _presence(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str) -> None:
        entries = self._engine.presence(room)
        presence = [{"session": e.session, "identity": value_to_json(e.identity), "state": value_to_json(e.state)} for e in entries]
        await ex.respond_json(200, {"room": room, "presence": presence})

    async def _get_document(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str) -> None:
        form = _one(query, "format") or "yjs"
        if form not in ("yjs", "json"):
            raise refuse(400, f"format is yjs or json, not {form[:40]!r}", ErrorCode.INVALID_FIELD)
        async with self._existing(room) as handle:
            if form == "json":
                document = handle.document_json(_types(query))
                await ex.respond_json(200, {"room": room, "document": value_to_json(document)})
                return
            state_vector = _base64(query, "state_vector")
            try:
                update = handle.document_update(state_vector)
            except Exception as exc:  # pycrdt: a state vector that does not decode
                raise refuse(400, f"state_vector does not decode: {exc}"[:300], ErrorCode.INVALID_UPDATE) from None
        await ex.respond(200, update, "application/octet-stream")

    async def _apply_update(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str) -> None:
        content_type = (header(request, b"content-type") or "").partition(";")[0].strip().lower()
        if content_type != "application/octet-stream":
            raise refuse(415, "send the update as Content-Type: application/octet-stream (Yjs v1 bytes)", ErrorCode.INVALID_FIELD)
        async with self._engine.room(room) as handle:
            handle.apply_update(body)
            await handle.flushed()
            size = handle.document_bytes
        await ex.respond_json(200, {"room": room, "document_bytes": size})

    async def _room_sessions(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str) -> None:
        sessions = [info.to_json() for info in self._engine.sessions(room=room)]
        await ex.respond_json(200, {"room": room, "sessions": sessions})

    async def _set_access(
        self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str, user: str
    ) -> None:
        name = _json_object(body).get("access")
        if not isinstance(name, str) or name not in ACCESS_BY_NAME:
            raise refuse(400, '"access" is one of "read", "comment", "write", "none"', ErrorCode.INVALID_FIELD)
        try:
            changed = self._engine.set_access(user, room, ACCESS_BY_NAME[name])
        except ValueError as exc:
            raise refuse(507, str(exc), ErrorCode.INTERNAL) from None
        await ex.respond_json(200, {"room": room, "user": user, "access": name, "changed": changed})

    async def _clear_access(
        self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], room: str, user: str
    ) -> None:
        cleared = self._engine.clear_access(user, room)
        await ex.respond_json(200, {"room": room, "user": user, "cleared": cleared})

    # -- sessions --------------------------------------------------------------------------------

    async def _list_sessions(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]]) -> None:
        limit = _int(query, "limit", 1000, 1, MAX_LIST)
        sessions = self._engine.sessions(user=_one(query, "user"))[:limit]
        await ex.respond_json(200, {"sessions": [info.to_json() for info in sessions]})

    async def _disconnect_session(
        self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], session: str
    ) -> None:
        if not self._engine.disconnect(session=session):
            raise refuse(404, f"no session {session[:64]!r} is open", ErrorCode.NOT_FOUND)
        await ex.respond_json(200, {"session": session, "disconnected": 1})

    async def _disconnect_user(self, ex: Exchange, request: h11.Request, body: bytes, query: dict[str, list[str]], user: str) -> None:
        count = self._engine.disconnect(user=user)
        await ex.respond_json(200, {"user": user, "disconnected": count})

    def _existing(self, room: str) -> _ExistingRoom:
        return _ExistingRoom(self._engine, room)


class _ExistingRoom:
    """`engine.room(name)` for a read: 404 NOT_FOUND for a room that holds nothing (it was
    never used, or was deleted), rather than a new empty one."""

    def __init__(self, engine: Engine, room: str) -> None:
        self._cm = engine.room(room)
        self._room = room

    async def __aenter__(self) -> RoomHandle:
        handle = await self._cm.__aenter__()
        if handle.empty:
            await self._cm.__aexit__(None, None, None)
            raise refuse(404, f"no room {self._room[:256]!r}: nothing was ever stored in it", ErrorCode.NOT_FOUND)
        return handle

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


# -- reading a request ------------------------------------------------------------------------------


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(400, "the body is not UTF-8", ErrorCode.INVALID_FIELD) from None
    try:
        obj = json.loads(text)
    except RecursionError:  # nested deeper than the parser's stack: far past MAX_DEPTH
        raise refuse(400, f"the body nests deeper than {MAX_DEPTH}", ErrorCode.TOO_DEEP) from None
    except ValueError as exc:
        raise refuse(400, f"the body is not JSON: {exc}"[:300], ErrorCode.INVALID_FIELD) from None
    if not isinstance(obj, dict):
        raise refuse(400, "the body must be a JSON object", ErrorCode.INVALID_FIELD)
    try:
        check_value(obj, MAX_DEPTH)
        return {key: value_from_json(value) for key, value in obj.items()}  # binary as {"$b": ...} (§3.5)
    except ProtocolError as exc:
        raise refuse(400, exc.message, exc.code) from None


def _a_name(text: str) -> bool:
    """Whether `text` can be an identity or session id (spec §4: str≤256, shown to people)."""
    return 1 <= len(text) <= MAX_IDENTITY_ID and text.isprintable()


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if values is not None and len(values) != 1:
        raise refuse(400, f"give {name} once", ErrorCode.INVALID_FIELD)
    return values[0] if values else None


def _int(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    text = _one(query, name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise refuse(400, f"{name} is a whole number {low}..{high}, not {text[:40]!r}", ErrorCode.INVALID_FIELD)
    return int(text)


def _bool(query: dict[str, list[str]], name: str) -> bool:
    text = _one(query, name)
    if text not in (None, "true", "false", "1", "0"):
        raise refuse(400, f"{name} is true or false, not {text[:40]!r}", ErrorCode.INVALID_FIELD)
    return text in ("true", "1")


def _base64(query: dict[str, list[str]], name: str) -> bytes | None:
    text = _one(query, name)
    if text is None:
        return None
    try:
        return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise refuse(400, f"{name} is base64", ErrorCode.INVALID_FIELD) from None


def _types(query: dict[str, list[str]]) -> dict[str, str]:
    text = _one(query, "types")
    types: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        name, _, kind = item.rpartition(":")
        if not name or kind not in ("text", "map", "array"):
            raise refuse(400, f"types is ROOT:text|map|array,..., not {item[:60]!r}", ErrorCode.INVALID_FIELD)
        types[name] = kind
    return types


# -- the OpenAPI document -----------------------------------------------------------------------------


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the server API, from `ENDPOINTS` (spec/openapi.json)."""
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        names = [s[1:-1] for s in e.segments if s.startswith("{")]
        operation: dict[str, Any] = {
            "operationId": e.handler,
            "summary": e.summary,
            "parameters": [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
            ] + [{"name": p.name, "in": "query", "description": p.description, "schema": p.schema} for p in e.query],
            "responses": {
                str(e.status): {"description": "done", "content": {e.response_type: {"schema": e.response}}},
                "default": {"description": "refused (spec/api.md, Errors)",
                            "content": {"application/json": {"schema": _ref("Error")}}},
            },
        }
        if e.request is not None:
            operation["requestBody"] = {"required": True, "content": {e.request_type: {"schema": e.request}}}
        paths.setdefault(e.path, {})[e.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Plait server API", "version": "1", "description": "spec/api.md"},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": paths,
    }
