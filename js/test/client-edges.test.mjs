// What a fresh user's scripts found at the client's edges: bad join() arguments, batches cut
// by real size, token functions that misbehave, close() during a connect or with publishes in
// flight, and proxies that answer 502 or refuse the WebSocket upgrade.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { spawn } from "node:child_process";
import { WebSocketServer } from "ws";
import * as Y from "yjs";
import { encode, decode } from "../src/protocol.js";
import { startServer, connect, until } from "./server.mjs";
import { startProxy } from "./proxy.mjs";
import { ErrorCode, CloseCode, PlaitError } from "../src/index.js";

let server, proxy;
before(async () => { server = await startServer(); proxy = await startProxy(server.port); });
after(async () => { await proxy.close(); await server.stop(); });

const LIMITS = { max_message_bytes: 65536, max_frames_per_message: 64, max_rooms: 8, events_per_second: 50, updates_per_second: 200, max_presence_bytes: 65536, frames_per_second: 200, max_document_bytes: 1 << 24 };

test("join() refuses bad arguments at once with INVALID_FIELD, and the good rooms still rejoin after a reconnect", async (t) => {
  const a = connect(t, proxy.url, { backoff: { baseMs: 10, capMs: 50 } });
  const good = await a.join("good-room");
  const bad = [
    ["lone\ud800surrogate", {}],
    ["", {}],
    ["x".repeat(257), {}],
    [42, {}],
    ["ok-name", { since: -1 }],
    ["ok-name", { since: 1.5 }],
    ["ok-name", { since: "3" }],
    ["ok-name", { since: 2 ** 60 }],
    ["ok-name", { epoch: "e".repeat(65) }],
    ["ok-name", { epoch: 7 }],
    ["ok-name", { doc: {} }],
    ["ok-name", "options"],
  ];
  for (const [name, options] of bad) {
    await assert.rejects(a.join(/** @type {any} */ (name), /** @type {any} */ (options)), (err) => err instanceof PlaitError && err.code === ErrorCode.INVALID_FIELD, `join(${String(name).slice(0, 20)}, ${JSON.stringify(options)})`);
  }
  // 256 code points (512 UTF-16 units) is a valid name.
  await a.join("😀".repeat(256));
  assert.equal(a.state, "open");
  proxy.cut();
  await until(() => a.state !== "open", 5000, "the drop");
  await a.whenOpen();
  good.doc.getText("t").insert(0, "after the reconnect");
  await good.flushed();
  const b = connect(t, server.url);
  const rb = await b.join("good-room");
  assert.equal(rb.doc.getText("t").toString(), "after the reconnect");
});

/** A scripted server that answers joins and publishes, with small limits; it records the size
 *  of every message, and like plait serve closes with 1009 on one over max_message_bytes. */
async function scripted(t) {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", maxPayload: LIMITS.max_message_bytes });
  await new Promise((r) => wss.on("listening", r));
  const state = { sizes: [], seq: 0, updates: 0 };
  wss.on("connection", (ws) => {
    const send = (...frames) => ws.send(encode(frames));
    ws.once("message", () => {
      send({ kind: "welcome", version: 1, session: "s1", heartbeat_ms: 15000, limits: LIMITS });
      ws.on("message", (data) => {
        state.sizes.push(data.length);
        for (const f of decode(new Uint8Array(data))) {
          if (f.kind === "join") {
            send({ kind: "joined", ref: f.ref, channel: 1, access: 2, head: 0, resumed: null, epoch: "e1" },
              { kind: "sync_step1", channel: 1, state_vector: Y.encodeStateVector(new Y.Doc()) },
              { kind: "sync_step2", channel: 1, ref: null, update: Y.encodeStateAsUpdate(new Y.Doc()) },
              { kind: "presence_snapshot", channel: 1, entries: [] });
          } else if (f.kind === "publish") {
            send({ kind: "ack", ref: f.ref, value: ++state.seq });
          } else if (f.kind === "update" || f.kind === "sync_step2") {
            state.updates += 1;
            if (f.ref !== null) send({ kind: "ack", ref: f.ref, value: null });
          }
        }
      });
    });
  });
  t.after(() => { for (const c of wss.clients) c.terminate(); return new Promise((r) => wss.close(r)); });
  return { url: `http://127.0.0.1:${wss.address().port}`, state };
}

