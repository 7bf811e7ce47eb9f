import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as Y from "yjs";
import { startServer, connect, until, next } from "./server.mjs";
import { PlaitError } from "../src/index.js";

let server;
before(async () => { server = await startServer(); });
after(() => server.stop());

test("two clients join, sync a document both ways, and flushed() means acked", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("doc-basic");
  assert.equal(a.state, "open");
  assert.equal(a.transport, "websocket");
  assert.equal(ra.access, "write");
  assert.ok(ra.synced);
  ra.doc.getText("t").insert(0, "hello");
  await ra.flushed();
  const rb = await b.join("doc-basic");
  assert.equal(rb.doc.getText("t").toString(), "hello");
  rb.doc.getText("t").insert(5, " world");
  await until(() => ra.doc.getText("t").toString() === "hello world", 5000, "b's edit at a");
  assert.equal(await a.join("doc-basic"), ra, "a second join of the same name is the same Room");
});

test("events: publish resolves with the ack's seq, every member receives it", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("events-basic");
  const rb = await b.join("events-basic");
  const got = next(rb, "event");
  const seq = await ra.publish("chat", { text: "hi", bytes: new Uint8Array([1, 2]) });
  assert.equal(seq, 1);
  const ev = await got;
  assert.equal(ev.seq, 1);
  assert.equal(ev.name, "chat");
  assert.deepEqual(ev.payload, { text: "hi", bytes: new Uint8Array([1, 2]) });
  assert.equal(ev.session, a.session);
  assert.equal(await ra.publish("chat", 2, { key: "same" }), 2);
  assert.equal(await ra.publish("chat", 3, { key: "same" }), 2, "the same key is the same event");
});

test("bad input is refused locally with PlaitError", async (t) => {
  const a = connect(t, server.url);
  const r = await a.join("bad-input");
  await assert.rejects(r.publish("", 1), PlaitError);
  await assert.rejects(r.publish("x", NaN), (e) => e instanceof PlaitError && e.codeName === "INVALID_FIELD");
  await assert.rejects(r.publish("x", "y".repeat(17 << 20)), (e) => e instanceof PlaitError && e.codeName === "FRAME_TOO_LARGE");
  assert.throws(() => r.setPresence({ big: "x".repeat(70000) }), (e) => e instanceof PlaitError && e.codeName === "PRESENCE_TOO_LARGE");
  await assert.rejects(a.join("bad\u0001name"), (e) => e instanceof PlaitError && e.codeName === "INVALID_ROOM_NAME");
});

test("close() sends what is queued first: a last edit is not lost to the close", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("last-edit");
  const rb = await b.join("last-edit");
  ra.doc.getText("t").insert(0, "the last word");
  await a.close();
  assert.equal(a.state, "closed");
  await until(() => rb.doc.getText("t").toString() === "the last word", 5000, "the last edit");
  await assert.rejects(a.join("last-edit"), PlaitError);
});

test("leave(): the membership ends; later calls are refused and nothing more is sent", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("leaving");
  const rb = await b.join("leaving");
  ra.doc.getText("t").insert(0, "before");
  await ra.leave();
  await until(() => rb.presence().length === 1, 5000, "a gone from presence");
  assert.equal(rb.doc.getText("t").toString(), "before");
  ra.doc.getText("t").insert(0, "after leaving ");
  await assert.rejects(ra.publish("x", 1), PlaitError);
  assert.throws(() => ra.setPresence({}), PlaitError);
  const again = await a.join("leaving");
  assert.notEqual(again, ra, "a join after leave() is a new Room");
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(rb.doc.getText("t").toString(), "before", "the change after leave() was not sent");
});
