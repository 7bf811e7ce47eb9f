// Plait's browser and Node client: the native protocol (spec/protocol.md) over WebSocket,
// Server-Sent Events + POST, or long-polling (§14), with Yjs documents.
import type * as Y from "yjs";

/** Where a client stands (spec/protocol.md §6, §7.1). "closed" is final: close() was called,
 *  or the server ended the session with a close code whose "retry" is "no" (§9). */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "offline" | "closed";

/** The transports, best first: a native WebSocket (§2), an SSE stream with frames POSTed (§14.2,
 *  §14.3), long-polling with frames POSTed (§14.4). */
export type TransportName = "websocket" | "sse" | "poll";

/** A token, or a function that returns a fresh one for each (re)connect and each refresh (§5.9).
 *  A function that throws, returns something else, or does not return within the open
 *  timeout (15 s) fails that attempt (retried with backoff; a local error, code 0 "CLIENT");
 *  at a refresh, the refresh is skipped. */
export type TokenSource = string | null | (() => string | null | Promise<string | null>);

export interface ClientOptions {
  /** The server's base URL: "http://127.0.0.1:8765" or "ws://127.0.0.1:8765" (either scheme;
   *  a path prefix is kept, for a server behind a proxy). */
  url: string;
  token?: TokenSource;
  /** Transports to try, in order; default ["websocket", "sse", "poll"]. */
  transports?: TransportName[];
  /** Failed WebSocket/SSE connects in a row before the next transport is tried (default 2).
   *  A connect that fails while the server does not answer at all (GET /healthz fails too:
   *  it is down or restarting) does not count. */
  fallbackAfter?: number;
  /** While on a fallback, how often to try the best transport again, at most, in ms (default
   *  60000): the first try comes after 5 s, then at doubling intervals up to this. */
  upgradeAfterMs?: number;
  /** Reconnect delay: uniform in [0, min(capMs, baseMs * 2^n)] (full jitter, §7.1);
   *  defaults 250 and 10000. */
  backoff?: { baseMs?: number; capMs?: number };
  /** For hello.client (§4.2); the SDK adds name and version. */
  clientInfo?: Record<string, unknown>;
  /** hello.client.anonymous_key (§4.2); default: a random key kept in localStorage when there
   *  is one, so a reloaded page is the same anonymous user. null sends none. */
  anonymousKey?: string | null;
  /** Implementations for Node 20 and tests; default: the globals. */
  WebSocket?: unknown;
  fetch?: typeof fetch;
}

export interface StateChange {
  state: ConnectionState;
  transport: TransportName | null;
  /** Why the last connection or attempt ended, if it did. */
  error: PlaitError | null;
  /** Failed attempts in a row, and the delay before the next one (ms), while reconnecting. */
  attempt: number;
  delayMs: number | null;
}

export class PlaitClient {
  /** Starts connecting at once; join() may be called right away. */
  constructor(options: ClientOptions);
  readonly state: ConnectionState;
  readonly transport: TransportName | null;
  /** welcome.session of the current connection, null between connections. */
  readonly session: string | null;
  readonly lastError: PlaitError | null;
  /** welcome.limits of the current (or last) connection (§4.2), or null before the first. */
  readonly limits: Limits | null;
  /** Called on every change of state or transport; returns the unsubscribe function. */
  on(type: "state", listener: (change: StateChange) => void): () => void;
  /** Resolves once the server answered the join and the document is synced (§5.2, §5.3);
   *  rejects with PlaitError (FORBIDDEN, INVALID_ROOM_NAME, TOO_MANY_ROOMS, ...), and at once
   *  with INVALID_FIELD for bad arguments (a name that is not 1 to 256 characters or holds a
   *  lone surrogate, `since` not a non-negative integer, `epoch` not a string of at most 64). Offline,
   *  it waits for the connection. One Room per name per client (a second join of the same
   *  name gets the same Room). */
  join(room: string, options?: JoinOptions): Promise<Room>;
  /** Resolves once connected again (state "open"). */
  whenOpen(): Promise<void>;
  /** Sends what is queued, waits (up to 5 s) for the answers to publishes already sent,
   *  leaves every room, closes with 1000 (§7.1 "Leaving"). Final. A connect under way is
   *  given up at once. */
  close(): Promise<void>;
}

export interface JoinOptions {
  /** The document to keep in sync; default a new Y.Doc. Edits made to it before the join
   *  (offline) are sent in sync_step2. */
  doc?: Y.Doc;
  /** Resume events after this seq of this epoch (§7); default: from the room's head (no
   *  replay). Both are kept by the Room across reconnects. */
  since?: number;
  epoch?: string;
}

export type Access = "read" | "write" | "comment";

export interface PresenceEntry {
  session: string;
  identity: { id: string; [key: string]: unknown };
  state: Record<string, unknown>;
}

/** Presence grouped by identity.id (§5.4): a user with two tabs is one User with two sessions. */
export interface User {
  id: string;
  identity: { id: string; [key: string]: unknown };
  sessions: PresenceEntry[];
}

export interface PresenceChange {
  /** Users who were not there before, whose state changed, who are gone (by identity.id). */
  joined: User[];
  updated: User[];
  left: string[];
}

export interface RoomEvent {
  seq: number;
  name: string;
  payload: unknown;
  session: string | null;
  user: string | null;
}

export interface Resumed {
  /** Whether every event after `since` was replayed (joined.resumed, §7); false also when
   *  the room's history is another epoch's. */
  complete: boolean;
  since: number;
  head: number;
}

