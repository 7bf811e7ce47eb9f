"""The HTTP transports (spec §14) over real sockets on 127.0.0.1: an event-stream client, a
long-poll client and a WebSocket client in one room; resume with Last-Event-ID; sessions that
end; CORS; JSON over WebSocket."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pycrdt
import pytest
import trio
import trio_websocket

from plait.client import connect
from plait.engine import Engine, EngineConfig
from plait.engine.testing import TokenHooks
from plait.protocol import (
    CursorMove,
    Cursors,
    ErrorCode,
    Event,
    Join,
    Joined,
    PresenceDiff,
    PresenceSet,
    PresenceSnapshot,
    Publish,
    SyncStep2,
    Typing,
    TypingState,
    encode_json,
)
from plait.storage import MemoryStore, RoomData

from .httpclients import HttpPeer, SseEvent, event_stream, http_client, serving

pytestmark = pytest.mark.slow

CONFIG = EngineConfig(handshake_timeout=2, heartbeat=2, tick=0.01, presence_grace=0.2, http_session_grace=3)


@pytest.fixture
async def port(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    async with serving(getattr(request, "param", CONFIG)) as port:
        yield port


@pytest.fixture
async def http(port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(port) as client:
        yield client


def text_of(doc: pycrdt.Doc) -> str:
    return str(doc.get("text", type=pycrdt.Text))


def insert(at: int, what: str) -> Any:
    return lambda doc: doc.get("text", type=pycrdt.Text).insert(at, what)


def presence_of(peer: HttpPeer) -> dict[str, dict[str, Any]]:
    """user id -> presence state, as the peer's frames tell it."""
    users: dict[str, dict[str, Any]] = {}
    sessions: dict[str, str] = {}
    for frame in peer.frames:
        if isinstance(frame, PresenceSnapshot):
            users.clear()
            for e in frame.entries:
                sessions[e.session] = e.identity["id"]
                users[e.identity["id"]] = e.state
        elif isinstance(frame, PresenceDiff):
            for e in frame.joined:
                sessions[e.session] = e.identity["id"]
                users[e.identity["id"]] = e.state
            for u in frame.updated:
                users[sessions[u.session]] = u.state
            for s in frame.left:
                users.pop(sessions.get(s, ""), None)
    return users


def cursors_of(peer: HttpPeer) -> dict[str, Any]:
    """session -> its latest cursor position, as the peer's frames tell it."""
    return {c.session: c.position for f in peer.of_kind(Cursors) for c in f.moves}


async def join(peer: HttpPeer, room: str) -> int:
    """Join through a POST; the channel, from the answer in the response body."""
    answers = await peer.send(Join(peer.next_ref(), room, peer.doc.get_state(), None))
    assert answers[0]["kind"] == "joined", answers
    return answers[0]["channel"]


