// Plait's demo page: one room (?room=NAME, default "demo") with a shared text document in
// CodeMirror, who is here, who is typing, a chat and a poll, over whichever transport the
// SDK could open. No framework: each part renders itself from the Room's state.
//
// Everything another client sends (names, chat text, votes) is untrusted: it is shown with
// textContent only, and checked for shape before use.
import * as Y from "yjs";
import { PlaitClient } from "@plait/client";
import { EditorView, minimalSetup } from "codemirror";
import { Compartment, EditorState } from "@codemirror/state";
import { keymap, lineNumbers } from "@codemirror/view";
import { yCollab, yUndoManagerKeymap } from "y-codemirror.next";
import { RoomAwareness } from "./awareness.js";

const NAME_KEY = "plait-demo-name";
const MAX_NAME = 40;
const MAX_CHAT = 500;
const TYPING_IDLE_MS = 2500;
const POLL = ["Pizza", "Sushi", "Salad", "Tacos"];
const COLORS = ["#30bced", "#6eeb83", "#ffbc42", "#ee6352", "#9ac2c9", "#8acb88", "#c792ea", "#f78c6c"];

const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

const roomName = new URLSearchParams(location.search).get("room") || "demo";
const serverUrl = new URL("..", location.href).href; // the page is at /demo/ on the server's port
const client = new PlaitClient({ url: serverUrl });

/** Shared with the tests (tests/browser/): the client, the room once joined, every event seen. */
const plait = { client, room: /** @type {any} */ (null), awareness: null, view: null, events: /** @type {any[]} */ ([]) };
// @ts-ignore
window.plait = plait;

// ---------------------------------------------------------------------------------- identity

function randomHex(bytes) {
  // crypto.randomUUID needs a secure context; a page on a LAN address over http is not one.
  const data = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(data, (b) => b.toString(16).padStart(2, "0")).join("");
}

function loadName() {
  let name = null;
  try {
    name = localStorage.getItem(NAME_KEY);
  } catch {
    // storage disabled: a new guest name per visit
  }
  return cleanName(name) || `Guest-${1000 + Math.floor(Math.random() * 9000)}`;
}

function cleanName(value) {
  return typeof value === "string" ? value.trim().slice(0, MAX_NAME) : "";
}

function colorOf(name) {
  let hash = 0;
  for (const ch of name) hash = (Math.imul(hash, 31) + ch.codePointAt(0)) >>> 0;
  return COLORS[hash % COLORS.length];
}

let myName = loadName();
function me() {
  const color = colorOf(myName);
  return { name: myName, color, colorLight: color + "33" };
}

// ---------------------------------------------------------------------------------- status

function describeError(error) {
  if (!error) return "";
  const message = error.message || String(error);
  return error.codeName && !message.startsWith(error.codeName) ? `${error.codeName}: ${message}` : message;
}

function renderStatus() {
  const state = $("status-state");
  state.textContent = client.state;
  state.dataset.state = client.state;
  const transport = $("status-transport");
  transport.textContent = client.transport ?? "–";
  transport.dataset.transport = client.transport ?? "";
  transport.title = "transport: websocket, sse (Server-Sent Events) or poll (long-polling)";
  const error = $("status-error");
  // The last error explains a connection that is not open; once it is, it is history.
  const text = client.state === "open" ? refusal : describeError(client.lastError);
  error.hidden = !text;
  error.textContent = text ? (client.state === "open" ? text : `last error: ${text}`) : "";
}
/** An edit the room refused for good (too large, not allowed): it stays in this tab only. */
let refusal = "";
client.on("state", renderStatus);
renderStatus();

// ---------------------------------------------------------------------------------- presence

/** A session's name: the page's `user.name`, a y-websocket client's awareness `name`, or the
 *  name the server's authentication gave (a JWT's `name`). */
function entryName(entry) {
  return cleanName(entry.state?.user?.name) || cleanName(entry.state?.name) || cleanName(entry.identity?.name);
}

function userName(user) {
  for (const entry of user.sessions) {
    const name = entryName(entry);
    if (name) return name;
  }
  return "Anonymous";
}

