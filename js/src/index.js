// Plait's JavaScript client SDK (the API is js/src/index.d.ts).
export { PlaitClient } from "./client.js";
export { Room } from "./room.js";
export { PlaitError, ErrorCode, CloseCode } from "./errors.js";
