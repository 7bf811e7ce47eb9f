// Room calls check their arguments when called: what the server would refuse fatally (a
// PROTOCOL_ERROR close ends the whole client, and every room's unsent edits with it) is a
// PlaitError thrown or rejected at the call, and the client stays open.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, until } from "./server.mjs";
import { PlaitError, ErrorCode } from "../src/index.js";

let server;
before(async () => { server = await startServer(); });
after(() => server.stop());

const invalidField = (/** @type {unknown} */ e) => e instanceof PlaitError && e.code === ErrorCode.INVALID_FIELD;

test("a publish with a key or name the server refuses is rejected locally; the client and its other rooms go on", async (t) => {
  const a = connect(t, server.url);
  const room = await a.join("bad-key");
  const other = await a.join("bad-key-other");
  other.doc.getText("t").insert(0, "an edit in another room");
  await assert.rejects(room.publish("e", 1, { key: "k".repeat(129) }), invalidField);
  await assert.rejects(room.publish("e", 1, { key: "" }), invalidField);
  await assert.rejects(room.publish("e", 1, { key: 5 }), invalidField);
  await assert.rejects(room.publish("", 1), invalidField);
  await assert.rejects(room.publish("n".repeat(129), 1), invalidField);
  await assert.rejects(room.publish("a\ud800b", 1), invalidField);
  await assert.rejects(room.publish("e", 1, 7), invalidField);
  // 128 code points is a valid name even when it is 256 UTF-16 units.
  assert.equal(await room.publish("😀".repeat(128), 1, { key: "😀".repeat(128) }), 1);
  assert.equal(await room.publish("e", 2, null), 2);
  await other.flushed();
  assert.equal(a.state, "open");
  assert.equal((await a.join("bad-key-after")).name, "bad-key-after");
});

test("a publish of more values than a server reads of one message is rejected locally; the client goes on", async (t) => {
  const a = connect(t, server.url);
  const room = await a.join("dense");
  await assert.rejects(room.publish("rows", new Array(65536).fill(0)), (err) => err instanceof PlaitError && err.code === ErrorCode.FRAME_TOO_LARGE);
  assert.equal(await room.publish("rows", new Array(65000).fill(0)), 1);
  assert.equal(a.state, "open");
});

test("on() needs a function; a listener that throws is reported and the other listeners still run", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("listeners");
  const rb = await b.join("listeners");
  assert.throws(() => rb.on("event", /** @type {any} */ (5)), invalidField);
  assert.throws(() => rb.on("event", /** @type {any} */ (null)), invalidField);
  const reported = [];
  const original = console.error;
  console.error = (...args) => { reported.push(args); };
  t.after(() => { console.error = original; });
  rb.on("event", () => { throw new Error("a bug in the page's listener"); });
  const got = [];
  rb.on("event", (e) => got.push(e.name));
  await ra.publish("chat", { text: "hi" });
  await until(() => got.length === 1, 5000, "the second listener");
  await new Promise((r) => setTimeout(r, 50)); // an exception thrown later would fail this test
  console.error = original;
  assert.equal(reported.length, 1);
  assert.equal(b.state, "open");
});

test("text cursors: indices are integers within the text; the text is a Y.Text", async (t) => {
  const a = connect(t, server.url);
  const room = await a.join("text-cursor-args");
  const text = room.doc.getText("t");
  text.insert(0, "hello");
  for (const bad of [-1, 6, 1.5, NaN, "2", undefined]) assert.throws(() => room.textCursor(text, /** @type {any} */ (bad)), invalidField, String(bad));
  assert.throws(() => room.textCursor(text, 0, 99), invalidField);
  assert.throws(() => room.textCursor(/** @type {any} */ ({}), 0), invalidField);
  assert.throws(() => room.resolveTextCursor(/** @type {any} */ ("t"), room.textCursor(text, 0)), invalidField);
  assert.deepEqual(room.resolveTextCursor(text, room.textCursor(text, 0, 5)), { anchor: 0, head: 5 });
});

test("a selection that ends at the end of the text does not grow when someone appends", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("text-cursor-end");
  const rb = await b.join("text-cursor-end");
  const ta = ra.doc.getText("t");
  const tb = rb.doc.getText("t");
  ta.insert(0, "hello world");
  await ra.flushed();
  await until(() => tb.toString() === "hello world", 5000, "the text");
  rb.moveCursor(rb.textCursor(tb, 6, 11)); // "world"
  await until(() => ra.cursors().get(b.session), 5000, "b's cursor");
  tb.insert(tb.length, "!");
  ta.insert(0, ">>> ");
  await ra.flushed();
  await rb.flushed();
  await until(() => ta.toString() === ">>> hello world!", 5000, "both edits");
  const at = ra.resolveTextCursor(ta, /** @type {any} */ (ra.cursors().get(b.session)));
  assert.ok(at);
  assert.equal(ta.toString().slice(at.anchor, at.head), "world");
  const caret = ra.resolveTextCursor(ta, ra.textCursor(ta, ta.length));
  assert.deepEqual(caret, { anchor: ta.length, head: ta.length });
});

test("join options the codec cannot send reject the join; the client stays open", async (t) => {
  const a = connect(t, server.url);
  await a.whenOpen();
  for (const options of [{ since: -1 }, { since: NaN }, { since: 1.5 }, { since: "3" }, { since: 1, epoch: 5 }, { doc: {} }, 7]) {
    await assert.rejects(a.join("join-options", /** @type {any} */ (options)), invalidField, JSON.stringify(options));
  }
  const room = await a.join("join-options", /** @type {any} */ (null));
  assert.equal(room.name, "join-options");
  assert.equal(a.state, "open");
});
