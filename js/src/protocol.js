// The wire format (spec §3, §4): one table of frame kinds and fields, msgpack messages
// (frames and batches) and their JSON form (§3.5). Decoding is total: it returns frames or
// throws a PlaitError with MALFORMED_FRAME, UNKNOWN_KIND, FRAME_TOO_LARGE, INVALID_FIELD or
// TOO_DEEP, never anything else.
//
// A frame in JS is an object: { kind: "publish", channel, ref, name, payload, key }, records
// (Limits, PresenceEntry, ...) as objects by field name, binary as Uint8Array, integers as
// numbers, nil as null.
import { encode as mpEncode, decodeMulti as mpDecodeMulti } from "@msgpack/msgpack";
import { PlaitError } from "./errors.js";
import { ErrorCode } from "./codes.js";

// The code tables (§8, §9) live in codes.js, shared with errors.js; the wire format's users
// find them here too.
export { ErrorCode, CloseCode, FINAL_CLOSES } from "./codes.js";

// Field types: u = unsigned integer (≤ 2^53-1), s = string, b = binary, B = bool,
// m = map, v = value (§3.3), [T] = array of T, Name = a record below; "?" = may be nil.
const RECORDS = {
  Limits: "max_message_bytes:u max_frames_per_message:u max_rooms:u events_per_second:u updates_per_second:u max_presence_bytes:u frames_per_second:u max_document_bytes:u",
  PresenceEntry: "session:s identity:m state:m",
  PresenceState: "session:s state:m",
  CursorPosition: "session:s position:v",
};

/** kind number -> [name, fields] (§4). */
const FRAMES = {
  1: ["hello", "versions:[u] token:s? client:m"],
  2: ["welcome", "version:u session:s heartbeat_ms:u limits:Limits"],
  3: ["ping", "nonce:u"],
  4: ["pong", "nonce:u"],
  5: ["error", "ref:u? channel:u? code:u message:s"],
  6: ["ack", "ref:u value:u?"],
  7: ["token_expiring", "expires_in_ms:u"],
  8: ["refresh", "ref:u token:s"],
  10: ["join", "ref:u room:s state_vector:b? since:u? epoch:s?"],
  11: ["joined", "ref:u channel:u access:u head:u resumed:B? epoch:s"],
  12: ["leave", "channel:u ref:u?"],
  13: ["channel_closed", "channel:u code:u message:s"],
  14: ["access_changed", "channel:u access:u"],
  20: ["sync_step1", "channel:u state_vector:b"],
  21: ["sync_step2", "channel:u ref:u? update:b"],
  22: ["update", "channel:u ref:u? update:b"],
  30: ["presence_set", "channel:u ref:u? state:m"],
  31: ["presence_patch", "channel:u ref:u? patch:m"],
  32: ["presence_snapshot", "channel:u entries:[PresenceEntry]"],
  33: ["presence_diff", "channel:u joined:[PresenceEntry] updated:[PresenceState] left:[s]"],
  40: ["cursor_move", "channel:u position:v"],
  41: ["cursors", "channel:u moves:[CursorPosition]"],
  42: ["typing", "channel:u on:B"],
  43: ["typing_state", "channel:u sessions:[s]"],
  50: ["publish", "channel:u ref:u name:s payload:v key:s?"],
  51: ["event", "channel:u seq:u name:s payload:v session:s? user:s?"],
};

/** @param {string} spec */
const parseFields = (spec) =>
  spec.split(" ").map((f) => {
    const [name, type] = f.split(":");
    const optional = type.endsWith("?");
    return { name, type: optional ? type.slice(0, -1) : type, optional };
  });

const recordFields = Object.fromEntries(Object.entries(RECORDS).map(([k, v]) => [k, parseFields(v)]));
/** name -> { kind, fields } */
const byName = new Map();
/** kind -> { name, fields } */
const byKind = new Map();
for (const [kind, [name, spec]] of Object.entries(FRAMES)) {
  const fields = parseFields(spec);
  byName.set(name, { kind: Number(kind), fields });
  byKind.set(Number(kind), { name, fields });
}

/** Frame kind numbers by name ({ hello: 1, ... }). */
export const Kind = Object.freeze(Object.fromEntries([...byName].map(([n, d]) => [n, d.kind])));

export const MAX_DEPTH = 32;
const MAX_UINT = Number.MAX_SAFE_INTEGER;

const invalid = (/** @type {string} */ msg) => new PlaitError(ErrorCode.INVALID_FIELD, msg);
const malformed = (/** @type {string} */ msg) => new PlaitError(ErrorCode.MALFORMED_FRAME, msg);

