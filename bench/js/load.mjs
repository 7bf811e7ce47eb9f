// One load-generating process for Plait's benchmarks (bench/*.py start several of these).
//
// Usage: node load.mjs '<json config>'
// The process opens its clients, prints {"ready": ...} once all are connected (and joined and
// synced, unless the workload joins on "go"), then waits for a line "go" on stdin, runs the
// workload, writes its results to config.out as JSON and prints {"done": true}.
//
// Each client is a Yjs document speaking either y-websocket (`protocol: "yjs"`, the sync and
// awareness messages of y-protocols, one per WebSocket message) or Plait's native protocol
// (`protocol: "native"`, msgpack frames, spec/protocol.md). Times are CLOCK_MONOTONIC
// milliseconds, the clock every process on the machine shares, so the orchestrator can match a
// send in one process with its arrival in another.
import * as Y from 'yjs'
import WebSocket from 'ws'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import { encode, decodeMulti } from '@msgpack/msgpack'
import { createHash } from 'node:crypto'
import { createInterface } from 'node:readline'
import { writeFileSync } from 'node:fs'
import { now, sleep, inBatches, waitUntil } from './common.mjs'

const cfg = JSON.parse(process.argv[2])
const errors = []
const fail = (what) => { if (errors.length < 100) errors.push(String(what)) }

// A seeded PRNG, so that a run's edit positions are reproducible.
let seed = cfg.seed ?? 1
const random = () => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed / 0x80000000
}

class Client {
  constructor (id, room) {
    this.id = id
    this.room = room
    this.doc = new Y.Doc()
    this.doc.clientID = id // known ids let the orchestrator match sends with arrivals
    this.text = this.doc.getText('text')
    this.synced = false
    this.syncedAt = null
    this.sends = [] // clock, time
    this.arrivals = [] // client, clock, time
    this.received = 0
    this.recordArrivals = false
    this.doc.on('afterTransaction', tr => {
      if (!this.recordArrivals || tr.origin !== this) return
      const t = now()
      tr.afterState.forEach((clock, client) => {
        for (let k = tr.beforeState.get(client) ?? 0; k < clock; k++) this.arrivals.push(client, k, t)
        this.received += clock - (tr.beforeState.get(client) ?? 0)
      })
    })
  }

  insertRandomChar () {
    const clock = Y.getState(this.doc.store, this.id)
    this.sends.push(clock, now())
    // Listening to 'update' only around local edits spares encoding an update for every
    // remote transaction, which would cost the load generator more than the server.
    const send = update => this.sendUpdate(update)
    this.doc.on('update', send)
    this.text.insert(Math.floor(random() * (this.text.length + 1)), String.fromCharCode(97 + (clock % 26)))
    this.doc.off('update', send)
  }

  open (url) {
    this.ws = new WebSocket(url, { perMessageDeflate: false })
    this.ws.binaryType = 'nodebuffer'
    this.messages = 0
    this.ws.on('message', data => {
      if (this.recordArrivals) this.messages++
      try { this.receive(data) } catch (e) { fail(`client ${this.id}: ${e.stack}`) }
    })
    this.ws.on('error', e => fail(`client ${this.id}: ${e.message}`))
    this.ws.on('close', (code, reason) => { if (!this.closing) fail(`client ${this.id}: closed ${code} ${reason}`) })
    return new Promise((resolve, reject) => {
      this.ws.once('open', resolve)
      this.ws.once('error', reject)
    })
  }

  send (bytes) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(bytes)
  }

  close () {
    this.closing = true
    this.ws.close()
  }

  digest () {
    const text = this.text.toString()
    return { id: this.id, length: text.length, sha1: createHash('sha1').update(text).digest('hex') }
  }
}

