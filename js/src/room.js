// Room: one joined room on a PlaitClient: its Y.Doc kept in sync (spec §5.2, §5.3), presence
// grouped by user (§5.4), cursors and typing (§5.5), events with resume (§5.6, §7), and the
// rejoin after every reconnect.
import * as Y from "yjs";
import { PlaitError } from "./errors.js";
import { ErrorCode } from "./codes.js";
import { checkValue, encodedSize, valueCount, ACCESS, MAX_VALUES_PER_MESSAGE } from "./protocol.js";
import { backoffDelay } from "./pacing.js";
import { connectionPacers, spend } from "./connpacing.js";

const nowS = () => performance.now() / 1000;
const LEAVE_WAIT_MS = 5000;
/** The server's typing expiry is 5 s (§5.5): renew well before. */
const TYPING_RENEW_MS = 3000;
const PUBLISH_RETRIES = 6;
/** channel_closed codes after which the room rejoins by itself (§5.2). */
const REJOIN_CODES = new Set([ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.INTERNAL]);
/** join refusals worth retrying after a reconnect's rejoin. */
const RETRY_JOIN_CODES = new Set([ErrorCode.STORAGE_UNAVAILABLE, ErrorCode.INTERNAL, ErrorCode.SHUTTING_DOWN, ErrorCode.RATE_LIMITED]);

/** Rejoins to repair a document the server refused as INVALID_UPDATE, at most this many a minute. */
const MAX_RESYNCS_PER_MINUTE = 3;
const LISTENER_TYPES = ["presence", "cursors", "typing", "event", "resumed", "access", "synced", "closed", "refused"];

const errorOf = (/** @type {any} */ f) => new PlaitError(f.code, f.message);
const invalid = (/** @type {string} */ msg) => new PlaitError(ErrorCode.INVALID_FIELD, msg);
const codePoints = (/** @type {string} */ s) => [...s].length;

/** A name or key of 1 to 128 code points (§4.2), checked before it is sent. */
function checkShortString(/** @type {unknown} */ s, /** @type {string} */ what) {
  if (typeof s !== "string") throw invalid(`${what} must be a string, not ${s === null ? "null" : typeof s}`);
  const n = codePoints(s);
  if (n < 1 || n > 128) throw invalid(`${what} is 1 to 128 characters, not ${n}`);
  checkValue(s, 0, what);
}

/** An index into a Y.Text: an integer in [0, text.length]. */
function checkIndex(/** @type {Y.Text} */ text, /** @type {unknown} */ i, /** @type {string} */ what) {
  if (typeof i !== "number" || !Number.isInteger(i) || i < 0 || i > text.length) throw invalid(`${what} must be an integer in [0, ${text.length}], not ${String(i)}`);
}

function checkText(/** @type {unknown} */ text) {
  if (!(text instanceof Y.Text)) throw invalid("a text cursor needs a Y.Text (from the same yjs the SDK uses)");
}

/** A listener's exception is reported, never thrown into the SDK's turn (it would kill Node). */
function reportListenerError(/** @type {unknown} */ err) {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.reportError === "function") g.reportError(err);
  else console.error("plait: a Room listener threw:", err);
}
const jsonKey = (/** @type {unknown} */ v) => JSON.stringify(v, (_k, x) => (x instanceof Uint8Array ? Array.from(x) : x));

/** Presence entries grouped by identity.id (§5.4). */
function groupUsers(/** @type {Map<string, any>} */ entries) {
  /** @type {Map<string, any>} */
  const users = new Map();
  for (const e of entries.values()) {
    const id = e.identity.id;
    let u = users.get(id);
    if (!u) { u = { id, identity: e.identity, sessions: [] }; users.set(id, u); }
    u.sessions.push(e);
  }
  return users;
}

