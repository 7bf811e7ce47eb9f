// Connection cuts: offline edits, the publish queue delivered once, resume with since.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, until, next } from "./server.mjs";
import { startProxy } from "./proxy.mjs";

let server, proxy;
before(async () => { server = await startServer(); proxy = await startProxy(server.port); });
after(async () => { await proxy.close(); await server.stop(); });

test("an edit made in the same turn as a cut is sent after the reconnect, and so is every edit after it", async (t) => {
  const a = connect(t, proxy.url);
  const b = connect(t, server.url);
  const ra = await a.join("cut-same-turn");
  const rb = await b.join("cut-same-turn");
  ra.doc.getText("t").insert(0, "just before ");
  proxy.cut(); // its flush was scheduled, not yet run
  await until(() => a.state !== "open", 5000, "a noticed the cut");
  await a.whenOpen();
  await until(() => rb.doc.getText("t").toString() === "just before ", 5000, "the edit of the cut's turn");
  ra.doc.getText("t").insert(ra.doc.getText("t").length, "and after");
  await ra.flushed();
  await until(() => rb.doc.getText("t").toString() === "just before and after", 5000, "the edit after the reconnect");
});

test("edits and publishes made while cut off arrive once after the reconnect", async (t) => {
  const a = connect(t, proxy.url);
  const b = connect(t, server.url);
  const ra = await a.join("offline-edits");
  const rb = await b.join("offline-edits");
  const events = [];
  rb.on("event", (e) => events.push(e));
  const states = [];
  a.on("state", (c) => states.push(c.state));
  const firstSession = a.session;

  proxy.refuse(true);
  proxy.cut();
  await until(() => a.state === "reconnecting", 5000, "a reconnecting");
  ra.doc.getText("t").insert(0, "written offline");
  const published = [ra.publish("chat", "one"), ra.publish("chat", "two")];
  rb.doc.getText("t").insert(0, "[b] ");
  await until(() => a.lastError !== null && a.state === "reconnecting" && states.filter((s) => s === "reconnecting").length >= 2, 5000, "a failed attempt");

  proxy.refuse(false);
  await a.whenOpen();
  assert.notEqual(a.session, firstSession);
  assert.deepEqual(await Promise.all(published), [1, 2]);
  await ra.flushed();
  await until(() => rb.doc.getText("t").toString() === ra.doc.getText("t").toString() && ra.doc.getText("t").length === 19, 5000, "both documents converged");
  assert.equal(ra.doc.getText("t").toString(), rb.doc.getText("t").toString());
  await until(() => events.length === 2, 5000, "both events at b");
  assert.deepEqual(events.map((e) => [e.seq, e.payload]), [[1, "one"], [2, "two"]]);
});

test("a publish cut off before its ack is re-sent with its key and delivered once", async (t) => {
  const a = connect(t, proxy.url);
  const b = connect(t, server.url);
  const ra = await a.join("offline-once");
  const rb = await b.join("offline-once");
  const events = [];
  rb.on("event", (e) => events.push(e));
  // The event reaches the server, the connection is cut before the ack comes back.
  const seen = next(rb, "event");
  const p = ra.publish("chat", "exactly once");
  await seen;
  proxy.cut();
  assert.equal(await p, 1);
  await new Promise((r) => setTimeout(r, 300));
  const more = await ra.publish("chat", "after");
  assert.equal(more, 2);
  await until(() => events.length === 2, 5000, "two events");
  assert.deepEqual(events.map((e) => e.payload), ["exactly once", "after"]);
});

test("a rejoin resumes events with since: missed events arrive, 'resumed' says complete", async (t) => {
  const a = connect(t, proxy.url);
  const b = connect(t, server.url);
  const ra = await a.join("resume");
  const rb = await b.join("resume");
  await rb.publish("n", 1);
  await until(() => ra.lastSeq === 1, 5000, "a at seq 1");
  const epoch = ra.epoch;
  assert.ok(epoch);
  const got = [];
  ra.on("event", (e) => got.push(e.payload));
  proxy.refuse(true);
  proxy.cut();
  await until(() => a.state !== "open", 5000, "a dropped");
  await rb.publish("n", 2);
  await rb.publish("n", 3);
  const resumed = next(ra, "resumed");
  proxy.refuse(false);
  assert.deepEqual(await resumed, { complete: true, since: 1, head: 3 });
  await until(() => got.length === 2, 5000, "the missed events");
  assert.deepEqual(got, [2, 3]);
  assert.equal(ra.lastSeq, 3);
  assert.equal(ra.epoch, epoch);
});

test("join with since and epoch replays; a foreign epoch is not complete", async (t) => {
  const a = connect(t, server.url);
  const ra = await a.join("since-join");
  for (const n of [1, 2, 3]) await ra.publish("n", n);
  const epoch = ra.epoch;
  await ra.leave();
  const b = connect(t, server.url);
  const rb = await b.join("since-join", { since: 1, epoch });
  const got = [];
  const resumed = [];
  rb.on("event", (e) => got.push(e.seq));
  rb.on("resumed", (r) => resumed.push(r));
  await until(() => got.length === 2, 5000, "replay to 3");
  assert.deepEqual(got, [2, 3]);
  assert.deepEqual(resumed, [{ complete: true, since: 1, head: 3 }]);
  const c = connect(t, server.url);
  const rc = await c.join("since-join", { since: 2, epoch: "another-history" });
  const gotC = [];
  const resumedC = next(rc, "resumed");
  rc.on("event", (e) => gotC.push(e.seq));
  assert.deepEqual(await resumedC, { complete: false, since: 2, head: 3 });
  await until(() => gotC.length === 3, 5000, "the whole history");
  assert.deepEqual(gotC, [1, 2, 3], "another epoch: every event the server replays is taken");
  assert.equal(rc.epoch, epoch);
});