// y-websocket: what y-websocket's WebsocketProvider does, without its reconnect and
// broadcast-channel machinery.
class YjsClient extends Client {
  async connect (url) {
    this.awareness = new awarenessProtocol.Awareness(this.doc)
    this.awareness.setLocalState({ name: `load-${this.id}`, cursor: null })
    this.awareness.on('update', ({ added, updated, removed }, origin) => {
      if (origin !== 'local') return
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, 1)
      encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(this.awareness, added.concat(updated, removed)))
      this.send(encoding.toUint8Array(encoder))
    })
    await this.open(url)
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, 0)
    syncProtocol.writeSyncStep1(encoder, this.doc)
    this.send(encoding.toUint8Array(encoder))
    this.awareness.setLocalStateField('cursor', null) // announce ourselves, as the provider does on open
  }

  receive (data) {
    const decoder = decoding.createDecoder(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
    const type = decoding.readVarUint(decoder)
    if (type === 0) {
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, 0)
      const step = syncProtocol.readSyncMessage(decoder, encoder, this.doc, this)
      if (encoding.length(encoder) > 1) this.send(encoding.toUint8Array(encoder))
      if (step === syncProtocol.messageYjsSyncStep2 && !this.synced) {
        this.synced = true
        this.syncedAt = now()
      }
    } else if (type === 1) {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(decoder), this)
    } else if (type === 3) {
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, 1)
      encoding.writeVarUint8Array(encoder, awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.id]))
      this.send(encoding.toUint8Array(encoder))
    }
  }

  sendUpdate (update) {
    const encoder = encoding.createEncoder()
    encoding.writeVarUint(encoder, 0)
    syncProtocol.writeUpdate(encoder, update)
    this.send(encoding.toUint8Array(encoder))
  }

  moveCursor (index) { this.awareness.setLocalStateField('cursor', { index }) }
  setPresence (state) { this.awareness.setLocalStateField('state', state) }

  close () {
    this.awareness.destroy()
    super.close()
  }
}

// Hocuspocus's protocol, as @hocuspocus/provider speaks it: every message is the y-protocols
// message of the y-websocket client above, prefixed with the document's name (one WebSocket
// can carry several documents), after an authentication message; the server confirms each
// update it applied with a sync-status message, and pings.
class HocuspocusClient extends YjsClient {
  async connect (url) {
    const encoder = encoding.createEncoder()
    encoding.writeVarString(encoder, this.room)
    this.prefix = encoding.toUint8Array(encoder)
    await super.connect(url) // open() sends the auth message before anything else goes
  }

  open (url) {
    return super.open(url).then(() => {
      const encoder = encoding.createEncoder()
      encoding.writeVarUint(encoder, 2) // Auth
      encoding.writeVarUint(encoder, 0) // Token
      encoding.writeVarString(encoder, cfg.token ?? '')
      super.send(this.prefixed(encoding.toUint8Array(encoder)))
    })
  }

  prefixed (bytes) {
    const out = new Uint8Array(this.prefix.length + bytes.length)
    out.set(this.prefix, 0)
    out.set(bytes, this.prefix.length)
    return out
  }

  send (bytes) { super.send(this.prefixed(bytes)) }

  receive (data) {
    const decoder = decoding.createDecoder(new Uint8Array(data.buffer, data.byteOffset, data.byteLength))
    decoding.readVarString(decoder) // the document: one per client here
    const rest = decoding.readTailAsUint8Array(decoder)
    const type = rest[0]
    if (type === 2 || type === 8) return // authenticated; an update applied (sync status)
    if (type === 4) rest[0] = 0 // a sync reply is a sync message
    if (type === 9) { // ping
      this.send(Uint8Array.of(10))
      return
    }
    super.receive(Buffer.from(rest.buffer, rest.byteOffset, rest.byteLength))
  }
}

// Plait's native protocol (spec/protocol.md): hello, join with the state vector, the sync
// answer, updates with a ref (acked once durable), presence and cursor frames, heartbeats.
class NativeClient extends Client {
  async connect (url) {
    this.ref = 1
    this.acks = 0
    this.channel = null
    this.lastSent = now()
    this.welcomed = new Promise(resolve => { this.onWelcome = resolve })
    await this.open(url)
    this.frame([1, [1], cfg.token ?? null, { name: 'plait-bench' }])
    await this.welcomed
  }

  join () {
    this.joinedAt = now()
    this.frame([10, this.ref++, this.room, Y.encodeStateVector(this.doc), null, null])
  }

  frame (frame) {
    this.lastSent = now()
    this.send(encode(frame))
  }

  receive (data) {
    // One transaction per message: a batch of updates is applied and observed once.
    Y.transact(this.doc, () => this.receiveFrames(data), this)
  }

