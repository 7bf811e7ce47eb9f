// PlaitClient: one connection to a server, kept open across drops (spec §7, §7.1): the state
// machine connecting/open/reconnecting/offline/closed, backoff with full jitter, heartbeats
// (§5.7), transport fallback and upgrade, token refresh (§5.9), requests and their answers.
import { makeTransport, baseUrls } from "./transports.js";
import { PlaitError, closeError } from "./errors.js";
import { ErrorCode, CloseCode, FINAL_CLOSES, isFatal } from "./codes.js";
import { backoffDelay } from "./pacing.js";
import { Room } from "./room.js";

export const VERSION = "0.1.0";
const ALL_TRANSPORTS = ["websocket", "sse", "poll"];
const OPEN_TIMEOUT_MS = 15000;
/** The first upgrade probe after a fallback; later ones double up to upgradeAfterMs. */
const FIRST_UPGRADE_MS = 5000;
/** How long close() waits for the answers to publishes already sent. */
const CLOSE_WAIT_MS = 5000;
/** How long the reachability check (GET /healthz) after a failed connect may take. */
const HEALTH_TIMEOUT_MS = 2000;
const MAX_ROOM_NAME = 256;
const MAX_EPOCH = 64;
/** A connection open this long resets the backoff (§7.1). */
const RESET_AFTER_MS = 10000;
const ANON_STORAGE_KEY = "plait:anonymous_key";

const now = () => performance.now();

