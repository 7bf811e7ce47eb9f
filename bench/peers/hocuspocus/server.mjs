// Hocuspocus as a benchmark peer: `node server.mjs PORT [SQLITE_FILE]`. Default settings
// (its 2 s debounce of stores included), quiet; with SQLITE_FILE, its SQLite extension stores
// every document there. Prints {"listening": PORT} once it accepts connections; SIGTERM stops it.
import { Server } from '@hocuspocus/server'
import { SQLite } from '@hocuspocus/extension-sqlite'

const [port, sqlite] = [Number(process.argv[2]), process.argv[3]]
const server = new Server({
  port,
  address: '127.0.0.1',
  quiet: true,
  stopOnSignals: false,
  extensions: sqlite ? [new SQLite({ database: sqlite })] : []
})
await server.listen()
console.log(JSON.stringify({ listening: server.address.port }))
process.on('SIGTERM', async () => {
  await server.destroy()
  process.exit(0)
})