const isPlainObject = (/** @type {unknown} */ x) =>
  typeof x === "object" && x !== null && !Array.isArray(x) && !(x instanceof Uint8Array) &&
  (Object.getPrototypeOf(x) === Object.prototype || Object.getPrototypeOf(x) === null);

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Checks a value (§3.3) and returns it; throws INVALID_FIELD / TOO_DEEP. */
export function checkValue(/** @type {unknown} */ value, depth = 0, /** @type {string} */ where = "value") {
  if (value === null || typeof value === "boolean") return value;
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw invalid(`${where}: numbers must be finite`);
    return value;
  }
  if (typeof value === "string") {
    if (LONE_SURROGATE.test(value)) throw invalid(`${where}: a string holds a lone surrogate`);
    return value;
  }
  if (value instanceof Uint8Array) return value;
  if (Array.isArray(value) || isPlainObject(value)) {
    if (depth >= MAX_DEPTH) throw new PlaitError(ErrorCode.TOO_DEEP, `${where}: nested deeper than ${MAX_DEPTH}`);
    if (Array.isArray(value)) for (const item of value) checkValue(item, depth + 1, where);
    else for (const [k, v] of Object.entries(/** @type {object} */ (value))) {
      if (LONE_SURROGATE.test(k)) throw invalid(`${where}: a key holds a lone surrogate`);
      checkValue(v, depth + 1, where);
    }
    return value;
  }
  throw invalid(`${where}: ${value === undefined ? "undefined" : typeof value} is not a Plait value`);
}

/** Checks one field of a decoded or to-be-encoded frame, converting records between their
 *  array (msgpack) form and object form. `form`: "array" (msgpack), "object" (JS/JSON).
 *  @returns {unknown} the field in object form (decode) or array form (encode) */
function convertField(/** @type {any} */ value, /** @type {string} */ type, /** @type {boolean} */ optional, /** @type {string} */ where, /** @type {"decode"|"encode"} */ dir, /** @type {"array"|"object"} */ recordForm) {
  if (value === null || value === undefined) {
    if (optional || (type === "v" && value === null)) return null;
    throw invalid(`${where} must not be nil`);
  }
  if (type.startsWith("[")) {
    if (!Array.isArray(value)) throw invalid(`${where} must be an array`);
    const inner = type.slice(1, -1);
    return value.map((v, i) => convertField(v, inner, false, `${where}[${i}]`, dir, recordForm));
  }
  switch (type) {
    case "u":
      if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > MAX_UINT)
        throw invalid(`${where} must be an unsigned integer`);
      return value;
    case "s":
      if (typeof value !== "string") throw invalid(`${where} must be a string`);
      if (LONE_SURROGATE.test(value)) throw invalid(`${where} holds a lone surrogate`);
      return value;
    case "b":
      if (!(value instanceof Uint8Array)) throw invalid(`${where} must be binary`);
      return value;
    case "B":
      if (typeof value !== "boolean") throw invalid(`${where} must be a bool`);
      return value;
    case "m":
      if (!isPlainObject(value)) throw invalid(`${where} must be a map`);
      return checkValue(value, 0, where);
    case "v":
      return checkValue(value, 0, where);
  }
  const fields = recordFields[type];
  if (dir === "decode") {
    const obj = /** @type {Record<string, unknown>} */ ({});
    if (recordForm === "array") {
      if (!Array.isArray(value) || value.length !== fields.length) throw malformed(`${where}: ${type} needs ${fields.length} fields`);
      fields.forEach((f, i) => { obj[f.name] = convertField(value[i], f.type, f.optional, `${where}.${f.name}`, dir, recordForm); });
    } else {
      if (!isPlainObject(value)) throw malformed(`${where}: ${type} must be an object`);
      for (const f of fields) {
        if (!(f.name in value)) throw malformed(`${where}: ${type} lacks ${f.name}`);
        obj[f.name] = convertField(value[f.name], f.type, f.optional, `${where}.${f.name}`, dir, recordForm);
      }
    }
    return obj;
  }
  // encode: from object form to the target form
  if (!isPlainObject(value)) throw invalid(`${where}: ${type} must be an object`);
  const out = fields.map((f) => convertField(value[f.name], f.type, f.optional, `${where}.${f.name}`, dir, recordForm));
  return recordForm === "array" ? out : Object.fromEntries(fields.map((f, i) => [f.name, out[i]]));
}

/** A frame in object form, checked; its array (msgpack) form. */
function toArray(/** @type {any} */ frame) {
  const def = frame && byName.get(frame.kind);
  if (!def) throw invalid(`unknown frame kind ${frame && frame.kind}`);
  return [def.kind, ...def.fields.map((/** @type {any} */ f) => convertField(frame[f.name], f.type, f.optional, `${frame.kind}.${f.name}`, "encode", "array"))];
}