test("publishes made in one tick go out in batches cut by their real encoded size", async (t) => {
  const s = await scripted(t);
  const a = connect(t, s.url, { transports: ["websocket"] });
  const room = await a.join("big");
  const big = "x".repeat(36_000); // each fits; two do not fit one message
  room.doc.getText("t").insert(0, "an edit");
  const seqs = await Promise.all([room.publish("blob", { big }), room.publish("blob", { big }), room.publish("small", 1)]);
  assert.deepEqual(seqs.sort(), [1, 2, 3]);
  await room.flushed();
  assert.equal(a.state, "open");
  assert.ok(s.state.sizes.every((n) => n <= LIMITS.max_message_bytes), `message sizes ${s.state.sizes}`);
});

test("a token function that returns a non-string or throws is a failed attempt (retried, CLIENT), never a final close", async (t) => {
  for (const token of [() => 42, () => ({}), () => { throw new Error("login service down"); }, async () => { throw new Error("nope"); }]) {
    let calls = 0;
    const changes = [];
    const a = connect(t, server.url, { token: () => { calls += 1; return token(); }, backoff: { baseMs: 10, capMs: 20 } });
    a.on("state", (c) => changes.push(c));
    await until(() => calls >= 3, 5000, "retries of the token function");
    assert.notEqual(a.state, "closed");
    const failed = changes.find((c) => c.state === "reconnecting");
    assert.equal(failed.error.code, 0);
    assert.equal(failed.error.codeName, "CLIENT");
    assert.match(failed.error.message, /token function/);
    await a.close();
  }
});

test("a token function that never returns is bounded by the open timeout: a failed attempt, retried", async (t) => {
  let calls = 0;
  const changes = [];
  const a = connect(t, server.url, { token: () => (++calls === 1 ? new Promise(() => {}) : null), _openTimeoutMs: 300, backoff: { baseMs: 10, capMs: 20 } });
  a.on("state", (c) => changes.push(c));
  await a.whenOpen();
  assert.equal(calls, 2);
  assert.equal(changes.find((c) => c.state === "reconnecting").error.code, CloseCode.HANDSHAKE_TIMEOUT);
});

test("after a fallback, the first upgrade probe comes after about 5 s (not upgradeAfterMs)", async (t) => {
  proxy.refuseUpgrades(true);
  t.after(() => proxy.refuseUpgrades(false));
  const a = connect(t, proxy.url, { backoff: { baseMs: 10, capMs: 50 } }); // upgradeAfterMs: 60 s by default
  await until(() => a.transport === "sse" && a.state === "open", 5000, "the fallback to sse");
  const fellBack = Date.now();
  proxy.refuseUpgrades(false);
  await until(() => a.transport === "websocket" && a.state === "open", 9000, "the upgrade back");
  assert.ok(Date.now() - fellBack >= 3000, "not at once");
});

test("a token function that fails at a refresh skips the refresh; the connection stays", async (t) => {
  // A scripted server that says the token is expiring: the client asks its function again.
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await new Promise((r) => wss.on("listening", r));
  t.after(() => { for (const c of wss.clients) c.terminate(); return new Promise((r) => wss.close(r)); });
  const refreshes = [];
  wss.on("connection", (ws) => {
    ws.once("message", () => {
      ws.send(encode([{ kind: "welcome", version: 1, session: "s1", heartbeat_ms: 15000, limits: LIMITS }, { kind: "token_expiring", expires_in_ms: 1000 },
        { kind: "token_expiring", expires_in_ms: 900 }, { kind: "token_expiring", expires_in_ms: 800 }]));
      ws.on("message", (data) => { for (const f of decode(new Uint8Array(data))) if (f.kind === "refresh") refreshes.push(f); });
    });
  });
  let calls = 0;
  // A number, a throw, a string that cannot be sent (a lone surrogate): each refresh skipped.
  const answers = [() => "first", () => 42, () => { throw new Error("login service down"); }, () => "bad\ud800"];
  const a = connect(t, `http://127.0.0.1:${wss.address().port}`, { token: () => answers[Math.min(calls++, 3)]() });
  await until(() => calls >= 4, 5000, "the refreshes' calls");
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(a.state, "open");
  assert.equal(refreshes.length, 0);
});