export class Room {
  /** @param {import("./client.js").PlaitClient} client @param {string} name @param {any} options */
  constructor(client, name, options) {
    options = options ?? {};
    this._client = client;
    this.name = name;
    this.doc = options.doc ?? new Y.Doc();
    /** @type {any} */ this.access = null;
    this.synced = false;
    this.lastSeq = options.since ?? 0;
    /** @type {string | null} */ this.epoch = options.epoch ?? null;
    this._sinceGiven = options.since != null; // null is "not given", as in the join frame
    this._joinedOnce = false;
    /** @type {number | null} */ this._channel = null;
    this._joining = false;
    this._live = false;
    this._ended = false;
    this._origin = Symbol(`plait:${name}`);
    /** @type {Uint8Array[]} */ this._unsent = [];
    /** @type {Map<number, Uint8Array>} */ this._inflight = new Map();
    /** @type {PlaitError | null} */ this._refused = null;
    /** @type {{ resolve: () => void, reject: (e: PlaitError) => void }[]} */ this._flushWaiters = [];
    /** @type {import("./pacing.js").Pacer | null} */ this._pacer = null;
    /** @type {any} */ this._flushTimer = null;
    /** @type {Record<string, unknown> | null} */ this._presenceState = null;
    /** @type {Map<string, any>} */ this._entries = new Map();
    /** @type {Map<string, unknown>} */ this._cursors = new Map();
    /** @type {unknown} */ this._cursor = undefined;
    this._cursorSentAt = -Infinity;
    this.cursorThrottleMs = 50;
    this._typingOn = false;
    /** @type {any} */ this._typingTimer = null;
    /** @type {string[]} */ this._typing = [];
    /** @type {any[]} */ this._publishes = [];
    /** @type {any} */ this._publishTimer = null;
    /** @type {(() => void)[]} */ this._publishesDone = [];
    /** Updates refused FORBIDDEN: sent again once the member may write (later edits build on them). */
    /** @type {Uint8Array[]} */ this._forbidden = [];
    /** @type {number[]} */ this._resyncs = [];
    /** Presence, cursor and typing waiting for the connection's frame pacer (latest wins). */
    /** @type {null | { set: boolean, patch?: Record<string, unknown> }} */ this._presencePending = null;
    this._cursorPending = false;
    /** @type {boolean | null} */ this._typingPending = null;
    /** @type {any} */ this._ephemeralTimer = null;
    /** @type {any} */ this._rejoinTimer = null;
    /** @type {Map<string, Set<Function>>} */ this._listeners = new Map();
    /** @type {[string, unknown][] | null} */ this._held = [];
    /** @type {PlaitError | null} */ this._endError = null;
    /** @type {(u: Uint8Array, origin: unknown) => void} */
    this._onDocUpdate = (update, origin) => {
      if (origin === this._origin || this._ended) return;
      this._unsent.push(update);
      this._scheduleFlush(0);
    };
    this.doc.on("update", this._onDocUpdate);
    /** @type {(r: Room) => void} */ let resolve = () => {};
    /** @type {(e: PlaitError) => void} */ let reject = () => {};
    /** @type {Promise<Room>} */
    this._joinPromise = new Promise((res, rej) => { resolve = res; reject = rej; });
    this._joinPromise.catch(() => {});
    this._resolveJoin = resolve;
    this._rejectJoin = reject;
  }

  // ------------------------------------------------------------------ listeners

  /** @param {string} type @param {Function} listener */
  on(type, listener) {
    if (!LISTENER_TYPES.includes(type)) throw invalid(`Room has no ${JSON.stringify(type)} listener`);
    if (typeof listener !== "function") throw invalid(`a Room listener must be a function, not ${listener === null ? "null" : typeof listener}`);
    let set = this._listeners.get(type);
    if (!set) { set = new Set(); this._listeners.set(type, set); }
    set.add(listener);
    return () => { set.delete(listener); };
  }

  _emit(/** @type {string} */ type, /** @type {unknown} */ value) {
    // What the first join brings (replayed events, presence, ...) is held until the caller of
    // join() could add its listeners: the turn after the join resolved.
    if (this._held) { this._held.push([type, value]); return; }
    for (const l of [...(this._listeners.get(type) ?? [])]) {
      try { l(value); } catch (err) { reportListenerError(err); }
    }
  }

