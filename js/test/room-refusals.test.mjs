// A change the server refuses for good never leaves the room silently broken: the Room emits
// "refused", keeps an update refused FORBIDDEN and sends it again once it may write, and
// rejoins (the sync exchange repairs the document) after INVALID_UPDATE.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as Y from "yjs";
import { startServer, connect, until, next, jwt, SECRET } from "./server.mjs";
import { PlaitError, ErrorCode } from "../src/index.js";

const API_KEY = "an-api-key-for-the-tests-0123";
let server;
before(async () => { server = await startServer(["--jwt-secret", SECRET, "--api-key", API_KEY]); });
after(() => server.stop());

const token = (/** @type {string} */ sub) => jwt(SECRET, { sub, name: sub, rooms: { "*": "write" } });
const api = (/** @type {string} */ method, /** @type {string} */ path, /** @type {unknown} */ body) =>
  fetch(`${server.url}/api${path}`, { method, headers: { Authorization: `Bearer ${API_KEY}` }, body: body === undefined ? undefined : JSON.stringify(body) }).then((r) => r.status);

test("an edit refused while read-only is sent again when write access returns; later edits integrate", async (t) => {
  const a = connect(t, server.url, { token: token("alice") });
  const b = connect(t, server.url, { token: token("bob") });
  const ra = await a.join("restored");
  const rb = await b.join("restored");
  const text = ra.doc.getText("t");
  text.insert(0, "hello");
  await ra.flushed();
  const lowered = next(ra, "access");
  assert.equal(await api("PUT", "/rooms/restored/access/alice", { access: "read" }), 200);
  assert.equal(await lowered, "read");
  const refused = next(ra, "refused");
  text.insert(5, " world");
  await assert.rejects(ra.flushed(), (e) => e instanceof PlaitError && e.code === ErrorCode.FORBIDDEN);
  assert.equal((await refused).code, ErrorCode.FORBIDDEN);
  const raised = next(ra, "access");
  assert.equal(await api("PUT", "/rooms/restored/access/alice", { access: "write" }), 200);
  assert.equal(await raised, "write");
  text.insert(text.length, "!");
  await ra.flushed();
  await until(() => rb.doc.getText("t").toString() === "hello world!", 5000, "bob to see every edit");
  const c = connect(t, server.url, { token: token("carol") });
  assert.equal((await c.join("restored")).doc.getText("t").toString(), "hello world!");
});

test("an update the server cannot integrate (INVALID_UPDATE) is reported, and a rejoin repairs the room", async (t) => {
  const a = connect(t, server.url, { token: token("alice") });
  const b = connect(t, server.url, { token: token("bob") });
  const ra = await a.join("repaired");
  const rb = await b.join("repaired");
  // Content the server never got, as if it had come from it: the next edit builds on it.
  const elsewhere = new Y.Doc();
  elsewhere.getText("t").insert(0, "missing ");
  Y.applyUpdate(ra.doc, Y.encodeStateAsUpdate(elsewhere), ra._origin);
  const refused = next(ra, "refused");
  const text = ra.doc.getText("t");
  text.insert(text.length, "piece");
  assert.equal((await refused).code, ErrorCode.INVALID_UPDATE);
  await assert.rejects(ra.flushed(), (e) => e.code === ErrorCode.INVALID_UPDATE); // told once, as every refusal
  await until(() => rb.doc.getText("t").toString() === "missing piece", 5000, "the rejoin's sync to repair it");
  text.insert(text.length, "s");
  await ra.flushed();
  await until(() => rb.doc.getText("t").toString() === "missing pieces", 5000, "the next edit");
  assert.equal(a.state, "open");
});

test("a paste too large for one message is refused locally and the room says so", async (t) => {
  const a = connect(t, server.url, { token: token("alice") });
  const ra = await a.join("huge-paste");
  const refused = next(ra, "refused");
  ra.doc.getText("t").insert(0, "x".repeat(a.limits.max_message_bytes + 1000));
  assert.equal((await refused).code, ErrorCode.FRAME_TOO_LARGE);
  await assert.rejects(ra.flushed(), (e) => e.code === ErrorCode.FRAME_TOO_LARGE);
  assert.equal(a.state, "open");
});