function fromArray(/** @type {unknown} */ arr) {
  if (!Array.isArray(arr) || arr.length === 0 || typeof arr[0] !== "number" || !Number.isInteger(arr[0]))
    throw malformed("a frame must be an array led by an integer kind");
  const def = byKind.get(arr[0]);
  if (!def) throw new PlaitError(ErrorCode.UNKNOWN_KIND, `unknown frame kind ${arr[0]}`);
  if (arr.length !== def.fields.length + 1) throw malformed(`${def.name} needs ${def.fields.length} fields, got ${arr.length - 1}`);
  /** @type {Record<string, unknown>} */
  const frame = { kind: def.name };
  def.fields.forEach((/** @type {any} */ f, /** @type {number} */ i) => {
    frame[f.name] = convertField(arr[i + 1], f.type, f.optional, `${def.name}.${f.name}`, "decode", "array");
  });
  return frame;
}

/** Rejects what msgpack decoding turned into something §3.3 has no room for. */
function checkDecodedTypes(/** @type {unknown} */ v, depth = 0) {
  if (depth > MAX_DEPTH + 8) throw new PlaitError(ErrorCode.TOO_DEEP, "nested too deep");
  if (v === undefined) throw malformed("undefined");
  if (v instanceof Date || (typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) && !isPlainObject(v)))
    throw invalid("extension types are not allowed");
  if (typeof v === "bigint") throw invalid("integer out of range");
  if (Array.isArray(v)) for (const x of v) checkDecodedTypes(x, depth + 1);
  else if (isPlainObject(v)) for (const x of Object.values(/** @type {object} */ (v))) checkDecodedTypes(x, depth + 1);
}

const decoderOptions = { maxDepth: MAX_DEPTH + 8, mapKeyConverter: (/** @type {unknown} */ k) => {
  if (typeof k !== "string") throw invalid("map keys must be strings");
  return k;
} };

/**
 * Encodes one frame or a batch as one msgpack message (§3.2).
 * @param {object | object[]} frames
 * @returns {Uint8Array}
 */
export function encode(frames) {
  const list = Array.isArray(frames) ? frames : [frames];
  if (list.length === 0) throw malformed("a message holds at least one frame");
  const parts = list.map((f) => mpEncode(toArray(f), { ignoreUndefined: false }));
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

/**
 * Decodes one msgpack message into its frames (§3.4).
 * @param {Uint8Array | ArrayBuffer} data
 * @param {{ maxMessageBytes?: number, maxFrames?: number }} [limits]
 * @returns {object[]}
 */
export function decode(data, limits = {}) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  if (limits.maxMessageBytes && bytes.length > limits.maxMessageBytes)
    throw new PlaitError(ErrorCode.FRAME_TOO_LARGE, `message of ${bytes.length} bytes over ${limits.maxMessageBytes}`);
  if (bytes.length === 0) throw malformed("empty message");
  /** @type {unknown[]} */
  const arrays = [];
  try {
    for (const item of mpDecodeMulti(bytes, decoderOptions)) {
      arrays.push(item);
      if (limits.maxFrames && arrays.length > limits.maxFrames)
        throw new PlaitError(ErrorCode.FRAME_TOO_LARGE, `more than ${limits.maxFrames} frames`);
    }
  } catch (err) {
    if (err instanceof PlaitError) throw err;
    const msg = err instanceof Error ? err.message : String(err);
    if (/depth/i.test(msg)) throw new PlaitError(ErrorCode.TOO_DEEP, msg);
    throw malformed(`not msgpack: ${msg}`);
  }
  return arrays.map((a) => {
    checkDecodedTypes(a);
    return fromArray(a);
  });
}

// ---------------------------------------------------------------------------- JSON (§3.5)

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_INDEX = new Map([...B64].map((c, i) => [c, i]));

/** RFC 4648 base64, with padding. @param {Uint8Array} bytes */
export function toBase64(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63];
    out += i + 1 < bytes.length ? B64[(n >> 6) & 63] : "=";
    out += i + 2 < bytes.length ? B64[n & 63] : "=";
  }
  return out;
}

/** @param {string} text */
export function fromBase64(text) {
  if (typeof text !== "string" || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text))
    throw invalid("bad base64");
  const pad = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let at = 0;
  for (let i = 0; i < text.length; i += 4) {
    const n = [0, 1, 2, 3].reduce((acc, j) => (acc << 6) | (B64_INDEX.get(text[i + j]) ?? 0), 0);
    for (const byte of [(n >> 16) & 255, (n >> 8) & 255, n & 255]) if (at < out.length) out[at++] = byte;
  }
  return out;
}

/** A value in its JSON form: binary as {"$b"}, a map with a "$" key as {"$map"}.
 *  @returns {any} */
