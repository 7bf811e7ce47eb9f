// Transports: how frames reach the server. One interface, three implementations:
// a WebSocket with binary msgpack messages (spec §2), an SSE stream read with fetch and
// frames POSTed as JSON (§14.2, §14.3), and long-polling with frames POSTed (§14.4).
//
// interface Transport {
//   name: "websocket" | "sse" | "poll";
//   open(hello): Promise<welcome frame>   // rejects with PlaitError (isClose for close codes)
//   encodeFrame(frame): { piece, size }  // the frame encoded once, when it is queued, and its
//                                        // size in bytes; throws a PlaitError if it cannot be
//   send(frames, pieces): void           // one message (batch) of frames already encoded
//                                        // (their pieces, in order); after open resolved
//   close(code?): void                   // ends the session; onClose is not called after it
//   onFrames(frames), onClose({ error })  // set by the client before open()
//   activity: number                     // performance.now() of the last thing received
//   pings: boolean                       // whether §5.7 heartbeats apply (the client sends pings)
//   silenceLimitMs(heartbeatMs): number  // how long nothing may arrive before it is dead
// }
import { encode, decode, encodeJson, decodeJson, frameFromJson } from "./protocol.js";
import { PlaitError, closeError } from "./errors.js";
import { ErrorCode, CloseCode } from "./codes.js";

const now = () => performance.now();
/** A body the server refuses 429 (not read yet: §14.3) is sent again at most this many times. */
const MAX_POST_REFUSALS = 60;

/** The server's base URL in both schemes, path prefix kept, without a trailing slash. */
export function baseUrls(/** @type {string} */ url) {
  const u = new URL(url);
  const path = u.pathname.replace(/\/+$/, "");
  const secure = u.protocol === "https:" || u.protocol === "wss:";
  const host = u.host;
  return {
    ws: `${secure ? "wss" : "ws"}://${host}${path}/`,
    http: `${secure ? "https" : "http"}://${host}${path}`,
  };
}

/** An error of a refused HTTP request: the body's code (§14) or one from the status. */
async function httpError(/** @type {Response} */ res, /** @type {string} */ what) {
  let body = null;
  try { body = await res.json(); } catch { /* not JSON */ }
  const text = body && typeof body.error === "string" ? body.error : `${what}: HTTP ${res.status}`;
  let code = body && typeof body.code === "number" ? body.code : null;
  if (code === null) {
    if (res.status === 401) code = ErrorCode.UNAUTHENTICATED;
    else if (res.status === 403) code = ErrorCode.FORBIDDEN;
    else if (res.status === 404 || res.status === 410) code = CloseCode.NORMAL;
    else if (res.status === 413) code = ErrorCode.FRAME_TOO_LARGE;
    else if (res.status === 502 || res.status === 503 || res.status === 504) {
      // A proxy or load balancer in front of a server that is down or restarting: retried.
      const err = closeError(CloseCode.ABNORMAL, text);
      /** @type {any} */ (err).status = res.status;
      return err;
    } else code = res.status >= 500 ? ErrorCode.SHUTTING_DOWN : ErrorCode.INTERNAL;
  }
  // Refusals the handshake closes with (§14.1) act as their close codes (§9).
  const asClose = { [ErrorCode.UNAUTHENTICATED]: CloseCode.UNAUTHENTICATED, [ErrorCode.UNSUPPORTED_VERSION]: CloseCode.UNSUPPORTED_VERSION,
    [ErrorCode.TOO_MANY_CONNECTIONS]: CloseCode.TOO_MANY_CONNECTIONS }[code];
  const err = asClose ? closeError(asClose, text) : new PlaitError(code, text, { isClose: code >= 4000 && code < 5000 && res.status === 410 });
  /** @type {any} */ (err).status = res.status;
  return err;
}

/** The UTF-8 length of a string, without encoding it. */
function utf8Length(/** @type {string} */ text) {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) { n += 4; i += 1; } // a pair (lone ones never get here)
    else n += 3;
  }
  return n;
}

class Base {
  constructor() {
    // Until the client attaches, what arrives right after the welcome waits here.
    /** @type {any[]} */ this._early = [];
    /** @type {{ error: PlaitError } | null} */ this._earlyClose = null;
    /** @type {(frames: any[]) => void} */ this.onFrames = (frames) => { this._early.push(...frames); };
    /** @type {(info: { error: PlaitError }) => void} */ this.onClose = (info) => { this._earlyClose = info; };
    this.activity = now();
    this.closed = false;
  }

