// Heartbeats (§5.7) and a server that breaks the protocol, against a scripted fake server.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocketServer } from "ws";
import { encode, decode } from "../src/protocol.js";
import { connect, until } from "./server.mjs";
import { ErrorCode } from "../src/index.js";

const LIMITS = { max_message_bytes: 1 << 20, max_frames_per_message: 64, max_rooms: 8, events_per_second: 50, updates_per_second: 200, max_presence_bytes: 65536, frames_per_second: 200, max_document_bytes: 1 << 24 };

/** A fake server: welcomes, then does what `after` says with each connection. */
async function fakeServer(t, after) {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await new Promise((r) => wss.on("listening", r));
  const seen = [];
  wss.on("connection", (ws) => {
    ws.once("message", () => {
      ws.send(encode({ kind: "welcome", version: 1, session: `s${seen.length}`, heartbeat_ms: 200, limits: LIMITS }));
      ws.on("message", (data) => seen.push(...decode(new Uint8Array(data))));
      after(ws);
    });
  });
  t.after(() => { for (const c of wss.clients) c.terminate(); return new Promise((r) => wss.close(r)); });
  return { url: `http://127.0.0.1:${wss.address().port}`, seen };
}

test("a client pings when idle for H and treats 2H of silence as dead", async (t) => {
  const server = await fakeServer(t, () => { /* never answers */ });
  const a = connect(t, server.url, { backoff: { baseMs: 10000, capMs: 10000 } });
  await a.whenOpen();
  await until(() => a.state === "reconnecting", 2000, "the silent connection given up");
  assert.ok(server.seen.some((f) => f.kind === "ping"), "pinged");
  assert.equal(a.lastError.codeName, "HEARTBEAT_TIMEOUT");
});

test("a server that answers pings keeps the connection", async (t) => {
  const server = await fakeServer(t, (ws) => ws.on("message", (data) => {
    for (const f of decode(new Uint8Array(data))) if (f.kind === "ping") ws.send(encode({ kind: "pong", nonce: f.nonce }));
  }));
  const a = connect(t, server.url);
  await a.whenOpen();
  await new Promise((r) => setTimeout(r, 800));
  assert.equal(a.state, "open");
});

test("frames that do not decode are a fatal protocol error: state closed", async (t) => {
  const server = await fakeServer(t, (ws) => ws.send(new Uint8Array([0xc1])));
  const a = connect(t, server.url);
  await until(() => a.state === "closed", 2000, "closed");
  assert.equal(a.lastError.code, ErrorCode.MALFORMED_FRAME);
});