function valueToJson(/** @type {any} */ v) {
  if (v instanceof Uint8Array) return { $b: toBase64(v) };
  if (Array.isArray(v)) return v.map(valueToJson);
  if (v !== null && typeof v === "object") {
    const entries = Object.entries(v);
    if (entries.some(([k]) => k.startsWith("$"))) return { $map: entries.map(([k, x]) => [k, valueToJson(x)]) };
    return Object.fromEntries(entries.map(([k, x]) => [k, valueToJson(x)]));
  }
  return v;
}

/** @returns {any} */
function valueFromJson(/** @type {any} */ v, depth = 0) {
  if (depth > MAX_DEPTH + 8) throw new PlaitError(ErrorCode.TOO_DEEP, "nested too deep");
  if (Array.isArray(v)) return v.map((/** @type {any} */ x) => /** @type {any} */ (valueFromJson(x, depth + 1)));
  if (v !== null && typeof v === "object") {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === "$b") return fromBase64(v.$b);
    if (keys.length === 1 && keys[0] === "$map") {
      if (!Array.isArray(v.$map)) throw invalid("$map must be an array of pairs");
      /** @type {Record<string, unknown>} */
      const out = {};
      for (const pair of v.$map) {
        if (!Array.isArray(pair) || pair.length !== 2 || typeof pair[0] !== "string") throw invalid("$map must be an array of [key, value] pairs");
        out[pair[0]] = valueFromJson(pair[1], depth + 1);
      }
      return out;
    }
    /** @type {Record<string, unknown>} */
    const out = {};
    for (const k of keys) out[k] = valueFromJson(v[k], depth + 1);
    return out;
  }
  return v;
}

/** The JSON object of one frame (object form in, JSON-ready object out). */
export function frameToJson(/** @type {any} */ frame) {
  toArray(frame); // checks every field
  const def = byName.get(frame.kind);
  /** @type {Record<string, unknown>} */
  const out = { kind: frame.kind };
  for (const f of def.fields) out[f.name] = valueToJson(frame[f.name] ?? null);
  return out;
}

/** A frame from its JSON object (already parsed). */
export function frameFromJson(/** @type {any} */ obj) {
  if (!isPlainObject(obj) || typeof obj.kind !== "string") throw malformed("a frame must be an object with a kind");
  const def = byName.get(obj.kind);
  if (!def) throw new PlaitError(ErrorCode.UNKNOWN_KIND, `unknown frame kind ${JSON.stringify(obj.kind)}`);
  /** @type {Record<string, unknown>} */
  const frame = { kind: obj.kind };
  for (const f of def.fields) {
    if (!(f.name in obj)) throw malformed(`${obj.kind} lacks ${f.name}`);
    frame[f.name] = convertField(valueFromJson(obj[f.name]), f.type, f.optional, `${obj.kind}.${f.name}`, "decode", "object");
  }
  return frame;
}

/** @param {object | object[]} frames @returns {string} */
export function encodeJson(frames) {
  return JSON.stringify(Array.isArray(frames) ? frames.map(frameToJson) : frameToJson(frames));
}

/** @param {string} text @returns {object[]} */
export function decodeJson(text) {
  let parsed;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw malformed(`not JSON: ${err instanceof Error ? err.message : err}`);
  }
  try {
    const list = Array.isArray(parsed) ? parsed : [parsed];
    if (list.length === 0) throw malformed("a message holds at least one frame");
    return list.map(frameFromJson);
  } catch (err) {
    if (err instanceof PlaitError) throw err;
    throw malformed(String(err)); // e.g. a stack overflow on absurd nesting
  }
}

/** The msgpack size of a frame, to refuse locally what could never fit (§7.1). */
export const encodedSize = (/** @type {object} */ frame) => encode(frame).length;

/** The reference server's bound on the values of one message it reads (spec §3.4): every array
 * element and map entry, an empty array or map one. Servers do not announce it, and going
 * over closes the connection (FRAME_TOO_LARGE). */
export const MAX_VALUES_PER_MESSAGE = 65536;

/** The values a frame's fields hold as spec §3.4 counts them (binary is one value). */
export function valueCount(/** @type {unknown} */ value) {
  let count = 0;
  const stack = [value];
  while (stack.length) {
    const v = stack.pop();
    if (Array.isArray(v)) {
      count += v.length || 1;
      for (const x of v) stack.push(x);
    } else if (v !== null && typeof v === "object" && !ArrayBuffer.isView(v) && !(v instanceof ArrayBuffer)) {
      const entries = Object.values(v);
      count += entries.length || 1;
      for (const x of entries) stack.push(x);
    }
  }
  return count;
}

/** Access numbers (§4.2) by name and back. */
export const ACCESS = Object.freeze({ 1: "read", 2: "write", 3: "comment" });
