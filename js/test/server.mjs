// Starts `plait serve` for a test file and stops it by pid.
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";
import fs from "node:fs";
import os from "node:os";
import crypto from "node:crypto";
import WebSocket from "ws";
import { PlaitClient } from "../src/index.js";

const JS_DIR = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const PYTHON = process.env.PLAIT_PYTHON || path.join(JS_DIR, "..", ".venv", "bin", "python");

/** A temporary folder, removed at exit. */
export function tempDir() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "plait-js-"));
  process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Starts a server; resolves once it prints its address.
 * @param {string[]} args extra `plait serve` arguments
 * @param {{ port?: number, store?: string, env?: Record<string, string>, script?: string }} [opts]
 *   `script`: a Python file to run instead of `plait serve` (it prints the same serving line)
 */
export async function startServer(args = [], opts = {}) {
  const argv = opts.script
    ? [opts.script, ...args]
    : ["-m", "plait.engine._cli", "serve", "--port", String(opts.port ?? 0), "--store", opts.store ?? "memory", "--log-level", "WARNING", ...args];
  const child = spawn(PYTHON, argv, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...(opts.env ?? {}) } });
  let output = "";
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`plait serve did not start in 20 s:\n${output}`)), 20000);
    const onData = (/** @type {Buffer} */ chunk) => {
      output += chunk.toString();
      const m = output.match(/serving on ws:\/\/127\.0\.0\.1:(\d+)\//);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`plait serve exited ${code}:\n${output}`)); });
  });
  child.removeAllListeners("exit");
  const exited = new Promise((resolve) => child.on("exit", resolve));
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    output: () => output,
    /** Stops it (SIGTERM, or SIGKILL for a crash) and waits for the process to end. */
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) process.kill(/** @type {number} */ (child.pid), signal);
      let timer;
      await Promise.race([exited, new Promise((r) => { timer = setTimeout(r, 10000); })]);
      clearTimeout(timer);
    },
  };
}

/** A client on `url` with `ws` as its WebSocket and quick backoff, closed by `t.after`. */
export function connect(/** @type {any} */ t, /** @type {string} */ url, /** @type {any} */ options = {}) {
  const client = new PlaitClient({ url, WebSocket, backoff: { baseMs: 50, capMs: 500 }, ...options });
  t.after(() => client.close());
  return client;
}

/** Resolves when `predicate()` holds, polling every 10 ms; fails after `ms`. */
export async function until(/** @type {() => unknown} */ predicate, ms = 5000, what = "a condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The next value a room or client listener gets (bounded). */
export function next(/** @type {any} */ target, /** @type {string} */ type, /** @type {(v: any) => boolean} */ filter = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${type} within ${ms} ms`)); }, ms);
    const off = target.on(type, (/** @type {any} */ v) => { if (filter(v)) { clearTimeout(timer); off(); resolve(v); } });
  });
}

/** An HS256 JWT for `plait serve --jwt-secret`. */
export function jwt(/** @type {string} */ secret, /** @type {Record<string, unknown>} */ claims) {
  const b64 = (/** @type {unknown} */ o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ exp: Math.floor(Date.now() / 1000) + 600, ...claims })}`;
  return `${body}.${crypto.createHmac("sha256", secret).update(body).digest("base64url")}`;
}

export const SECRET = "a-test-secret-of-at-least-32-bytes-long!!";
