// A server killed with SIGKILL and restarted on the same port (sqlite store): the client
// reconnects with backoff, and nothing that was acked is lost.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { startServer, connect, until, tempDir } from "./server.mjs";

const dir = tempDir();
const store = `sqlite:${path.join(dir, "plait.db")}`;
let server;
after(() => server?.stop());

test("kill -9 and restart: reconnect with backoff, acked edits and events kept, token asked per connect", async (t) => {
  server = await startServer([], { store });
  const port = server.port;
  let tokenCalls = 0;
  const a = connect(t, server.url, { token: () => { tokenCalls += 1; return null; }, backoff: { baseMs: 100, capMs: 400 } });
  const states = [];
  a.on("state", (c) => states.push(c));
  const r = await a.join("durable");
  r.doc.getText("t").insert(0, "acked before the crash");
  await r.flushed();
  assert.equal(await r.publish("e", 1), 1);
  assert.equal(tokenCalls, 1);

  await server.stop("SIGKILL");
  await until(() => states.filter((c) => c.state === "reconnecting").length >= 3, 10000, "several attempts");
  const attempts = states.filter((c) => c.state === "reconnecting");
  assert.ok(attempts.every((c) => c.delayMs >= 0 && c.delayMs <= 400), "delays within the cap");
  assert.deepEqual(attempts.slice(0, 3).map((c) => c.attempt), [1, 2, 3]);
  assert.ok(attempts.every((c) => c.error !== null));
  r.doc.getText("t").insert(0, "[offline] ");

  server = await startServer([], { store, port });
  await a.whenOpen();
  assert.equal(a.transport, "websocket", "a server that was down is no reason to fall back");
  assert.ok(tokenCalls >= 2, "the token function is called for each connect");
  await r.flushed();
  assert.equal(await r.publish("e", 2), 2, "the event history survived");

  const b = connect(t, server.url);
  const rb = await b.join("durable");
  assert.equal(rb.doc.getText("t").toString(), "[offline] acked before the crash");
});