function userColor(user) {
  for (const entry of user.sessions) {
    const color = entry.state?.user?.color;
    if (typeof color === "string" && /^#[0-9a-f]{6}$/i.test(color)) return color;
  }
  return "#999999";
}

function renderPresence(room) {
  const list = $("presence");
  const own = client.session;
  const items = room.users().map((user) => {
    const li = document.createElement("li");
    li.className = "person";
    li.dataset.user = user.id;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = userColor(user);
    swatch.setAttribute("aria-hidden", "true");
    const name = document.createElement("span");
    name.className = "person-name";
    name.textContent = userName(user);
    li.append(swatch, name);
    if (user.sessions.some((entry) => entry.session === own)) {
      li.classList.add("me");
      name.textContent += " (you)";
    }
    if (user.sessions.length > 1) {
      const count = document.createElement("span");
      count.className = "tabs";
      count.dataset.count = String(user.sessions.length);
      count.textContent = `×${user.sessions.length}`;
      count.title = `${user.sessions.length} tabs or devices`;
      li.append(count);
    }
    return li;
  });
  list.replaceChildren(...items);
}

// ---------------------------------------------------------------------------------- typing

function renderTyping(room, sessions) {
  const names = new Map(); // by user: two tabs typing are one name
  const entries = new Map(room.presence().map((entry) => [entry.session, entry]));
  for (const session of sessions) {
    const entry = entries.get(session);
    if (!entry) continue;
    names.set(entry.identity.id, entryName(entry) || "Someone");
  }
  const list = [...names.values()];
  let text = "";
  if (list.length === 1) text = `${list[0]} is typing…`;
  else if (list.length === 2) text = `${list[0]} and ${list[1]} are typing…`;
  else if (list.length > 2) text = `${list.length} people are typing…`;
  $("typing").textContent = text;
}

let typingTimer = 0;
let typingOn = false;
function typed(room) {
  if (!typingOn) {
    typingOn = true;
    room.setTyping(true);
  }
  clearTimeout(typingTimer);
  typingTimer = window.setTimeout(() => {
    typingOn = false;
    room.setTyping(false);
  }, TYPING_IDLE_MS);
}

// ---------------------------------------------------------------------------------- chat

/** @typedef {{id: string, text: string, name: string, color: string, seq: number | null,
 *             status: "pending" | "sent" | "failed", error: string, mine: boolean}} Message */
/** @type {Map<string, Message>} by id, which is also the publish's idempotency key */
const messages = new Map();

function renderChat() {
  const log = $("chat-log");
  const ordered = [...messages.values()].sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity));
  const items = ordered.map((message) => {
    const li = document.createElement("li");
    li.className = `msg ${message.status}`;
    li.dataset.id = message.id;
    li.dataset.status = message.status;
    const who = document.createElement("span");
    who.className = "who";
    who.style.color = message.color;
    who.textContent = message.name;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    li.append(who, text);
    if (message.status === "pending") {
      const state = document.createElement("span");
      state.className = "state";
      state.textContent = "sending…";
      li.append(state);
    } else if (message.status === "failed") {
      const state = document.createElement("span");
      state.className = "state";
      state.textContent = `not sent (${message.error})`;
      const retry = document.createElement("button");
      retry.type = "button";
      retry.className = "retry";
      retry.textContent = "Retry";
      retry.addEventListener("click", () => publishChat(message));
      li.append(state, retry);
    }
    return li;
  });
  log.replaceChildren(...items);
  log.scrollTop = log.scrollHeight;
}

function publishChat(message) {
  message.status = "pending";
  message.error = "";
  renderChat();
  const payload = { id: message.id, text: message.text, name: message.name, color: message.color };
  // The same key on a retry: the server delivers one event however many times it is sent (§4.2).
  plait.room.publish("chat", payload, { key: message.id }).then(
    (seq) => {
      message.status = "sent";
      message.seq = message.seq ?? seq;
      renderChat();
    },
    (error) => {
      if (message.status === "sent") return; // its event came first
      message.status = "failed";
      message.error = describeError(error);
      renderChat();
    },
  );
}

function sendChat(text) {
  const { name, color } = me();
  /** @type {Message} */
  const message = { id: randomHex(16), text, name, color, seq: null, status: "pending", error: "", mine: true };
  messages.set(message.id, message);
  publishChat(message);
}

/** The name a chat message shows: the sender's current presence name where the sender is
 *  here (a payload names whoever its author typed), else the name the message carried. */
function senderName(event, payload) {
  const entry = event.session ? plait.room.presence().find((e) => e.session === event.session) : undefined;
  return (entry && entryName(entry)) || cleanName(payload.name) || "Anonymous";
}