  /** §5.7: a connection on which nothing arrived for 2H is dead, even if TCP has not noticed.
   *  An SSE stream carries a comment every H when nothing else goes (§14.2). */
  silenceLimitMs(/** @type {number} */ heartbeatMs) { return 2 * heartbeatMs; }

  /** Takes over delivery: frames that came early first, then a close that came early. */
  attach(/** @type {(frames: any[]) => void} */ onFrames, /** @type {(info: { error: PlaitError }) => void} */ onClose) {
    this.onFrames = onFrames;
    this.onClose = onClose;
    const early = this._early.splice(0);
    if (early.length) onFrames(early);
    if (this._earlyClose) onClose(this._earlyClose);
  }

  /** Ends the transport from inside (once), telling the client. */
  _fail(/** @type {PlaitError} */ error) {
    if (this.closed) return;
    this.closed = true;
    this._teardown();
    this.onClose({ error });
  }

  _teardown() {}
}

export class WebSocketTransport extends Base {
  /** @param {{ url: string, WebSocket: any }} options */
  constructor(options) {
    super();
    this.name = "websocket";
    this.pings = true;
    this.url = baseUrls(options.url).ws;
    this.WebSocket = options.WebSocket;
    /** @type {any} */ this.ws = null;
    this.limits = {};
  }

  /** @param {object} hello */
  open(hello) {
    return new Promise((resolve, reject) => {
      if (!this.WebSocket) return reject(new PlaitError(0, "no WebSocket implementation (pass options.WebSocket)"));
      let ws;
      try {
        ws = new this.WebSocket(this.url);
      } catch (err) {
        return reject(new PlaitError(0, `WebSocket: ${err instanceof Error ? err.message : err}`));
      }
      this.ws = ws;
      ws.binaryType = "arraybuffer";
      let welcomed = false;
      /** @type {PlaitError | null} */
      let handshakeError = null;
      ws.onopen = () => ws.send(encode(hello));
      ws.onmessage = (/** @type {any} */ ev) => {
        this.activity = now();
        let frames;
        try {
          frames = typeof ev.data === "string" ? decodeJson(ev.data) : decode(new Uint8Array(ev.data), this.limits);
        } catch (err) {
          const e = err instanceof PlaitError ? err : new PlaitError(ErrorCode.MALFORMED_FRAME, String(err));
          if (!welcomed) { handshakeError = e; }
          else this._fail(e);
          try { ws.close(CloseCode.PROTOCOL_ERROR, "bad frame from the server"); } catch { /* closing */ }
          return;
        }
        if (!welcomed) {
          const first = /** @type {any} */ (frames[0]);
          if (first.kind === "welcome") {
            welcomed = true;
            this.limits = { maxMessageBytes: first.limits.max_message_bytes || undefined, maxFrames: first.limits.max_frames_per_message || undefined };
            resolve(first);
            if (frames.length > 1) this.onFrames(frames.slice(1));
          } else if (first.kind === "error") {
            handshakeError = new PlaitError(first.code, first.message);
          }
          return;
        }
        this.onFrames(frames);
      };
      /** @type {string | null} */
      let refused = null;
      ws.onerror = (/** @type {any} */ ev) => {
        // onclose follows. In Node, ws says the status of a refused upgrade ("Unexpected
        // server response: 502"); a browser never tells it.
        const text = String(ev?.message ?? ev?.error?.message ?? "");
        const m = /Unexpected server response: (\d+)/.exec(text);
        if (m && !welcomed) refused = `the WebSocket upgrade was refused: HTTP ${m[1]}`;
        else if (/ECONNREFUSED|ENOTFOUND|ECONNRESET|ETIMEDOUT/.test(text) && !welcomed) refused = `the connection failed: ${text}`;
      };
      ws.onclose = (/** @type {any} */ ev) => {
        const code = ev.code ?? CloseCode.ABNORMAL;
        const reason = ev.reason || handshakeError?.reason || "connection closed";
        const error = code === 1005 || code === 1006
          ? (handshakeError ?? closeError(CloseCode.ABNORMAL, refused ?? "the connection dropped"))
          : closeError(code, reason);
        if (!welcomed) {
          this.closed = true;
          reject(error);
        } else {
          this._fail(error);
        }
      };
    });
  }

  encodeFrame(/** @type {object} */ frame) {
    const piece = encode(frame);
    return { piece, size: piece.length };
  }

