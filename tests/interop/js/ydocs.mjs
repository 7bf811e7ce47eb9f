// A host for plain Yjs documents, driven over stdin/stdout one JSON command per line, so that
// Python tests can edit Yjs documents and exchange their updates with pycrdt documents directly
// (no network). Commands: {"op": "insert"|"delete"|"apply"|"read"|"decode"|"drop", "doc": name, ...}.
// Each answer is one JSON line: {"updates": [base64...]} for insert, delete and apply (what the
// document emitted), {"units", "sv"} for read (the text as UTF-16 code units, so that lone
// surrogates survive JSON, and the state vector), {"units"} for decode (the text of a fresh
// document built from the update given), {"error"} if the command failed.
import readline from 'node:readline'
import * as Y from 'yjs'

const docs = new Map()

function doc (name) {
  let entry = docs.get(name)
  if (!entry) {
    const ydoc = new Y.Doc()
    entry = { ydoc, text: ydoc.getText('text'), out: [] }
    ydoc.on('update', (update, origin) => {
      if (origin !== 'remote') entry.out.push(Buffer.from(update).toString('base64'))
    })
    docs.set(name, entry)
  }
  return entry
}

function units (s) {
  const out = []
  for (let i = 0; i < s.length; i++) out.push(s.charCodeAt(i))
  return out
}

function run (cmd) {
  if (cmd.op === 'drop') {
    docs.delete(cmd.doc)
    return {}
  }
  const entry = doc(cmd.doc)
  switch (cmd.op) {
    case 'insert': entry.text.insert(cmd.index, cmd.value); break
    case 'delete': entry.text.delete(cmd.index, cmd.length); break
    case 'apply': Y.applyUpdate(entry.ydoc, Buffer.from(cmd.update, 'base64'), 'remote'); break
    case 'read': {
      const s = entry.text.toString()
      return { units: units(s), sv: Buffer.from(Y.encodeStateVector(entry.ydoc)).toString('base64') }
    }
    case 'decode': {
      docs.delete(cmd.doc)
      const fresh = new Y.Doc()
      Y.applyUpdate(fresh, Buffer.from(cmd.update, 'base64'))
      return { units: units(fresh.getText('text').toString()) }
    }
    default: throw new Error(`unknown op ${cmd.op}`)
  }
  const updates = entry.out
  entry.out = []
  return { updates }
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  let answer
  try {
    answer = run(JSON.parse(line))
  } catch (err) {
    answer = { error: String(err && err.stack ? err.stack : err) }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
})
