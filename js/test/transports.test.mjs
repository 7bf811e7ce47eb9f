// Each transport alone, the fallback when upgrades are refused, and the upgrade back.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, until, next } from "./server.mjs";
import { startProxy } from "./proxy.mjs";

let server, proxy;
before(async () => { server = await startServer(); proxy = await startProxy(server.port); });
after(async () => { await proxy.close(); await server.stop(); });

for (const transport of ["sse", "poll"]) {
  test(`${transport} alone: join, sync both ways, presence, events, cursors, typing`, async (t) => {
    const a = connect(t, server.url, { transports: [transport] });
    const b = connect(t, server.url);
    const room = `only-${transport}`;
    const ra = await a.join(room);
    assert.equal(a.transport, transport);
    const rb = await b.join(room);
    ra.doc.getText("t").insert(0, "from http");
    await ra.flushed();
    await until(() => rb.doc.getText("t").toString() === "from http", 5000, "a's edit at b");
    rb.doc.getText("t").insert(0, "ws: ");
    await until(() => ra.doc.getText("t").toString() === "ws: from http", 5000, "b's edit at a");
    const got = next(rb, "event");
    assert.equal(await ra.publish("chat", { via: transport }), 1);
    assert.deepEqual((await got).payload, { via: transport });
    const atA = next(ra, "event");
    await rb.publish("chat", "back");
    assert.equal((await atA).payload, "back");
    ra.setPresence({ name: transport });
    await until(() => rb.presence().some((e) => e.state.name === transport), 5000, "presence over http");
    ra.moveCursor(3);
    await until(() => rb.cursors().get(a.session) === 3, 5000, "cursor over http");
    rb.setTyping(true);
    await until(() => ra.typing().includes(b.session), 5000, "typing seen over http");
    await ra.leave();
    await until(() => !rb.presence().some((e) => e.session === a.session), 5000, "left");
  });

  test(`${transport}: close() sends a last edit before ending the session`, async (t) => {
    const a = connect(t, server.url, { transports: [transport] });
    const b = connect(t, server.url);
    const ra = await a.join(`last-${transport}`);
    const rb = await b.join(`last-${transport}`);
    ra.doc.getText("t").insert(0, "last");
    await a.close();
    await until(() => rb.doc.getText("t").toString() === "last", 5000, "the last edit");
    await until(() => rb.presence().length === 1, 5000, "a's session ended");
  });

  test(`${transport}: a cut is survived, offline edits and events arrive`, async (t) => {
    const a = connect(t, proxy.url, { transports: [transport] });
    const b = connect(t, server.url);
    const room = `cut-${transport}`;
    const ra = await a.join(room);
    const rb = await b.join(room);
    proxy.refuse(true);
    proxy.cut();
    ra.doc.getText("t").insert(0, "offline");
    const p = ra.publish("chat", "queued");
    await rb.publish("chat", "missed");
    await new Promise((r) => setTimeout(r, 300));
    proxy.refuse(false);
    assert.equal(await p, 2);
    await ra.flushed();
    await until(() => rb.doc.getText("t").toString() === "offline", 8000, "the offline edit");
    await until(() => ra.lastSeq === 2, 8000, "both events at a");
  });
}

test("sse: a broken stream resumes with Last-Event-ID in the same session, nothing missed", async (t) => {
  const a = connect(t, proxy.url, { transports: ["sse"] });
  const b = connect(t, server.url);
  const ra = await a.join("sse-resume");
  const rb = await b.join("sse-resume");
  const session = a.session;
  const got = [];
  ra.on("event", (e) => got.push(e.payload));
  proxy.cut();
  await rb.publish("n", 1);
  rb.doc.getText("t").insert(0, "while the stream was down");
  await rb.publish("n", 2);
  await until(() => got.length === 2, 8000, "the events after the resume");
  assert.deepEqual(got, [1, 2]);
  await until(() => ra.doc.getText("t").toString() === "while the stream was down", 5000, "the edit");
  assert.equal(a.session, session, "the same HTTP session");
  assert.equal(a.state, "open");
});

test("fallback: upgrades refused → sse after fallbackAfter failures; upgrade back once they work", async (t) => {
  proxy.refuseUpgrades(true);
  const transports = [];
  const a = connect(t, proxy.url, { fallbackAfter: 2, upgradeAfterMs: 400 });
  a.on("state", (c) => transports.push([c.state, c.transport]));
  const ra = await a.join("fallback");
  assert.equal(a.transport, "sse");
  assert.ok(proxy.state.upgradesRefused >= 2);
  assert.ok(transports.some(([s, tr]) => s === "open" && tr === "sse"));
  ra.doc.getText("t").insert(0, "over sse");
  await ra.flushed();
  proxy.refuseUpgrades(false);
  await until(() => a.transport === "websocket" && a.state === "open", 5000, "the upgrade back");
  assert.ok(transports.some(([s, tr]) => s === "open" && tr === "websocket"));
  ra.doc.getText("t").insert(8, " then ws");
  await ra.flushed();
  const b = connect(t, server.url);
  const rb = await b.join("fallback");
  assert.equal(rb.doc.getText("t").toString(), "over sse then ws");
  assert.equal(await ra.publish("e", 1), 1);
});

test("a server that is down (connection refused, /healthz too) does not make the client fall back", async (t) => {
  const changes = [];
  const a = connect(t, `http://127.0.0.1:1`, { fallbackAfter: 1, transports: ["websocket", "poll"], backoff: { baseMs: 10, capMs: 20 } });
  a.on("state", (c) => changes.push(c));
  await until(() => changes.filter((c) => c.state === "reconnecting").length >= 4, 5000, "four failed connects");
  assert.equal(a._tIndex, 0, "still on websocket: the transport is not to blame");
});

test("poll is the last resort", async (t) => {
  proxy.refuseUpgrades(true);
  t.after(() => proxy.refuseUpgrades(false));
  const b = connect(t, proxy.url, { fallbackAfter: 1, transports: ["websocket", "poll"], upgradeAfterMs: 60000 });
  await b.join("poll-fallback");
  assert.equal(b.transport, "poll");
});