  /** The error of calls on a Room that ended: why it ended (ROOM_DELETED, FORBIDDEN, ...). */
  _gone() {
    return this._endError ?? new PlaitError(0, `room ${JSON.stringify(this.name)} was left or closed`);
  }

  // ------------------------------------------------------------------ join and rejoin (§5.2, §7)

  _join() {
    if (this._ended || this._channel !== null || this._joining) return;
    this._joining = true;
    const since = this._joinedOnce || this._sinceGiven ? this.lastSeq : null;
    const frame = {
      kind: "join", room: this.name, state_vector: Y.encodeStateVector(this.doc),
      since, epoch: since === null ? null : this.epoch,
    };
    this._client._request(frame, {
      answer: (f) => { this._joining = false; this._onJoinAnswer(f, since); },
      lost: () => { this._joining = false; }, // joined again when the connection is back
    });
  }

  _onJoinAnswer(/** @type {any} */ f, /** @type {number | null} */ since) {
    if (this._ended) return;
    if (f.kind === "error") {
      const err = errorOf(f);
      if (this._joinedOnce && RETRY_JOIN_CODES.has(f.code)) return this._rejoinLater();
      if (this._joinedOnce) this._emit("closed", err);
      this._end(err);
      return;
    }
    this._channel = f.channel;
    this._client._channels.set(f.channel, this);
    const access = ACCESS[/** @type {1|2|3} */ (f.access)] ?? null;
    const accessChanged = this._joinedOnce && access !== this.access;
    this.access = access;
    const epochChanged = this.epoch !== null && f.epoch !== this.epoch;
    this.epoch = f.epoch; // before "resumed": its listeners see the history it is about
    if (since !== null) {
      const complete = f.resumed === true && !epochChanged;
      if (epochChanged) this.lastSeq = 0; // another history: every replayed event is new
      this._emit("resumed", { complete, since, head: f.head });
    } else {
      this.lastSeq = f.head;
    }
    this._joinedOnce = true;
    this.synced = false; // until this join's sync_step2
    this._pacer = connectionPacers(this._client).updates; // the rate is per connection (§5.8)
    // Stale cursors and typing of the last connection: the server sends them afresh.
    if (this._cursors.size) { this._cursors.clear(); this._emit("cursors", new Map()); }
    if (this._typing.length) { this._typing = []; this._emit("typing", []); }
    if (accessChanged) this._emit("access", access);
    this._resendForbidden();
  }

  /** The member may write again: what was refused FORBIDDEN goes first, so that later edits,
   *  which build on it, integrate (the rejoin's sync_step2 also carries it). */
  _resendForbidden() {
    if (this.access !== "write" || this._forbidden.length === 0) return;
    this._unsent.unshift(...this._forbidden.splice(0));
    this._scheduleFlush(0);
  }

  /** The server refused an update as INVALID_UPDATE: it lacks what the update builds on.
   *  Leave and join again with the state vector: the sync exchange sends all it lacks (§5.3). */
  _resync() {
    if (this._ended || this._channel === null) return;
    const now = Date.now();
    this._resyncs = this._resyncs.filter((t) => now - t < 60000);
    if (this._resyncs.length >= MAX_RESYNCS_PER_MINUTE) return;
    this._resyncs.push(now);
    const channel = this._channel;
    this._client._channels.delete(channel);
    this._client._send({ kind: "leave", channel, ref: null });
    this._disconnected();
    this._join();
  }

  _rejoinLater() {
    clearTimeout(this._rejoinTimer);
    this._rejoinTimer = setTimeout(() => { if (this._client.state === "open") this._join(); }, 200 + backoffDelay(2, 250, 2000));
  }

