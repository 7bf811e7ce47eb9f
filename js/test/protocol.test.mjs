// The wire format without a server: golden bytes (spec §4), JSON form (§3.5), total decoding (§3.4).
import { test } from "node:test";
import assert from "node:assert/strict";
import { encode, decode, encodeJson, decodeJson, toBase64, fromBase64 } from "../src/protocol.js";
import { PlaitError, ErrorCode, CloseCode } from "../src/index.js";

const hex = (b) => Buffer.from(b).toString("hex");

test("golden bytes from spec §4", () => {
  assert.equal(hex(encode({ kind: "ping", nonce: 7 })), "920307");
  assert.equal(hex(encode({ kind: "typing", channel: 1, on: true })), "932a01c3");
  assert.deepEqual(decode(Buffer.from("920307932a01c3", "hex")), [{ kind: "ping", nonce: 7 }, { kind: "typing", channel: 1, on: true }]);
});

test("JSON form: binary as $b, $-keyed maps as $map, records as objects", () => {
  assert.equal(encodeJson({ kind: "ping", nonce: 7 }), '{"kind":"ping","nonce":7}');
  const frame = { kind: "event", channel: 1, seq: 2, name: "x", payload: { $k: new Uint8Array([255, 0]), list: [1.5, null] }, session: null, user: "u" };
  const text = encodeJson(frame);
  assert.match(text, /"\$map":\[\["\$k",\{"\$b":"\/wA="\}\]/);
  assert.deepEqual(decodeJson(text), [frame]);
  const diff = { kind: "presence_diff", channel: 1, joined: [{ session: "s", identity: { id: "i" }, state: {} }], updated: [{ session: "s", state: { a: 1 } }], left: ["t"] };
  assert.deepEqual(decodeJson(encodeJson([diff, diff])), [diff, diff]);
  assert.deepEqual(decode(encode(diff)), [diff]);
  for (const n of [0, 1, 2, 3, 4, 5, 255]) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 97) & 255);
    assert.equal(toBase64(bytes), Buffer.from(bytes).toString("base64"));
    assert.deepEqual(fromBase64(toBase64(bytes)), bytes);
  }
});

test("decoding is total: only PlaitError with a §3.4 code, for any bytes or text", () => {
  const codes = new Set([ErrorCode.MALFORMED_FRAME, ErrorCode.UNKNOWN_KIND, ErrorCode.FRAME_TOO_LARGE, ErrorCode.INVALID_FIELD, ErrorCode.TOO_DEEP]);
  const seeds = [encode({ kind: "ping", nonce: 7 }), encode({ kind: "welcome", version: 1, session: "s", heartbeat_ms: 1, limits: { max_message_bytes: 1, max_frames_per_message: 1, max_rooms: 1, events_per_second: 1, updates_per_second: 1, max_presence_bytes: 1, frames_per_second: 1, max_document_bytes: 1 } })];
  let seed = 1;
  const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let i = 0; i < 3000; i++) {
    const base = seeds[i % seeds.length];
    const bytes = i % 3 === 0 ? Uint8Array.from({ length: Math.floor(rand() * 40) }, () => Math.floor(rand() * 256)) : base.map((b) => (rand() < 0.15 ? Math.floor(rand() * 256) : b));
    try { decode(bytes); } catch (err) {
      assert.ok(err instanceof PlaitError, `not a PlaitError: ${err}`);
      assert.ok(codes.has(err.code), `code ${err.code}`);
    }
    const text = Buffer.from(bytes).toString("latin1");
    try { decodeJson(text); } catch (err) { assert.ok(err instanceof PlaitError && codes.has(err.code), String(err)); }
  }
  for (const bad of ['{"kind":"ping"}', '{"kind":"nope"}', '[]', '{"kind":"ping","nonce":-1}', '{"kind":"update","channel":1,"ref":null,"update":{"$b":"!!"}}', "[".repeat(100000)]) {
    assert.throws(() => decodeJson(bad), (e) => e instanceof PlaitError && codes.has(e.code), bad.slice(0, 40));
  }
  const deep = { kind: "cursor_move", channel: 1, position: JSON.parse("[".repeat(40) + "]".repeat(40)) };
  assert.throws(() => encode(deep), (e) => e.code === ErrorCode.TOO_DEEP);
  assert.throws(() => decode(new Uint8Array(10), { maxMessageBytes: 5 }), (e) => e.code === ErrorCode.FRAME_TOO_LARGE);
});

test("codes: names, application codes, close codes", () => {
  assert.equal(new PlaitError(2003, "no").codeName, "FORBIDDEN");
  assert.equal(new PlaitError(4321, "app").codeName, "APPLICATION");
  const close = new PlaitError(CloseCode.TOKEN_EXPIRED, "x", { isClose: true });
  assert.equal(close.codeName, "TOKEN_EXPIRED");
  assert.equal(close.isClose, true);
  assert.ok(close instanceof Error);
});
