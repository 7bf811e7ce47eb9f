"""Makes the conformance traces in this folder from their inputs.

Each scenario below is the *client side* of a conversation, written by hand: which connection
sends what, when. Running it against the engine under MockClock with a recorder attached adds
everything the server answered; the result is the trace file. The test suite then replays every
trace and fails on any difference, so a trace pins the behaviour spec/protocol.md describes.

    python spec/traces/generate.py          # rewrite every trace
    python spec/traces/generate.py NAME     # rewrite one

Review the diff of a regenerated trace like a change to the spec: it is one.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import msgpack
import pycrdt
import trio
import trio.testing

from plait.engine._record import TraceRecorder
from plait.engine.testing import config_from_settings, replay
from plait.protocol import (
    Close,
    CursorMove,
    Frame,
    Hello,
    Join,
    Leave,
    Open,
    Operation,
    Ping,
    PresencePatch,
    PresenceSet,
    Publish,
    Raw,
    Refresh,
    SyncStep1,
    SyncStep2,
    Trace,
    TraceHeader,
    TraceRecord,
    Typing,
    Update,
)

HERE = Path(__file__).parent
FAST = {"heartbeat": 10.0, "presence_grace": 3.0, "typing_expiry": 5.0, "room_idle_grace": 30.0}


class Script:
    """The inbound half of a trace."""

    def __init__(self, description: str, **settings: Any) -> None:
        self.settings: dict[str, Any] = {"description": description, **FAST, **settings}
        self.records: list[TraceRecord] = []

    def open(self, t: float, conn: str, path: str = "/") -> None:
        self.records.append(TraceRecord(t, conn, "in", Open(path)))

    def send(self, t: float, conn: str, *frames: Frame) -> None:
        self.records.extend(TraceRecord(t, conn, "in", f) for f in frames)

    def raw(self, t: float, conn: str, data: bytes) -> None:
        self.records.append(TraceRecord(t, conn, "in", Raw(data)))

    def close(self, t: float, conn: str, code: int = 1000) -> None:
        self.records.append(TraceRecord(t, conn, "in", Close(code)))

    def operation(self, t: float, op: str, **args: Any) -> None:
        """The server's operator does something (spec/api.md): Engine.set_access, ..."""
        self.records.append(TraceRecord(t, "", "in", Operation(op, args)))

    def hello(self, t: float, conn: str, token: str | None = None, path: str = "/") -> None:
        self.open(t, conn, path)
        self.send(t, conn, Hello((1,), token, {"name": "trace"}))

    def end(self, t: float) -> None:
        """Keep replaying until t, so that time-driven answers (expiry, timeouts) are recorded."""
        self.settings["end"] = t


def text_update(client_id: int, text: str, base: bytes | None = None) -> bytes:
    doc = pycrdt.Doc(client_id=client_id)
    if base:
        doc.apply_update(base)
    before = doc.get_state()
    t = doc.get("text", type=pycrdt.Text)
    t.insert(len(t), text)
    return doc.get_update(before)


