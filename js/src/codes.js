// Error codes (spec §8) and close codes (§9) by name, and whether a close is worth a retry.

/** @type {Readonly<Record<string, number>>} */
export const ErrorCode = Object.freeze({
  MALFORMED_FRAME: 1001,
  UNKNOWN_KIND: 1002,
  UNEXPECTED_FRAME: 1003,
  FRAME_TOO_LARGE: 1004,
  UNSUPPORTED_VERSION: 1005,
  INVALID_FIELD: 1006,
  TOO_DEEP: 1007,
  UNKNOWN_CHANNEL: 1008,
  INVALID_UPDATE: 1009,
  INVALID_ROOM_NAME: 2001,
  UNAUTHENTICATED: 2002,
  FORBIDDEN: 2003,
  TOO_MANY_ROOMS: 2004,
  RATE_LIMITED: 2005,
  ALREADY_JOINED: 2006,
  EVENT_REJECTED: 2007,
  DOCUMENT_TOO_LARGE: 2008,
  PRESENCE_TOO_LARGE: 2009,
  ROOM_DELETED: 2010,
  TOKEN_EXPIRED: 2011,
  TOO_MANY_CONNECTIONS: 2012,
  NOT_FOUND: 2013,
  SLOW_CONSUMER: 3001,
  STORAGE_UNAVAILABLE: 3002,
  SHUTTING_DOWN: 3003,
  INTERNAL: 3999,
});

/** @type {Readonly<Record<string, number>>} */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  ABNORMAL: 1006, // RFC 6455: the connection dropped without a close frame (never sent)
  MESSAGE_TOO_BIG: 1009,
  PROTOCOL_ERROR: 4001,
  UNSUPPORTED_VERSION: 4002,
  UNAUTHENTICATED: 4003,
  HANDSHAKE_TIMEOUT: 4004,
  HEARTBEAT_TIMEOUT: 4005,
  TOO_SLOW: 4006,
  RATE_LIMITED: 4007,
  GOING_AWAY: 4008,
  INTERNAL_ERROR: 4009,
  FORBIDDEN: 4010,
  DOCUMENT_TOO_LARGE: 4011,
  TOKEN_EXPIRED: 4012,
  DISCONNECTED: 4013,
  TOO_MANY_CONNECTIONS: 4014,
});

/** Close codes after which a client does not reconnect by itself (§9 "retry: no"). */
export const FINAL_CLOSES = new Set([1009, 4001, 4002, 4003, 4010, 4011, 4013]);

/** Error codes that end a connection (§6): 1001-1007. */
export const isFatal = (/** @type {number} */ code) => code >= 1001 && code <= 1007;

const errorNames = new Map(Object.entries(ErrorCode).map(([k, v]) => [v, k]));
const closeNames = new Map(Object.entries(CloseCode).map(([k, v]) => [v, k]));

/** @param {number} code @param {boolean} isClose */
export function codeName(code, isClose) {
  const name = isClose ? closeNames.get(code) : errorNames.get(code);
  if (name) return name;
  if (code >= 4000 && code <= 4999 && !isClose) return "APPLICATION";
  if (code === 0) return "CLIENT";
  return isClose ? "CLOSE" : "UNKNOWN";
}