/** A text cursor that survives concurrent edits: Yjs relative positions as JSON (§4.2). */
export interface TextCursor {
  anchor: unknown;
  head: unknown;
}

export class Room {
  readonly name: string;
  readonly doc: Y.Doc;
  /** joined.access; null before the first join. */
  readonly access: Access | null;
  /** Whether the document holds everything the server had at the last (re)join. */
  readonly synced: boolean;
  /** The highest event seq received, and its epoch (§7). */
  readonly lastSeq: number;
  readonly epoch: string | null;
  /** Resolves when every local document change so far is acked (durable, §4.1); rejects with
   *  the PlaitError of a change refused for good (FORBIDDEN, DOCUMENT_TOO_LARGE,
   *  FRAME_TOO_LARGE, INVALID_UPDATE), once (each is also a "refused" event). */
  flushed(): Promise<void>;

  setPresence(state: Record<string, unknown>): void;
  patchPresence(patch: Record<string, unknown>): void;
  /** Every session's entry, this session's included (server-stamped identity). */
  presence(): PresenceEntry[];
  users(): User[];

  /** Latest wins; sent at most once per throttleMs (default 50). null hides the cursor.
   *  Presence, cursor and typing are checked at the call (PlaitError INVALID_FIELD, TOO_DEEP,
   *  PRESENCE_TOO_LARGE), then coalesced (latest wins, patches merged) and sent under the
   *  server's frames_per_second (§5.8). */
  moveCursor(position: unknown): void;
  /** session -> position, for sessions that have one (this session's not included). */
  cursors(): Map<string, unknown>;
  /** A cursor for a Y.Text selection, and back (null when the item is gone). Indices are
   *  integers in [0, text.length] (else PlaitError INVALID_FIELD); a position at the text's
   *  end stays before what is appended after it. */
  textCursor(text: Y.Text, anchor: number, head?: number): TextCursor;
  resolveTextCursor(text: Y.Text, cursor: TextCursor): { anchor: number; head: number } | null;

  /** Typing on/off; while on, the SDK renews it before the server's expiry (§5.5). */
  setTyping(on: boolean): void;
  /** Sessions typing now, this session excluded. */
  typing(): string[];

  /** Resolves with the event's seq once acked; rejects with PlaitError (EVENT_REJECTED,
   *  FORBIDDEN, RATE_LIMITED after the SDK's retries, an application code 4000-4999, ...).
   *  Offline, it is queued and sent on reconnect with its idempotency key, so it is delivered
   *  once (§4.2, §7). Publishes go one at a time in call order, under the server's
   *  events_per_second (§5.8), so the room's events keep that order. A name or key that is not
   *  1 to 128 characters, or a payload that is not a Plait value, rejects with INVALID_FIELD
   *  (or TOO_DEEP) at once. */
  publish(name: string, payload: unknown, options?: { key?: string }): Promise<number>;

  on(type: "presence", listener: (change: PresenceChange) => void): () => void;
  on(type: "cursors", listener: (cursors: Map<string, unknown>) => void): () => void;
  on(type: "typing", listener: (sessions: string[]) => void): () => void;
  on(type: "event", listener: (event: RoomEvent) => void): () => void;
  on(type: "resumed", listener: (resumed: Resumed) => void): () => void;
  on(type: "access", listener: (access: Access) => void): () => void;
  on(type: "synced", listener: () => void): () => void;
  /** The server ended this membership (channel_closed, §5.2): ROOM_DELETED, FORBIDDEN, ...
   *  The SDK rejoins by itself only after STORAGE_UNAVAILABLE and INTERNAL. */
  on(type: "closed", listener: (error: PlaitError) => void): () => void;
  /** A local document change refused for good: FORBIDDEN (kept, and sent again once the
   *  member may write), DOCUMENT_TOO_LARGE, FRAME_TOO_LARGE (an update too large for one
   *  message, refused locally), INVALID_UPDATE (the server lacked what it builds on: the Room
   *  rejoins, and the sync exchange repairs it). flushed() rejects with it too. Listeners must
   *  be functions (else PlaitError INVALID_FIELD); one that throws is reported
   *  (reportError or console.error) and the others still run. */
  on(type: "refused", listener: (error: PlaitError) => void): () => void;

  /** Waits (bounded) for pending updates to be acked, then leaves (§7.1). */
  leave(): Promise<void>;
}

/** An error code (§8) or close code (§9) from the server, or a local failure. */
export class PlaitError extends Error {
  /** The numeric code: an ErrorCode, a CloseCode, or 4000-4999 from the application. */
  readonly code: number;
  /** Its name ("FORBIDDEN", "TOKEN_EXPIRED", ...), "APPLICATION" for 4000-4999, or "CLIENT"
   *  (code 0) for a failure here rather than at the server (the client is closed, a token
   *  function that failed, no WebSocket implementation). */
  readonly codeName: string;
  /** Whether this came as a close code rather than an error frame. */
  readonly isClose: boolean;
  /** The server's text (or the local explanation), without the code; `message` is
   *  "CODE_NAME (code): reason". */
  readonly reason: string;
}

/** welcome.limits (§4.2): what the server allows this connection. */
export interface Limits {
  max_message_bytes: number;
  max_frames_per_message: number;
  max_rooms: number;
  events_per_second: number;
  updates_per_second: number;
  max_presence_bytes: number;
  frames_per_second: number;
  max_document_bytes: number;
}

export declare const ErrorCode: Readonly<Record<string, number>>;
export declare const CloseCode: Readonly<Record<string, number>>;