async def test_an_event_stream_a_long_poll_and_a_websocket_client_share_a_room(port: int, http: httpx.AsyncClient) -> None:
    sse, poll = HttpPeer(http), HttpPeer(http)
    await sse.open("sse-user")
    await poll.open("poll-user")
    async with trio.open_nursery() as nursery:
        await nursery.start(sse.stream, port)
        nursery.start_soon(poll.poll_forever)
        async with connect(f"ws://127.0.0.1:{port}/", "ws-user") as client, client.join("room") as room:
            await room.synced()
            sse_channel, poll_channel = await join(sse, "room"), await join(poll, "room")
            # Presence, cursors, typing, events and edits from each of the three.
            await room.set_presence({"name": "ws"})
            await room.move_cursor(1)
            room.text.insert(0, "ws ")
            for peer, channel, name in ((sse, sse_channel, "sse"), (poll, poll_channel, "poll")):
                answers = await peer.send(
                    PresenceSet(channel, peer.next_ref(), {"name": name}),
                    CursorMove(channel, {"at": name}),
                    Typing(channel, True),
                    Publish(channel, peer.next_ref(), "chat", f"from {name}", None),
                    peer.local_update(channel, insert(0, f"{name} ")),
                )
                assert [a["kind"] for a in answers] == ["ack", "ack", "ack"], answers  # presence, publish, update
            await room.publish("chat", "from ws")
            await room.flushed()

            expected_users = {"ws-user": {"name": "ws"}, "sse-user": {"name": "sse"}, "poll-user": {"name": "poll"}}
            for peer in (sse, poll):
                await peer.wait_for(lambda p=peer: presence_of(p) == expected_users)
                await peer.wait_for(lambda p=peer: sorted(f.payload for f in p.of_kind(Event)) == ["from poll", "from sse", "from ws"])
                await peer.wait_for(lambda p=peer: sorted(text_of(p.doc).split()) == ["poll", "sse", "ws"])
                other, other_name = (poll, "poll") if peer is sse else (sse, "sse")
                await peer.wait_for(
                    lambda p=peer, o=other, n=other_name: 1 in cursors_of(p).values() and cursors_of(p).get(o.session) == {"at": n}
                )
                await peer.wait_for(lambda p=peer: any({sse.session, poll.session} <= set(f.sessions) for f in p.of_kind(TypingState)))
            with trio.fail_after(10):
                while not (
                    {e.identity["id"]: e.state for e in room.presence.values()} == {k: v for k, v in expected_users.items() if k != "ws-user"}  # noqa: E501
                    and sorted(str(room.text).split()) == ["poll", "sse", "ws"]
                    and {sse.session, poll.session} <= set(room.cursors)
                    and {sse.session, poll.session} <= room.typing
                ):
                    await trio.sleep(0.01)
            assert room.cursors[sse.session] == {"at": "sse"}
            assert text_of(sse.doc) == text_of(poll.doc) == str(room.text)
        nursery.cancel_scope.cancel()


async def test_curl_style_subscription_shows_events_as_they_happen_and_resumes(port: int, http: httpx.AsyncClient) -> None:
    """`GET /v1/events?room=R`: the session is made and joined by the request; its ids name
    the session, so a reconnect with Last-Event-ID gets exactly what it missed."""
    got: list[SseEvent] = []

    async def follow(last_id: str | None, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        async with event_stream(port, "/v1/events?room=feed&token=viewer", headers) as (status, _, events):
            assert status == 200
            task_status.started()
            async for event in events:
                got.append(event)

    async with connect(f"ws://127.0.0.1:{port}/", "writer") as client, client.join("feed") as room:
        async with trio.open_nursery() as nursery:
            await nursery.start(follow, None)
            with trio.fail_after(10):
                while not any(e.type == "presence_snapshot" for e in got):
                    await trio.sleep(0.01)
            for i in range(3):
                await room.publish("chat", {"n": i})
            with trio.fail_after(10):
                while sum(e.type == "chat" for e in got) < 3:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()  # the stream is cut
        assert got[0].type == "session" and got[1].type == "welcome"
        last_id = [e.id for e in got if e.id][-1]
        room.text.insert(0, "while away")
        for i in range(3, 6):
            await room.publish("chat", {"n": i})
        await room.flushed()
        got.clear()
        async with trio.open_nursery() as nursery:
            await nursery.start(follow, last_id)
            with trio.fail_after(10):
                while sum(e.type == "chat" for e in got) < 3 or not any(e.type == "update" for e in got):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    resumed = [json.loads(e.data) for e in got if e.type == "resumed"]
    assert resumed == [{"complete": True, "position": int(last_id.rsplit(".", 1)[1])}]
    assert [json.loads(e.data)["payload"]["n"] for e in got if e.type == "chat"] == [3, 4, 5]  # each once
    assert not any(e.type in ("welcome", "joined") for e in got)  # the same session, not a new one


@pytest.mark.parametrize("port", [EngineConfig(handshake_timeout=2, heartbeat=2, resume_bytes=600)], indirect=True)
async def test_a_resume_past_what_the_session_kept_says_so(port: int, http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open()
    async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("r") as room:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.stream, port)
            await join(peer, "r")
            early = peer.last_id
            for _ in range(10):
                await room.publish("chat", "x" * 100)
            await peer.wait_for(lambda: len(peer.of_kind(Event)) == 10)
            nursery.cancel_scope.cancel()
    # The client lost everything after `early` (say, in a proxy's buffer); the session kept
    # only the last 600 bytes of what it sent.
    peer.last_id, peer.frames = early, []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.stream, port)
        await peer.wait_for(lambda: any(e.type == "resumed" for e in peer.meta))
        nursery.cancel_scope.cancel()
    assert json.loads(peer.meta[-1].data)["complete"] is False


