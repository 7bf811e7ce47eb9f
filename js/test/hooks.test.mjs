// Typed refusals from the application's hooks, over every transport: an event the hook
// refuses (EVENT_REJECTED), one it refuses with an application code (4000-4999), and what a
// member with read or comment access may not do. The server is an Engine with
// plait.engine.testing.TokenHooks (hooked_server.py): `plait serve` has no such hooks.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startServer, connect, until } from "./server.mjs";
import { PlaitError, ErrorCode } from "../src/index.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
let server;
before(async () => { server = await startServer([], { script: path.join(HERE, "hooked_server.py") }); });
after(async () => { await server.stop(); });

/** @param {Promise<unknown>} promise @param {number} code @param {string} codeName */
async function refused(promise, code, codeName) {
  await assert.rejects(promise, (/** @type {unknown} */ err) => {
    assert.ok(err instanceof PlaitError, String(err));
    assert.equal(err.code, code);
    assert.equal(err.codeName, codeName);
    assert.equal(err.isClose, false);
    return true;
  });
}

for (const transport of ["websocket", "sse", "poll"]) {
  test(`${transport}: the hook's refusals reject publish with their codes; the room goes on`, async (t) => {
    const a = connect(t, server.url, { transports: [transport], token: "ada" });
    const room = await a.join(`hooks-${transport}`);
    await refused(room.publish("rejected", { x: 1 }), ErrorCode.EVENT_REJECTED, "EVENT_REJECTED");
    await refused(room.publish("app-error", { x: 1 }), 4000, "APPLICATION");
    assert.equal(await room.publish("chat", "fine"), 1); // the refused ones took no seq
    assert.equal(a.state, "open");
  });

  test(`${transport}: read access may not publish nor edit; comment access may publish only`, async (t) => {
    const name = `access-${transport}`;
    const writer = connect(t, server.url, { token: "ada" });
    const wr = await writer.join(name);
    const reader = connect(t, server.url, { transports: [transport], token: "ro:rita" });
    const rr = await reader.join(name);
    assert.equal(rr.access, "read");
    await refused(rr.publish("chat", "hi"), ErrorCode.FORBIDDEN, "FORBIDDEN");
    rr.doc.getText("t").insert(0, "not allowed");
    await refused(rr.flushed(), ErrorCode.FORBIDDEN, "FORBIDDEN");
    const commenter = connect(t, server.url, { transports: [transport], token: "co:cy" });
    const cr = await commenter.join(name);
    assert.equal(cr.access, "comment");
    assert.equal(await cr.publish("comment", "looks good"), 1);
    wr.doc.getText("t").insert(0, "the writer's");
    await wr.flushed();
    await until(() => rr.doc.getText("t").toString().includes("the writer's"), 5000, "the reader still receives");
    assert.ok(!wr.doc.getText("t").toString().includes("not allowed"));
  });
}
