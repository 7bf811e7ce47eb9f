// Prints, as JSON, Yjs v1 updates and state vectors made by the real yjs package: every
// content kind Yjs writes, deletions, formatting, XML, subdocuments, merged updates (with skips)
// and diffs. tests/protocol/test_ycrdt.py checks that check_update / check_state_vector accept
// them all. Usage: node yjs_corpus.cjs (yjs comes from tests/interop/js).
const path = require('path')
const { createRequire } = require('module')
const req = createRequire(path.join(__dirname, '..', 'interop', 'js', 'package.json'))
const Y = req('yjs')

const updates = []
const stateVectors = []
const hex = (u8) => Buffer.from(u8).toString('hex')

function record (doc) {
  doc.on('update', (u) => updates.push(hex(u)))
}

const a = new Y.Doc()
a.clientID = 1234567
record(a)
const text = a.getText('text')
text.insert(0, 'hello world')
text.insert(5, ', dear')
text.insert(0, 'é😀 emoji and accents ')
text.delete(2, 3)
text.format(0, 5, { bold: true, color: '#f00' })
text.format(2, 2, { bold: null })
text.insertEmbed(3, { image: 'https://example.com/x.png', alt: 'x' })
text.insert(4, 'x', { italic: true })

const arr = a.getArray('array')
arr.insert(0, [1, -1, 2 ** 40, 1.5, -0.25, 'str', true, false, null])
arr.insert(0, [{ nested: { deep: [1, [2, [3, { k: 'v' }]]] } }, [1, 2, 3], new Uint8Array([0, 1, 255])])
arr.push([{ big: BigInt('9007199254740993') }])
arr.push([new Y.Map(), new Y.Array(), new Y.Text('inner')])
arr.delete(1, 2)

const map = a.getMap('map')
map.set('number', 42)
map.set('string', 'value')
map.set('obj', { a: 1, b: [true, null] })
map.set('bytes', new Uint8Array([1, 2, 3]))
map.set('number', 43)
map.delete('string')
const sub = new Y.Map()
map.set('sub', sub)
sub.set('inner', new Y.Array())
sub.get('inner').insert(0, ['x', 'y'])

const frag = a.getXmlFragment('xml')
const el = new Y.XmlElement('paragraph')
el.setAttribute('class', 'lead')
const xt = new Y.XmlText('some text')
el.insert(0, [xt])
frag.insert(0, [el, new Y.XmlText('tail')])
xt.format(0, 4, { strong: {} })
xt.insertEmbed(2, { mention: 'ada' })
frag.delete(1, 1)

const subdoc = new Y.Doc({ autoLoad: true })
map.set('subdoc', subdoc)
subdoc.getText('t').insert(0, 'in a subdoc')

// Long typing session with many small items, then bulk deletion.
for (let i = 0; i < 300; i++) text.insert((i * 7) % text.length, String.fromCharCode(97 + (i % 26)))
text.delete(10, 100)
a.transact(() => {
  for (let i = 0; i < 50; i++) arr.insert(0, [i])
})

updates.push(hex(Y.encodeStateAsUpdate(a)))
stateVectors.push(hex(Y.encodeStateVector(a)))

// A second client, concurrent edits, diffs against state vectors, merged updates with gaps.
const b = new Y.Doc()
b.clientID = 2 ** 32 + 5
record(b)
Y.applyUpdate(b, Y.encodeStateAsUpdate(a))
const before = Y.encodeStateVector(b)
b.getText('text').insert(3, 'from b')
b.getArray('array').delete(0, 3)
updates.push(hex(Y.encodeStateAsUpdate(b, before)))
updates.push(hex(Y.encodeStateAsUpdate(b, Y.encodeStateVector(a))))
stateVectors.push(hex(Y.encodeStateVector(b)))
stateVectors.push(hex(Y.encodeStateVector(new Y.Doc())))
const gapped = updates.filter((_, i) => i % 3 === 0).map((h) => Buffer.from(h, 'hex'))
updates.push(hex(Y.mergeUpdates(gapped)))
updates.push(hex(Y.mergeUpdates(updates.slice(0, 20).map((h) => Buffer.from(h, 'hex')))))
updates.push(hex(Y.diffUpdate(Y.encodeStateAsUpdate(b), Y.encodeStateVector(a))))
updates.push(hex(Y.encodeStateAsUpdate(new Y.Doc())))

// A document with garbage collection switched off keeps deleted content as ContentDeleted.
const c = new Y.Doc({ gc: false })
c.getText('t').insert(0, 'abcdef')
c.getText('t').delete(1, 3)
updates.push(hex(Y.encodeStateAsUpdate(c)))

process.stdout.write(JSON.stringify({ updates, stateVectors }))
