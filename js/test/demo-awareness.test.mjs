// The demo page's Awareness adapter (js/demo/awareness.js) over a fake Room: what
// y-codemirror.next reads and writes through it, and what reaches the Room.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as Y from "yjs";
import { RoomAwareness, sessionClientId } from "../demo/awareness.js";

class FakeRoom {
  constructor() {
    this.doc = new Y.Doc();
    this.entries = [];
    this.cursorMap = new Map();
    this.sent = [];
    this.listeners = new Map();
  }
  on(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(listener);
    return () => this.listeners.get(type).delete(listener);
  }
  emit(type) {
    for (const listener of this.listeners.get(type) ?? []) listener();
  }
  presence() { return this.entries; }
  cursors() { return new Map(this.cursorMap); }
  moveCursor(position) { this.sent.push(["cursor", position]); }
  patchPresence(patch) { this.sent.push(["patch", patch]); }
  setPresence(state) { this.sent.push(["set", state]); }
}

const entry = (session, state, id = session) => ({ session, identity: { id }, state });

test("a local cursor goes to moveCursor as plain JSON, and the user through presence", () => {
  const room = new FakeRoom();
  const awareness = new RoomAwareness(room, () => "me");
  const text = room.doc.getText("text");
  text.insert(0, "hello");
  const anchor = Y.createRelativePositionFromTypeIndex(text, 1);
  const head = Y.createRelativePositionFromTypeIndex(text, 3);
  awareness.setLocalStateField("user", { name: "Ana", color: "#30bced" });
  awareness.setLocalStateField("cursor", { anchor, head });
  const [kind, position] = room.sent.at(-1);
  assert.equal(kind, "cursor");
  assert.deepEqual(position, JSON.parse(JSON.stringify(position))); // no class instances left
  assert.deepEqual(position.anchor.item, { client: room.doc.clientID, clock: 1 });
  assert.deepEqual(room.sent[0], ["patch", { user: { name: "Ana", color: "#30bced" } }]);
  assert.equal(awareness.getStates().get(room.doc.clientID).user.name, "Ana");
  awareness.setLocalStateField("cursor", null);
  assert.deepEqual(room.sent.at(-1), ["cursor", null]);
});

test("remote sessions are states keyed by a number, with their cursor as RelativePositions", () => {
  const room = new FakeRoom();
  const text = room.doc.getText("text");
  text.insert(0, "hello");
  const awareness = new RoomAwareness(room, () => "me");
  const changes = [];
  awareness.on("change", (change, origin) => changes.push([change, origin]));

  const cursor = {
    anchor: Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(text, 2)),
    head: Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(text, 4)),
  };
  room.entries = [entry("me", { user: { name: "Me" } }), entry("bo-1", { user: { name: "Bo" } })];
  room.cursorMap.set("bo-1", JSON.parse(JSON.stringify(cursor)));
  room.emit("presence");
  const bo = sessionClientId("bo-1", room.doc.clientID);
  assert.deepEqual(changes.at(-1), [{ added: [bo], updated: [], removed: [] }, "remote"]);
  const state = awareness.getStates().get(bo);
  assert.equal(state.user.name, "Bo");
  assert.ok(state.cursor.anchor instanceof Y.RelativePosition);
  assert.equal(Y.createAbsolutePositionFromRelativePosition(state.cursor.head, room.doc).index, 4);
  assert.equal(awareness.getStates().size, 2); // Bo and the local state; "me" is not a remote

  room.emit("cursors"); // nothing changed: no 'change'
  assert.equal(changes.length, 1);
  room.cursorMap.set("bo-1", 7); // a cursor that is not a text cursor (a Python client's index)
  room.emit("cursors");
  assert.deepEqual(changes.at(-1)[0], { added: [], updated: [bo], removed: [] });
  assert.equal(awareness.getStates().get(bo).cursor, null);
  for (const bad of [{ anchor: 1, head: 2 }, { anchor: { item: { client: "x" } }, head: {} }, { anchor: {}, head: {} }]) {
    room.cursorMap.set("bo-1", bad);
    room.emit("cursors");
    assert.equal(awareness.getStates().get(bo).cursor, null, JSON.stringify(bad));
  }

  room.entries = [entry("me", {})];
  room.emit("presence");
  assert.deepEqual(changes.at(-1)[0], { added: [], updated: [], removed: [bo] });
  awareness.destroy();
  room.entries = [entry("bo-2", {})];
  room.emit("presence");
  assert.equal(changes.at(-1)[0].removed[0], bo); // no listener after destroy
});

test("a session's number is stable and never the document's own client id", () => {
  assert.equal(sessionClientId("abc", 1), sessionClientId("abc", 1));
  const id = sessionClientId("abc", 1);
  assert.notEqual(sessionClientId("abc", id), id);
});