  /** The connection ended: requests in flight are lost; what was unacked is sent again. */
  _disconnected() {
    this._channel = null;
    this._live = false;
    clearTimeout(this._flushTimer);
    this._flushTimer = null; // else no flush is ever scheduled again (_scheduleFlush checks it)
    clearInterval(this._typingTimer);
    this._typingTimer = null;
    clearTimeout(this._publishTimer);
    this._publishTimer = null;
    clearTimeout(this._ephemeralTimer);
    this._ephemeralTimer = null;
  }

  /** Becomes live after answering the server's sync_step1: sends what waited. */
  _goLive() {
    this._live = true;
    this._presencePending = this._presenceState ? { set: true } : null;
    this._cursorPending = this._cursor !== undefined && this._cursor !== null;
    this._typingPending = null;
    if (this._typingOn) this._startTyping();
    this._pumpEphemeral();
    this._pumpPublishes();
    this._scheduleFlush(0);
  }

  // ------------------------------------------------------------------ frames in

  _onFrame(/** @type {any} */ f) {
    switch (f.kind) {
      case "sync_step1": {
        // Everything the server lacks, offline edits included (§5.3); unsent changes are in it.
        const update = Y.encodeStateAsUpdate(this.doc, f.state_vector);
        this._unsent = [];
        spend(this._pacer, nowS()); // it counts toward updates_per_second (§5.8)
        this._sendUpdate("sync_step2", update);
        this._goLive();
        return;
      }
      case "sync_step2":
        Y.applyUpdate(this.doc, f.update, this._origin);
        this.synced = true;
        this._emit("synced", undefined);
        if (this._held) {
          this._resolveJoin(this);
          setTimeout(() => {
            const held = this._held ?? [];
            this._held = null;
            for (const [type, value] of held) this._emit(type, value);
          }, 0);
        }
        return;
      case "update":
        Y.applyUpdate(this.doc, f.update, this._origin);
        return;
      case "presence_snapshot": {
        const entries = new Map();
        for (const e of f.entries) entries.set(e.session, e);
        return this._setEntries(entries);
      }
      case "presence_diff": {
        const entries = new Map(this._entries);
        for (const e of f.joined) entries.set(e.session, e);
        for (const u of f.updated) {
          const old = entries.get(u.session);
          if (old) entries.set(u.session, { ...old, state: u.state });
        }
        for (const s of f.left) entries.delete(s);
        return this._setEntries(entries);
      }
      case "cursors": {
        const own = this._client.session;
        for (const m of f.moves) {
          if (m.session === own) continue;
          if (m.position === null) this._cursors.delete(m.session);
          else this._cursors.set(m.session, m.position);
        }
        this._emit("cursors", new Map(this._cursors));
        return;
      }
      case "typing_state": {
        const own = this._client.session;
        this._typing = f.sessions.filter((/** @type {string} */ s) => s !== own);
        this._emit("typing", [...this._typing]);
        return;
      }
      case "event": {
        if (f.seq <= this.lastSeq) return; // replayed twice
        this.lastSeq = f.seq;
        this._emit("event", { seq: f.seq, name: f.name, payload: f.payload, session: f.session, user: f.user });
        return;
      }
      case "channel_closed": {
        const err = errorOf(f);
        this._client._channels.delete(f.channel);
        this._disconnected();
        this._emit("closed", err);
        if (REJOIN_CODES.has(f.code)) this._rejoinLater();
        else this._end(err);
        return;
      }
      case "access_changed": {
        this.access = ACCESS[/** @type {1|2|3} */ (f.access)] ?? null;
        this._emit("access", this.access);
        this._resendForbidden();
        return;
      }
    }
  }

  _onChannelError(/** @type {any} */ _f) {
    // Errors of frames sent without a ref (cursor_move, typing, presence): nothing to settle.
  }

  // ------------------------------------------------------------------ document out (§5.3, §7.1)

  _scheduleFlush(/** @type {number} */ ms) {
    if (!this._live || this._flushTimer) return;
    this._flushTimer = setTimeout(() => { this._flushTimer = null; this._flushUpdates(); }, ms);
  }