  /** A batch is its frames back to back (§3.2): the pieces, joined. */
  send(/** @type {object[]} */ _frames, /** @type {Uint8Array[]} */ pieces) {
    if (this.closed || !this.ws || this.ws.readyState !== 1) return;
    if (pieces.length === 1) return this.ws.send(pieces[0]);
    const message = new Uint8Array(pieces.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of pieces) { message.set(p, at); at += p.length; }
    this.ws.send(message);
  }

  close(code = CloseCode.NORMAL) {
    this.closed = true;
    this._teardown(code);
  }

  _teardown(code = CloseCode.NORMAL) {
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = null;
    ws.onclose = null;
    try { ws.close(code); } catch { try { ws.close(); } catch { /* gone */ } }
  }
}

/** What the HTTP transports share: opening a session (§14.1), POSTing frames (§14.3) in
 *  order, one request at a time, and DELETE at the end. */
class HttpSession extends Base {
  /** @param {{ url: string, fetch: typeof fetch }} options */
  constructor(options) {
    super();
    this.pings = false;
    this.base = baseUrls(options.url).http;
    this.fetch = options.fetch;
    this.session = "";
    this.key = "";
    this.position = 0;
    /** Bodies waiting to be POSTed, each one message (§14.3): a JSON array. @type {string[]} */ this.outbox = [];
    this.posting = false;
    /** @type {Promise<void> | null} */ this._posted = null;
    this.abort = new AbortController();
    /** @type {AbortController | null} */ this._streamAbort = null;
  }

  _url(/** @type {string} */ tail, /** @type {Record<string, string|number>} */ query = {}) {
    const q = new URLSearchParams({ key: this.key, ...Object.fromEntries(Object.entries(query).map(([k, v]) => [k, String(v)])) });
    return `${this.base}/v1/sessions/${encodeURIComponent(this.session)}${tail}?${q}`;
  }

  async _openSession(/** @type {object} */ hello) {
    if (!this.fetch) throw new PlaitError(0, "no fetch implementation");
    let res;
    try {
      res = await this.fetch(`${this.base}/v1/sessions`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: encodeJson(hello), signal: this.abort.signal,
      });
    } catch (err) {
      throw closeError(CloseCode.ABNORMAL, `POST /v1/sessions: ${err instanceof Error ? err.message : err}`);
    }
    if (res.status !== 201) throw await httpError(res, "POST /v1/sessions");
    const body = await res.json();
    this.session = body.session;
    this.key = body.key;
    this.position = body.position;
    const welcome = frameFromJson(body.welcome);
    this.activity = now();
    return welcome;
  }

  encodeFrame(/** @type {object} */ frame) {
    const piece = encodeJson(frame);
    return { piece, size: utf8Length(piece) };
  }

  /** A batch is a JSON array of its frames (§3.5): the pieces, joined; POSTed as it is. */
  send(/** @type {object[]} */ _frames, /** @type {string[]} */ pieces) {
    if (this.closed) return;
    this.outbox.push(`[${pieces.join(",")}]`);
    if (!this.posting) this._posted = this._post();
  }

  async _post() {
    this.posting = true;
    try {
      while (this.outbox.length && !this.closed) {
        // A POST cut off may or may not have been read: sending it again is safe, since every
        // frame the SDK sends is idempotent (updates are CRDT merges, publishes carry keys,
        // a request answered twice is settled by the first answer) and answers come on the
        // stream or poll.
        const body = /** @type {string} */ (this.outbox.shift());
        let res;
        let refused = 0;
        for (let attempt = 1; ; attempt++) {
          try {
            // Not aborted by close(): a last edit or leave must reach the server (§7.1).
            res = await this.fetch(this._url("/frames"), { method: "POST", headers: { "Content-Type": "application/json" }, body });
            // 429: the session has not read what came before yet (a join waits, §14.3); the
            // body was not read: it goes again after Retry-After, in its turn.
            if (res.status === 429 && !this.closed && ++refused <= MAX_POST_REFUSALS) {
              try { await res.arrayBuffer(); } catch { /* aborted */ }
              const seconds = Number(res.headers.get("retry-after")) || 1;
              await new Promise((r) => setTimeout(r, Math.min(Math.max(seconds, 0.1), 10) * 1000));
              attempt = 0;
              continue;
            }
            break;
          } catch (err) {
            if (this.closed) return;
            if (attempt >= 4) {
              this._fail(closeError(CloseCode.ABNORMAL, `POST frames: ${err instanceof Error ? err.message : err}`));
              return;
            }
            await new Promise((r) => setTimeout(r, 150 * attempt));
          }
        }
        // The answers also come on the stream or poll, in order with everything else: take them there.
        if (res.status !== 200) {
          const e = await httpError(res, "POST frames");
          if (res.status === 400 || res.status === 413) this._fail(new PlaitError(e.code, e.reason));
          else if (res.status !== 410) this._fail(closeError(CloseCode.ABNORMAL, e.reason));
          // 410: the session is ending; the stream or poll says how.
        } else {
          try { await res.arrayBuffer(); } catch { /* aborted */ }
        }
      }
    } finally {
      this.posting = false;
    }
  }

  /** Frames numbered by position: takes those past what it has, in order. */
  _deliver(/** @type {object[]} */ frames) {
    const fresh = frames.filter((f) => /** @type {any} */ (f).kind !== "welcome");
    if (fresh.length) this.onFrames(fresh);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    const url = this._url("");
    const outbox = this.outbox.splice(0);
    this._teardown();
    if (!this.session) return;
    const f = this.fetch;
    const posted = this._posted;
    // Send what is queued, after the POST in flight, then end the session (close 1000).
    void (async () => {
      try { await posted; } catch { /* reported already */ }
      try {
        for (const body of outbox) await f(url.replace("?", "/frames?"), { method: "POST", headers: { "Content-Type": "application/json" }, body });
      } catch { /* best effort */ }
      try { await f(url, { method: "DELETE" }); } catch { /* gone already */ }
    })();
  }

  _teardown() {
    this.abort.abort();
  }
}