  receiveFrames (data) {
    for (const f of decodeMulti(data)) {
      switch (f[0]) {
        case 2: // welcome: send something at least every heartbeat_ms, as the JS SDK does
          // (js/src/client.js: a ping when nothing was sent for 0.9 of it, looked at 4 times
          // per interval). The server pings first (at 0.75-0.875 of it), so an idle client
          // only answers.
          this.pinger = setInterval(() => {
            if (now() - this.lastSent >= f[3] * 0.9) this.frame([3, 0])
          }, f[3] / 4)
          this.onWelcome()
          break
        case 3: this.frame([4, f[1]]); break
        case 5: fail(`client ${this.id}: error ${f[3]} ${f[4]}`); break
        case 6:
          this.acks++
          if (this.onAck) this.onAck()
          break
        case 11: this.channel = f[2]; break
        case 13: fail(`client ${this.id}: channel closed ${f[2]} ${f[3]}`); break
        case 20: this.frame([21, f[1], null, Y.encodeStateAsUpdate(this.doc, f[2])]); break
        case 21:
          Y.applyUpdate(this.doc, f[3], this)
          if (!this.synced) {
            this.synced = true
            this.syncedAt = now()
          }
          break
        case 22: Y.applyUpdate(this.doc, f[3], this); break
      }
    }
  }

  sendUpdate (update) {
    if (this.channel !== null) this.frame([22, this.channel, this.ref++, update])
  }

  moveCursor (index) { this.frame([40, this.channel, { index }]) }
  setPresence (state) { this.frame([30, this.channel, null, state]) }

  close () {
    clearInterval(this.pinger)
    super.close()
  }
}

const goSignal = new Promise(resolve => {
  createInterface({ input: process.stdin })
    .on('line', line => { if (line.trim() === 'go') resolve(now()) })
    .on('close', () => process.exit(2)) // the bench that started this is gone: do not linger
})

const Kind = { yjs: YjsClient, hocuspocus: HocuspocusClient, native: NativeClient }[cfg.protocol]
const clients = cfg.clients.map(([id, room]) => new Kind(id, room))
const joinOnGo = cfg.workload === 'join_storm'
const joinNow = !joinOnGo && cfg.workload !== 'idle'
// `urls` (several processes of one cluster): client id modulo their number picks one.
const baseOf = c => cfg.urls ? cfg.urls[c.id % cfg.urls.length] : cfg.url
const urlOf = c => cfg.protocol === 'yjs' ? `${baseOf(c)}${c.room}` : baseOf(c)

await inBatches(clients, cfg.connectWidth ?? 50, async c => {
  await c.connect(urlOf(c))
  if (joinNow && c.join) c.join()
})
if (joinNow) {
  if (!await waitUntil(() => clients.every(c => c.synced), 60000)) fail('not all clients synced within 60 s')
}
console.log(JSON.stringify({ ready: clients.length }))
const goAt = await goSignal
const cpuAtGo = process.cpuUsage()