  _flushUpdates() {
    if (!this._live || this._unsent.length === 0) return this._checkFlushed();
    const t = nowS();
    if (this._pacer && !this._pacer.take(t)) return this._scheduleFlush(Math.max(1, (this._pacer.nextTokenAt(t) - t) * 1000));
    const update = this._unsent.length === 1 ? this._unsent[0] : Y.mergeUpdates(this._unsent);
    this._unsent = [];
    this._sendUpdate("update", update);
  }

  _sendUpdate(/** @type {"update"|"sync_step2"} */ kind, /** @type {Uint8Array} */ update) {
    const max = this._client.limits?.max_message_bytes;
    if (max && update.length + 64 > max) {
      // Splitting an update into pieces (§3.2) is not implemented: refuse it here rather
      // than be closed with 1009 for it (a close the client could not retry).
      if (kind === "sync_step2") this._client._send({ kind, channel: this._channel, ref: null, update: Y.encodeStateAsUpdate(new Y.Doc()) });
      return this._refuse(new PlaitError(ErrorCode.FRAME_TOO_LARGE, `a document update of ${update.length} bytes does not fit in a message (max_message_bytes ${max}); this SDK does not split updates yet`));
    }
    const frame = { kind, channel: this._channel, ref: null, update };
    const ref = this._client._request(frame, {
      answer: (f) => {
        this._inflight.delete(/** @type {number} */ (ref));
        if (f.kind === "ack") return this._checkFlushed();
        if (f.code === ErrorCode.RATE_LIMITED) {
          // It had no effect: again, after a jittered pause and at a slower pace (§7.1).
          this._unsent.unshift(update);
          this._pacer?.hold(nowS(), 0.2 + Math.random() * 0.5);
          return this._scheduleFlush(0);
        }
        if (f.code === ErrorCode.UNKNOWN_CHANNEL) return; // left meanwhile
        if (f.code === ErrorCode.FORBIDDEN) this._forbidden.push(update);
        this._refuse(errorOf(f));
        if (f.code === ErrorCode.INVALID_UPDATE) this._resync();
      },
      // The rejoin's sync_step2 carries it again.
      lost: () => { this._inflight.delete(/** @type {number} */ (ref)); this._unsent.push(update); },
    });
    if (ref !== null) this._inflight.set(ref, update);
  }

  /** A change refused for good (FORBIDDEN, DOCUMENT_TOO_LARGE, INVALID_UPDATE): never silent. */
  _refuse(/** @type {PlaitError} */ err) {
    this._emit("refused", err);
    const waiters = this._flushWaiters.splice(0);
    if (waiters.length) for (const w of waiters) w.reject(err);
    else this._refused = err;
  }

  _checkFlushed() {
    if (this._unsent.length || this._inflight.size || !this._live) return;
    for (const w of this._flushWaiters.splice(0)) w.resolve();
  }

  /** @returns {Promise<void>} */
  flushed() {
    if (this._refused) { const e = this._refused; this._refused = null; return Promise.reject(e); }
    if (this._ended) return this._unsent.length || this._inflight.size ? Promise.reject(this._gone()) : Promise.resolve();
    return new Promise((resolve, reject) => {
      this._flushWaiters.push({ resolve, reject });
      this._checkFlushed();
    });
  }

  // ------------------------------------------------------------------ presence (§5.4)

  _setEntries(/** @type {Map<string, any>} */ entries) {
    const before = groupUsers(this._entries);
    this._entries = entries;
    const after = groupUsers(entries);
    const change = { joined: /** @type {any[]} */ ([]), updated: /** @type {any[]} */ ([]), left: /** @type {string[]} */ ([]) };
    for (const [id, u] of after) {
      const old = before.get(id);
      if (!old) change.joined.push(u);
      else if (jsonKey(old) !== jsonKey(u)) change.updated.push(u);
    }
    for (const id of before.keys()) if (!after.has(id)) change.left.push(id);
    if (change.joined.length || change.updated.length || change.left.length) this._emit("presence", change);
  }

