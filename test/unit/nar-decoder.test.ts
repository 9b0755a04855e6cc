// The NAR decoder on hand-made input: the events of a well-formed NAR whatever the chunking,
// and a table of malformed NARs, each with the error and the byte offset it must report.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { decodeNar, narPathToString, type NarEvent } from '../../protocols/nix/nar-decoder.ts'

/** One NAR string: u64 length, bytes, zero padding. */
function str (s: string | Buffer): Buffer {
  const bytes = typeof s === 'string' ? Buffer.from(s, 'utf8') : s
  const len = Buffer.alloc(8)
  len.writeBigUInt64LE(BigInt(bytes.length))
  return Buffer.concat([len, bytes, Buffer.alloc((8 - (bytes.length % 8)) % 8)])
}
const strs = (...xs: Array<string | Buffer>): Buffer => Buffer.concat(xs.map(str))
const u64 = (n: bigint): Buffer => { const b = Buffer.alloc(8); b.writeBigUInt64LE(n); return b }

const MAGIC = str('nix-archive-1')
const file = (contents: string, executable = false): Buffer => Buffer.concat([
  strs('(', 'type', 'regular', ...(executable ? ['executable', ''] : []), 'contents'), str(contents), str(')')
])
const entry = (name: string | Buffer, node: Buffer): Buffer => Buffer.concat([strs('entry', '(', 'name'), str(name), str('node'), node, str(')')])
const dir = (...entries: Buffer[]): Buffer => Buffer.concat([strs('(', 'type', 'directory'), ...entries, str(')')])
const symlink = (target: string): Buffer => Buffer.concat([strs('(', 'type', 'symlink', 'target'), str(target), str(')')])

async function * chunked (bytes: Buffer, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size)
}

/** Events in a comparable form, data joined per file. */
async function decodeAll (bytes: Buffer, chunkSize = 1 << 20): Promise<string[]> {
  const out: string[] = []
  let data: Buffer[] = []
  for await (const e of decodeNar(chunked(bytes, chunkSize))) out.push(...describeEvent(e, data, d => { data = d }))
  return out
}

function describeEvent (e: NarEvent, data: Buffer[], setData: (d: Buffer[]) => void): string[] {
  const p = narPathToString(e.path)
  switch (e.type) {
    case 'data': data.push(Buffer.from(e.data)); return []
    case 'file': setData([]); return [`file ${p} x=${e.executable} size=${e.size}`]
    case 'file-end': return [`end ${p} ${JSON.stringify(Buffer.concat(data).toString())}`]
    case 'symlink': return [`symlink ${p} -> ${narPathToString(e.target)}`]
    case 'directory': return [`dir ${p}`]
    case 'directory-end': return [`dir-end ${p}`]
  }
}

describe('decodeNar, well-formed input', () => {
  const nar = Buffer.concat([MAGIC, dir(
    entry('a', dir(entry('deep', file('hello world, 21 bytes')))),
    entry('empty', dir()),
    entry('exe', file('#!/bin/sh\n', true)),
    entry('link', symlink('../target')),
    entry('zero', file(''))
  )])
  const expected = [
    'dir ',
    'dir a', 'file a/deep x=false size=21', 'end a/deep "hello world, 21 bytes"', 'dir-end a',
    'dir empty', 'dir-end empty',
    'file exe x=true size=10', 'end exe "#!/bin/sh\\n"',
    'symlink link -> ../target',
    'file zero x=false size=0', 'end zero ""',
    'dir-end '
  ]

  for (const size of [1, 3, 8, 13, 64, 1 << 20]) {
    it(`gives the same events with ${size}-byte input chunks`, async () => {
      assert.deepEqual(await decodeAll(nar, size), expected)
    })
  }

  it('decodes a NAR whose root is a file or a symlink', async () => {
    assert.deepEqual(await decodeAll(Buffer.concat([MAGIC, file('x', true)])), ['file  x=true size=1', 'end  "x"'])
    assert.deepEqual(await decodeAll(Buffer.concat([MAGIC, symlink('/abs')])), ['symlink  -> /abs'])
  })

  it('hands file contents over as they arrive, not gathered in memory', async () => {
    const big = Buffer.alloc(5 * 1024 * 1024, 0x61)
    const nar2 = Buffer.concat([MAGIC, strs('(', 'type', 'regular', 'contents'), str(big), str(')')])
    let pieces = 0
    let largest = 0
    for await (const e of decodeNar(chunked(nar2, 64 * 1024))) {
      if (e.type === 'data') { pieces++; largest = Math.max(largest, e.data.length) }
    }
    assert.ok(pieces >= 80, `contents came in ${pieces} pieces`)
    assert.ok(largest <= 64 * 1024)
  })
})

interface BadCase {
  name: string
  nar: Buffer
  message: RegExp
  /** Byte offset the error must name. */
  offset: number
}

const root = (body: Buffer): Buffer => Buffer.concat([MAGIC, body])
const dirHead = strs('(', 'type', 'directory')
const entryHead = strs('entry', '(', 'name')
/** Offset of the first name in a root directory. */
const firstName = MAGIC.length + dirHead.length + entryHead.length
/** Offset of the second name, after a first entry named `first` holding an empty file. */
const secondName = (first: string): number => MAGIC.length + dirHead.length + entry(first, file('')).length + entryHead.length

const good = root(dir(entry('a', file('abc'))))
const badPadding = Buffer.from(good)
// "regular" is 7 bytes, so one byte of padding follows it; make it non-zero.
const regularAt = good.indexOf(Buffer.from('regular'))
badPadding[regularAt + 7] = 0x01

