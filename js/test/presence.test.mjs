// Presence grouped by user, cursors, text cursors, typing.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import * as Y from "yjs";
import { startServer, connect, until, next } from "./server.mjs";

let server;
before(async () => { server = await startServer(); });
after(() => server.stop());

const KEY_ADA = "ada-anonymous-key-0123456789";
const KEY_BOB = "bob-anonymous-key-0123456789";

test("presence: set, patch, a second tab of the same user is an update, users() groups by identity", async (t) => {
  const watcher = connect(t, server.url, { anonymousKey: KEY_BOB });
  const rw = await watcher.join("presence");
  rw.setPresence({ name: "Bob" });
  const changes = [];
  rw.on("presence", (c) => changes.push(c));

  const tab1 = connect(t, server.url, { anonymousKey: KEY_ADA });
  const r1 = await tab1.join("presence");
  r1.setPresence({ name: "Ada", color: "red" });
  await until(() => rw.users().length === 2 && rw.users().some((u) => u.sessions[0].state.name === "Ada"), 5000, "Ada at the watcher");
  const adaId = rw.users().find((u) => u.sessions[0].state.name === "Ada").id;
  assert.ok(changes.some((c) => c.joined.some((u) => u.id === adaId)), "Ada joined");

  changes.length = 0;
  const tab2 = connect(t, server.url, { anonymousKey: KEY_ADA });
  const r2 = await tab2.join("presence");
  r2.setPresence({ name: "Ada", tab: 2 });
  await until(() => rw.users().find((u) => u.id === adaId)?.sessions.length === 2, 5000, "Ada's second tab");
  assert.equal(rw.users().length, 2, "two users, three sessions");
  assert.equal(rw.presence().length, 3);
  assert.ok(changes.every((c) => !c.joined.some((u) => u.id === adaId)), "a second tab is not a join");
  assert.ok(changes.some((c) => c.updated.some((u) => u.id === adaId)));

  r1.patchPresence({ color: null, status: "away" });
  await until(() => rw.presence().some((e) => e.session === tab1.session && e.state.status === "away"), 5000, "the patch");
  assert.deepEqual(rw.presence().find((e) => e.session === tab1.session).state, { name: "Ada", status: "away" });
  assert.ok(r1.presence().some((e) => e.session === tab1.session), "presence() includes this session");

  changes.length = 0;
  await tab2.close();
  await until(() => changes.some((c) => c.updated.some((u) => u.id === adaId)), 5000, "the closed tab as an update");
  assert.equal(rw.users().find((u) => u.id === adaId).sessions.length, 1);
  await tab1.close();
  await until(() => changes.some((c) => c.left.includes(adaId)), 5000, "Ada left");
  assert.equal(rw.users().length, 1);
});

test("presence is set again after a reconnect", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("presence-again");
  const rb = await b.join("presence-again");
  ra.setPresence({ name: "A" });
  await until(() => rb.presence().some((e) => e.state.name === "A"), 5000, "A's presence");
  a._conn.close(); // drop the connection under the client
  a._drop(a._conn, new Error("test drop"));
  await until(() => a.state === "open" && rb.presence().some((e) => e.session === a.session && e.state.name === "A"), 8000, "A's presence from its new session");
});

test("cursors: latest wins, throttled, null hides; text cursors survive concurrent edits", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("cursors");
  const rb = await b.join("cursors");
  const seen = [];
  rb.on("cursors", (m) => { if (m.has(a.session)) seen.push(m.get(a.session)); });
  for (let i = 0; i <= 20; i++) ra.moveCursor(i);
  await until(() => rb.cursors().get(a.session) === 20, 5000, "the last position");
  assert.ok(seen.length < 10, `throttled: ${seen.length} positions seen`);
  assert.equal(ra.cursors().has(a.session), false, "cursors() leaves out this session");
  ra.moveCursor(null);
  await until(() => !rb.cursors().has(a.session), 5000, "the cursor hidden");

  const text = ra.doc.getText("body");
  text.insert(0, "hello world");
  await ra.flushed();
  await until(() => rb.doc.getText("body").toString() === "hello world", 5000, "the text at b");
  ra.moveCursor(ra.textCursor(text, 6, 11));
  await until(() => rb.cursors().has(a.session), 5000, "the text cursor at b");
  rb.doc.getText("body").insert(0, ">> ");
  const resolved = rb.resolveTextCursor(rb.doc.getText("body"), rb.cursors().get(a.session));
  assert.deepEqual(resolved, { anchor: 9, head: 14 });
  assert.equal(rb.doc.getText("body").toString().slice(resolved.anchor, resolved.head), "world");
  assert.equal(rb.resolveTextCursor(rb.doc.getText("other"), rb.cursors().get(a.session)), null);
});

test("typing: renewed while on (past the server's 5 s expiry), gone when off", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("typing");
  const rb = await b.join("typing");
  const on = next(rb, "typing", (s) => s.includes(a.session));
  ra.setTyping(true);
  await on;
  assert.deepEqual(ra.typing(), [], "typing() leaves out this session");
  await new Promise((r) => setTimeout(r, 6500));
  assert.deepEqual(rb.typing(), [a.session], "still typing after 6.5 s");
  const off = next(rb, "typing", (s) => !s.includes(a.session));
  ra.setTyping(false);
  await off;
});

test("typing expires on the server when the renewals stop", async (t) => {
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("typing-expiry");
  const rb = await b.join("typing-expiry");
  ra.setTyping(true);
  await until(() => rb.typing().includes(a.session), 5000, "typing");
  clearInterval(ra._typingTimer); // as if the page froze
  const started = Date.now();
  await next(rb, "typing", (s) => !s.includes(a.session), 9000);
  assert.ok(Date.now() - started > 3000, "not before the expiry");
});
