"""Engine settings, with the defaults spec/protocol.md names. Times are seconds on Trio's clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from plait.protocol import (
    MAX_FRAMES_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    MAX_PRESENCE_BYTES,
    MAX_VALUES_PER_MESSAGE,
    CodecLimits,
    Limits,
    MiB,
)

SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class EngineConfig:
    heartbeat: float = 15 * SECONDS
    """H in spec §5.7: a connection silent for 2H is closed; an idle writer pings every H."""
    handshake_timeout: float = 10 * SECONDS
    tick: float = 0.05 * SECONDS
    """Presence, cursor and typing changes are coalesced into one frame per channel per tick."""
    ephemeral_messages_per_second: int = 4000
    """Per room: a tick sends every member a message, so a big room ticks less often, every
    max(tick, members / this) seconds. 500 members each changing presence once a second
    would otherwise cost 10,000 messages a second; with the default they get 8 diffs a second."""
    presence_grace: float = 5 * SECONDS
    typing_expiry: float = 5 * SECONDS
    room_idle_grace: float = 10 * SECONDS
    """A room with no members stays loaded this long before it flushes and unloads."""
    close_timeout: float = 2 * SECONDS
    shutdown_timeout: float = 30 * SECONDS
    """A graceful shutdown waits this long at most for connections to close and rooms to be
    stored (a store that hangs); then it logs what it left and stops anyway."""
    hook_timeout: float = 10 * SECONDS
    """An application hook (authenticate, authorize, on_event, on_room_loaded) running longer
    than this fails its request with INTERNAL instead of holding it forever."""

    reclaim_interval: float = 0
    """Seconds between looks at whether to give memory back to the system once the load has
    fallen to half its peak or less: a full garbage collection and a heap trim, which affect
    the whole process (engine/_reclaim.py). 0, the default for an engine inside an application,
    never does; `plait serve` looks every 15 s."""
    reclaim_after: int = 500
    """Rooms and sessions that must have ended since memory was last given back before it is
    again, unless the engine is empty."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_document_bytes: int = 64 * MiB
    """A room's document (Yjs v1 encoding) may not grow past this: an update that would make
    it larger is refused (DOCUMENT_TOO_LARGE) and the document stays as it was. y-websocket
    clients cannot split what they send, so their messages may be this large (plus a little)
    even when native messages are limited to max_message_bytes."""
    max_frames_per_message: int = MAX_FRAMES_PER_MESSAGE
    max_values_per_message: int = MAX_VALUES_PER_MESSAGE
    """The values (array elements and map entries, spec §3.4) a message read from a client
    may hold; more is FRAME_TOO_LARGE, found before they are all built. Each value is also
    read as if it were `read_bytes_per_value` bytes (spec §5.8)."""
    read_bytes_per_value: int = 256
    """What one value costs of read_bytes_per_second: a connection reads at most
    read_bytes_per_second / this values a second (65,536 by default), so that a client
    sending small dense values (a 16 MiB message holds sixteen million) meets backpressure
    before it costs the server more CPU than bytes of a document update would."""
    max_room_presence_bytes: int = 16 * MiB
    """A room's presence states, identities and cursors together: what a joiner is sent at
    once. A change that would pass it is refused (PRESENCE_TOO_LARGE)."""
    max_presence_bytes: int = MAX_PRESENCE_BYTES
    """The most a session's presence state, its cursor position, or an identity from the
    authenticate hook may take, in its longer form (msgpack or JSON, spec §5.4); at most a quarter of
    max_message_bytes is used (`presence_limit`), so that any one member's presence fits in a
    message with room to spare."""
    max_rooms_per_connection: int = 64
    events_per_second: int = 50
    updates_per_second: int = 200
    read_bytes_per_second: int = 16 * MiB
    """Bytes the server reads from one connection per second, sustained (a burst of a second's
    worth, or of one largest message): past it, it reads that connection later, so the sender
    meets backpressure, nothing is refused (spec §5.8). One member publishing 16 MiB events as
    fast as the event rate allowed pushed every reader of the room past its queue (TOO_SLOW)."""
    frames_per_second: int = 200
    """Frames other than document updates and publishes (presence, cursors, typing, pings,
    joins; Yjs awareness) a connection may send per second, with a burst of one second's
    worth (spec §5.8): what they cost the server is small, not nothing. The WebSocket
    endpoint also reads at most this many WebSocket pings and pongs a second from a
    connection; past it, it reads that connection later (nothing is refused)."""
    rate_violations_before_close: int = 20
    """RATE_LIMITED and INVALID_UPDATE refusals tolerated (refilling at one per second) before
    closing the connection (spec §5.8)."""

    outbox_max_bytes: int = 80 * MiB
    """Per connection: bytes queued for a client that does not read; past it, close TOO_SLOW.
    Keep it at least max_document_bytes + max_message_bytes, or joining the largest document
    allowed would be TOO_SLOW, and the client would resync in a loop."""
    outbox_max_lag: float = 30 * SECONDS
    """Per connection: a client that has had something waiting to be written to it for this
    long, without ever catching up, is too slow: closed TOO_SLOW (checked by the heartbeat
    sweep, so up to two sweeps, H/4, late). Not counted: the wait for a large-send slot, and
    the time a large message takes to send while the client takes its bytes; a client that
    takes none of it for this long is too slow like any other."""
    large_message_bytes: int = 1 * MiB
    """A frame this large is sent as a message of its own (never copied into a batch)..."""
    concurrent_large_sends: int = 4
    """...and at most this many such messages are being sent at once, engine-wide, by
    transports that copy a message to frame it: a join storm on a large document would
    otherwise hold one copy per joiner at the same moment. The server's own WebSocket endpoint
    (msgpack and JSON alike) and the HTTP transports send a message without copying it; theirs
    do not wait (a client that stops reading in the middle of one then holds no slot a reading
    client waits for). An embedder's trio-websocket connections still do."""
    outbox_lag_frames: int = 64
    """Past this many queued frames a connection is lagging: its ephemeral frames coalesce."""

    http_session_grace: float = 30 * SECONDS
    """A session carried by HTTP requests (spec §14) with no event stream or long-poll open
    lives this long, then ends as a WebSocket's does when it goes silent (HEARTBEAT_TIMEOUT)."""
    max_http_sessions: int = 10_000
    """HTTP sessions open at once, engine-wide: one keep-alive connection could otherwise open
    thousands a second, each living `http_session_grace`. Past it, 503 with Retry-After."""
    long_poll_timeout: float = 25 * SECONDS
    """How long a long-poll waits for something before it answers with nothing (spec §14.4)."""
    resume_window: float = 30 * SECONDS
    resume_bytes: int = 1 * MiB
    """What an HTTP session keeps of what it sent, for a client that comes back with the last
    position it saw (SSE Last-Event-ID, a poll's `after`, spec §14.2): this long, at most this
    many bytes. Past it, the resume is not complete and the client rejoins (spec §7)."""
    sse_retry: float = 2 * SECONDS
    """The reconnection delay an event stream asks a browser's EventSource to use."""
    allow_origins: tuple[str, ...] = ()
    """Origins (`https://app.example.com`, or `*` for any) whose pages may use the HTTP
    transports across origins (CORS, spec §14.6) and open WebSockets (spec §2); a page of the
    server's own origin, and a client that sends no Origin, always may."""
    max_connections_per_ip: int = 0
    """WebSocket connections and HTTP sessions open at once from one peer address; past it a
    WebSocket upgrade is refused with 429, an HTTP session with 429 JSON (spec §2, §14.5).
    0, the default, is no limit: behind a reverse proxy or a NAT every client has the same
    address (the proxy's, the office's), so any default would cap the whole server or a whole
    office; set it where clients connect directly."""
    max_connections_per_user: int = 0
    """Sessions open at once for one identity (the authenticate hook's `id`); past it the
    handshake is refused with TOO_MANY_CONNECTIONS (spec §5.1). 0, the default, is no limit."""

    event_history: int = 1000
    event_history_bytes: int = 16 * MiB
    """A room's event history keeps at most event_history events and this many bytes of them
    (the newest event always): what a rejoining member is replayed (spec §7) is bounded by it,
    and so is the memory a room's history holds."""
    event_gap_timeout: float = 1 * SECONDS
    """In a cluster: how long an event numbered past a gap waits for the one before it (another
    process's, on its way) before it is sent anyway (spec §7)."""
    store_load_timeout: float = 30 * SECONDS
    """How long a room's load from the store may take (a store that hangs) before the room fails
    to load: the joins waiting for it are refused with STORAGE_UNAVAILABLE and the
    next join loads it again (spec §8). The stores Plait ships answer or fail well within it."""
    store_outage_grace: float = 10 * SECONDS
    """How long a room keeps trying a commit its store refused as unavailable (a database
    connection that broke, a restart or failover, a busy SQLite file), from the commit's start
    (a first try refused only past it still gets a second's tries), before the room fails:
    its members wait for their acks meanwhile, and nothing is acknowledged before it is
    stored. 0 fails the room at the first refusal."""
    commit_delay: float = 0.01 * SECONDS
    """While two or more members of a room have written within this time, the room's next
    commit waits this long first, so that it stores what they write meanwhile too: at 10
    members typing, a commit per keystroke (a worker thread's round trip and an fsync each) was
    a third of the server's CPU. Only their acks wait (spec §4.1); their edits reach the other
    members as they arrive. A member writing alone is never held. 0 commits at once."""
    compact_after_updates: int = 500
    compact_after_bytes: int = 1 * MiB
    """A room's update log is folded into a new snapshot once it holds this many updates or
    bytes, each multiplied by the last snapshot's size in units of compact_after_bytes (at
    least 1): rewriting a large document costs in proportion to what was appended to it."""

    @property
    def presence_limit(self) -> int:
        """The limit on presence states, cursor positions and identities in force (bytes)."""
        return min(self.max_presence_bytes, self.max_message_bytes // 4)

    @property
    def codec_limits(self) -> CodecLimits:
        """What the server's decoders enforce on a client's messages (spec §3.4)."""
        return CodecLimits(self.max_message_bytes, self.max_frames_per_message, self.max_values_per_message)

    @property
    def limits(self) -> Limits:
        """What Welcome announces (spec §4.2)."""
        return Limits(
            max_message_bytes=self.max_message_bytes,
            max_frames_per_message=self.max_frames_per_message,
            max_rooms=self.max_rooms_per_connection,
            events_per_second=self.events_per_second,
            updates_per_second=self.updates_per_second,
            max_presence_bytes=self.presence_limit,
            frames_per_second=self.frames_per_second,
            max_document_bytes=self.max_document_bytes,
        )