/** A random string of `bytes` random bytes, as hex. */
export function randomKey(bytes = 16) {
  const b = new Uint8Array(bytes);
  globalThis.crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function defaultAnonymousKey() {
  try {
    const store = /** @type {any} */ (globalThis).localStorage;
    if (store) {
      let key = store.getItem(ANON_STORAGE_KEY);
      if (!key || key.length < 16 || key.length > 128) { key = randomKey(); store.setItem(ANON_STORAGE_KEY, key); }
      return key;
    }
  } catch { /* storage refused */ }
  return randomKey();
}

/** Whether an error ends the client rather than be retried (§7.1 "Backoff", §9). */
const isFinal = (/** @type {PlaitError} */ e) => (e.isClose && FINAL_CLOSES.has(e.code)) || (!e.isClose && isFatal(e.code) && e.code !== ErrorCode.FRAME_TOO_LARGE) || e.code === ErrorCode.UNAUTHENTICATED;

/** Something that went wrong here rather than at the server: a local failure (code 0,
 *  "CLIENT"), retried like a dropped connection, never read as the server's INTERNAL. */
const asPlaitError = (/** @type {unknown} */ err) =>
  err instanceof PlaitError ? err : new PlaitError(0, err instanceof Error ? err.message : String(err));

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Checks join()'s arguments (spec §4.3) when it is called: the error, or null. */
function joinArgumentsError(/** @type {unknown} */ name, /** @type {any} */ options) {
  const bad = (/** @type {string} */ msg) => new PlaitError(ErrorCode.INVALID_FIELD, msg);
  if (typeof name !== "string") return bad("a room name is a string");
  if (LONE_SURROGATE.test(name)) return bad("a room name must not hold a lone surrogate");
  const points = [...name].length;
  if (points < 1 || points > MAX_ROOM_NAME) return bad(`a room name is 1 to ${MAX_ROOM_NAME} characters, not ${points}`);
  if (typeof options !== "object" || options === null) return bad("join options must be an object");
  const { since, epoch, doc } = options;
  // Duck-typed: a Y.Doc of another copy of yjs is not `instanceof` this one's.
  if (doc !== undefined && (doc === null || typeof doc !== "object" || typeof doc.on !== "function" || typeof doc.getText !== "function" || typeof doc.transact !== "function"))
    return bad("doc must be a Y.Doc");
  if (since !== undefined && since !== null && !(Number.isSafeInteger(since) && since >= 0))
    return bad(`since must be a non-negative integer, not ${typeof since === "number" ? since : typeof since}`);
  if (epoch !== undefined && epoch !== null && (typeof epoch !== "string" || epoch.length > MAX_EPOCH || LONE_SURROGATE.test(epoch)))
    return bad(`epoch must be a string of at most ${MAX_EPOCH} characters`);
  return null;
}

export class PlaitClient {
  /** @param {import("./index.js").ClientOptions} options */
  constructor(options) {
    if (!options || typeof options.url !== "string") throw new PlaitError(ErrorCode.INVALID_FIELD, "PlaitClient needs options.url");
    new URL(options.url); // a bad URL throws here, to the caller
    const transports = options.transports ?? ALL_TRANSPORTS;
    if (!Array.isArray(transports) || transports.length === 0 || transports.some((t) => !ALL_TRANSPORTS.includes(t)))
      throw new PlaitError(ErrorCode.INVALID_FIELD, `transports must be a non-empty list of ${ALL_TRANSPORTS.join(", ")}`);
    this._opts = options;
    this._transports = transports;
    this._fallbackAfter = Math.max(1, options.fallbackAfter ?? 2);
    this._upgradeAfterMs = options.upgradeAfterMs ?? 60000;
    this._baseMs = options.backoff?.baseMs ?? 250;
    this._capMs = options.backoff?.capMs ?? 10000;
    this._anonymousKey = options.anonymousKey === undefined ? defaultAnonymousKey() : options.anonymousKey;
    this._WebSocket = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    this._fetch = options.fetch ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);

    /** @type {import("./index.js").ConnectionState} */ this._state = "connecting";
    /** @type {string | null} */ this._transportName = null;
    /** @type {string | null} */ this._session = null;
    /** @type {PlaitError | null} */ this._lastError = null;
    this._attempt = 0;
    this._fails = 0;
    this._tIndex = 0;
    /** @type {any} */ this._conn = null;
    /** @type {any} */ this._welcome = null;
    /** @type {Map<number, { answer: (f: any) => void, lost: () => void, kind: string }>} */ this._pending = new Map();
    this._ref = 0;
    /** @type {Map<string, Room>} */ this._rooms = new Map();
    /** @type {Map<number, Room>} */ this._channels = new Map();
    /** @type {Set<(c: any) => void>} */ this._stateListeners = new Set();
    /** @type {any[]} */ this._outq = [];
    this._flushScheduled = false;
    this._lastSent = now();
    this._nonce = 0;
    /** @type {any} */ this._heartbeatTimer = null;
    /** @type {any} */ this._upgradeTimer = null;
    /** @type {(() => void) | null} */ this._wake = null;
    /** Aborts of the connects (and reachability checks) under way, for close(). @type {Set<() => void>} */
    this._attempts = new Set();
    this._closing = false;
    /** @type {Promise<void> | null} */ this._closed = null;
    this._upgradeDelayMs = Math.min(FIRST_UPGRADE_MS, this._upgradeAfterMs);
    /** Not public: tests shorten it. */
    this._openTimeoutMs = /** @type {any} */ (options)._openTimeoutMs ?? OPEN_TIMEOUT_MS;
    /** @type {((e: PlaitError) => void) | null} */ this._dropped = null;
    this._offlineFlag = false;
    this._onOffline = () => { this._offlineFlag = true; if (this._conn) this._drop(this._conn, closeError(CloseCode.ABNORMAL, "the browser went offline")); else this._wake?.(); };
    this._onOnline = () => { this._offlineFlag = false; this._attempt = 0; this._wake?.(); };
    const g = /** @type {any} */ (globalThis);
    if (typeof g.addEventListener === "function") {
      g.addEventListener("offline", this._onOffline);
      g.addEventListener("online", this._onOnline);
    }
    void this._run();
  }

  get state() { return this._state; }
  get transport() { return this._transportName; }
  get session() { return this._session; }
  get lastError() { return this._lastError; }
  /** welcome.limits of the current (or last) connection, or null. */
  get limits() { return this._welcome ? this._welcome.limits : null; }

  /** @param {"state"} type @param {(c: any) => void} listener */
  on(type, listener) {
    if (type !== "state") throw new PlaitError(ErrorCode.INVALID_FIELD, `PlaitClient has no ${JSON.stringify(type)} listener`);
    this._stateListeners.add(listener);
    return () => { this._stateListeners.delete(listener); };
  }

  /** @param {string} name @param {import("./index.js").JoinOptions} [options] @returns {Promise<Room>} */
  join(name, options = {}) {
    if (options === null) options = {};
    if (this._state === "closed") return Promise.reject(this._closedError());
    const invalid = joinArgumentsError(name, options);
    if (invalid) return Promise.reject(invalid);
    const existing = this._rooms.get(name);
    if (existing) return existing._joinPromise;
    const room = new Room(this, name, options);
    this._rooms.set(name, room);
    if (this._state === "open") {
      try { room._join(); } catch (err) { this._rooms.delete(name); room._end(asPlaitError(err)); }
    }
    return room._joinPromise;
  }

  whenOpen() {
    if (this._state === "open") return Promise.resolve();
    if (this._state === "closed") return Promise.reject(this._closedError());
    return /** @type {Promise<void>} */ (new Promise((resolve, reject) => {
      const off = this.on("state", (c) => {
        if (c.state === "open") { off(); resolve(); } else if (c.state === "closed") { off(); reject(this._closedError()); }
      });
    }));
  }

  close() {
    if (this._state === "closed") return Promise.resolve();
    if (!this._closed) this._closed = this._close();
    return this._closed;
  }

  async _close() {
    this._closing = true;
    // A connect under way (an unresponsive server, a token function that hangs) is given up
    // at once: nothing of it may keep the process alive.
    for (const abort of [...this._attempts]) abort();
    // Publishes already sent get their answers (bounded), so one the server delivered
    // resolves with its seq rather than be reported lost.
    await this._answersOf("publish", CLOSE_WAIT_MS);
    if (/** @type {string} */ (this._state) === "closed") return;
    const rooms = [...this._rooms.values()];
    await Promise.all(rooms.map((r) => r._leave(2000, false)));
    this._flushOut();
    const conn = this._conn;
    this._finish(null);
    if (conn) conn.close(CloseCode.NORMAL);
  }

  // ------------------------------------------------------------------ connection loop

  _closedError() {
    return this._lastError && this._state === "closed" && isFinal(this._lastError) ? this._lastError : new PlaitError(0, "the client is closed");
  }

  _isOffline() {
    const nav = /** @type {any} */ (globalThis).navigator;
    return this._offlineFlag || (nav && nav.onLine === false);
  }

  _setState(/** @type {any} */ state, extra = { attempt: this._attempt, delayMs: /** @type {number|null} */ (null) }) {
    this._state = state;
    const change = { state, transport: this._transportName, error: this._lastError, attempt: extra.attempt, delayMs: extra.delayMs };
    for (const l of [...this._stateListeners]) {
      try { l(change); } catch (err) { queueMicrotask(() => { throw err; }); }
    }
  }

  /** Sleeps, waking early on 'online' or close(). */
  _sleep(/** @type {number} */ ms) {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() { clearTimeout(t); resolve(undefined); }
      this._wake = () => { this._wake = null; done(); };
    });
  }

  /** The token: options.token, or what the token function gives. A function that throws or
   *  gives something else than a string or null is a local failure (code 0), retried. */
  async _token() {
    const t = this._opts.token;
    if (typeof t !== "function") return t ?? null;
    let token;
    try {
      token = await t();
    } catch (err) {
      throw new PlaitError(0, `the token function failed: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (token === undefined) token = null;
    if (token !== null && typeof token !== "string")
      throw new PlaitError(0, `the token function must return a string or null, not ${Array.isArray(token) ? "an array" : typeof token}`);
    if (token !== null && LONE_SURROGATE.test(token)) throw new PlaitError(0, "the token function returned a string with a lone surrogate");
    return token;
  }

  async _hello() {
    const token = await this._token();
    /** @type {Record<string, unknown>} */
    const client = { name: "plait-js", version: VERSION, ...(this._opts.clientInfo ?? {}) };
    if (this._anonymousKey) client.anonymous_key = this._anonymousKey;
    return { kind: "hello", versions: [1], token, client };
  }

  /** Opens one transport: its welcome, or a PlaitError. The token function and the open
   *  together are bounded by OPEN_TIMEOUT_MS; close() aborts the attempt at once. */
  async _openTransport(/** @type {string} */ name) {
    const transport = makeTransport(/** @type {any} */ (name), { url: this._opts.url, WebSocket: this._WebSocket, fetch: this._fetch });
    let timer;
    /** @type {() => void} */
    let abort = () => {};
    const aborted = new Promise((_, reject) => { abort = () => reject(new PlaitError(0, "the client is closed")); });
    this._attempts.add(abort);
    try {
      const opening = this._hello().then((hello) => (this._isClosed() ? new Promise(() => {}) : transport.open(hello)));
      const welcome = await Promise.race([
        opening,
        aborted,
        new Promise((_, reject) => { timer = setTimeout(() => reject(closeError(CloseCode.HANDSHAKE_TIMEOUT, `no welcome within ${this._openTimeoutMs} ms`)), this._openTimeoutMs); }),
      ]);
      opening.catch(() => {});
      return { transport, welcome };
    } catch (err) {
      transport.close();
      throw asPlaitError(err);
    } finally {
      clearTimeout(timer);
      this._attempts.delete(abort);
    }
  }

  /** After a connect that failed without an answer: whether the server answers at all
   *  (GET /healthz on the same base URL). A server that is down (restarting, refused, a
   *  proxy's 502) says nothing about the transport, so it does not count toward fallback. */
  async _serverReachable() {
    if (!this._fetch) return true;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), HEALTH_TIMEOUT_MS);
    const stop = () => abort.abort();
    this._attempts.add(stop);
    try {
      // no-cors: /healthz has no CORS headers, and a page of another origin only needs to
      // know that something answered (an opaque response, status 0); Node sees the status.
      const res = await this._fetch(`${baseUrls(this._opts.url).http}/healthz`, { signal: abort.signal, mode: "no-cors", cache: "no-store" });
      try { await res.arrayBuffer(); } catch { /* the status is enough */ }
      return ![502, 503, 504].includes(res.status);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
      this._attempts.delete(stop);
    }
  }

  /** Whether close() or a final close code ended the client (a method, so that checks
   *  after an await are not narrowed away). */
  _isClosed() { return this._state === "closed" || this._closing; }

  async _run() {
    while (!this._isClosed()) {
      if (this._isOffline()) {
        this._conn = null;
        this._setState("offline");
        await this._sleep(3600_000);
        continue;
      }
      const name = this._transports[this._tIndex];
      let opened;
      try {
        opened = await this._openTransport(name);
      } catch (err) {
        if (this._isClosed()) return;
        const error = asPlaitError(err);
        this._lastError = error;
        if (isFinal(error)) { this._finish(error); return; }
        await this._transportFailed(error);
        if (this._isClosed()) return;
        await this._backoff();
        continue;
      }
      if (this._isClosed()) { opened.transport.close(); return; }
      const openedAt = now();
      /** @type {Promise<PlaitError>} */
      const ended = new Promise((resolve) => { this._dropped = resolve; });
      this._adopt(opened.transport, opened.welcome);
      const error = await ended;
      if (this._isClosed()) return;
      this._lastError = error;
      if (isFinal(error)) { this._finish(error); return; }
      if (now() - openedAt >= RESET_AFTER_MS) {
        this._attempt = 0;
        this._fails = 0;
      } else if (!(error.isClose && error.code === CloseCode.TOKEN_EXPIRED)) {
        // Open, then gone at once (a proxy that cuts WebSockets after the upgrade, a stream
        // that never delivers): a failure of this transport too, unless the server went.
        await this._transportFailed(error);
        if (this._isClosed()) return;
      }
      // A TOKEN_EXPIRED close is retried at once with a fresh token.
      if (error.isClose && error.code === CloseCode.TOKEN_EXPIRED) { this._setState("reconnecting", { attempt: this._attempt, delayMs: 0 }); continue; }
      await this._backoff();
    }
  }

  /** One more failed connect (or a connection lost soon after it opened) on the current
   *  transport; past `fallbackAfter` in a row, the next transport is tried. */
  /** A connect failed, or a connection ended soon after it opened: a failure of the
   *  transport toward the fallback, unless it ended with no answer (refused, dropped) and the
   *  server is not there at all (killed, restarting): then the transport is not to blame. */
  async _transportFailed(/** @type {PlaitError} */ error) {
    const unanswered = error.isClose && error.code === CloseCode.ABNORMAL;
    if (!unanswered || (this._transports.length > 1 && (await this._serverReachable()))) this._countFailure();
  }

  _countFailure() {
    this._fails += 1;
    if (this._fails >= this._fallbackAfter && this._tIndex < this._transports.length - 1) {
      this._tIndex += 1;
      this._fails = 0;
      this._upgradeDelayMs = Math.min(FIRST_UPGRADE_MS, this._upgradeAfterMs);
    }
  }

  async _backoff() {
    const delayMs = backoffDelay(this._attempt, this._baseMs, this._capMs);
    this._attempt += 1;
    this._setState(this._isOffline() ? "offline" : "reconnecting", { attempt: this._attempt, delayMs });
    await this._sleep(delayMs);
  }

  /** Makes a freshly opened transport the connection: rooms rejoin. */
  _adopt(/** @type {any} */ transport, /** @type {any} */ welcome) {
    this._conn = transport;
    this._welcome = welcome;
    this._session = welcome.session;
    this._transportName = transport.name;
    this._lastSent = now();
    this._startHeartbeat(transport, welcome.heartbeat_ms);
    this._scheduleUpgrade();
    this._setState("open", { attempt: 0, delayMs: null });
    for (const room of [...this._rooms.values()]) {
      // join() checked its arguments: a room that still cannot be sent ends alone, never
      // taking the other rooms' rejoins with it.
      try { room._join(); } catch (err) { this._rooms.delete(room.name); room._end(asPlaitError(err)); }
    }
    transport.attach(
      (/** @type {any[]} */ frames) => { if (this._conn === transport) this._receive(frames); },
      (/** @type {{ error: PlaitError }} */ info) => this._drop(transport, info.error),
    );
  }

  /** The connection `transport` ended (or is given up): everything in flight is lost. */
  _drop(/** @type {any} */ transport, /** @type {PlaitError} */ error) {
    if (this._conn !== transport) return;
    transport.close(CloseCode.NORMAL);
    this._endConnection();
    const dropped = this._dropped;
    this._dropped = null;
    dropped?.(error);
  }

  _endConnection() {
    this._conn = null;
    this._session = null;
    this._outq = [];
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._upgradeTimer);
    this._channels.clear();
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const room of this._rooms.values()) room._disconnected();
    for (const p of pending) p.lost();
  }

  _finish(/** @type {PlaitError | null} */ error) {
    if (error) this._lastError = error;
    if (this._conn) this._endConnection();
    const dropped = this._dropped;
    this._dropped = null;
    this._setState("closed", { attempt: this._attempt, delayMs: null });
    this._wake?.();
    dropped?.(error ?? new PlaitError(0, "the client is closed"));
    const g = /** @type {any} */ (globalThis);
    if (typeof g.removeEventListener === "function") {
      g.removeEventListener("offline", this._onOffline);
      g.removeEventListener("online", this._onOnline);
    }
    const closed = error ?? new PlaitError(0, "the client is closed");
    for (const room of [...this._rooms.values()]) room._end(closed);
    this._rooms.clear();
  }

  // ------------------------------------------------------------------ heartbeats (§5.7)

  _startHeartbeat(/** @type {any} */ transport, /** @type {number} */ heartbeatMs) {
    clearInterval(this._heartbeatTimer);
    if (!heartbeatMs) return;
    const silence = transport.silenceLimitMs(heartbeatMs);
    this._heartbeatTimer = setInterval(() => {
      if (this._conn !== transport) return;
      const t = now();
      if (t - transport.activity > silence) {
        this._drop(transport, closeError(CloseCode.HEARTBEAT_TIMEOUT, `nothing from the server for ${silence} ms`));
      } else if (transport.pings && t - this._lastSent >= heartbeatMs * 0.9) {
        this._nonce = (this._nonce + 1) >>> 0;
        this._send({ kind: "ping", nonce: this._nonce });
      }
    }, Math.max(50, heartbeatMs / 4));
  }

  // ------------------------------------------------------------------ upgrade back (fallback)

  /** After a fallback, tries the first transport again: first after about 5 s (a server
   *  restart, a network blip), then at doubling intervals up to upgradeAfterMs. */
  _scheduleUpgrade() {
    clearTimeout(this._upgradeTimer);
    if (this._tIndex === 0 && this._transportName === this._transports[0]) return;
    const delay = this._upgradeDelayMs;
    this._upgradeDelayMs = Math.min(delay * 2, this._upgradeAfterMs);
    this._upgradeTimer = setTimeout(async () => {
      const current = this._conn;
      if (!current || this._state !== "open") return;
      let opened;
      try {
        opened = await this._openTransport(this._transports[0]);
      } catch {
        if (this._conn === current) this._scheduleUpgrade();
        return;
      }
      if (this._conn !== current || this._state !== "open") { opened.transport.close(); return; }
      // Switch: end the old connection as if dropped, but keep the run loop waiting.
      const dropped = this._dropped;
      this._dropped = null;
      current.close(CloseCode.NORMAL);
      this._endConnection();
      this._dropped = dropped;
      this._tIndex = 0;
      this._fails = 0;
      this._upgradeDelayMs = Math.min(FIRST_UPGRADE_MS, this._upgradeAfterMs);
      this._adopt(opened.transport, opened.welcome);
    }, delay);
  }

  // ------------------------------------------------------------------ frames out

  /** Queues a frame for the current connection; the queue goes out as batches (§3.2).
   *  The frame is encoded now, so that one that cannot be is refused here, to its caller
   *  (a PlaitError thrown), never when the batch goes out with the others' frames. */
  _send(/** @type {any} */ frame) {
    if (!this._conn) return false;
    const { piece, size } = this._conn.encodeFrame(frame); // encoded once: sent as these bytes
    this._outq.push({ frame, piece, size });
    if (!this._flushScheduled) {
      this._flushScheduled = true;
      queueMicrotask(() => { this._flushScheduled = false; this._flushOut(); });
    }
    return true;
  }

  _flushOut() {
    const conn = this._conn;
    if (!conn || this._outq.length === 0) return;
    const limits = this._welcome?.limits ?? {};
    const maxFrames = Math.min(limits.max_frames_per_message || 1024, 256);
    // Each frame's real encoded size; a batch's framing (a JSON array's brackets and commas)
    // is at most one byte a frame more.
    const maxBytes = limits.max_message_bytes || 16 << 20;
    const queued = this._outq.splice(0);
    /** @type {any[]} */
    let batch = [];
    /** @type {any[]} */
    let pieces = [];
    let bytes = 2;
    for (const { frame, piece, size } of queued) {
      if (batch.length && (batch.length >= maxFrames || bytes + size + 1 > maxBytes)) {
        conn.send(batch, pieces);
        batch = [];
        pieces = [];
        bytes = 2;
      }
      batch.push(frame);
      pieces.push(piece);
      bytes += size + 1;
    }
    if (batch.length) conn.send(batch, pieces);
    this._lastSent = now();
  }

  /** Sends a request (a frame with a ref); `handlers.answer` gets its answer exactly once,
   *  `handlers.lost` is called instead if the connection ends first. */
  _request(/** @type {any} */ frame, /** @type {{ answer: (f: any) => void, lost: () => void }} */ handlers) {
    if (!this._conn) { handlers.lost(); return null; }
    do { this._ref = (this._ref + 1) >>> 0; } while (this._ref === 0 || this._pending.has(this._ref));
    frame.ref = this._ref;
    this._pending.set(this._ref, { ...handlers, kind: frame.kind });
    try {
      this._send(frame);
    } catch (err) {
      this._pending.delete(frame.ref);
      throw err;
    }
    return this._ref;
  }

  /** Resolves when no request of `kind` waits for its answer, or after `ms`. */
  async _answersOf(/** @type {string} */ kind, /** @type {number} */ ms) {
    const deadline = now() + ms;
    while (this._conn && [...this._pending.values()].some((p) => p.kind === kind) && now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** The server's limit on one message, for refusing locally what could never fit (§7.1). */
  _checkFits(/** @type {number} */ bytes, /** @type {string} */ what) {
    const max = this._welcome?.limits?.max_message_bytes;
    if (max && bytes > max) throw new PlaitError(ErrorCode.FRAME_TOO_LARGE, `${what} takes ${bytes} bytes, over the server's max_message_bytes ${max}`);
  }

  // ------------------------------------------------------------------ frames in

  _receive(/** @type {any[]} */ frames) {
    for (const f of frames) {
      try {
        this._handle(f);
      } catch (err) {
        queueMicrotask(() => { throw err; });
      }
    }
  }

  _handle(/** @type {any} */ f) {
    switch (f.kind) {
      case "ping": this._send({ kind: "pong", nonce: f.nonce }); return;
      case "pong": return;
      case "ack":
      case "joined": return this._answer(f);
      case "error":
        if (f.ref !== null) return this._answer(f);
        if (f.channel !== null) return this._channels.get(f.channel)?._onChannelError(f);
        this._lastError = new PlaitError(f.code, f.message); // the close that follows says what happens
        return;
      case "token_expiring": void this._refresh(); return;
      case "welcome": return;
      default: {
        const room = this._channels.get(f.channel);
        if (room) room._onFrame(f); // stale frames of a left channel change nothing (§5.2)
      }
    }
  }

  _answer(/** @type {any} */ f) {
    const handler = this._pending.get(f.ref);
    if (!handler) return; // settled already
    this._pending.delete(f.ref);
    handler.answer(f);
  }

  async _refresh() {
    if (typeof this._opts.token !== "function") return;
    let token;
    try { token = await this._token(); } catch { return; }
    if (typeof token !== "string") return;
    try {
      this._request({ kind: "refresh", token }, { answer: () => {}, lost: () => {} });
    } catch { /* a token that cannot be sent: skipped, the server closes with TOKEN_EXPIRED */ }
  }
}