def scenarios() -> dict[str, Script]:
    s: dict[str, Script] = {}

    x = s["handshake"] = Script("hello/welcome, ping/pong, then the client closes normally")
    x.hello(0, "s1")
    x.send(1, "s1", Ping(42))
    x.close(2, "s1")

    x = s["unsupported-version"] = Script("no version in common: UNSUPPORTED_VERSION, close 4002")
    x.open(0, "s1")
    x.send(0, "s1", Hello((7, 9), None, {}))

    x = s["unauthenticated"] = Script("a refused token: UNAUTHENTICATED, close 4003", hooks="tokens")
    x.hello(0, "s1", token="bad")

    x = s["too-many-connections"] = Script(
        "a user at max_connections_per_user: TOO_MANY_CONNECTIONS, close 4014; a session that ends frees its place",
        hooks="tokens",
        max_connections_per_user=2,
    )
    x.hello(0, "s1", token="ada")
    x.hello(0, "s2", token="ada")
    x.hello(1, "s3", token="ada")
    x.hello(1, "s4", token="bob")  # another user: not counted with ada
    x.close(2, "s1")
    x.hello(3, "s5", token="ada")

    x = s["handshake-timeout"] = Script("no hello within 10 s: close 4004", check_times=True)
    x.open(0, "s1")
    x.end(11)

    x = s["unexpected-frame"] = Script("a second hello is UNEXPECTED_FRAME (fatal)")
    x.hello(0, "s1")
    x.send(1, "s1", Hello((1,), None, {}))

    x = s["malformed-frame"] = Script("bytes that are not msgpack: MALFORMED_FRAME, close 4001")
    x.hello(0, "s1")
    x.raw(1, "s1", b"\xc1\x00")

    x = s["unknown-kind"] = Script("frame kind 99: UNKNOWN_KIND, close 4001")
    x.hello(0, "s1")
    x.raw(1, "s1", msgpack.packb([99, 1]))

    x = s["invalid-field"] = Script("ping with a string nonce: INVALID_FIELD, close 4001")
    x.hello(0, "s1")
    x.raw(1, "s1", msgpack.packb([3, "one"]))

    x = s["too-deep"] = Script("a cursor nested 33 deep: TOO_DEEP, close 4001")
    x.hello(0, "s1")
    deep: Any = 0
    for _ in range(33):
        deep = [deep]
    x.raw(1, "s1", msgpack.packb([40, 1, deep]))

    x = s["frame-too-large"] = Script("a message over max_message_bytes: FRAME_TOO_LARGE", max_message_bytes=512)
    x.hello(0, "s1")
    x.raw(1, "s1", msgpack.packb([22, 1, None, b"x" * 600]))

    x = s["unknown-channel"] = Script("a frame for a channel never joined: UNKNOWN_CHANNEL, not fatal")
    x.hello(0, "s1")
    x.send(1, "s1", Update(9, 1, b"\x00\x00"))
    x.send(2, "s1", Ping(1))

    a1 = text_update(1, "hello")
    b1 = text_update(2, " world", a1)
    x = s["document-sync"] = Script(
        "two members: sync on join, an update acked after storing and fanned out to the other "
        "(never echoed), a state-vector request, an invalid update refused"
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "doc", b"\x00", None))
    x.hello(1, "s2")
    x.send(1, "s2", Join(1, "doc", b"\x00", None))
    x.send(2, "s1", Update(1, 2, a1))
    x.send(3, "s2", Update(1, 2, b1))
    x.send(4, "s2", SyncStep1(1, b"\x00"))
    x.send(5, "s1", Update(1, 3, b"\xff\xff\xff"))

    big = text_update(1, "x" * 150)
    more = text_update(1, "y" * 150, big)
    x = s["document-too-large"] = Script(
        "an update that would grow the document past max_document_bytes is refused, the "
        "document stays as it was and the connection stays open",
        max_document_bytes=256,
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "doc", b"\x00", None))
    x.send(1, "s1", Update(1, 2, big))
    x.send(2, "s1", Update(1, 3, more))
    x.send(3, "s1", SyncStep1(1, b"\x00"))

    offline = text_update(3, "typed offline")
    x = s["offline-edits"] = Script("a client that edited offline sends them in sync_step2 after joining")
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "doc", b"\x00", None))
    x.send(1, "s1", Update(1, 2, a1))
    x.hello(2, "s2")
    x.send(2, "s2", Join(1, "doc", pycrdt_state(offline), None))
    x.send(3, "s2", SyncStep2(1, 2, offline))

    x = s["presence"] = Script("presence set and patch coalesce per tick; leave removes the entry")
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    x.hello(1, "s2")
    x.send(1, "s2", Join(1, "r", None, None))
    x.send(2, "s2", PresenceSet(1, None, {"name": "bob", "n": 1}), PresenceSet(1, None, {"name": "bob", "n": 2}))
    x.send(3, "s2", PresencePatch(1, 5, {"n": None, "status": "away"}))
    x.send(4, "s2", Leave(1, 6))

    x = s["presence-too-large"] = Script(
        "a presence state, a patch or a cursor over limits.max_presence_bytes (a quarter of a "
        "4 KiB message: 1 KiB) is refused with PRESENCE_TOO_LARGE and changes nothing; the "
        "connection stays open",
        max_message_bytes=4096,
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    x.send(1, "s1", PresenceSet(1, 2, {"name": "ada", "note": "n" * 900}))
    x.send(2, "s1", PresencePatch(1, 3, {"bio": "b" * 200}))
    x.send(3, "s1", CursorMove(1, {"path": "p" * 1100}))
    x.send(4, "s1", PresenceSet(1, 4, {"bio": "b" * 1100}))
    x.send(5, "s1", PresencePatch(1, 5, {"note": None}))

    x = s["presence-split"] = Script(
        "a presence snapshot that does not fit in one message (4 KiB here) is followed by "
        "diffs that add the rest, before anything else of that room",
        max_message_bytes=4096,
    )
    for i in range(1, 6):
        x.hello(0, f"s{i}")
        x.send(0, f"s{i}", Join(1, "r", None, None), PresenceSet(1, None, {"note": str(i) * 900}))
    x.hello(1, "s6")
    x.send(1, "s6", Join(1, "r", None, None))

    x = s["late-joiner"] = Script(
        "a late joiner gets the document, everyone's presence, cursors and typing, and the event head at once",
        check_times=True,
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", b"\x00", None))
    x.send(1, "s1", Update(1, 2, a1), PresenceSet(1, None, {"name": "ada"}), CursorMove(1, {"index": 5}))
    x.send(1, "s1", Typing(1, True), Publish(1, 3, "chat", {"text": "hi"}, None))
    x.hello(2, "s2")
    x.send(2, "s2", Join(1, "r", b"\x00", None))

    x = s["typing-expiry"] = Script("typing shows, then disappears 5 s after the last typing(true)", check_times=True)
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    x.send(1, "s1", Typing(1, True))
    x.send(3, "s1", Typing(1, True))
    x.send(9, "s1", Ping(1))
    x.end(9)

    x = s["presence-timeout"] = Script(
        "a silent connection is closed after 2H (20 s, HEARTBEAT_TIMEOUT; noticed by the next "
        "heartbeat sweep, at most H/8 later) and its presence leaves after the 3 s grace",
        check_times=True,
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    x.hello(0, "s2")
    x.send(0, "s2", Join(1, "r", None, None))
    for t in (8, 16, 24):
        x.send(t, "s1", Ping(t))
    x.end(25)

    x = s["events"] = Script(
        "publish: ack with seq, event to everyone; an idempotent retry is not delivered twice; "
        "a hook refusal is EVENT_REJECTED or carries an application code (4000-4999)",
        hooks="tokens",
    )
    x.hello(0, "s1", token="ada")
    x.send(0, "s1", Join(1, "r", None, None))
    x.hello(0, "s2", token="bob")
    x.send(0, "s2", Join(1, "r", None, None))
    x.send(1, "s1", Publish(1, 2, "chat", {"text": "hi"}, "k1"))
    x.send(2, "s1", Publish(1, 3, "chat", {"text": "hi"}, "k1"))
    x.send(3, "s2", Publish(1, 2, "rejected", None, None))
    x.send(4, "s2", Publish(1, 3, "app-error", None, None))

    x = s["resume-complete"] = Script("rejoin with since: every missed event is replayed, resumed=true")
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    for i in range(3):
        x.send(1 + i, "s1", Publish(1, 10 + i, "n", i, None))
    x.hello(5, "s2")
    x.send(5, "s2", Join(1, "r", None, 1, "e1"))

    x = s["resume-other-history"] = Script(
        "rejoin with a position from another history (the epoch differs, as after a restart on "
        "a memory store): the whole retained history is replayed, resumed=false"
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    for i in range(2):
        x.send(1 + i, "s1", Publish(1, 10 + i, "n", i, None))
    x.hello(4, "s2")
    x.send(4, "s2", Join(1, "r", None, 3, "an-older-epoch"))

    x = s["resume-incomplete"] = Script(
        "rejoin with since older than the history: what is left is replayed, resumed=false", event_history=2
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    for i in range(4):
        x.send(1 + i, "s1", Publish(1, 10 + i, "n", i, None))
    x.hello(6, "s2")
    x.send(6, "s2", Join(1, "r", None, 0))

    x = s["read-only"] = Script(
        "a read-only member: document writes and events are FORBIDDEN, presence works; a member "
        "with no access cannot join; a commenter publishes events but cannot write",
        hooks="tokens",
    )
    x.hello(0, "s1", token="ro:viewer")
    x.send(0, "s1", Join(1, "r", b"\x00", None))
    x.send(1, "s1", SyncStep2(1, 4, b"\x00\x00"))  # the mandatory answer to sync_step1: acked
    x.send(1, "s1", Update(1, 2, a1))
    x.send(2, "s1", PresenceSet(1, 3, {"name": "viewer"}))
    x.send(2, "s1", Publish(1, 5, "chat", {"text": "let me in"}, None))
    x.hello(3, "s2", token="no:stranger")
    x.send(3, "s2", Join(1, "r", None, None))
    x.hello(4, "s3", token="co:commenter")
    x.send(4, "s3", Join(1, "r", b"\x00", None))
    x.send(5, "s3", Publish(1, 2, "chat", {"text": "a comment"}, None))
    x.send(5, "s3", Update(1, 3, b1))

    x = s["room-limits"] = Script(
        "INVALID_ROOM_NAME, ALREADY_JOINED and TOO_MANY_ROOMS are answered, the connection stays",
        max_rooms_per_connection=2,
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "a", None, None), Join(2, "a", None, None), Join(3, "bad\nname", None, None))
    x.send(0, "s1", Join(4, "b", None, None), Join(5, "c", None, None))

    x = s["rate-limited"] = Script(
        "publishing over the rate gets RATE_LIMITED; persisting closes with 4007",
        events_per_second=2,
        rate_violations_before_close=2,
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    x.send(1, "s1", *[Publish(1, 10 + i, "spam", i, None) for i in range(6)])

    x = s["storage-unavailable"] = Script(
        "the store keeps refusing appends: retried for store_outage_grace (10 s), then the update is not acked "
        "(STORAGE_UNAVAILABLE) and the channel closes",
        store_fails="append",
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    x.send(1, "s1", Update(1, 2, a1))
    x.end(12)

    x = s["room-load-fails"] = Script("a room whose load fails refuses the join", store_fails="load")
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))

    big = text_update(4, "x" * 3000)
    x = s["slow-consumer"] = Script(
        "a member that never reads is closed with TOO_SLOW (4006); the writer is unaffected",
        unread=["s1"],
        buffer=1,
        outbox_max_bytes=16384,
        updates_per_second=1000,
    )
    x.hello(0, "s1")
    x.send(0, "s1", Join(1, "r", None, None))
    x.hello(0, "s2")
    x.send(0, "s2", Join(1, "r", None, None))
    doc = pycrdt.Doc(client_id=4)
    for i in range(8):
        before = doc.get_state()
        doc.get("text", type=pycrdt.Text).insert(0, "x" * 3000)
        x.send(1 + i * 0.001, "s2", Update(1, 10 + i, doc.get_update(before)))
    del big

    x = s["http-session"] = Script(
        "a session carried by HTTP requests (spec §14, path /v1/sessions) with a WebSocket member: the same "
        "frames, acks and room traffic; no server pings (its event stream has its own heartbeat)",
        check_times=True,
    )
    x.hello(0, "h1", path="/v1/sessions")
    x.send(0.1, "h1", Join(1, "r", b"\x00", None))
    x.hello(0.2, "w1")
    x.send(0.2, "w1", Join(1, "r", None, None))
    x.send(1, "h1", PresenceSet(1, 2, {"name": "sse"}), Publish(1, 3, "chat", {"text": "over http"}, None))
    x.send(2, "w1", Update(1, 2, text_update(9, "hi")), CursorMove(1, 3))
    x.end(25)

    x = s["http-session-expired"] = Script(
        "an HTTP session whose client stopped polling: its transport ends it (4005) after the grace, "
        "and its presence leaves as for a closed WebSocket",
        check_times=True,
    )
    x.hello(0, "h1", token=None, path="/v1/sessions")
    x.send(0, "h1", Join(1, "r", None, None))
    x.hello(0, "w1")
    x.send(0, "w1", Join(1, "r", None, None))
    x.close(30, "h1", 4005)
    x.end(35)

    x = s["operator"] = Script(
        "what the server's operator does (spec/api.md) as members see it: a server event and a server edit; "
        "bob made read-only (access_changed, then his update and publish are FORBIDDEN), then given no access "
        "(channel_closed FORBIDDEN) and refused on rejoin; the room deleted (channel_closed ROOM_DELETED); "
        "carol disconnected (4013)",
        hooks="tokens",
        check_times=True,
    )
    x.hello(0, "s1", token="alice")
    x.send(0, "s1", Join(1, "doc", None, None))
    x.hello(0, "s2", token="bob")
    x.send(0, "s2", Join(1, "doc", None, None))
    x.hello(0, "s3", token="carol")
    x.operation(1, "publish", room="doc", name="notice", payload={"text": "maintenance at noon"}, key="n1")
    x.operation(1.5, "update", room="doc", update=text_update(7, "from the server"))
    x.operation(2, "set_access", user="bob", room="doc", access=1)
    x.send(2.5, "s2", Update(1, 2, text_update(8, "bob writes")), Publish(1, 3, "chat", {"text": "hi"}, None))
    x.operation(3, "set_access", user="bob", room="doc", access=None)
    x.send(3.5, "s2", Join(4, "doc", None, None))
    x.operation(4, "delete_room", room="doc")
    x.operation(5, "disconnect", user="carol", reason="account closed")
    x.end(6)

    x = s["token-refresh"] = Script(
        "credentials that expire (spec §5.9): s1's token (expires at 60 s) is announced at 40 s "
        "(token_expiring: a third of its lifetime, at most 30 s, before), refreshed for one expiring "
        "at 200 s (ack), so it outlives 60 s; refreshes for another user, with a refused token or "
        "an expired one get UNAUTHENTICATED, not fatal; s2 (expires at 30 s) never refreshes: "
        "TOKEN_EXPIRED and close 4012 at 30 s, and its presence leaves after the grace",
        hooks="tokens",
        check_times=True,
    )
    x.hello(0, "s1", token="exp=60:alice")
    x.send(0, "s1", Join(1, "r", None, None))
    x.hello(0, "s2", token="exp=30:bob")
    x.send(0, "s2", Join(1, "r", None, None))
    for t in range(8, 41, 8):  # the clients' heartbeats (spec §5.7)
        x.send(t, "s1", Ping(t))
        if t < 30:
            x.send(t, "s2", Ping(t))
    x.send(41, "s1", Refresh(2, "exp=200:alice"))
    x.send(42, "s1", Refresh(3, "exp=300:mallory"))
    x.send(43, "s1", Refresh(4, "bad"))
    x.send(43, "s1", Refresh(5, "exp=40:alice"))
    for t in range(48, 70, 8):
        x.send(t, "s1", Ping(t))
    x.end(70)
    return s


def pycrdt_state(update: bytes) -> bytes:
    doc = pycrdt.Doc()
    doc.apply_update(update)
    return doc.get_state()


def generate(name: str, script: Script) -> str:
    settings = dict(script.settings)
    records = list(script.records)
    header = TraceHeader(1, settings)
    config_from_settings(settings)  # fail early on a misspelt setting
    out = io.StringIO()

    async def run() -> None:
        recorder = TraceRecorder(out, settings)
        await replay(Trace(header, tuple(records)), recorder=recorder)

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    return out.getvalue()


def main(names: list[str]) -> None:
    all_scenarios = scenarios()
    for name in names or sorted(all_scenarios):
        (HERE / f"{name}.jsonl").write_text(generate(name, all_scenarios[name]))
        print(f"wrote spec/traces/{name}.jsonl")


if __name__ == "__main__":
    main(sys.argv[1:])
