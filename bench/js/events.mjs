// One load-generating process for bench/events.py: subscribers to one room's events over a
// WebSocket (native protocol), an event stream (SSE, spec §14.2) or long-polling (§14.4), and
// in the first process, the publisher. Same orchestration as load.mjs: {"ready"} once every subscriber
// has joined, "go" on stdin, results to config.out, {"done"}.
//
// Each event's payload carries its send time on CLOCK_MONOTONIC (process.hrtime), the clock
// every process on the machine shares, so a subscriber's arrival time minus it is the latency.
import WebSocket from 'ws'
import http from 'node:http'
import { encode, decodeMulti } from '@msgpack/msgpack'
import { createInterface } from 'node:readline'
import { writeFileSync } from 'node:fs'
import { now, sleep, inBatches, waitUntil } from './common.mjs'

const cfg = JSON.parse(process.argv[2])
const errors = []
const fail = (what) => { if (errors.length < 100) errors.push(String(what)) }
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity })
const [host, port] = [cfg.host, cfg.port]

function request (method, path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host, port, method, path, agent, headers: { 'Content-Type': 'application/json' } }, res => {
      const chunks = []
      res.on('data', c => chunks.push(c))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        if (res.statusCode >= 300) reject(new Error(`${method} ${path}: ${res.statusCode} ${text}`))
        else resolve(text ? JSON.parse(text) : null)
      })
    })
    req.on('error', reject)
    req.end(body === undefined ? undefined : JSON.stringify(body))
  })
}

const joinFrame = (ref) => ({ kind: 'join', ref, room: cfg.room, state_vector: null, since: null, epoch: null })

class Subscriber {
  constructor () { this.latencies = []; this.joined = false }
  arrived (payload) { if (this.recording) this.latencies.push(now() - payload.t) }
}

class WsSubscriber extends Subscriber {
  async connect () {
    this.ws = new WebSocket(`ws://${host}:${port}/`, { perMessageDeflate: false })
    this.ws.on('message', data => {
      for (const f of decodeMulti(data)) {
        if (f[0] === 51) this.arrived(f[4])
        else if (f[0] === 11) this.joined = true
        else if (f[0] === 3) this.ws.send(encode([4, f[1]]))
        else if (f[0] === 2) this.heartbeat = setInterval(() => this.ws.send(encode([3, 0])), f[3] / 2)
        else if (f[0] === 5) fail(`ws error ${f[3]} ${f[4]}`)
      }
    })
    this.ws.on('close', (code) => { if (!this.closing) fail(`ws closed ${code}`) })
    await new Promise((resolve, reject) => { this.ws.once('open', resolve); this.ws.once('error', reject) })
    this.ws.send(encode([1, [1], null, {}]))
    this.ws.send(encode([10, 1, cfg.room, null, null, null]))
  }

  publish (ref, payload) { this.ws.send(encode([50, 1, ref, 'bench', payload, null])) }
  close () { this.closing = true; clearInterval(this.heartbeat); this.ws.close() }
}

class SseSubscriber extends Subscriber {
  async connect () {
    const s = await request('POST', '/v1/sessions')
    this.urls = s
    await new Promise((resolve, reject) => {
      this.req = http.get({ host, port, path: s.events, agent: false, headers: { Accept: 'text/event-stream' } }, res => {
        if (res.statusCode !== 200) reject(new Error(`events: ${res.statusCode}`))
        res.setEncoding('utf8')
        let buffer = ''
        res.on('data', chunk => {
          buffer += chunk
          let end
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const event = buffer.slice(0, end)
            buffer = buffer.slice(end + 2)
            if (event.includes('\nevent: bench\n')) {
              const data = event.slice(event.indexOf('\ndata: ') + 7)
              this.arrived(JSON.parse(data).payload)
            } else if (event.includes('\nevent: joined\n')) this.joined = true
          }
        })
        res.on('end', () => { if (!this.closing) fail('event stream ended') })
        resolve()
      })
      this.req.on('error', e => { if (!this.closing) reject(e) })
    })
    await request('POST', s.frames, joinFrame(1))
  }

  close () { this.closing = true; this.req.destroy() }
}

class PollSubscriber extends Subscriber {
  async connect () {
    const s = await request('POST', '/v1/sessions')
    this.urls = s
    this.position = s.position
    await request('POST', s.frames, joinFrame(1))
    this.polling = this.poll()
  }

  async poll () {
    while (!this.closing) {
      try {
        const body = await request('GET', `${this.urls.poll}&after=${this.position}`)
        for (const f of body.frames) {
          if (f.kind === 'event' && f.name === 'bench') this.arrived(f.payload)
          else if (f.kind === 'joined') this.joined = true
        }
        this.position = body.position
        if (body.closed) { fail(`poll: closed ${JSON.stringify(body.closed)}`); return }
      } catch (e) { if (!this.closing) fail(e.message); return }
    }
  }

  close () { this.closing = true }
}

const Kind = { ws: WsSubscriber, sse: SseSubscriber, poll: PollSubscriber }[cfg.transport]
const subscribers = cfg.clients.map(() => new Kind())
await inBatches(subscribers, 50, async s => {
  try { await s.connect() } catch (e) { fail(e.message) }
})
const publisher = cfg.seed === 1 ? new WsSubscriber() : null // the first process publishes
if (publisher) await publisher.connect()
if (!await waitUntil(() => subscribers.every(s => s.joined) && (!publisher || publisher.joined), 60000)) fail('not all joined within 60 s')
console.log(JSON.stringify({ ready: subscribers.length }))
await new Promise(resolve => createInterface({ input: process.stdin })
  .on('line', line => { if (line.trim() === 'go') resolve() })
  .on('close', () => process.exit(2))) // the bench that started this is gone: do not linger
const cpuAtGo = process.cpuUsage()
const goAt = now()
for (const s of subscribers) s.recording = true
// With long-polling, a probe times plain HTTP round trips to the server during the run (a
// frames request that needs no answer): the goal is event latency within one round trip.
const roundTrips = []
let probing = null
if (publisher && cfg.transport === 'poll') {
  const probe = await request('POST', '/v1/sessions')
  probing = (async () => {
    const stopAt = goAt + cfg.events / cfg.rate * 1000
    while (now() < stopAt) {
      const t = now()
      await request('POST', probe.frames, { kind: 'ping', nonce: 1 })
      roundTrips.push(now() - t)
      await sleep(50)
    }
  })()
}
if (publisher) {
  const every = 1000 / cfg.rate
  const start = now()
  for (let i = 0; i < cfg.events; i++) {
    publisher.publish(i + 2, { t: now(), i })
    const wait = start + (i + 1) * every - now()
    if (wait > 0) await sleep(wait)
  }
}
// Every process records until the publisher is done and the last events had time to arrive.
await sleep(goAt + cfg.events / cfg.rate * 1000 + cfg.drainMs - now())
await probing
const cpu = process.cpuUsage(cpuAtGo)
writeFileSync(cfg.out, JSON.stringify({
  cpuSeconds: (cpu.user + cpu.system) / 1e6,
  errors,
  roundTrips,
  clients: subscribers.map(s => ({ received: s.latencies.length, latencies: s.latencies }))
}))
for (const s of subscribers) s.close()
if (publisher) publisher.close()
process.stdout.write(JSON.stringify({ done: true, errors: errors.length }) + '\n', () => process.exit(0))
