// A Room paces what it sends under the server's announced rates (§5.8, §7.1): publishes in
// the order they were made, an offline queue drained at that pace, presence, cursors and
// typing coalesced (latest wins) under frames_per_second; the connection is never closed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, until } from "./server.mjs";
import { startProxy } from "./proxy.mjs";
import { ErrorCode } from "../src/index.js";

let server;
before(async () => { server = await startServer(["--events-per-second", "20", "--frames-per-second", "40"]); });
after(() => server.stop());

/** Every state the client goes through, with its error's code name. */
function states(/** @type {any} */ client) {
  const log = [];
  client.on("state", (/** @type {any} */ s) => { if (s.state !== "open" || s.error) log.push(`${s.state}${s.error ? `(${s.error.codeName})` : ""}`); });
  return log;
}

test("a burst of publishes goes out paced and in order: every event acked, seqs in publish order, never closed", async (t) => {
  const a = connect(t, server.url);
  const log = states(a);
  const room = await a.join("burst");
  const seqs = await Promise.all(Array.from({ length: 60 }, (_, i) => room.publish("n", i)));
  assert.deepEqual(seqs, Array.from({ length: 60 }, (_, i) => i + 1));
  assert.deepEqual(log, []);
  assert.equal(a.state, "open");
});

test("publishes queued offline drain at the server's pace after the reconnect, in order", async (t) => {
  const proxy = await startProxy(server.port);
  t.after(() => proxy.close());
  const a = connect(t, proxy.url, { transports: ["websocket"] });
  const room = await a.join("offline-queue");
  proxy.refuse(true);
  proxy.cut();
  await until(() => a.state !== "open", 5000, "the drop");
  const acks = Array.from({ length: 80 }, (_, i) => room.publish("chat", i));
  const log = states(a);
  proxy.refuse(false);
  const seqs = await Promise.all(acks);
  assert.deepEqual(seqs, Array.from({ length: 80 }, (_, i) => i + 1));
  assert.ok(!log.some((s) => s.includes("RATE_LIMITED")), log.join(" "));
  const b = connect(t, server.url);
  const rb = await b.join("offline-queue", { since: 0 });
  const got = [];
  rb.on("event", (e) => got.push(e.payload));
  await until(() => got.length === 80, 5000, "the history");
  assert.deepEqual(got, Array.from({ length: 80 }, (_, i) => i));
});

for (const what of ["patchPresence", "setPresence", "setTyping", "moveCursor"]) {
  test(`${what} called 400 times in a loop is coalesced: the connection stays open, the latest arrives`, async (t) => {
    const a = connect(t, server.url);
    const b = connect(t, server.url);
    const log = states(a);
    const room = await a.join(`flood-${what}`);
    const rb = await b.join(`flood-${what}`);
    for (let i = 0; i < 400; i++) {
      if (what === "patchPresence") room.patchPresence({ x: i, [`k${i % 3}`]: i });
      else if (what === "setPresence") room.setPresence({ x: i });
      else if (what === "setTyping") room.setTyping(i % 2 === 0);
      else room.moveCursor({ x: i });
      if (i % 20 === 0) await new Promise((r) => setTimeout(r, 5));
    }
    if (what === "setTyping") room.setTyping(true);
    const theirs = () => rb.presence().find((e) => e.session === a.session)?.state;
    if (what === "patchPresence") await until(() => theirs()?.x === 399, 5000, "the last patch");
    if (what === "patchPresence") assert.deepEqual(theirs(), { x: 399, k0: 399, k1: 397, k2: 398 });
    if (what === "setPresence") await until(() => theirs()?.x === 399, 5000, "the last state");
    if (what === "setTyping") await until(() => rb.typing().includes(a.session), 5000, "typing");
    if (what === "moveCursor") await until(() => rb.cursors().get(a.session)?.x === 399, 5000, "the last cursor");
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(log, []);
    assert.equal(a.state, "open");
  });
}

test("close() sends the publishes still queued behind the pacer before it leaves", async (t) => {
  const a = connect(t, server.url);
  const room = await a.join("close-queued");
  const acks = Array.from({ length: 20 }, (_, i) => room.publish("n", i));
  await a.close();
  assert.deepEqual(await Promise.all(acks), Array.from({ length: 20 }, (_, i) => i + 1));
});

test("edits in many rooms of one client share the connection's updates_per_second: none refused, none lost", async (t) => {
  const s = await startServer(["--updates-per-second", "10"]);
  t.after(() => s.stop());
  const a = connect(t, s.url);
  const log = states(a);
  let limited = 0;
  const handle = a._handle.bind(a);
  a._handle = (/** @type {any} */ f) => { if (f.kind === "error" && f.code === ErrorCode.RATE_LIMITED) limited += 1; return handle(f); };
  const rooms = await Promise.all(Array.from({ length: 8 }, (_, i) => a.join(`shared-${i}`)));
  for (let k = 0; k < 4; k++) {
    for (const r of rooms) r.doc.getText("t").insert(0, `${k}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  await Promise.all(rooms.map((r) => r.flushed()));
  assert.deepEqual(log, []);
  assert.equal(limited, 0, "updates refused RATE_LIMITED");
  const b = connect(t, s.url);
  for (let i = 0; i < 8; i++) assert.equal((await b.join(`shared-${i}`)).doc.getText("t").toString(), "3210");
});
