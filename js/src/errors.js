// PlaitError: every failure the SDK reports, an error code (spec §8), a close code (§9),
// an application code (4000-4999), or a local failure named like the code it stands for.
import { ErrorCode, CloseCode, codeName } from "./codes.js";

export class PlaitError extends Error {
  /**
   * @param {number} code an ErrorCode, a CloseCode, or 4000-4999 from the application
   * @param {string} message for people; act on `code`
   * @param {{ isClose?: boolean }} [options]
   */
  constructor(code, message, options = {}) {
    const isClose = Boolean(options.isClose);
    const name = codeName(code, isClose);
    super(`${name} (${code}): ${message}`);
    this.name = "PlaitError";
    /** @readonly */ this.code = code;
    /** @readonly */ this.codeName = name;
    /** @readonly */ this.isClose = isClose;
    /** The server's text, without the code. */
    this.reason = message;
  }
}

/** @param {number} code @param {string} message */
export const closeError = (code, message) => new PlaitError(code, message, { isClose: true });

export { ErrorCode, CloseCode };