const cases: BadCase[] = [
  { name: 'empty input', nar: Buffer.alloc(0), message: /not a NAR.*NAR ends inside/, offset: 0 },
  { name: 'wrong magic', nar: Buffer.concat([str('nix-archive-2'), file('x')]), message: /not a NAR: magic is "nix-archive-2"/, offset: 0 },
  { name: 'a gzip file', nar: Buffer.from('1f8b0800000000000003cb48cdc9c95728cf2fca490100', 'hex'), message: /not a NAR/, offset: 0 },
  { name: 'magic only', nar: MAGIC, message: /NAR ends inside the length of a token/, offset: MAGIC.length },
  { name: 'truncated inside contents', nar: good.subarray(0, regularAt + 8 + 8 + 16 + 2), message: /NAR ends inside file contents \(1 of 3 bytes missing\)/, offset: regularAt + 8 + 8 + 16 + 2 },
  { name: 'truncated before the last ")"', nar: good.subarray(0, good.length - 16), message: /NAR ends inside the length of a token/, offset: good.length - 16 },
  { name: 'non-zero padding', nar: badPadding, message: /non-zero padding byte 0x01 after a token/, offset: regularAt + 7 },
  {
    name: 'non-zero padding after contents',
    nar: (() => { const b = Buffer.from(good); b[regularAt + 8 + 8 + 16 + 3] = 0xff; return b })(),
    message: /non-zero padding byte 0xff after file contents/,
    offset: regularAt + 8 + 8 + 16 + 3
  },
  { name: 'unknown node type', nar: root(strs('(', 'type', 'fifo', ')')), message: /unknown node type "fifo"/, offset: MAGIC.length + 16 + 16 },
  { name: 'unknown token in a directory', nar: root(Buffer.concat([dirHead, strs('entri')])), message: /expected "entry" or "\)" in a directory, found "entri"/, offset: MAGIC.length + dirHead.length },
  { name: 'missing "type"', nar: root(strs('(', 'kind', 'regular')), message: /expected "type" after "\(", found "kind"/, offset: MAGIC.length + 16 },
  { name: 'regular without contents', nar: root(strs('(', 'type', 'regular', ')')), message: /expected "contents" in a regular file, found "\)"/, offset: MAGIC.length + 48 },
  { name: 'non-empty executable marker', nar: root(strs('(', 'type', 'regular', 'executable', 'yes')), message: /executable marker has a non-empty value "yes"/, offset: MAGIC.length + 48 + 24 },
  { name: 'names out of order', nar: root(dir(entry('b', file('')), entry('a', file('')))), message: /file name "a" is out of order: it sorts before "b"/, offset: secondName('b') },
  { name: 'duplicate names', nar: root(dir(entry('a', file('')), entry('a', file('')))), message: /duplicate file name "a"/, offset: secondName('a') },
  { name: 'byte order, not UTF-16 order', nar: root(dir(entry('\u{1F642}', file('')), entry('\uFF21', file('')))), message: /out of order/, offset: secondName('\u{1F642}') },
  { name: 'name with "/"', nar: root(dir(entry('a/b', file('')))), message: /file name "a\/b" contains "\/"/, offset: firstName },
  { name: 'name "."', nar: root(dir(entry('.', file('')))), message: /invalid file name "\."/, offset: firstName },
  { name: 'name ".."', nar: root(dir(entry('..', file('')))), message: /invalid file name "\.\."/, offset: firstName },
  { name: 'empty name', nar: root(dir(entry('', file('')))), message: /empty file name/, offset: firstName },
  { name: 'name with NUL', nar: root(dir(entry(Buffer.from('a\0b'), file('')))), message: /contains a NUL byte/, offset: firstName },
  { name: 'oversized name', nar: root(dir(entry('n'.repeat(256), file('')))), message: /a file name is 256 bytes long, more than the 255 allowed/, offset: firstName },
  { name: 'oversized token', nar: Buffer.concat([MAGIC, u64(1n << 40n)]), message: /a token is 1099511627776 bytes long, more than the 16 allowed/, offset: MAGIC.length },
  { name: 'oversized symlink target', nar: root(symlink('t'.repeat(5000))), message: /a symlink target is 5000 bytes long/, offset: MAGIC.length + 64 },
  {
    name: 'contents length beyond 2^53',
    nar: Buffer.concat([MAGIC, strs('(', 'type', 'regular', 'contents'), u64(1n << 60n)]),
    message: /the length of the file contents is implausibly large/,
    offset: MAGIC.length + 64
  },
  { name: 'trailing bytes', nar: Buffer.concat([good, Buffer.from('x')]), message: /unexpected data after the end of the NAR/, offset: good.length }
]

describe('decodeNar, malformed input', () => {
  for (const c of cases) {
    it(`${c.name}: NarFormatError at byte ${c.offset}`, { timeout: 5000 }, async () => {
      for (const size of [1, 7, 1 << 20]) {
        await assert.rejects(async () => { await decodeAll(c.nar, size) }, (err: Error & { offset?: number }) => {
          assert.equal(err.name, 'NarFormatError')
          assert.match(err.message, c.message)
          assert.match(err.message, new RegExp(`at byte ${c.offset}$`))
          assert.equal(err.offset, c.offset)
          return true
        })
      }
    })
  }

  it('stops at the source error and closes the source', async () => {
    let closed = false
    async function * source (): AsyncGenerator<Uint8Array> {
      try {
        yield good.subarray(0, 40)
        throw new Error('connection reset')
      } finally {
        closed = true
      }
    }
    await assert.rejects(async () => { for await (const _ of decodeNar(source())) { /* drain */ } }, /connection reset/)
    assert.ok(closed)
  })
})
