"""The server API (spec/api.md) over real sockets: a backend publishing, reading and editing
rooms, and an operator changing access and disconnecting users while clients are connected."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pycrdt
import pytest
import trio
import trio.testing

from plait.client import AccessChange, ConnectionClosed, DocumentReset, Forbidden, PresenceChanged, RoomDeleted, RoomEnded, connect
from plait.engine import Engine, EngineConfig, serve_api
from plait.engine.testing import TokenHooks
from plait.protocol import Access, AccessChanged, ErrorCode, Event, Join, Publish
from plait.storage import MemoryStore

from .httpclients import HttpPeer, http_client

pytestmark = pytest.mark.slow

KEY = "test-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
CONFIG = EngineConfig(handshake_timeout=2, heartbeat=2, tick=0.01, presence_grace=0.1, room_idle_grace=0.2)


class Served:
    def __init__(self, engine: Engine, port: int, api: httpx.AsyncClient) -> None:
        self.engine, self.port, self.api = engine, port, api

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def call(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.api.request(method, path, headers={**AUTH, **kwargs.pop("headers", {})}, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.headers.get("content-type") == "application/json" else response.content


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with Engine(store=MemoryStore(), config=CONFIG, hooks=TokenHooks()) as engine, trio.open_nursery() as nursery:
        serve_api(engine, [KEY])
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with http_client(port) as api:
            yield Served(engine, port, api)
        nursery.cancel_scope.cancel()


def text(doc: pycrdt.Doc) -> str:
    return str(doc.get("text", type=pycrdt.Text))


async def until(check: Any, timeout: float = 5) -> None:
    """Until `check()` holds, looking every 10 ms (state another task changes)."""
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.01)


# -- the key, the routes, bad requests ----------------------------------------------------------------


async def test_every_request_needs_the_key(served: Served) -> None:
    missing = await served.api.get("/api/rooms")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["code"] == ErrorCode.UNAUTHENTICATED
    wrong = await served.api.get("/api/rooms", headers={"Authorization": "Bearer not-the-key-at-all"})
    assert wrong.status_code == 401 and wrong.json()["name"] == "UNAUTHENTICATED"
    basic = await served.api.get("/api/rooms", headers={"Authorization": f"Basic {KEY}"})
    assert basic.status_code == 401
    assert (await served.call("GET", "/api/rooms")) == {"rooms": []}


async def test_an_engine_without_the_api_serves_no_api_route() -> None:
    async with Engine(config=CONFIG) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with http_client(port) as http:
            response = await http.get("/api/rooms", headers=AUTH)
        assert response.status_code == 404
        nursery.cancel_scope.cancel()


def test_api_keys_must_be_long_and_plain() -> None:
    engine = Engine()
    for bad in ([], ["short"], ["a key with spaces in it"], ["ünïcödé-key-0123456789"]):
        with pytest.raises(ValueError, match="API key"):
            serve_api(engine, bad)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/api/nothing", None, 404, ErrorCode.NOT_FOUND),
        ("GET", "/api/rooms/a/b/c/d", None, 404, ErrorCode.NOT_FOUND),
        ("PATCH", "/api/rooms", None, 405, None),
        ("GET", "/api/rooms/%00bad/events", None, 400, ErrorCode.INVALID_ROOM_NAME),
        ("GET", "/api/rooms/%ff/events", None, 400, ErrorCode.INVALID_FIELD),
        ("GET", "/api/rooms/" + "x" * 300, None, 400, ErrorCode.INVALID_ROOM_NAME),
        ("GET", "/api/rooms/never-used", None, 404, ErrorCode.NOT_FOUND),
        ("GET", "/api/rooms/never-used/document", None, 404, ErrorCode.NOT_FOUND),
        ("GET", "/api/rooms/never-used/events", None, 404, ErrorCode.NOT_FOUND),
        ("GET", "/api/rooms/r/events?since=-1", None, 400, ErrorCode.INVALID_FIELD),
        ("GET", "/api/rooms/r/events?since=1&since=2", None, 400, ErrorCode.INVALID_FIELD),
        ("GET", "/api/rooms?limit=0", None, 400, ErrorCode.INVALID_FIELD),
        ("GET", "/api/rooms?stored=maybe", None, 400, ErrorCode.INVALID_FIELD),
        ("POST", "/api/rooms/r/events", b"{not json", 400, ErrorCode.INVALID_FIELD),
        ("POST", "/api/rooms/r/events", b"[1, 2]", 400, ErrorCode.INVALID_FIELD),
        ("POST", "/api/rooms/r/events", b'{"payload": 1}', 400, ErrorCode.INVALID_FIELD),
        ("POST", "/api/rooms/r/events", b'{"name": ""}', 400, ErrorCode.INVALID_FIELD),
        ("POST", "/api/rooms/r/events", b'{"name": "x", "key": 5}', 400, ErrorCode.INVALID_FIELD),
        ("POST", "/api/rooms/r/events", b'{"name": "rejected"}', 422, ErrorCode.EVENT_REJECTED),
        ("POST", "/api/rooms/r/events", b'{"name": "app-error"}', 422, 4000),
        ("POST", "/api/rooms/r/events", b'{"name": "x", "payload": ' + b"[" * 40 + b"]" * 40 + b"}", 400, ErrorCode.TOO_DEEP),
        ("POST", "/api/rooms/r/document", b"\xff\xff\xff", 415, ErrorCode.INVALID_FIELD),
        ("PUT", "/api/rooms/r/access/u", b'{"access": "admin"}', 400, ErrorCode.INVALID_FIELD),
        ("PUT", "/api/rooms/r/access/u", b"{}", 400, ErrorCode.INVALID_FIELD),
        ("DELETE", "/api/sessions/no-such-session", None, 404, ErrorCode.NOT_FOUND),
        ("GET", "/api/rooms/r/document?format=xml", None, 400, ErrorCode.INVALID_FIELD),
        ("POST", "/api/rooms/r/events", b'{"name": "x", "payload": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, ErrorCode.TOO_DEEP),
        ("PUT", "/api/rooms/r/access/u", b'{"access": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, ErrorCode.TOO_DEEP),
        ("POST", "/api/rooms/r/events", b'{"name": "x", "payload": {"$b": "not base64!"}}', 400, ErrorCode.INVALID_FIELD),
        ("POST", "/api/rooms/r/events", b'{"name": "\xff"}', 400, ErrorCode.INVALID_FIELD),
        ("PUT", "/api/rooms/r/access/", b'{"access": "read"}', 400, ErrorCode.INVALID_FIELD),
        ("PUT", "/api/rooms/r/access/a%01b", b'{"access": "read"}', 400, ErrorCode.INVALID_FIELD),
        ("DELETE", "/api/users/" + "u" * 300 + "/sessions", None, 400, ErrorCode.INVALID_FIELD),
    ],
)
async def test_bad_requests_get_a_status_and_a_code(
    served: Served, method: str, path: str, body: bytes | None, status: int, code: int | None
) -> None:
    if path.startswith("/api/rooms/r/") and method == "GET":  # a room that exists, so only the query is wrong
        await served.call("POST", "/api/rooms/r/events", content=b'{"name": "x"}')
    response = await served.api.request(method, path, content=body, headers=AUTH)
    assert response.status_code == status, response.text
    obj = response.json()
    assert obj["status"] == status and obj["error"]
    if code is not None:
        assert obj["code"] == code
    if status == 405:
        assert response.headers["allow"] == "GET"


async def test_a_server_error_is_500_with_the_internal_code(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.engine, "rooms", broken)
    response = await served.api.get("/api/rooms", headers=AUTH)
    assert response.status_code == 500
    assert response.json() == {"status": 500, "error": "internal error", "code": ErrorCode.INTERNAL, "name": "INTERNAL"}
    assert (await served.api.get("/api/sessions", headers=AUTH)).status_code == 200  # the server goes on


async def test_binary_and_dollar_keys_travel_in_the_protocols_json_form(served: Served) -> None:
    payload = {"blob": {"$b": "AAEC"}, "odd": {"$map": [["$ref", 1]]}}
    await served.call("POST", "/api/rooms/bin/events", json={"name": "file", "payload": payload})
    async with served.engine.room("bin") as room:
        assert room.history().events[0].payload == {"blob": b"\x00\x01\x02", "odd": {"$ref": 1}}
    history = await served.call("GET", "/api/rooms/bin/events")
    assert history["events"][0]["payload"] == payload


async def test_a_bad_update_is_refused_and_changes_nothing(served: Served) -> None:
    binary = {"Content-Type": "application/octet-stream"}
    await served.call("POST", "/api/rooms/r/document", content=update_inserting("hello"), headers=binary)
    refused = await served.api.post("/api/rooms/r/document", content=b"\x01\x02garbage", headers={**AUTH, **binary})
    assert refused.status_code == 400 and refused.json()["code"] == ErrorCode.INVALID_UPDATE
    doc = await served.call("GET", "/api/rooms/r/document?format=json&types=text:text")
    assert doc["document"] == {"text": "hello"}


def update_inserting(what: str, client_id: int = 77) -> bytes:
    doc = pycrdt.Doc(client_id=client_id)
    doc.get("text", type=pycrdt.Text).insert(0, what)
    return doc.get_update()


# -- what a backend does -----------------------------------------------------------------------------


async def test_a_publish_reaches_websocket_and_sse_clients_with_the_next_seq_once(served: Served) -> None:
    async with connect(served.url, token="alice") as alice, alice.join("news") as room:
        await room.synced()
        events = room.events()
        first = await room.publish("chat", {"text": "mine"})
        sse = HttpPeer(served.api)
        await sse.open("bob")
        async with trio.open_nursery() as nursery:
            await nursery.start(sse.stream, served.port)
            await sse.send(Join(sse.next_ref(), "news", None, None))
            body = {"name": "notice", "payload": {"text": "from the backend", "n": [1, 2.5, None]}, "key": "k-1"}
            published = await served.call("POST", "/api/rooms/news/events", json=body)
            assert published == {"room": "news", "seq": first + 1}
            again = await served.call("POST", "/api/rooms/news/events", json=body)
            assert again == published  # the idempotency key: nothing more published
            await served.call("POST", "/api/rooms/news/events", json={"name": "after"})
            seen = [await anext(events) for _ in range(3)]
            assert [(e.seq, e.name) for e in seen] == [(first, "chat"), (first + 1, "notice"), (first + 2, "after")]
            assert seen[1].payload == body["payload"] and seen[1].user is None and seen[1].session is None
            await sse.wait_for(lambda: len(sse.of_kind(Event)) == 2)
            assert [(e.seq, e.name) for e in sse.of_kind(Event)] == [(first + 1, "notice"), (first + 2, "after")]
            history = await served.call("GET", f"/api/rooms/news/events?since={first}")
            assert [e["name"] for e in history["events"]] == ["notice", "after"]
            assert history["complete"] is True and history["head"] == first + 2
            nursery.cancel_scope.cancel()


async def test_rooms_presence_sessions_and_the_document_as_a_backend_reads_them(served: Served) -> None:
    async with connect(served.url, token="alice") as alice, alice.join("doc") as room:
        await room.set_presence({"name": "Alice"})
        room.text.insert(0, "hello")
        await room.flushed()
        await until(lambda: served.engine.presence("doc") and served.engine.presence("doc")[0].state == {"name": "Alice"})
        rooms = (await served.call("GET", "/api/rooms"))["rooms"]
        assert [(r["name"], r["members"], r["users"], r["state"]) for r in rooms] == [("doc", 1, 1, "live")]
        assert rooms[0]["document_bytes"] > 0
        assert (await served.call("GET", "/api/rooms/doc"))["name"] == "doc"
        presence = (await served.call("GET", "/api/rooms/doc/presence"))["presence"]
        assert [(p["identity"]["id"], p["state"]) for p in presence] == [("alice", {"name": "Alice"})]
        sessions = (await served.call("GET", "/api/rooms/doc/sessions"))["sessions"]
        assert [(s["user"], s["protocol"], s["transport"], s["rooms"]) for s in sessions] == [
            ("alice", "native", "websocket", [{"room": "doc", "channel": 1, "access": "write"}])
        ]
        assert (await served.call("GET", "/api/sessions?user=nobody"))["sessions"] == []
        as_json = await served.call("GET", "/api/rooms/doc/document?format=json")
        assert as_json["document"] == {"text": "hello"}
        as_yjs = await served.call("GET", "/api/rooms/doc/document")
        copy = pycrdt.Doc()
        copy.apply_update(as_yjs)
        assert text(copy) == "hello"
        # Only what a peer lacks, given its state vector (base64url, as a query parameter).
        import base64

        sv = base64.urlsafe_b64encode(copy.get_state()).decode()
        lacking = await served.call("GET", f"/api/rooms/doc/document?state_vector={sv}")
        assert len(lacking) < len(as_yjs)
        # An edit from the backend reaches the member and is durable when answered.
        answer = await served.call(
            "POST", "/api/rooms/doc/document", content=update_inserting("!! ", 5), headers={"Content-Type": "application/octet-stream"}
        )
        assert answer["document_bytes"] > 0
        await until(lambda: text(room.doc) == "!! hello")
    stored = await served.engine.store.load("doc")
    assert stored.updates  # committed before the API answered


# -- what an operator does to connected users ------------------------------------------------------------


async def test_a_writer_made_read_only_is_told_and_its_next_edit_is_refused(served: Served) -> None:
    async with connect(served.url, token="bob") as bob, bob.join("doc") as room:
        changes = room.changes()
        room.text.insert(0, "before ")
        await room.flushed()
        answer = await served.call("PUT", "/api/rooms/doc/access/bob", json={"access": "read"})
        assert answer == {"room": "doc", "user": "bob", "access": "read", "changed": 1}
        change = await next_of(changes, AccessChange)
        assert change.access == 1 and room.access == 1
        room.text.insert(0, "after ")  # sent after the server changed it: refused
        reset = await next_of(changes, DocumentReset)
        assert isinstance(reset.error, Forbidden)
        with pytest.raises(Forbidden):
            await room.publish("chat", "read-only people do not chat")
        async with served.engine.room("doc") as handle:
            assert str(handle.doc.get("text", type=pycrdt.Text)) == "before "
    # The override holds for the next join too, until cleared.
    async with connect(served.url, token="bob") as bob, bob.join("doc") as room:
        await room.synced()
        assert room.access == 1
    assert (await served.call("DELETE", "/api/rooms/doc/access/bob"))["cleared"] is True
    async with connect(served.url, token="bob") as bob, bob.join("doc") as room:
        await room.synced()
        assert room.access == 2


async def next_of(changes: Any, kind: type, check: Any = lambda change: True, timeout: float = 5) -> Any:
    """The next change of `kind` that passes `check`, within `timeout` real seconds (the
    reconnect grace is 0.1 s here, so a lingering presence would show as a timeout)."""
    with trio.fail_after(timeout):
        async for change in changes:
            if isinstance(change, kind) and check(change):
                return change
    raise AssertionError(f"no {kind.__name__}")


async def test_access_taken_away_ends_the_membership_and_refuses_rejoining(served: Served) -> None:
    async with connect(served.url, token="carol") as carol:
        async with carol.join("doc") as room:
            await room.synced()
            await served.call("PUT", "/api/rooms/doc/access/carol", json={"access": "none"})
            with pytest.raises(Forbidden):
                await room.publish("chat", "still here?")
        async with carol.join("doc") as room:
            with pytest.raises(Forbidden):
                await room.synced()
    # Another user is not affected.
    async with connect(served.url, token="dave") as dave, dave.join("doc") as room:
        await room.synced()
        assert room.access == 2


async def test_a_disconnected_user_is_closed_and_stays_out(served: Served) -> None:
    closed: list[BaseException] = []
    async with connect(served.url, token="erin") as first, connect(served.url, token="erin") as second:
        async with first.join("doc") as r1, second.join("other") as r2:
            await r1.synced()
            await r2.synced()
            assert len((await served.call("GET", "/api/sessions?user=erin"))["sessions"]) == 2
            answer = await served.call("DELETE", "/api/users/erin/sessions")
            assert answer == {"user": "erin", "disconnected": 2}
            for client in (first, second):
                with trio.fail_after(5):
                    await client.wait_state("closed")  # and not reconnecting
                assert client.closed_error is not None
                closed.append(client.closed_error)
    assert all(isinstance(e, ConnectionClosed) and e.code == 4013 and not e.retryable for e in closed)
    assert served.engine.sessions(user="erin") == []


async def test_a_disconnected_user_leaves_presence_at_once_not_after_the_reconnect_grace() -> None:
    config = dataclasses.replace(CONFIG, presence_grace=60)  # a dropped connection lingers a minute
    async with Engine(config=config, hooks=TokenHooks()) as engine, trio.open_nursery() as nursery:
        serve_api(engine, [KEY])
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        served = Served(engine, port, None)  # type: ignore[arg-type]
        async with http_client(port) as api, connect(served.url, token="fay") as fay, connect(served.url, token="gus") as gus:
            async with fay.join("doc") as r1, gus.join("doc") as r2:
                changes = r2.changes()
                await r1.synced()
                await until(lambda: any(e.identity["id"] == "fay" for e in r2.presence.values()))  # gus sees fay
                assert (await api.delete("/api/users/fay/sessions", headers=AUTH)).status_code == 200
                await next_of(changes, PresenceChanged, lambda c: c.users_left == ("fay",))
                assert [e.identity["id"] for e in engine.presence("doc")] == ["gus"]
        nursery.cancel_scope.cancel()


async def test_a_member_is_told_when_the_server_ends_its_room(served: Served) -> None:
    async with connect(served.url, token="hal") as hal:
        async with hal.join("a") as a, hal.join("b") as b:
            await a.synced()
            await b.synced()
            changes_a, changes_b = a.changes(), b.changes()
            await served.call("PUT", "/api/rooms/a/access/hal", json={"access": "none"})
            await served.call("DELETE", "/api/rooms/b")
            assert isinstance((await next_of(changes_a, RoomEnded)).error, Forbidden)
            assert isinstance((await next_of(changes_b, RoomEnded)).error, RoomDeleted)


async def test_a_client_joining_and_editing_a_room_being_deleted_never_breaks(served: Served) -> None:
    """Deletes racing a client's joins, edits and flushes: each round ends with the room's
    error or with the edit stored, and the client lives on (it once died in a reset)."""
    async with connect(served.url, token="ida") as ida, trio.open_nursery() as nursery:

        async def delete_often() -> None:
            for _ in range(200):
                await served.engine.delete_room("race")
                await trio.sleep(0.005)

        nursery.start_soon(delete_often)
        outcomes: set[str] = set()
        with trio.fail_after(60):
            for _ in range(40):
                try:
                    async with ida.join("race") as room:
                        await room.synced()
                        room.text.insert(0, "x")
                        await room.flushed()
                        outcomes.add("stored")
                except RoomDeleted as exc:
                    outcomes.add(type(exc).__name__)
        nursery.cancel_scope.cancel()
        assert ida.closed_error is None and ida.is_open
        assert outcomes <= {"stored", "RoomDeleted"}


async def test_deleting_a_room_ends_it_for_members_and_deletes_what_was_stored(served: Served) -> None:
    async with connect(served.url, token="frank") as frank:
        async with frank.join("gone") as room:
            room.text.insert(0, "soon deleted")
            await room.flushed()
            await served.call("POST", "/api/rooms/gone/events", json={"name": "last words"})
            assert "gone" in (await served.call("GET", "/api/rooms?stored=true"))["stored"]
            assert await served.call("DELETE", "/api/rooms/gone") == {"room": "gone", "deleted": True}
            with pytest.raises(RoomDeleted):
                await room.publish("chat", "hello?")
            room.text.insert(0, "lost with the room ")  # not an error on leaving: the room said why
        assert "gone" not in await served.engine.store.list_rooms()
        assert (await served.api.get("/api/rooms/gone", headers=AUTH)).status_code == 404
        async with frank.join("gone") as again:  # a new, empty room of the same name
            await again.synced()
            assert text(again.doc) == "" and again.last_seq == 0


async def test_a_join_racing_a_delete_waits_and_gets_a_fresh_room(served: Served) -> None:
    async with served.engine.room("race") as handle:
        handle.apply_update(update_inserting("old"))
        await handle.flushed()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.engine.delete_room, "race")
        await trio.testing.wait_all_tasks_blocked()  # the delete is under way
        async with served.engine.room("race") as fresh:
            assert fresh.empty
    assert "race" not in await served.engine.store.list_rooms()


async def test_a_raw_client_sees_access_changed_before_any_refusal(served: Served) -> None:
    """The frames, in order, on a native connection: access_changed, then FORBIDDEN for what
    it sends after (spec §5.2)."""
    from plait.protocol import Error, Hello, decode, encode

    transport = served.engine.connect_memory("/")
    await transport.send_message(encode(Hello((1,), "hank", {})))
    await transport.send_message(encode(Join(1, "doc", None, None)))
    frames: list[Any] = []
    with trio.fail_after(5):
        while not any(type(f).__name__ == "PresenceSnapshot" for f in frames):
            frames += decode(await transport.receive_message())
        served.engine.set_access("hank", "doc", Access.READ)
        await transport.send_message(encode(Publish(1, 2, "chat", "x", None)))
        while not any(isinstance(f, Error) for f in frames):
            frames += decode(await transport.receive_message())
    kinds = [type(f).__name__ for f in frames if isinstance(f, (AccessChanged, Error))]
    assert kinds == ["AccessChanged", "Error"]
    assert next(f for f in frames if isinstance(f, Error)).code == ErrorCode.FORBIDDEN


def test_the_openapi_document_is_the_one_the_code_generates() -> None:
    from pathlib import Path

    from plait.engine._api import openapi

    committed = json.loads((Path(__file__).parents[2] / "spec" / "openapi.json").read_text())
    assert committed == openapi(), "regenerate: python spec/make_openapi.py"
