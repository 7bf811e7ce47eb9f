// What a TypeScript user writes against @plait/client: compiled with --strict by
// tests/e2e/test_js_sdk.py, so the declarations (src/index.d.ts) stay usable and truthful.
import * as Y from "yjs";
import { PlaitClient, PlaitError, ErrorCode, CloseCode, Room } from "@plait/client";
import type { ConnectionState, StateChange, TransportName, PresenceChange, RoomEvent, Resumed, User, Limits } from "@plait/client";

export async function main(url: string): Promise<number> {
  const client = new PlaitClient({ url, token: async () => "token", transports: ["websocket", "sse", "poll"], backoff: { baseMs: 100 } });
  const off = client.on("state", (change: StateChange) => {
    const state: ConnectionState = change.state;
    const transport: TransportName | null = change.transport;
    if (change.error) console.log(state, transport, change.error.code, change.error.codeName, change.delayMs);
  });
  off();
  const doc = new Y.Doc();
  const room: Room = await client.join("notes", { doc, since: 0 });
  room.doc.getText("body").insert(0, "hi");
  await room.flushed();
  room.setPresence({ name: "Ada" });
  room.patchPresence({ color: "red" });
  const users: User[] = room.users();
  room.on("presence", (change: PresenceChange) => console.log(change.joined.length, change.left, users.length));
  room.on("event", (event: RoomEvent) => console.log(event.seq, event.name, event.payload));
  room.on("resumed", (resumed: Resumed) => console.log(resumed.complete));
  room.on("closed", (error: PlaitError) => console.log(error.code === ErrorCode.ROOM_DELETED));
  room.on("refused", (error: PlaitError) => console.log(error.code === ErrorCode.FORBIDDEN));
  const cursor = room.textCursor(room.doc.getText("body"), 1, 2);
  const where = room.resolveTextCursor(room.doc.getText("body"), cursor);
  if (where) room.moveCursor(cursor);
  room.setTyping(true);
  let seq = 0;
  try {
    seq = await room.publish("chat", { text: "hi" }, { key: "k1" });
  } catch (err) {
    if (err instanceof PlaitError && err.code === ErrorCode.FORBIDDEN) seq = -1;
  }
  const limits: Limits | null = client.limits;
  if (limits) console.log(limits.max_message_bytes, limits.events_per_second);
  if (client.lastError) console.log(client.lastError.reason, client.lastError.codeName);
  console.log(CloseCode.NORMAL, room.access, room.lastSeq, room.epoch, client.state, client.session);
  await room.leave();
  await client.close();
  return seq;
}
