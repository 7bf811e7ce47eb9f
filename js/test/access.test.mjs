// Tokens, access and the server's refusals: typed errors, closed states, refresh.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, connect, until, next, jwt, SECRET } from "./server.mjs";
import { PlaitError, ErrorCode, CloseCode } from "../src/index.js";

const API_KEY = "an-api-key-for-the-tests-0123";
let server;
before(async () => { server = await startServer(["--jwt-secret", SECRET, "--api-key", API_KEY]); });
after(() => server.stop());

const token = (sub, rooms, extra = {}) => jwt(SECRET, { sub, name: sub, rooms, ...extra });
const api = (method, path, body) =>
  fetch(`${server.url}/api${path}`, { method, headers: { Authorization: `Bearer ${API_KEY}` }, body: body && JSON.stringify(body) }).then(async (r) => ({ status: r.status, body: await r.json() }));

test("read access: publish and edits refused with FORBIDDEN; comment access publishes", async (t) => {
  const a = connect(t, server.url, { token: token("reader", { "ro-*": "read", "co-*": "comment" }) });
  const ro = await a.join("ro-room");
  assert.equal(ro.access, "read");
  await assert.rejects(ro.publish("chat", 1), (e) => e instanceof PlaitError && e.code === ErrorCode.FORBIDDEN && e.codeName === "FORBIDDEN" && !e.isClose);
  ro.doc.getText("t").insert(0, "not mine to write");
  await assert.rejects(ro.flushed(), (e) => e.code === ErrorCode.FORBIDDEN);
  const co = await a.join("co-room");
  assert.equal(co.access, "comment");
  assert.equal(await co.publish("comment", "ok"), 1);
  await assert.rejects(a.join("elsewhere"), (e) => e.code === ErrorCode.FORBIDDEN);
  assert.equal(a.state, "open");
});

test("a refused token ends in state closed with UNAUTHENTICATED, no retries", async (t) => {
  let calls = 0;
  const a = connect(t, server.url, { token: () => { calls += 1; return "not-a-jwt"; } });
  await until(() => a.state === "closed", 5000, "closed");
  assert.equal(a.lastError.code, CloseCode.UNAUTHENTICATED);
  assert.equal(a.lastError.isClose, true);
  assert.equal(calls, 1);
  await assert.rejects(a.join("x"), PlaitError);
  await assert.rejects(a.whenOpen(), (e) => e.code === CloseCode.UNAUTHENTICATED);
});

test("same for the HTTP transports", async (t) => {
  const a = connect(t, server.url, { token: "not-a-jwt", transports: ["sse"] });
  await until(() => a.state === "closed", 5000, "closed");
  assert.equal(a.lastError.code, CloseCode.UNAUTHENTICATED);
});

test("operator: access lowered → 'access'; taken away → 'closed' FORBIDDEN; a room deleted → ROOM_DELETED", async (t) => {
  const a = connect(t, server.url, { token: token("carol", { "op-*": "write" }) });
  const r = await a.join("op-room");
  const access = next(r, "access");
  assert.equal((await api("PUT", "/rooms/op-room/access/carol", { access: "read" })).status, 200);
  assert.equal(await access, "read");
  assert.equal(r.access, "read");
  const closed = next(r, "closed");
  await api("PUT", "/rooms/op-room/access/carol", { access: "none" });
  const err = await closed;
  assert.equal(err.code, ErrorCode.FORBIDDEN);
  await assert.rejects(r.publish("x", 1), PlaitError);

  const r2 = await a.join("op-deleted");
  const closed2 = next(r2, "closed");
  assert.equal((await api("DELETE", "/rooms/op-deleted")).status, 200);
  assert.equal((await closed2).codeName, "ROOM_DELETED");
  await new Promise((res) => setTimeout(res, 300));
  const sessions = (await api("GET", "/rooms/op-deleted/sessions")).body.sessions ?? [];
  assert.equal(sessions.length, 0, "not rejoined by itself");
});

for (const transport of ["websocket", "sse", "poll"]) {
  test(`disconnected by the operator (4013) over ${transport}: state closed, no reconnect`, async (t) => {
    const a = connect(t, server.url, { token: token("dave", { "*": "write" }), transports: [transport] });
    await a.join("kick");
    const states = [];
    a.on("state", (c) => states.push(c.state));
    assert.equal((await api("DELETE", `/sessions/${a.session}`)).status, 200);
    await until(() => a.state === "closed", 5000, "closed");
    assert.equal(a.lastError.code, CloseCode.DISCONNECTED);
    assert.equal(a.lastError.codeName, "DISCONNECTED");
    assert.deepEqual(states, ["closed"]);
  });
}

test("token_expiring is answered with a refresh from the token function; the session goes on", async (t) => {
  let calls = 0;
  const a = connect(t, server.url, { token: () => { calls += 1; return token("erin", { "*": "write" }, { exp: Math.floor(Date.now() / 1000) + 9 }); } });
  const r = await a.join("refresh");
  const session = a.session;
  const started = Date.now();
  // Warned a third of the lifetime before exp, up to H/8 (~2 s) late (spec §5.9).
  await until(() => calls >= 2, 9000, "a refresh");
  await new Promise((res) => setTimeout(res, Math.max(0, 10500 - (Date.now() - started)))); // past the first token's exp
  assert.equal(a.session, session, "the same session");
  assert.equal(a.state, "open");
  assert.equal(await r.publish("still", "here"), 1);
});

test("TOKEN_EXPIRED: reconnect at once with a fresh token from the token function", async (t) => {
  let calls = 0;
  let a = null;
  a = connect(t, server.url, {
    token: () => {
      calls += 1;
      if (a && a.state === "open") return "refused-refresh"; // a refresh the server refuses (not fatal)
      if (calls === 1) return token("fay", { "*": "write" }, { exp: Math.floor(Date.now() / 1000) + 3 });
      return token("fay", { "*": "write" });
    },
  });
  const r = await a.join("expiry");
  const session = a.session;
  const states = [];
  a.on("state", (c) => states.push(c));
  await until(() => a.state === "open" && a.session !== session && a.session !== null, 15000, "a new session");
  assert.equal(a.lastError.code, CloseCode.TOKEN_EXPIRED);
  const retry = states.find((c) => c.state === "reconnecting");
  assert.equal(retry.delayMs, 0, "at once");
  assert.equal(await r.publish("back", 1), 1);
});