function receiveChat(event) {
  const payload = event.payload;
  if (payload == null || typeof payload !== "object" || typeof payload.id !== "string" || typeof payload.text !== "string") return;
  const known = messages.get(payload.id);
  if (known) {
    known.status = "sent";
    known.seq = event.seq;
  } else {
    const color = typeof payload.color === "string" && /^#[0-9a-f]{6}$/i.test(payload.color) ? payload.color : "#666666";
    messages.set(payload.id.slice(0, 64), {
      id: payload.id.slice(0, 64),
      text: payload.text.slice(0, MAX_CHAT),
      name: senderName(event, payload),
      color,
      seq: event.seq,
      status: "sent",
      error: "",
      mine: false,
    });
  }
  renderChat();
}

// ---------------------------------------------------------------------------------- poll

/** This user's id, as the server stamped it on its presence (the same in every tab). */
function myUserId() {
  const own = plait.room?.presence().find((e) => e.session === client.session);
  return own ? own.identity.id : null;
}

/** user -> [seq, option]: a vote is an event, and each user's latest vote counts. */
const votes = new Map();
let myVote = null;
let pollHistoryIncomplete = false;

let votesEpoch = null;

function receiveVote(event) {
  // Another history (a server restarted on a memory store, a deleted room's): its seqs start
  // again, and what was counted from the old one is stale (spec/protocol.md §7).
  if (plait.room.epoch !== votesEpoch) {
    if (votesEpoch !== null) votes.clear();
    votesEpoch = plait.room.epoch;
  }
  if (event.user !== null && event.user === myUserId()) myVote = event.payload?.option ?? myVote;
  const option = event.payload?.option;
  if (!POLL.includes(option)) return;
  const voter = event.user ?? event.session ?? `event-${event.seq}`;
  const previous = votes.get(voter);
  if (previous && previous[0] >= event.seq) return;
  votes.set(voter, [event.seq, option]);
  renderPoll();
}

function renderPoll() {
  const counts = new Map(POLL.map((option) => [option, 0]));
  for (const [, option] of votes.values()) counts.set(option, (counts.get(option) ?? 0) + 1);
  for (const option of POLL) {
    const count = document.querySelector(`[data-count-for="${option}"]`);
    if (count) count.textContent = String(counts.get(option));
    const button = document.querySelector(`button[data-option="${option}"]`);
    if (button) button.setAttribute("aria-pressed", String(myVote === option));
  }
  const total = votes.size;
  $("poll-note").textContent = pollHistoryIncomplete
    ? `${total} vote${total === 1 ? "" : "s"} counted. The server's history no longer holds this room's oldest events: earlier votes are not counted.`
    : `${total} vote${total === 1 ? "" : "s"}; your latest vote counts.`;
}

function buildPoll(room) {
  const list = $("poll-options");
  list.replaceChildren(
    ...POLL.map((option) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.option = option;
      button.textContent = option;
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => {
        myVote = option;
        renderPoll();
        room.publish("vote", { option }, { key: randomHex(16) }).catch((error) => {
          $("poll-note").textContent = `Your vote was not counted: ${describeError(error)}`;
        });
      });
      const count = document.createElement("span");
      count.className = "count";
      count.dataset.countFor = option;
      count.textContent = "0";
      count.setAttribute("aria-label", `votes for ${option}`);
      li.append(button, count);
      return li;
    }),
  );
  renderPoll();
}

// ---------------------------------------------------------------------------------- wiring

function startEditor(room, awareness) {
  const ytext = room.doc.getText("text");
  const undoManager = new Y.UndoManager(ytext);
  // A member who may not write (read or comment access, §4.2) cannot type: its edits would be
  // refused by the server and stay in this tab only.
  const writable = new Compartment();
  const access = () => [EditorState.readOnly.of(room.access !== "write"), EditorView.editable.of(room.access === "write")];
  const view = new EditorView({
    parent: $("editor"),
    doc: ytext.toString(), // y-codemirror.next binds from here on: the editor starts with the text as it is
    extensions: [
      keymap.of(yUndoManagerKeymap),
      minimalSetup,
      lineNumbers(),
      EditorView.lineWrapping,
      EditorView.contentAttributes.of({ "aria-label": "Shared document" }),
      EditorView.updateListener.of((update) => {
        if (update.docChanged && update.transactions.some((tr) => tr.isUserEvent("input") || tr.isUserEvent("delete"))) typed(room);
      }),
      yCollab(ytext, awareness, { undoManager }),
      writable.of(access()),
    ],
  });
  room.on("access", () => view.dispatch({ effects: writable.reconfigure(access()) }));
  return view;
}