export class SseTransport extends HttpSession {
  /** @param {{ url: string, fetch: typeof fetch }} options */
  constructor(options) {
    super(options);
    this.name = "sse";
    this.lastEventId = "";
    this.maxResumes = 5;
  }

  /** Opens the session and its event stream: a transport whose stream cannot open (a proxy
   *  that passes POSTs but not streams) fails here, so the client falls back to polling. */
  async open(/** @type {object} */ hello) {
    const welcome = await this._openSession(hello);
    this.lastEventId = `${this.session}.${this.key}.${this.position}`;
    let first;
    try {
      first = await this._connectStream();
    } catch (err) {
      this.close();  // ends the session on the server too
      throw err instanceof PlaitError ? err : closeError(CloseCode.ABNORMAL, `GET events: ${err instanceof Error ? err.message : err}`);
    }
    void this._streamLoop(first);
    return welcome;
  }

  /** One GET of the event stream, resuming after the last position (Last-Event-ID, §14.2);
   *  rejects when it cannot open. */
  async _connectStream() {
    this._streamAbort = new AbortController();
    const stop = () => this._streamAbort?.abort();
    this.abort.signal.addEventListener("abort", stop, { once: true });
    const res = await this.fetch(this._url("/events"), {
      headers: { Accept: "text/event-stream", "Last-Event-ID": this.lastEventId }, signal: this._streamAbort.signal,
    });
    if (res.status !== 200) {
      const e = await httpError(res, "GET events");
      throw res.status === 404 ? closeError(CloseCode.ABNORMAL, "the session ended") : e;
    }
    this.activity = now();
    return res;
  }

  async _streamLoop(/** @type {Response} */ first) {
    let failures = 0;
    /** @type {Response | null} */
    let res = first;
    while (!this.closed && failures < this.maxResumes) {
      if (res === null) {
        try {
          res = await this._connectStream();
        } catch (err) {
          if (this.closed) return;
          if (err instanceof PlaitError && /** @type {any} */ (err).status) return this._fail(err);
          failures += 1;
          await new Promise((r) => setTimeout(r, 200 * failures));
          continue;
        }
      }
      const ended = await this._read(/** @type {ReadableStream<Uint8Array>} */ (res.body));
      if (ended) return;
      // The stream broke (or went silent, `restartStream`): resume after the last position.
      res = null;
      failures += 1;
    }
    this._fail(closeError(CloseCode.ABNORMAL, "the event stream broke"));
  }

  /** A stream on which nothing arrived for 2H is dead even if TCP has not noticed (§5.7):
   *  the client calls this, and the stream is opened again where it stopped. */
  silenceLimitMs(/** @type {number} */ heartbeatMs) { return 2 * heartbeatMs; }

