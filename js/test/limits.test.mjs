// welcome.limits: updates paced below the rate, RATE_LIMITED publishes retried, close codes.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, until } from "./server.mjs";

let server;
before(async () => { server = await startServer(["--updates-per-second", "10", "--events-per-second", "4"]); });
after(() => server.stop());

test("a burst of edits is paced below updates_per_second and merged: nothing refused, nothing lost", async (t) => {
  const a = connect(t, server.url);
  const r = await a.join("paced");
  assert.equal(a.limits.updates_per_second, 10);
  const sent = [];
  const send = a._conn.send.bind(a._conn);
  a._conn.send = (frames, pieces) => { sent.push(...frames.filter((f) => f.kind === "update")); send(frames, pieces); };
  const text = r.doc.getText("t");
  for (let i = 0; i < 100; i++) text.insert(text.length, `${i % 10}`);
  await r.flushed();
  assert.ok(sent.length <= 8, `${sent.length} update frames for 100 edits`);
  const b = connect(t, server.url);
  const rb = await b.join("paced");
  assert.equal(rb.doc.getText("t").length, 100);
});

test("publishes over events_per_second are retried after RATE_LIMITED and all delivered once", async (t) => {
  const a = connect(t, server.url);
  const r = await a.join("rated");
  const seqs = await Promise.all(Array.from({ length: 8 }, (_, i) => r.publish("n", i)));
  assert.deepEqual([...seqs].sort((x, y) => x - y), [1, 2, 3, 4, 5, 6, 7, 8]);
  const got = [];
  const b = connect(t, server.url);
  const rb = await b.join("rated", { since: 0 });
  rb.on("event", (e) => got.push(e.payload));
  await until(() => got.length === 8, 5000, "the history");
  assert.deepEqual([...got].sort(), [0, 1, 2, 3, 4, 5, 6, 7]);
});

test("offline/online events: paused while offline, reconnects at once on 'online'", async (t) => {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  t.after(() => { delete globalThis.addEventListener; delete globalThis.removeEventListener; });
  const a = connect(t, server.url, { backoff: { baseMs: 60000, capMs: 60000 } });
  const r = await a.join("offline-events");
  target.dispatchEvent(new Event("offline"));
  await until(() => a.state === "offline", 2000, "offline");
  r.doc.getText("t").insert(0, "while offline");
  await new Promise((res) => setTimeout(res, 200));
  assert.equal(a.state, "offline");
  target.dispatchEvent(new Event("online"));
  await a.whenOpen();
  await r.flushed();
});

test("an edit made in the same turn the browser goes offline is sent once back online, and every edit after it", async (t) => {
  const target = new EventTarget();
  globalThis.addEventListener = target.addEventListener.bind(target);
  globalThis.removeEventListener = target.removeEventListener.bind(target);
  t.after(() => { delete globalThis.addEventListener; delete globalThis.removeEventListener; });
  const a = connect(t, server.url);
  const b = connect(t, server.url);
  const ra = await a.join("offline-same-turn");
  const rb = await b.join("offline-same-turn");
  ra.doc.getText("t").insert(0, "just before ");
  target.dispatchEvent(new Event("offline")); // drops the connection before the edit's flush ran
  target.dispatchEvent(new Event("online"));
  await a.whenOpen();
  await until(() => rb.doc.getText("t").toString() === "just before ", 5000, "the edit of the offline turn");
  ra.doc.getText("t").insert(ra.doc.getText("t").length, "and after");
  await ra.flushed();
  await until(() => rb.doc.getText("t").toString() === "just before and after", 5000, "the edit after it");
});
