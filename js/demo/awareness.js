// The part of y-protocols' Awareness that y-codemirror.next uses, over a Plait Room: its
// presence (the `user` field and any other) and its cursors (the `cursor` field).
//
// y-codemirror.next (src/y-remote-selections.js) reads `doc.clientID`, `getLocalState()`,
// `getStates()` (a Map from a numeric client id to a state) and listens with on/off('change');
// it writes `setLocalStateField('cursor', {anchor, head})` with Yjs RelativePositions and reads
// a remote state's `cursor` and `user` ({name, color, colorLight}). Here a remote client is a
// Plait session: its presence state gives `user`, its cursor (Yjs relative positions as JSON,
// spec/protocol.md §4.2) gives `cursor`, and its id is a number derived from the session id.
import * as Y from "yjs";

/** @typedef {{added: number[], updated: number[], removed: number[]}} AwarenessChange */

export class RoomAwareness {
  /**
   * @param {import("@plait/client").Room} room
   * @param {() => string | null} ownSession this client's session id (its own presence entry
   *   is skipped); it changes on a reconnect.
   */
  constructor(room, ownSession) {
    this.room = room;
    this.doc = room.doc;
    this._ownSession = ownSession;
    /** @type {Record<string, unknown> | null} */
    this._local = {};
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map([["change", new Set()], ["update", new Set()]]);
    /** @type {Map<number, string>} remote client id -> the state's JSON, to tell what changed */
    this._seen = new Map();
    /** @type {Map<number, Record<string, unknown>>} */
    this._remote = new Map();
    this._unsubscribe = [
      room.on("presence", () => this._refresh()),
      room.on("cursors", () => this._refresh()),
    ];
    this._refresh();
  }

  /** The document's client id, which Yjs changes when it sees it in an update from elsewhere;
   *  y-codemirror.next compares `doc.clientID` with the keys of getStates(). */
  get clientID() {
    return this.doc.clientID;
  }

  getLocalState() {
    return this._local;
  }

  /** @param {Record<string, unknown> | null} state */
  setLocalState(state) {
    this._local = state;
    if (state === null) {
      this.room.moveCursor(null);
      this.room.setPresence({});
    } else {
      const { cursor = null, ...rest } = state;
      this.room.setPresence(rest);
      this.room.moveCursor(cursorToJSON(cursor));
    }
    this._emitLocal();
  }

  /** @param {string} field @param {unknown} value */
  setLocalStateField(field, value) {
    if (this._local === null) return;
    this._local = { ...this._local, [field]: value };
    if (field === "cursor") {
      this.room.moveCursor(cursorToJSON(value));
    } else {
      this.room.patchPresence({ [field]: value ?? null });
    }
    this._emitLocal();
  }

  /** @returns {Map<number, Record<string, unknown>>} */
  getStates() {
    const states = new Map(this._remote);
    if (this._local !== null) states.set(this.clientID, this._local);
    return states;
  }

  /** @param {"change" | "update"} name @param {Function} listener */
  on(name, listener) {
    this._listeners.get(name)?.add(listener);
  }

  /** @param {"change" | "update"} name @param {Function} listener */
  off(name, listener) {
    this._listeners.get(name)?.delete(listener);
  }

  destroy() {
    for (const unsubscribe of this._unsubscribe) unsubscribe();
    this._listeners.forEach((set) => set.clear());
  }

  _emitLocal() {
    this._emit({ added: [], updated: [this.clientID], removed: [] }, "local");
  }

  /** @param {AwarenessChange} change @param {string} origin */
  _emit(change, origin) {
    const changed = change.added.length + change.updated.length + change.removed.length > 0;
    for (const listener of [...(this._listeners.get("update") ?? [])]) listener(change, origin);
    if (!changed) return;
    for (const listener of [...(this._listeners.get("change") ?? [])]) listener(change, origin);
  }

  /** Rebuild the remote states from the room's presence and cursors; emit what changed. */
  _refresh() {
    const own = this._ownSession();
    const cursors = this.room.cursors();
    /** @type {Map<number, Record<string, unknown>>} */
    const next = new Map();
    for (const entry of this.room.presence()) {
      if (entry.session === own) continue;
      const state = { ...entry.state, user: safeUser(entry.state?.user) };
      const cursor = cursors.get(entry.session);
      state.cursor = textCursorFromJSON(cursor);
      next.set(sessionClientId(entry.session, this.clientID), state);
    }
    /** @type {AwarenessChange} */
    const change = { added: [], updated: [], removed: [] };
    const seen = new Map();
    for (const [id, state] of next) {
      const json = JSON.stringify(state);
      seen.set(id, json);
      if (!this._seen.has(id)) change.added.push(id);
      else if (this._seen.get(id) !== json) change.updated.push(id);
    }
    for (const id of this._seen.keys()) if (!next.has(id)) change.removed.push(id);
    this._seen = seen;
    this._remote = next;
    this._emit(change, "remote");
  }
}

const COLOR = /^#[0-9a-f]{6}$/i;
const MAX_LABEL = 40;

/** Another member's `user` as y-codemirror.next may use it: it writes `color` and
 *  `colorLight` into a caret's and a selection's style attribute unchecked, so anything but a
 *  plain #rrggbb colour (`red; position: fixed; background: url(...)`: a page-wide overlay
 *  that also fetches a URL) is replaced; the name is text, cut to a label's length. */
export function safeUser(user) {
  const given = user != null && typeof user === "object" ? /** @type {any} */ (user) : {};
  const name = typeof given.name === "string" && given.name.trim() ? given.name.trim().slice(0, MAX_LABEL) : "Anonymous";
  const color = typeof given.color === "string" && COLOR.test(given.color) ? given.color : "#999999";
  const light = typeof given.colorLight === "string" && /^#[0-9a-f]{6}([0-9a-f]{2})?$/i.test(given.colorLight) ? given.colorLight : `${color}33`;
  return { name, color, colorLight: light };
}

/** A numeric id for a session (FNV-1a), never this client's own. */
export function sessionClientId(session, ownId) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < session.length; i++) {
    hash ^= session.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash === ownId ? hash ^ 1 : hash;
}

function cursorToJSON(cursor) {
  if (cursor == null || typeof cursor !== "object") return null;
  const { anchor, head } = /** @type {any} */ (cursor);
  if (anchor == null || head == null) return null;
  // Plain data only (Y.ID is a class): what the SDK sends must be a Plait value (§3).
  const json = (position) => JSON.parse(JSON.stringify(position instanceof Y.RelativePosition ? Y.relativePositionToJSON(position) : position));
  return { anchor: json(anchor), head: json(head) };
}

/** Another client's cursor as RelativePositions, or null when it is not a text cursor (a
 *  Python client may move a cursor that is an index, or anything: spec/protocol.md §4.2). */
function textCursorFromJSON(value) {
  if (value == null || typeof value !== "object") return null;
  const { anchor, head } = /** @type {any} */ (value);
  if (!isPositionJSON(anchor) || !isPositionJSON(head)) return null;
  return { anchor: Y.createRelativePositionFromJSON(anchor), head: Y.createRelativePositionFromJSON(head) };
}

function isID(value) {
  return value != null && typeof value === "object" && Number.isInteger(value.client) && Number.isInteger(value.clock);
}

function isPositionJSON(value) {
  if (value == null || typeof value !== "object") return false;
  if (value.assoc != null && !Number.isInteger(value.assoc)) return false;
  if (value.item != null) return isID(value.item);
  if (value.tname != null) return typeof value.tname === "string";
  return isID(value.type);
}