test("close() during a connect to an unresponsive server (or a token function that hangs): the process exits at once", async () => {
  const script = `
    import net from "node:net";
    import WebSocket from "ws";
    import { PlaitClient } from "../src/index.js";
    const which = process.argv[1];
    // The hole is in this process: its own end of each connection must not keep it alive.
    const hole = net.createServer((s) => { s.on("error", () => {}); s.unref(); }).listen(0, "127.0.0.1");
    await new Promise((r) => hole.once("listening", r));
    hole.unref();
    const opts = { url: "http://127.0.0.1:" + hole.address().port, WebSocket };
    if (which === "sse") opts.transports = ["sse"];
    if (which === "token") opts.token = () => new Promise(() => {});
    const c = new PlaitClient(opts);
    await new Promise((r) => setTimeout(r, 300));
    await c.close();
    console.log("closed " + c.state);
  `;
  for (const which of ["websocket", "sse", "token"]) {
    const t0 = Date.now();
    const child = spawn(process.execPath, ["--input-type=module", "-e", script, which], { cwd: new URL(".", import.meta.url).pathname, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => { out += d; });
    child.stderr.on("data", (d) => { out += d; });
    const code = await new Promise((resolve) => {
      const timer = setTimeout(() => { child.kill("SIGKILL"); resolve("killed"); }, 8000);
      child.on("exit", (c) => { clearTimeout(timer); resolve(c); });
    });
    assert.equal(code, 0, `${which}: ${out}`);
    assert.match(out, /closed closed/);
    assert.ok(Date.now() - t0 < 4000, `${which}: exited after ${Date.now() - t0} ms`);
  }
});

test("close() right after publish(): the publishes the server delivered resolve with their seq", async (t) => {
  const a = connect(t, server.url);
  const w = connect(t, server.url);
  const ra = await a.join("close-inflight");
  const rw = await w.join("close-inflight");
  const seen = [];
  rw.on("event", (e) => seen.push(e.payload));
  const results = [];
  for (let i = 0; i < 5; i++) results.push(ra.publish("m", i).then((s) => s, (e) => `rejected ${e.message}`));
  await a.close();
  assert.deepEqual(await Promise.all(results), [1, 2, 3, 4, 5]);
  await until(() => seen.length === 5, 5000, "the events at the other client");
});

test("a proxy's 502 is a retried failure that says HTTP 502, not SHUTTING_DOWN", async (t) => {
  const bad = http.createServer((req, res) => { res.writeHead(502, { "Content-Type": "text/html" }); res.end("<h1>Bad Gateway</h1>"); });
  await new Promise((r) => bad.listen(0, "127.0.0.1", r));
  t.after(() => new Promise((r) => { bad.closeAllConnections(); bad.close(r); }));
  const changes = [];
  const a = connect(t, `http://127.0.0.1:${bad.address().port}`, { transports: ["sse", "poll"], backoff: { baseMs: 10, capMs: 20 } });
  a.on("state", (c) => changes.push(c));
  await until(() => changes.filter((c) => c.state === "reconnecting").length >= 3, 5000, "retries");
  const err = changes.find((c) => c.state === "reconnecting").error;
  assert.notEqual(err.code, ErrorCode.SHUTTING_DOWN);
  assert.match(err.message, /HTTP 502/);
  assert.notEqual(a.state, "closed");
});

test("a refused WebSocket upgrade says its status (Node)", async (t) => {
  proxy.refuseUpgrades(true);
  t.after(() => proxy.refuseUpgrades(false));
  const changes = [];
  const a = connect(t, proxy.url, { transports: ["websocket"], backoff: { baseMs: 10, capMs: 20 } });
  a.on("state", (c) => changes.push(c));
  await until(() => changes.some((c) => c.state === "reconnecting"), 5000, "a failed connect");
  const err = changes.find((c) => c.state === "reconnecting").error;
  assert.equal(err.code, CloseCode.ABNORMAL);
  assert.match(err.message, /HTTP 403/);
});

test("client.limits is the welcome's limits, null before", async (t) => {
  const a = connect(t, server.url);
  assert.equal(a.limits, null);
  await a.whenOpen();
  assert.equal(typeof a.limits.max_message_bytes, "number");
});
