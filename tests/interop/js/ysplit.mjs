// Checks split updates in real Yjs, driven over stdin/stdout one JSON line per case:
// {"base": b64?, "whole": b64, "pieces": [b64...]}. It builds one document from base + whole and
// one from base + each piece in turn (a transaction each), and answers one JSON line:
// {"same": bool} (Y.encodeStateAsUpdate of both documents equal byte for byte, and their
// state vectors too), "pending": the index of the first piece that left structs or deletes
// pending (-1: none), "wholePending": whether base + whole left anything pending, or {"error"}.
// {"appended": text, "count": n} answers {"update": b64}: Y.encodeStateAsUpdate of a document
// whose text "text" one client grew by appending `text` n times.
import readline from 'node:readline'
import * as Y from 'yjs'

const bytes = (b64) => new Uint8Array(Buffer.from(b64, 'base64'))
const equal = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0
const pending = (doc) => doc.store.pendingStructs !== null || doc.store.pendingDs !== null

function run (cmd) {
  if (cmd.appended !== undefined) {
    const doc = new Y.Doc()
    const text = doc.getText('text')
    for (let i = 0; i < cmd.count; i++) text.insert(text.length, cmd.appended)
    return { update: Buffer.from(Y.encodeStateAsUpdate(doc)).toString('base64') }
  }
  const whole = new Y.Doc()
  const split = new Y.Doc()
  if (cmd.base) {
    Y.applyUpdate(whole, bytes(cmd.base))
    Y.applyUpdate(split, bytes(cmd.base))
  }
  Y.applyUpdate(whole, bytes(cmd.whole))
  let first = -1
  cmd.pieces.forEach((piece, i) => {
    Y.applyUpdate(split, bytes(piece))
    if (first < 0 && pending(split)) first = i
  })
  const same = equal(Y.encodeStateAsUpdate(whole), Y.encodeStateAsUpdate(split)) &&
    equal(Y.encodeStateVector(whole), Y.encodeStateVector(split))
  return { same, pending: first, wholePending: pending(whole) }
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