  _checkPresence(/** @type {Record<string, unknown>} */ state, /** @type {string} */ what) {
    if (this._ended) throw this._gone();
    if (state === null || typeof state !== "object" || Array.isArray(state)) throw new PlaitError(ErrorCode.INVALID_FIELD, `${what} must be an object`);
    checkValue(state, 0, what);
    const max = this._client.limits?.max_presence_bytes;
    const size = encodedSize({ kind: "presence_set", channel: 0, ref: null, state });
    if (max && size > max) throw new PlaitError(ErrorCode.PRESENCE_TOO_LARGE, `${what} takes ${size} bytes, over max_presence_bytes ${max}`);
    this._client._checkFits(size, what);
  }

  /** @param {Record<string, unknown>} state */
  setPresence(state) {
    this._checkPresence(state, "presence state");
    this._presenceState = { ...state };
    this._presencePending = { set: true };
    this._pumpEphemeral();
  }

  /** @param {Record<string, unknown>} patch */
  patchPresence(patch) {
    this._checkPresence(patch, "presence patch");
    const merged = { ...(this._presenceState ?? {}) };
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) delete merged[k]; else merged[k] = v;
    }
    this._checkPresence(merged, "presence state");
    this._presenceState = merged;
    const pending = this._presencePending;
    if (pending && pending.set) return this._pumpEphemeral(); // the set sends the merged state
    // Patches waiting for the pacer merge into one (a later value of a key wins; null deletes).
    const next = { ...(pending ? pending.patch : {}), ...patch };
    const max = this._client.limits?.max_presence_bytes;
    const tooBig = max && encodedSize({ kind: "presence_patch", channel: 0, ref: null, patch: next }) > max;
    this._presencePending = tooBig ? { set: true } : { set: false, patch: next };
    this._pumpEphemeral();
  }

  /** Sends the latest presence, cursor and typing under the connection's frame rate (§5.8). */
  _pumpEphemeral() {
    if (!this._live || this._ephemeralTimer) return;
    const pacer = connectionPacers(this._client).frames;
    const later = (/** @type {number} */ ms) => {
      this._ephemeralTimer = setTimeout(() => { this._ephemeralTimer = null; this._pumpEphemeral(); }, Math.max(1, ms));
    };
    for (let i = 0; i < 3; i++) { // each kind at most once a pass
      const t = nowS();
      let frame = null;
      if (this._presencePending) {
        const p = this._presencePending;
        frame = p.set
          ? { kind: "presence_set", channel: this._channel, ref: null, state: this._presenceState ?? {} }
          : { kind: "presence_patch", channel: this._channel, ref: null, patch: p.patch };
        if (!pacer.take(t)) return later((pacer.nextTokenAt(t) - t) * 1000);
        this._presencePending = null;
      } else if (this._typingPending !== null) {
        frame = { kind: "typing", channel: this._channel, on: this._typingPending };
        if (!pacer.take(t)) return later((pacer.nextTokenAt(t) - t) * 1000);
        this._typingPending = null;
      } else if (this._cursorPending) {
        const wait = this._cursorSentAt + this.cursorThrottleMs - performance.now();
        if (wait > 0) return later(wait);
        if (!pacer.take(t)) return later((pacer.nextTokenAt(t) - t) * 1000);
        this._cursorPending = false;
        this._cursorSentAt = performance.now();
        frame = { kind: "cursor_move", channel: this._channel, position: this._cursor ?? null };
      } else {
        return;
      }
      this._client._send(frame);
    }
    if (this._presencePending || this._typingPending !== null || this._cursorPending) later(0);
  }

  presence() { return [...this._entries.values()]; }
  users() { return [...groupUsers(this._entries).values()]; }

  // ------------------------------------------------------------------ cursors and typing (§5.5)

  /** @param {unknown} position */
  moveCursor(position) {
    if (this._ended) throw this._gone();
    checkValue(position, 0, "cursor position");
    const max = this._client.limits?.max_presence_bytes;
    const size = encodedSize({ kind: "cursor_move", channel: 0, position });
    if (max && size > max) throw new PlaitError(ErrorCode.PRESENCE_TOO_LARGE, `a cursor position of ${size} bytes is over max_presence_bytes ${max}`);
    this._cursor = position;
    this._cursorPending = true;
    this._pumpEphemeral();
  }

  cursors() { return new Map(this._cursors); }

  /** @param {Y.Text} text @param {number} anchor @param {number} [head] */
  textCursor(text, anchor, head = anchor) {
    checkText(text);
    checkIndex(text, anchor, "a text cursor's anchor");
    checkIndex(text, head, "a text cursor's head");
    // A position at the end of the text sticks to the character before it (assoc -1): text
    // appended after it by someone else then falls outside the selection, not inside it.
    const rel = (/** @type {number} */ i) => {
      const assoc = i > 0 && i === text.length ? -1 : 0;
      return JSON.parse(JSON.stringify(Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(text, i, assoc))));
    };
    return { anchor: rel(anchor), head: rel(head) };
  }

  /** @param {Y.Text} text @param {{ anchor: unknown, head: unknown }} cursor */
  resolveTextCursor(text, cursor) {
    checkText(text);
    const abs = (/** @type {any} */ json) => {
      try {
        const pos = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(json), this.doc);
        return pos && pos.type === text ? pos.index : null;
      } catch {
        return null;
      }
    };
    if (!cursor || typeof cursor !== "object") return null;
    const anchor = abs(cursor.anchor);
    const head = abs(cursor.head);
    return anchor === null || head === null ? null : { anchor, head };
  }

  /** @param {boolean} on */
  setTyping(on) {
    if (this._ended) throw this._gone();
    on = Boolean(on);
    const was = this._typingOn;
    this._typingOn = on;
    if (!this._live) return;
    if (on && !was) this._startTyping();
    if (!on && was) {
      clearInterval(this._typingTimer);
      this._typingTimer = null;
      this._typingPending = false; // on then off before the pacer let "on" go: only "off" is sent
      this._pumpEphemeral();
    }
  }

  _startTyping() {
    clearInterval(this._typingTimer);
    this._typingPending = true;
    this._pumpEphemeral();
    this._typingTimer = setInterval(() => {
      if (this._live && this._typingOn) { this._typingPending = true; this._pumpEphemeral(); }
    }, TYPING_RENEW_MS);
  }

  typing() { return [...this._typing]; }

  // ------------------------------------------------------------------ events (§5.6)

  /** @param {string} name @param {unknown} payload @param {{ key?: string }} [options] @returns {Promise<number>} */
  publish(name, payload, options = {}) {
    if (this._ended) return Promise.reject(this._gone());
    try {
      if (options !== undefined && options !== null && typeof options !== "object") throw invalid("publish options must be an object");
      checkShortString(name, "an event name");
      checkValue(payload === undefined ? null : payload, 0, "event payload");
      const given = options?.key;
      if (given !== undefined && given !== null) checkShortString(given, "an idempotency key");
      const key = given ?? `k${Date.now().toString(36)}${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`.slice(0, 40);
      const size = encodedSize({ kind: "publish", channel: 0, ref: 0, name, payload: payload ?? null, key });
      this._client._checkFits(size, "the event");
      // A value takes a byte at least: only a longer frame can hold more than the bound (§3.4).
      if (size > MAX_VALUES_PER_MESSAGE && valueCount(payload) + 6 > MAX_VALUES_PER_MESSAGE) {
        throw new PlaitError(ErrorCode.FRAME_TOO_LARGE, `the event holds more than the ${MAX_VALUES_PER_MESSAGE} values a server reads of one message (spec §3.4)`);
      }
      return new Promise((resolve, reject) => {
        this._publishes.push({ name, payload: payload ?? null, key, resolve, reject, sent: false, tries: 0, notBefore: 0 });
        this._pumpPublishes();
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Sends the oldest waiting publish, one at a time and under the connection's event rate
   *  (§5.8, §7.1): a RATE_LIMITED one is retried before any later one goes, so the room's
   *  events keep the order they were published in; an offline queue drains at that pace. */
  _checkPublished() {
    if (this._publishes.length === 0) for (const done of this._publishesDone.splice(0)) done();
  }

  _pumpPublishes() {
    this._checkPublished();
    if (!this._live || this._publishTimer) return;
    const p = this._publishes[0];
    if (!p || p.sent) return;
    const pacer = connectionPacers(this._client).events;
    const t = nowS();
    const at = Math.max(p.notBefore, pacer.nextTokenAt(t));
    if (at > t || !pacer.take(t)) {
      this._publishTimer = setTimeout(() => { this._publishTimer = null; this._pumpPublishes(); }, Math.max(1, (at - t) * 1000));
      return;
    }
    this._sendPublish(p);
  }

  _sendPublish(/** @type {any} */ p) {
    p.sent = true;
    const settle = () => { const i = this._publishes.indexOf(p); if (i >= 0) this._publishes.splice(i, 1); };
    this._client._request({ kind: "publish", channel: this._channel, ref: 0, name: p.name, payload: p.payload, key: p.key }, {
      answer: (f) => {
        p.sent = false;
        if (f.kind === "ack") { settle(); p.resolve(f.value); return this._pumpPublishes(); }
        if (f.code === ErrorCode.RATE_LIMITED && p.tries < PUBLISH_RETRIES) {
          // It had no effect: again, first in line, after a jittered pause at a slower pace.
          p.tries += 1;
          const pause = 0.1 + backoffDelay(p.tries, 100, 2000) / 1000;
          p.notBefore = nowS() + pause;
          connectionPacers(this._client).events.hold(nowS(), pause);
          return this._pumpPublishes();
        }
        settle();
        p.reject(errorOf(f));
        this._pumpPublishes();
      },
      lost: () => { p.sent = false; }, // sent again on rejoin, with the same key
    });
  }

  // ------------------------------------------------------------------ leaving (§7.1)

  leave() { return this._leave(LEAVE_WAIT_MS, true); }

  async _leave(/** @type {number} */ waitMs, /** @type {boolean} */ waitAck) {
    if (this._ended) return;
    if (this._live) {
      let timer;
      // Edits and the publishes still queued behind the pacer go first (bounded).
      const published = new Promise((r) => { this._publishesDone.push(() => r(undefined)); this._checkPublished(); });
      await Promise.race([Promise.all([this.flushed().catch(() => {}), published]), new Promise((r) => { timer = setTimeout(r, waitMs); })]);
      clearTimeout(timer);
    }
    const channel = this._channel;
    if (channel !== null && this._live) {
      this._client._channels.delete(channel);
      if (waitAck) {
        let timer;
        await Promise.race([
          new Promise((r) => this._client._request({ kind: "leave", channel, ref: 0 }, { answer: r, lost: () => r(undefined) })),
          new Promise((r) => { timer = setTimeout(r, 2000); }),
        ]);
        clearTimeout(timer);
      } else {
        this._client._send({ kind: "leave", channel, ref: null });
      }
    }
    this._end(this._gone());
  }

  /** Ends this Room for good: nothing more is sent, everything waiting is told. */
  _end(/** @type {PlaitError} */ err) {
    if (this._ended) return;
    this._ended = true;
    this._endError = err;
    this._disconnected();
    clearTimeout(this._rejoinTimer);
    this.doc.off("update", this._onDocUpdate);
    if (this._client._rooms.get(this.name) === this) this._client._rooms.delete(this.name);
    this._rejectJoin(err);
    for (const p of this._publishes.splice(0)) p.reject(err);
    const pending = this._unsent.length || this._inflight.size;
    for (const w of this._flushWaiters.splice(0)) (pending ? w.reject(err) : w.resolve());
  }
}
