// Real Yjs clients for Plait's interop tests: y-websocket's WebsocketProvider over `ws`.
// Usage: node yclients.mjs '<json config>'; prints one JSON line with what the clients saw.
// Config: { url, room, clients: n, name, insert, expectLength, token, timeoutMs, awarenessOf,
//          watchConfirmation, holdMs }
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const cfg = JSON.parse(process.argv[2])
const timeoutMs = cfg.timeoutMs ?? 20000
const deadline = setTimeout(() => {
  console.log(JSON.stringify({ error: 'timeout', stage }))
  process.exit(2)
}, timeoutMs)
let stage = 'connecting'

const clients = []
for (let i = 0; i < (cfg.clients ?? 1); i++) {
  const doc = new Y.Doc()
  const params = cfg.token ? { token: cfg.token } : {}
  const provider = new WebsocketProvider(cfg.url, cfg.room, doc, { WebSocketPolyfill: WebSocket, params, disableBc: true })
  const name = `${cfg.name ?? 'js'}${cfg.clients > 1 ? '-' + i : ''}`
  provider.awareness.setLocalState({ name, cursor: { index: i } })
  const synced = new Promise(resolve => provider.once('sync', ok => resolve(ok)))
  clients.push({ doc, provider, name, synced, awarenessAtSync: -1, editedAt: null, confirmedMs: null })
}

// The server confirms a client's own update by sending it back once stored (spec §13): note
// when the first sync message carrying this client's edit arrives (as y-websocket v4 does).
const VAR = bytes => { let n = 0, shift = 0, pos = 0; for (;;) { const b = bytes[pos++]; n += (b & 0x7f) * 2 ** shift; shift += 7; if (b < 0x80) return [n, pos] } }
const watchConfirmation = c => c.provider.ws.addEventListener('message', event => {
  if (c.editedAt == null || c.confirmedMs != null) return
  let bytes = new Uint8Array(event.data)
  const [type, a] = VAR(bytes); bytes = bytes.subarray(a)
  const [step, b] = VAR(bytes); bytes = bytes.subarray(b)
  if (type !== 0 || step === 0) return
  const [length, d] = VAR(bytes)
  const update = bytes.subarray(d, d + length)
  const mine = Y.decodeUpdate(update).structs.some(s => s.id.client === c.doc.clientID)
  if (mine) c.confirmedMs = Date.now() - c.editedAt
})

const waitFor = (check, what) => new Promise(resolve => {
  stage = what
  const poll = () => (check() ? resolve() : setTimeout(poll, 10))
  poll()
})

await Promise.all(clients.map(async c => {
  await c.synced
  c.awarenessAtSync = c.provider.awareness.getStates().size - 1 // others, excluding itself
}))
stage = 'synced'
if (cfg.waitAwareness) {
  await waitFor(() => clients.every(c => c.provider.awareness.getStates().size - 1 >= cfg.waitAwareness), 'awareness')
}
for (const c of clients) {
  if (cfg.insert) {
    if (cfg.watchConfirmation) watchConfirmation(c)
    c.editedAt = Date.now()
    const text = c.doc.getText('text')
    text.insert(Math.floor(text.length / 2), cfg.clients > 1 ? `${cfg.insert}${clients.indexOf(c)};` : cfg.insert)
  }
}
if (cfg.expectLength) {
  await waitFor(() => clients.every(c => c.doc.getText('text').length >= cfg.expectLength), 'converging')
}
if (cfg.holdMs) await new Promise(resolve => setTimeout(resolve, cfg.holdMs))
const result = clients.map(c => ({
  name: c.name,
  text: c.doc.getText('text').toString(),
  awarenessAtSync: c.awarenessAtSync,
  confirmedMs: c.confirmedMs,
  others: [...c.provider.awareness.getStates().entries()]
    .filter(([id]) => id !== c.doc.clientID)
    .map(([, state]) => state)
}))
clearTimeout(deadline)
for (const c of clients) c.provider.destroy()
// Write, then exit once the pipe has taken it all (console.log + exit can truncate a pipe).
process.stdout.write(JSON.stringify({ clients: result }) + '\n', () => process.exit(0))