const workloads = {
  // Each client inserts `edits` characters at random positions at `editRate`/s and moves its
  // cursor at `cursorRate`/s, then waits until every edit of every client has reached it.
  // With `firstObserver`, only clients whose id is below it edit and move their cursor; the
  // others only observe (one writer and many observers: @y/hub's broadcast workload).
  async fanout () {
    for (const c of clients) c.recordArrivals = true
    const writes = c => cfg.firstObserver === undefined || c.id < cfg.firstObserver
    await Promise.all(clients.filter(writes).map(async c => {
      const editEvery = 1000 / cfg.editRate
      const cursorEvery = 1000 / cfg.cursorRate
      await sleep(random() * editEvery)
      const cursor = setInterval(() => c.moveCursor(Math.floor(random() * (c.text.length + 1))), cursorEvery)
      const start = now()
      for (let i = 0; i < cfg.edits; i++) {
        c.insertRandomChar()
        const wait = start + (i + 1) * editEvery - now()
        if (wait > 0) await sleep(wait)
      }
      clearInterval(cursor)
    }))
    // A process of observers only gets here at once: it waits for the writers' time too.
    const writersDoneAt = goAt + (cfg.edits + 1) * 1000 / cfg.editRate
    const expected = cfg.expectedEdits
    await waitUntil(() => clients.every(c => c.received >= expected - (writes(c) ? cfg.edits : 0)),
      Math.max(writersDoneAt - now(), 0) + cfg.drainMs)
  },
  // Low-rate activity in many rooms: an edit and a presence change every `periodMs` per client.
  // With `drainMs`, edits' arrivals are recorded (latency), and the run waits up to that long
  // after the last edit for every edit of a client's room to reach it.
  async rooms () {
    const stopAt = goAt + cfg.seconds * 1000
    if (cfg.drainMs) for (const c of clients) c.recordArrivals = true
    await Promise.all(clients.map(async c => {
      await sleep(random() * cfg.periodMs)
      while (now() < stopAt) {
        c.insertRandomChar()
        c.setPresence({ at: c.text.length })
        await sleep(cfg.periodMs)
      }
    }))
    if (cfg.drainMs) await sleep(cfg.drainMs)
  },
  // Connected, saying nothing but heartbeats.
  async idle () { await sleep(cfg.seconds * 1000) },
  // Every client joins at once; the result is when each was synced.
  async join_storm () {
    for (const c of clients) c.join()
    if (!await waitUntil(() => clients.every(c => c.synced), cfg.drainMs)) fail('not all clients synced')
  },
  // Durable writes: every client appends one character at a time to the document of a room of
  // its own, keeping `window` updates unacknowledged (an ack means the store committed it), and
  // counts the acks that arrive between `warmupMs` after go and the end. With `batch`, the
  // updates a client makes in one turn of its event loop go out in one WebSocket message (the
  // protocol allows several frames per message); without, one message per update.
  async writers () {
    const countFrom = goAt + cfg.warmupMs
    const stopAt = countFrom + cfg.seconds * 1000
    await Promise.all(clients.map(c => new Promise(resolve => {
      c.counted = 0
      let inFlight = 0
      let scheduled = false
      const update = () => {
        let bytes
        const keep = u => { bytes = u }
        c.doc.on('update', keep)
        c.text.insert(c.text.length, 'x')
        c.doc.off('update', keep)
        return encode([22, c.channel, c.ref++, bytes])
      }
      const fill = () => {
        scheduled = false
        const frames = Array.from({ length: cfg.window - inFlight }, update)
        inFlight += frames.length
        c.lastSent = now()
        if (cfg.batch) c.send(Buffer.concat(frames))
        else for (const frame of frames) c.send(frame)
      }
      c.onAck = () => {
        const t = now()
        if (t >= stopAt) {
          c.onAck = null
          resolve()
          return
        }
        inFlight--
        if (t >= countFrom) c.counted++
        // Acks arrive inside receive()'s transaction; filling there would lose the update events.
        if (!scheduled) {
          scheduled = true
          queueMicrotask(fill)
        }
      }
      fill()
      setTimeout(() => { // a client whose acks stopped (an error frame says why) ends too
        if (c.onAck) fail(`client ${c.id}: no ack within 5 s of the end`)
        c.onAck = null
        resolve()
      }, stopAt - now() + 5000)
    })))
  },
  // Every client changes its presence once per `periodMs`.
  async presence () {
    const stopAt = goAt + cfg.seconds * 1000
    await Promise.all(clients.map(async c => {
      await sleep(random() * cfg.periodMs)
      for (let n = 0; now() < stopAt; n++) {
        c.setPresence({ n, status: n % 2 ? 'active' : 'idle' })
        await sleep(cfg.periodMs)
      }
    }))
  }
}

await workloads[cfg.workload]()
const cpu = process.cpuUsage(cpuAtGo)
const result = {
  goAt,
  cpuSeconds: (cpu.user + cpu.system) / 1e6,
  errors,
  clients: clients.map(c => ({
    ...c.digest(),
    synced: c.synced,
    counted: c.counted ?? 0,
    messages: c.messages,
    syncedAt: c.syncedAt,
    sends: c.sends,
    arrivals: c.arrivals
  }))
}
writeFileSync(cfg.out, JSON.stringify(result))
for (const c of clients) c.close()
process.stdout.write(JSON.stringify({ done: true, errors: errors.length }) + '\n', () => process.exit(0))
