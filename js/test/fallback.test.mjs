// Fallback when a transport opens but does not work: a proxy that passes POSTs but not event
// streams, one that lets WebSockets open and cuts them at once, and an event stream that goes
// silent without TCP noticing (§5.7, §14.2).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, until } from "./server.mjs";
import { startProxy } from "./proxy.mjs";
import { CloseCode, ErrorCode } from "../src/index.js";

let server, proxy;
before(async () => { server = await startServer(); proxy = await startProxy(server.port); });
after(async () => { await proxy.close(); await server.stop(); });

test("an event stream a proxy blocks (POSTs pass) falls back to long-polling", async (t) => {
  const blocked = (url, init) => (String(url).includes("/events") ? Promise.reject(new TypeError("blocked by a proxy")) : fetch(url, init));
  const a = connect(t, server.url, { transports: ["sse", "poll"], fetch: blocked, backoff: { baseMs: 10, capMs: 50 } });
  const b = connect(t, server.url);
  const ra = await a.join("sse-blocked");
  assert.equal(a.transport, "poll");
  const rb = await b.join("sse-blocked");
  ra.doc.getText("t").insert(0, "via poll");
  await ra.flushed();
  await until(() => rb.doc.getText("t").toString() === "via poll", 5000, "the edit");
});

test("WebSockets that open and are cut at once fall back to SSE", async (t) => {
  proxy.cutUpgraded(true);
  t.after(() => proxy.cutUpgraded(false));
  const a = connect(t, proxy.url, { backoff: { baseMs: 10, capMs: 50 }, upgradeAfterMs: 3_600_000 });
  const b = connect(t, server.url);
  const ra = await a.join("ws-cut");
  await until(() => a.transport === "sse" && a.state === "open", 10_000, "a fallback to sse");
  assert.ok(proxy.state.upgradesCut >= 2);
  const rb = await b.join("ws-cut");
  ra.doc.getText("t").insert(0, "via sse");
  await ra.flushed();
  await until(() => rb.doc.getText("t").toString() === "via sse", 5000, "the edit");
});

test("an event stream on which nothing arrives for 2H is given up", async (t) => {
  // A fake server: the session opens with H = 200 ms, its stream answers 200 and then never
  // sends a byte (a proxy buffering it, a half-open TCP connection).
  let sessions = 0;
  const stalled = async (url, init = {}) => {
    const u = new URL(String(url));
    if (u.pathname === "/v1/sessions" && init.method === "POST") {
      sessions += 1;
      const welcome = { kind: "welcome", version: 1, session: `s${sessions}`, heartbeat_ms: 200,
        limits: { max_message_bytes: 1 << 20, max_frames_per_message: 64, max_rooms: 8, events_per_second: 50, updates_per_second: 200, max_presence_bytes: 65536, frames_per_second: 200, max_document_bytes: 1 << 24 } };
      return new Response(JSON.stringify({ session: `s${sessions}`, key: "k", position: 1, welcome }), { status: 201 });
    }
    if (u.pathname.endsWith("/events")) {
      const body = new ReadableStream({ start(controller) { init.signal?.addEventListener("abort", () => controller.error(new Error("aborted"))); } });
      return new Response(body, { status: 200, headers: { "Content-Type": "text/event-stream" } });
    }
    return new Response("", { status: 200 });
  };
  const changes = [];
  const a = connect(t, "http://127.0.0.1:9", { transports: ["sse"], fetch: stalled, backoff: { baseMs: 10, capMs: 20 } });
  a.on("state", (c) => changes.push(c));
  await until(() => changes.some((c) => c.state === "reconnecting" && c.error?.code === CloseCode.HEARTBEAT_TIMEOUT), 5000, "the silent stream given up");
  await until(() => sessions >= 2, 5000, "a new session");
});

test("a POST the server refuses 429 (the session has not read what came before) is sent again, not a failure", async (t) => {
  let refused = 0;
  const busy = async (url, init) => {
    if (String(url).includes("/frames") && init?.method === "POST" && refused === 0) {
      refused++;  // as the server answers while the session's reader waits (§14.3)
      return new Response(JSON.stringify({ code: ErrorCode.RATE_LIMITED, reason: "not read yet" }), { status: 429, headers: { "Retry-After": "0.2", "Content-Type": "application/json" } });
    }
    return fetch(url, init);
  };
  const a = connect(t, server.url, { transports: ["sse"], fetch: busy, backoff: { baseMs: 10, capMs: 50 } });
  const states = [];
  a.on("state", (c) => states.push(c.state));
  const ra = await a.join("refused-once");
  ra.doc.getText("t").insert(0, "sent again");
  await ra.flushed();
  assert.equal(refused, 1);
  assert.ok(!states.includes("connecting") && !states.includes("reconnecting"), String(states));
  const b = connect(t, server.url);
  const rb = await b.join("refused-once");
  assert.equal(rb.doc.getText("t").toString(), "sent again");
});
