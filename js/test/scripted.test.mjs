// Server behaviour plait serve cannot be made to show on demand, from a scripted server:
// a room that fails (channel_closed STORAGE_UNAVAILABLE) and comes back, a refused update
// sent again, an answer that comes twice.
import { test } from "node:test";
import assert from "node:assert/strict";
import { WebSocketServer } from "ws";
import * as Y from "yjs";
import { encode, decode } from "../src/protocol.js";
import { connect, until, next } from "./server.mjs";
import { ErrorCode } from "../src/index.js";

const LIMITS = { max_message_bytes: 1 << 20, max_frames_per_message: 64, max_rooms: 8, events_per_second: 50, updates_per_second: 200, max_presence_bytes: 65536, frames_per_second: 200, max_document_bytes: 1 << 24 };
const EMPTY_SV = Y.encodeStateVector(new Y.Doc());
const EMPTY_UPDATE = Y.encodeStateAsUpdate(new Y.Doc());

/** A scripted server: `onFrame(frame, send, conn)` for every frame after the hello. */
async function scripted(t, onFrame) {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await new Promise((r) => wss.on("listening", r));
  const log = [];
  let n = 0;
  wss.on("connection", (ws) => {
    const conn = { id: ++n, channel: 0 };
    const send = (...frames) => ws.send(encode(frames));
    ws.once("message", () => {
      send({ kind: "welcome", version: 1, session: `s${conn.id}`, heartbeat_ms: 15000, limits: LIMITS });
      ws.on("message", (data) => {
        for (const f of decode(new Uint8Array(data))) {
          log.push({ conn: conn.id, ...f });
          onFrame(f, send, conn);
        }
      });
    });
  });
  t.after(() => { for (const c of wss.clients) c.terminate(); return new Promise((r) => wss.close(r)); });
  return { url: `http://127.0.0.1:${wss.address().port}`, log };
}

/** Answers a join as a plain server would. */
function answerJoin(f, send, conn, head = 0) {
  conn.channel += 1;
  send(
    { kind: "joined", ref: f.ref, channel: conn.channel, access: 2, head, resumed: f.since === null ? null : true, epoch: "e1" },
    { kind: "sync_step1", channel: conn.channel, state_vector: EMPTY_SV },
    { kind: "sync_step2", channel: conn.channel, ref: null, update: EMPTY_UPDATE },
    { kind: "presence_snapshot", channel: conn.channel, entries: [] },
  );
}

test("channel_closed STORAGE_UNAVAILABLE: 'closed' is told, the room rejoins by itself; ROOM_DELETED: it does not", async (t) => {
  let joins = 0;
  const server = await scripted(t, (f, send, conn) => {
    if (f.kind === "join") {
      joins += 1;
      answerJoin(f, send, conn);
      if (f.room === "fails" && joins === 1) setTimeout(() => send({ kind: "channel_closed", channel: conn.channel, code: ErrorCode.STORAGE_UNAVAILABLE, message: "store down" }), 50);
      if (f.room === "deleted") setTimeout(() => send({ kind: "channel_closed", channel: conn.channel, code: ErrorCode.ROOM_DELETED, message: "deleted" }), 50);
    } else if (f.ref !== undefined && f.ref !== null && f.kind !== "leave") {
      send({ kind: "ack", ref: f.ref, value: f.kind === "publish" ? 1 : null });
    }
  });
  const a = connect(t, server.url);
  const room = await a.join("fails");
  const closed = await next(room, "closed");
  assert.equal(closed.code, ErrorCode.STORAGE_UNAVAILABLE);
  await until(() => joins === 2, 5000, "the rejoin");
  const rejoin = server.log.filter((f) => f.kind === "join")[1];
  assert.equal(rejoin.since, 0, "the rejoin carries since");
  assert.equal(rejoin.epoch, "e1");
  assert.equal(await room.publish("x", 1), 1);

  const deleted = await a.join("deleted");
  const err = await next(deleted, "closed");
  assert.equal(err.codeName, "ROOM_DELETED");
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(server.log.filter((f) => f.kind === "join" && f.room === "deleted").length, 1, "not joined again");
  await assert.rejects(deleted.publish("x", 1), (e) => e.code === ErrorCode.ROOM_DELETED);
});

test("an update refused with RATE_LIMITED is sent again; an answer that comes twice settles once", async (t) => {
  let updates = 0;
  const server = await scripted(t, (f, send, conn) => {
    if (f.kind === "join") return answerJoin(f, send, conn);
    if (f.kind === "update") {
      updates += 1;
      if (updates === 1) return send({ kind: "error", ref: f.ref, channel: f.channel, code: ErrorCode.RATE_LIMITED, message: "slow down" });
      return send({ kind: "ack", ref: f.ref, value: null });
    }
    if (f.kind === "publish") return send({ kind: "ack", ref: f.ref, value: 7 }, { kind: "error", ref: f.ref, channel: f.channel, code: ErrorCode.INTERNAL, message: "again" });
    if (f.ref !== undefined && f.ref !== null) send({ kind: "ack", ref: f.ref, value: null });
  });
  const a = connect(t, server.url);
  const room = await a.join("r");
  room.doc.getText("t").insert(0, "x");
  await room.flushed();
  assert.equal(updates, 2);
  const sent = server.log.filter((f) => f.kind === "update");
  const doc = new Y.Doc();
  Y.applyUpdate(doc, sent[1].update);
  assert.equal(doc.getText("t").toString(), "x", "the refused change went out again");
  assert.equal(await room.publish("e", 1), 7);
  assert.equal(await room.publish("e", 2), 7);
});