async function main() {
  $("room-name").textContent = roomName;
  document.title = `Plait demo: ${roomName}`;
  const nameInput = /** @type {HTMLInputElement} */ ($("name"));
  nameInput.value = myName;
  $("me-swatch").style.background = me().color;

  // Every event since the room began (since 0), so the poll's counts and the chat are whole.
  const room = await client.join(roomName, { since: 0 });
  plait.room = room;
  const awareness = new RoomAwareness(room, () => client.session);
  plait.awareness = awareness;
  awareness.setLocalStateField("user", me());

  nameInput.addEventListener("input", () => {
    const name = cleanName(nameInput.value);
    if (!name) return;
    myName = name;
    try {
      localStorage.setItem(NAME_KEY, name);
    } catch {
      // storage disabled: the name lasts this visit
    }
    $("me-swatch").style.background = me().color;
    awareness.setLocalStateField("user", me());
  });

  // Another tab of this browser renamed the user: one person, one name.
  window.addEventListener("storage", (e) => {
    if (e.key !== NAME_KEY) return;
    const name = cleanName(e.newValue);
    if (!name || name === myName) return;
    myName = name;
    nameInput.value = name;
    $("me-swatch").style.background = me().color;
    awareness.setLocalStateField("user", me());
  });

  // Leaving with work not yet on the server (offline, say) asks first: it would be lost.
  let unsaved = false;
  room.doc.on("update", (_update, origin) => {
    if (typeof origin === "symbol") return; // the SDK applies the server's updates with a Symbol origin
    unsaved = true;
    room.flushed().then(() => { unsaved = false; }, () => {});
  });
  // A tab that closes leaves its room at once (a leave, then close 1000): without it, the
  // server keeps its presence for the reconnect grace (spec §5.4), a ghost for 5 s.
  window.addEventListener("pagehide", (e) => {
    if (!e.persisted) void client.close();
  });
  window.addEventListener("beforeunload", (e) => {
    const pendingChat = [...messages.values()].some((m) => m.mine && m.status === "pending");
    if (unsaved || pendingChat) {
      e.preventDefault();
      e.returnValue = "";
    }
  });

  room.on("presence", () => {
    renderPresence(room);
    renderTyping(room, room.typing());
  });
  room.on("typing", (sessions) => renderTyping(room, sessions));
  room.on("refused", (error) => {
    refusal = `Your last edit was not saved: ${describeError(error)}. It is in this tab only.`;
    renderStatus();
  });
  room.on("access", () => {
    if (room.access === "write") refusal = "";
    renderStatus();
  });
  room.on("event", (event) => {
    plait.events.push({ seq: event.seq, name: event.name, payload: event.payload, session: event.session, user: event.user });
    if (event.name === "chat") receiveChat(event);
    else if (event.name === "vote") receiveVote(event);
  });
  room.on("resumed", (resumed) => {
    if (room.epoch !== votesEpoch && votesEpoch !== null) {
      // Another history (a server restarted on a memory store): what was derived from the
      // old one is stale; the replay that follows is the new history from its start.
      votes.clear();
      myVote = null;
      votesEpoch = room.epoch;
      for (const [id, message] of messages) if (message.status === "sent") messages.delete(id);
      pollHistoryIncomplete = false;
      renderChat();
    } else if (!resumed.complete) {
      pollHistoryIncomplete = true;
    }
    renderPoll();
  });
  buildPoll(room);
  renderPresence(room);

  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = /** @type {HTMLInputElement} */ ($("chat-input"));
    const text = input.value.trim().slice(0, MAX_CHAT);
    if (!text) return;
    input.value = "";
    sendChat(text);
  });
  $("chat-input").addEventListener("input", () => typed(room));

  plait.view = startEditor(room, awareness);
  document.body.dataset.ready = "true";
}

main().catch((error) => {
  console.error(error);
  const status = $("status-error");
  status.hidden = false;
  status.textContent = `could not join room ${roomName}: ${describeError(error)}`;
});