  /** Reads one stream; true when the session ended (or this transport closed). */
  async _read(/** @type {ReadableStream<Uint8Array>} */ body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    /** @type {{ id: string | null, event: string, data: string[] }} */
    let ev = { id: null, event: "message", data: [] };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return this.closed;
        this.activity = now();
        buffer += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
          if (line === "") {
            if (ev.data.length && this._dispatch(ev)) return true;
            ev = { id: null, event: "message", data: [] };
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") ev.data.push(val);
          else if (field === "event") ev.event = val;
          else if (field === "id") ev.id = val;
        }
      }
    } catch {
      return this.closed;
    } finally {
      try { reader.releaseLock(); } catch { /* fine */ }
    }
  }

  /** One event; true when it ended the session. */
  _dispatch(/** @type {{ id: string | null, event: string, data: string[] }} */ ev) {
    const data = ev.data.join("\n");
    if (ev.id === null) {
      let body;
      try { body = JSON.parse(data); } catch { return false; }
      if (ev.event === "close") {
        const code = typeof body.code === "number" ? body.code : CloseCode.ABNORMAL;
        this._fail(closeError(code, body.reason || (body.code === null ? "another consumer took the session over" : "closed")));
        return true;
      }
      if (ev.event === "resumed" && body.complete === false) {
        // Frames were lost: re-sync as after a reconnect (§14.2) with a new session.
        this._fail(closeError(CloseCode.ABNORMAL, "the session's stream could not resume completely"));
        return true;
      }
      return false;
    }
    const position = Number(ev.id.split(".").pop());
    if (Number.isFinite(position) && position <= this.position) return false;
    let frames;
    try {
      frames = decodeJson(data);
    } catch (err) {
      this._fail(err instanceof PlaitError ? err : new PlaitError(ErrorCode.MALFORMED_FRAME, String(err)));
      return true;
    }
    if (Number.isFinite(position)) this.position = position;
    this.lastEventId = ev.id;
    this._deliver(frames);
    return this.closed;
  }
}

export class PollTransport extends HttpSession {
  /** @param {{ url: string, fetch: typeof fetch, pollTimeoutS?: number }} options */
  constructor(options) {
    super(options);
    this.name = "poll";
    this.timeoutS = options.pollTimeoutS ?? 25;
  }

  /** A poll answers within its timeout (§14.4): one that has not, plus H, is lost. */
  silenceLimitMs(/** @type {number} */ heartbeatMs) { return this.timeoutS * 1000 + heartbeatMs; }

  async open(/** @type {object} */ hello) {
    const welcome = await this._openSession(hello);
    void this._pollLoop();
    return welcome;
  }

  async _pollLoop() {
    let failures = 0;
    while (!this.closed) {
      let res;
      try {
        res = await this.fetch(this._url("/poll", { after: this.position, timeout: this.timeoutS }), { signal: this.abort.signal });
      } catch {
        if (this.closed) return;
        failures += 1;
        if (failures >= 3) return this._fail(closeError(CloseCode.ABNORMAL, "polling failed"));
        await new Promise((r) => setTimeout(r, 200 * failures));
        continue;
      }
      if (res.status !== 200) {
        const e = await httpError(res, "GET poll");
        return this._fail(res.status === 404 ? closeError(CloseCode.ABNORMAL, "the session ended") : e);
      }
      let body;
      try { body = await res.json(); } catch {
        if (this.closed) return;
        failures += 1;
        continue;
      }
      failures = 0;
      this.activity = now();
      if (body.complete === false) return this._fail(closeError(CloseCode.ABNORMAL, "the poll could not resume completely"));
      let frames;
      try {
        frames = (body.frames || []).map(frameFromJson);
      } catch (err) {
        return this._fail(err instanceof PlaitError ? err : new PlaitError(ErrorCode.MALFORMED_FRAME, String(err)));
      }
      this.position = body.position;
      this._deliver(frames);
      if (this.closed) return;
      if (body.closed) {
        return this._fail(closeError(typeof body.closed.code === "number" ? body.closed.code : CloseCode.ABNORMAL, body.closed.reason || "closed"));
      }
    }
  }
}

/** @param {"websocket"|"sse"|"poll"} name @param {any} options */
export function makeTransport(name, options) {
  if (name === "websocket") return new WebSocketTransport(options);
  if (name === "sse") return new SseTransport(options);
  if (name === "poll") return new PollTransport(options);
  throw new PlaitError(ErrorCode.INVALID_FIELD, `unknown transport ${JSON.stringify(name)}`);
}