async def test_a_subscription_whose_session_ended_starts_anew_and_says_it_is_not_complete(port: int) -> None:
    got: list[SseEvent] = []
    async with event_stream(port, "/v1/events?room=r", {"Last-Event-ID": "gone-1.aaaaaaaaaaaaaaaaaaaaaa.7"}) as (status, _, events):
        assert status == 200
        async for event in events:
            got.append(event)
            if event.type == "joined":
                break
    assert [e.type for e in got[:4]] == ["session", "resumed", "welcome", "joined"]
    assert json.loads(got[1].data) == {"complete": False, "position": None}


async def test_long_poll_answers_at_once_when_something_is_queued_and_waits_otherwise(http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    opened = await peer.open()
    response = await http.get(peer.url("poll") + "&after=0&timeout=5")
    body = response.json()
    assert body["frames"][0]["kind"] == "welcome" and body["position"] == opened["position"] == 1 and body["complete"]
    start = trio.current_time()
    response = await http.get(peer.url("poll") + "&after=1&timeout=1")
    assert response.json() == {"position": 1, "complete": True, "closed": None, "frames": []}
    assert 0.9 < trio.current_time() - start < 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.poll_forever)
        await join(peer, "r")
        await peer.wait_for(lambda: bool(peer.of_kind(Joined)))
        nursery.cancel_scope.cancel()


async def test_a_client_that_stops_polling_is_dropped_after_the_grace_and_its_presence_leaves(port: int, http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open("leaver")
    async with connect(f"ws://127.0.0.1:{port}/", "stayer") as client, client.join("r") as room:
        channel = await join(peer, "r")
        await peer.send(PresenceSet(channel, peer.next_ref(), {"here": True}))
        with trio.fail_after(10):
            while "leaver" not in room.users():
                await trio.sleep(0.01)
        start = trio.current_time()
        with trio.fail_after(CONFIG.http_session_grace + CONFIG.presence_grace + 5):
            while "leaver" in room.users():
                await trio.sleep(0.01)
        assert trio.current_time() - start >= CONFIG.http_session_grace - 0.5
    response = await http.get(peer.url("poll"))
    assert response.status_code in (200, 404)
    if response.status_code == 200:  # its last words, for a moment
        assert response.json()["closed"]["code"] == 4005


async def test_deleting_a_session_ends_it_at_once(port: int, http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open("leaver")
    async with connect(f"ws://127.0.0.1:{port}/", "stayer") as client, client.join("r") as room:
        await join(peer, "r")
        with trio.fail_after(10):
            while "leaver" not in room.users():
                await trio.sleep(0.01)
        response = await http.delete(f"/v1/sessions/{peer.session}?key={peer.key}")
        assert response.status_code == 200
        with trio.fail_after(CONFIG.presence_grace + 5):
            while "leaver" in room.users():
                await trio.sleep(0.01)
    with trio.fail_after(10):  # once its last words were had (or their time is up): how it ended
        while (response := await http.post(peer.url("frames"), content="[]")).status_code != 410:
            await trio.sleep(0.05)
    assert response.json()["code"] == 1000
    with trio.fail_after(10):  # once the session is forgotten, a wrong key learns nothing of it
        while (status := (await http.post(f"/v1/sessions/{peer.session}/frames?key=wrong", content="[]")).status_code) != 404:
            assert status == 403  # until then: the session is there, and the key is wrong
            await trio.sleep(0.05)


@asynccontextmanager
async def http_member_of(room: str) -> AsyncIterator[tuple[Engine, httpx.AsyncClient, HttpPeer]]:
    """An engine serving on 127.0.0.1, an HTTP client of it, and an HTTP session in `room`."""
    async with Engine(config=CONFIG, hooks=TokenHooks()) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with http_client(port) as http:
            peer = HttpPeer(http)
            await peer.open("kicked")
            await join(peer, room)
            yield engine, http, peer
        nursery.cancel_scope.cancel()


async def test_a_request_after_the_session_ended_and_its_stream_took_the_last_words_is_told_how() -> None:
    """The JS SDK met it: the stream took the operator's 4013, and a POST the client sent just
    then got 404, which it took for a lost session: it reconnected instead of stopping."""
    async with http_member_of("r") as (engine, http, peer):
        assert engine.disconnect(session=peer.session) == 1
        with trio.fail_after(10):  # a poll takes the last words
            while (body := (await http.get(peer.url("poll") + "&after=0&timeout=1")).json())["closed"] is None:
                await trio.sleep(0.05)
        assert body["closed"]["code"] == 4013
        with trio.fail_after(10):
            while (response := await http.post(peer.url("frames"), content="[]")).status_code == 200:
                await trio.sleep(0.05)  # bounded: until the session is forgotten
        assert response.status_code == 410, response.text
        assert response.json()["code"] == 4013


@pytest.mark.parametrize(
    "port", [EngineConfig(handshake_timeout=2, heartbeat=2, outbox_max_bytes=64 * 1024, http_session_grace=30)], indirect=True
)
async def test_a_session_nobody_reads_is_closed_too_slow_as_a_websocket_would_be(port: int, http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open()
    await join(peer, "r")
    async with connect(f"ws://127.0.0.1:{port}/") as client, client.join("r") as room:
        for _ in range(8):  # 400 KB: past what the transport holds (256 KiB) and the outbox (64 KiB)
            await room.publish("big", "x" * 50_000)
    with trio.fail_after(10):
        while True:
            body = (await http.get(peer.url("poll") + f"&after={peer.position}&timeout=1")).json()
            peer.position = body["position"]
            if body["closed"] is not None:
                break
    assert body["closed"]["code"] == 4006
    assert body["complete"] is False  # what its outbox held was dropped: it must re-sync (§9)


async def test_a_refused_token_is_401_with_the_error_code(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/sessions", headers={"Authorization": "Bearer bad"})
    assert response.status_code == 401
    assert response.json()["code"] == ErrorCode.UNAUTHENTICATED
    response = await http.get("/v1/events?room=r&token=bad")
    assert response.status_code == 401


async def test_answers_to_refused_requests_come_back_in_the_response(http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open("ro:reader")
    channel = await join(peer, "r")
    answers = await peer.send(peer.local_update(channel, insert(0, "nope")), Publish(channel, peer.next_ref(), "chat", 1, None))
    assert [(a["kind"], a["code"]) for a in answers] == [("error", ErrorCode.FORBIDDEN), ("error", ErrorCode.FORBIDDEN)]


async def test_cors_allows_listed_origins_and_refuses_others_with_a_reason() -> None:
    config = EngineConfig(allow_origins=("https://app.example",))
    async with Engine(config=config) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            preflight = await http.options(
                "/v1/sessions", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "https://app.example"
            assert "POST" in preflight.headers["access-control-allow-methods"]
            assert "last-event-id" in preflight.headers["access-control-allow-headers"].lower()
            created = await http.post("/v1/sessions", headers={"Origin": "https://app.example"})
            assert created.status_code == 201 and created.headers["access-control-allow-origin"] == "https://app.example"
            refused = await http.post("/v1/sessions", headers={"Origin": "https://evil.example"})
            assert refused.status_code == 403 and "evil.example" in refused.json()["error"]
            refused = await http.options("/v1/sessions", headers={"Origin": "https://evil.example"})
            assert refused.status_code == 403
            same = await http.post("/v1/sessions", headers={"Origin": f"http://127.0.0.1:{port}"})
            assert same.status_code == 201 and "access-control-allow-origin" not in same.headers
        nursery.cancel_scope.cancel()


async def test_a_websocket_client_whose_hello_is_text_speaks_json(port: int) -> None:
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send_message('{"kind":"hello","versions":[1],"token":null,"client":{}}')
        welcome = await ws.get_message()
        assert isinstance(welcome, str) and json.loads(welcome)["kind"] == "welcome"
        await ws.send_message('{"kind":"join","ref":1,"room":"r","state_vector":null,"since":null,"epoch":null}')
        message = await ws.get_message()
        assert isinstance(message, str)
        frames = json.loads(message)
        frames = frames if isinstance(frames, list) else [frames]
        assert frames[0]["kind"] == "joined"


def readme_http_blocks(port: int) -> list[str]:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Without a WebSocket")
    section = readme[start : readme.index("\n## ", start)]
    return [b.replace("127.0.0.1:8765", f"127.0.0.1:{port}") for b in re.findall(r"```sh\n(.*?)```", section, re.S)]


async def test_the_readmes_curl_examples_work_as_written(port: int) -> None:
    follow, publish = readme_http_blocks(port)
    assert shutil.which("curl"), "the README's HTTP examples need curl (.ci/run installs it)"
    async with trio.open_nursery() as nursery:
        follower = await trio.lowlevel.open_process(["bash", "-c", follow.strip()], stdout=subprocess.PIPE)
        assert follower.stdout is not None
        seen = b""
        with trio.fail_after(10):
            while b"event: presence_snapshot" not in seen:
                seen += await follower.stdout.receive_some(65536)
        done = await trio.run_process(["bash", "-e", "-c", publish], capture_stdout=True)
        answers = done.stdout.decode().replace("][", "]\n[").splitlines()
        assert [json.loads(a)[0]["kind"] for a in answers] == ["joined", "ack"], done.stdout
        with trio.fail_after(10):
            while b"event: chat" not in seen:
                seen += await follower.stdout.receive_some(65536)
        follower.kill()
        await follower.wait()
        nursery.cancel_scope.cancel()
    chat = seen[seen.index(b"event: chat") :].split(b"\n")[1]
    assert json.loads(chat.removeprefix(b"data: "))["payload"] == {"text": "hi"}


async def test_a_poll_that_cannot_be_complete_answers_at_once(http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open()
    await http.get(peer.url("poll") + "&after=0&timeout=5")  # takes the welcome (1)
    await http.get(peer.url("poll") + "&after=1&timeout=1")  # says it has 1: it may go
    start = trio.current_time()
    body = (await http.get(peer.url("poll") + "&after=0&timeout=5")).json()
    assert body["complete"] is False and trio.current_time() - start < 2


@pytest.mark.parametrize(
    "port", [EngineConfig(handshake_timeout=2, heartbeat=30, tick=0.01, presence_grace=0.2, http_session_grace=1)], indirect=True
)
async def test_a_stream_whose_client_went_starts_the_grace_at_once_not_when_a_write_fails(port: int, http: httpx.AsyncClient) -> None:
    peer = HttpPeer(http)
    await peer.open("leaver")
    async with connect(f"ws://127.0.0.1:{port}/", "stayer") as client, client.join("r") as room:
        async with trio.open_nursery() as nursery:
            await nursery.start(peer.stream, port)
            await join(peer, "r")
            with trio.fail_after(10):
                while "leaver" not in room.users():
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()  # the client goes; the server's next write is 30 s away
        start = trio.current_time()
        with trio.fail_after(10):
            while "leaver" in room.users():
                await trio.sleep(0.01)
        assert trio.current_time() - start < 5  # the grace (1 s) and the presence grace, not 2H


async def test_a_poller_that_took_everything_before_its_session_ended_still_hears_how_it_ended() -> None:
    # The JS SDK met it: a poll took the session's last frames with `closed` still null, the
    # operator's disconnect came a moment later, and the next poll got 404, so the client
    # never learnt the 4013 that tells it not to reconnect (§14.4: `closed` is the last of it).
    async with http_member_of("r") as (engine, http, peer):
        peer.position = 1  # the welcome
        with trio.fail_after(10):  # take everything there is: nothing left unsent
            while True:
                body = (await http.get(peer.url("poll") + f"&after={peer.position}&timeout=1")).json()
                if not body["frames"]:
                    break
                peer.position = body["position"]
        assert peer.position > 1
        assert engine.disconnect(session=peer.session) == 1
        await trio.sleep(0.3)
        response = await http.get(peer.url("poll") + f"&after={peer.position}&timeout=0")
        assert response.status_code == 200, response.text
        assert response.json()["closed"]["code"] == 4013


class GatedStore(MemoryStore):
    """Loads of room "slow" wait until `opened` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.opened, self.loading = trio.Event(), trio.Event()

    async def load(self, room: str) -> RoomData:
        if room == "slow":
            self.loading.set()
            await self.opened.wait()
        return await super().load(room)


async def test_a_join_and_a_later_request_reusing_its_ref_each_get_their_own_answer() -> None:
    """A join that waits is answered after later requests (spec §4.1); over HTTP, where the
    answers come back in the POST's response, each still goes to its own request (§14.3)."""
    store = GatedStore()
    async with Engine(config=CONFIG, hooks=TokenHooks(), store=store) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with http_client(port) as http:
            peer = HttpPeer(http)
            await peer.open("ada")
            channel = await join(peer, "r")
            joined: list[dict[str, Any]] = []

            async def join_slow() -> None:
                joined.extend(await peer.send(Join(7, "slow", None, None)))

            nursery.start_soon(join_slow)
            with trio.fail_after(10):
                await store.loading.wait()
                # Refused by the hook (EVENT_REJECTED) while the join waits: an error with ref 7.
                refused = await peer.send(Publish(channel, 7, "rejected", 1, None))
            assert [(a["kind"], a["ref"], a["code"]) for a in refused] == [("error", 7, ErrorCode.EVENT_REJECTED)]
            store.opened.set()
            with trio.fail_after(10):
                while not joined:  # bounded by the deadline
                    await trio.sleep(0.01)
            assert [(a["kind"], a["ref"]) for a in joined] == [("joined", 7)]
        nursery.cancel_scope.cancel()


async def test_bodies_the_session_cannot_read_yet_are_refused_not_kept() -> None:
    """The session's reader waits (a frame for the channel a waiting join will open): further
    bodies are refused 429 with Retry-After once a message's worth waits, as a WebSocket's
    TCP window would stop the client, instead of held in memory; sent again later, taken."""
    store = GatedStore()
    config = EngineConfig(handshake_timeout=2, heartbeat=2, max_message_bytes=64 * 1024)
    async with Engine(config=config, hooks=TokenHooks(), store=store) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with http_client(port) as http:
            peer = HttpPeer(http)
            await peer.open("ada")
            held = encode_json([Join(1, "slow", None, None), Publish(1, 2, "chat", 1, None)])
            nursery.start_soon(functools.partial(http.post, peer.url("frames"), content=held))  # answered once joined
            with trio.fail_after(10):
                await store.loading.wait()
            responses: list[httpx.Response] = []

            async def post_big(ref: int) -> None:
                body = encode_json([Publish(1, ref, "chat", "x" * 40_000, None)])
                responses.append(await http.post(peer.url("frames"), content=body))

            for ref in range(10, 15):
                nursery.start_soon(post_big, ref)
            with trio.fail_after(10):
                while len(responses) < 4:  # bounded by the deadline
                    await trio.sleep(0.05)
            # One body waits for the reader; the others are refused at once.
            assert [r.status_code for r in responses] == [429] * 4, [r.text for r in responses]
            assert responses[0].headers["retry-after"] == "1" and responses[0].json()["code"] == ErrorCode.RATE_LIMITED
            store.opened.set()
            with trio.fail_after(20):
                while len(responses) < 5:  # bounded by the deadline: taken once the reader goes on
                    await trio.sleep(0.05)
            assert responses[4].status_code == 200, responses[4].text
        nursery.cancel_scope.cancel()


async def test_a_session_that_never_opens_its_event_stream_holds_up_no_one_elses_large_document() -> None:
    # Its large message waited in the log for a consumer while holding one of the engine's
    # large-send slots, until the session's grace ran out (30 s): every other HTTP client's
    # large document waited as long. The log keeps a message without copying it: no slot.
    config = EngineConfig(concurrent_large_sends=1)
    text = "large " * (2 * 1024 * 1024 // 6)  # past large_message_bytes (1 MiB)
    async with Engine(config=config) as engine, trio.open_nursery() as nursery:
        port = await nursery.start(engine.serve_websocket, "127.0.0.1", 0)
        async with engine.room("big") as handle, http_client(port) as http:
            handle.doc.get("text", type=pycrdt.Text).insert(0, text)
            idle = HttpPeer(http)
            await idle.open()
            await idle.send(Join(1, "big", b"\x00", None))  # and never reads
            reader = HttpPeer(http)
            await reader.open()
            await nursery.start(reader.stream, port)
            await reader.send(Join(1, "big", b"\x00", None))
            await reader.wait_for(lambda: reader.of_kind(SyncStep2), timeout=5)
            assert str(reader.doc.get("text", type=pycrdt.Text)) == text
        nursery.cancel_scope.cancel()
