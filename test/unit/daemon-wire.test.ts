import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  WireWriter, WireReader, readStderr, readServerHello, readNar, readBuildResult, frameHeader, FRAME_END, DaemonError, DaemonProtocolError, BuildStatus,
  STDERR_LAST, STDERR_NEXT, STDERR_ERROR, STDERR_START_ACTIVITY, STDERR_STOP_ACTIVITY, STDERR_RESULT, WORKER_MAGIC_2
} from '../../protocols/nix/daemon-wire.ts'
import { mkdtempSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { encodeNar } from '../../protocols/nix/nar-encoder.ts'

/** A source that yields the bytes in small pieces and then ends, so no read can hang. */
function readerOf (bytes: Uint8Array, piece = 3): WireReader {
  async function * gen (): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < bytes.length; i += piece) yield bytes.slice(i, i + piece)
  }
  return new WireReader(gen())
}

function rawU64 (value: bigint): Uint8Array {
  const b = new Uint8Array(8)
  new DataView(b.buffer).setBigUint64(0, value, true)
  return b
}

test('u64, bool, strings and string lists round-trip with padding', async () => {
  const bytes = new WireWriter().u64(2 ** 40).bool(true).string('abc').string('').strings(['x', 'yz123456789']).toBytes()
  assert.equal(bytes.length % 8, 0)
  const r = readerOf(bytes)
  assert.equal(await r.readU64('a'), 2 ** 40)
  assert.equal(await r.readBool('b'), true)
  assert.equal(await r.readString('c'), 'abc')
  assert.equal(await r.readString('d'), '')
  assert.deepEqual(await r.readStrings('e'), ['x', 'yz123456789'])
  await assert.rejects(r.readU64('after end'), { name: 'DaemonProtocolError', message: /closed while reading after end/ })
})

test('a truncated string fails naming the field', async () => {
  const bytes = new WireWriter().string('hello world').toBytes().slice(0, 12)
  await assert.rejects(readerOf(bytes).readString('narHash'), { name: 'DaemonProtocolError', message: /closed while reading narHash/ })
})

test('a wrong server magic is rejected', async () => {
  await assert.rejects(readServerHello(readerOf(new WireWriter().u64(0x1234).u64(0x122).toBytes())),
    { name: 'DaemonProtocolError', message: /server magic/ })
  assert.equal(await readServerHello(readerOf(new WireWriter().u64(WORKER_MAGIC_2).u64(0x122).toBytes())), 0x122)
})

test('oversized string and list lengths are rejected before reading them', async () => {
  const huge = rawU64(2n ** 40n)
  await assert.rejects(readerOf(huge).readString('deriver'), { name: 'DaemonProtocolError', message: /deriver: length .* exceeds/ })
  await assert.rejects(readerOf(new WireWriter().u64(10).toBytes()).readStrings('references', 5),
    { name: 'DaemonProtocolError', message: /references: count 10 exceeds/ })
  await assert.rejects(readerOf(new WireWriter().strings(['toolong']).toBytes()).readStrings('sigs', 5, 3),
    { name: 'DaemonProtocolError', message: /sigs\[0\]: length 7 exceeds/ })
})

test('a u64 of 2^53 or more is rejected', async () => {
  await assert.rejects(readerOf(rawU64(2n ** 53n)).readU64('narSize'), { name: 'DaemonProtocolError', message: /narSize: .* too large/ })
})

test('readStderr passes log lines and builder log results, skips activities and other results, and stops at LAST', async () => {
  const bytes = new WireWriter()
    .u64(STDERR_NEXT).string('building')
    .u64(STDERR_START_ACTIVITY).u64(7).u64(3).u64(105).string('text').u64(2).u64(0).u64(5).u64(1).string('f').u64(0)
    .u64(STDERR_RESULT).u64(7).u64(101).u64(1).u64(1).string('log line')
    .u64(STDERR_RESULT).u64(7).u64(105).u64(2).u64(0).u64(3).u64(0).u64(9) // progress: not a log line
    .u64(STDERR_STOP_ACTIVITY).u64(7)
    .u64(STDERR_LAST).u64(42).toBytes()
  const r = readerOf(bytes)
  const lines: string[] = []
  await readStderr(r, (l) => lines.push(l))
  assert.deepEqual(lines, ['building', 'log line'])
  assert.equal(await r.readU64('reply'), 42)
})

test('an unknown stderr code fails naming it', async () => {
  await assert.rejects(readStderr(readerOf(new WireWriter().u64(0x99).toBytes())),
    { name: 'DaemonProtocolError', message: /stderr message code: unknown code 0x99/ })
})

test('a daemon ERROR surfaces with its message', async () => {
  const bytes = new WireWriter().u64(STDERR_ERROR).string('Error').u64(0).string('Error')
    .string("path '/nix/store/x' is not valid").u64(0).u64(1).u64(0).string('trace').toBytes()
  await assert.rejects(readStderr(readerOf(bytes)), (err: unknown) => {
    assert.ok(err instanceof DaemonError)
    assert.equal(err.name, 'DaemonError')
    assert.match(err.message, /is not valid/)
    return true
  })
})

test('a stream ending inside stderr messages fails instead of hanging', async () => {
  await assert.rejects(readStderr(readerOf(new WireWriter().u64(STDERR_NEXT).toBytes())),
    { name: 'DaemonProtocolError', message: /closed while reading stderr log line length/ })
  assert.ok(new DaemonProtocolError('x') instanceof Error)
  assert.equal(STDERR_LAST, 0x616c7473)
})

/** The NAR of what `make` writes at the path it is given, made by the project's encoder. */
async function narOf (make: (path: string) => void): Promise<Uint8Array> {
  const dir = mkdtempSync(join(tmpdir(), 'mb-wire-'))
  try {
    make(join(dir, 'root'))
    return await collect(encodeNar(join(dir, 'root')))
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function collect (source: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = []
  for await (const c of source) parts.push(c)
  return new Uint8Array(Buffer.concat(parts))
}

test('readNar yields a NAR byte for byte and leaves what follows it in the reader', async () => {
  // Names and contents that look like NAR keywords must not confuse the scan.
  const nar = await narOf(root => {
    mkdirSync(join(root, 'bin'), { recursive: true })
    writeFileSync(join(root, ')'), '(contents)')
    writeFileSync(join(root, 'bin', 'tool'), new Uint8Array(200_000).fill(7), { mode: 0o755 })
    mkdirSync(join(root, 'empty'))
    symlinkSync('bin/tool', join(root, 'link'))
    writeFileSync(join(root, 'entry'), '')
  })
  const after = new WireWriter().u64(STDERR_LAST).toBytes()
  for (const piece of [1, 7, 4096, nar.length + after.length]) {
    const r = readerOf(new Uint8Array(Buffer.concat([nar, after])), piece)
    assert.deepEqual(await collect(readNar(r)), nar, `read in pieces of ${piece}`)
    assert.equal(await r.readU64('after the NAR'), STDERR_LAST)
  }
  const single = await narOf(root => { writeFileSync(root, 'x') })
  assert.deepEqual(await collect(readNar(readerOf(single))), single)
})

test('readNar streams large contents without holding them whole', async () => {
  const nar = await narOf(root => { writeFileSync(root, new Uint8Array(8 * 1024 * 1024)) })
  let biggest = 0
  for await (const c of readNar(readerOf(nar, 65536))) biggest = Math.max(biggest, c.length)
  assert.ok(biggest <= 65536 + 64, `largest chunk ${biggest} bytes`)
})

test('readNar refuses what is not a NAR, naming what was wrong, and a truncated one', async () => {
  await assert.rejects(collect(readNar(readerOf(new WireWriter().string('nix-archive-2').toBytes()))),
    { name: 'DaemonProtocolError', message: /NAR magic: expected "nix-archive-1", got "nix-archive-2"/ })
  await assert.rejects(collect(readNar(readerOf(new WireWriter().string('nix-archive-1').string('(').string('type').string('fifo').toBytes()))),
    { name: 'DaemonProtocolError', message: /NAR node type: unknown type "fifo"/ })
  await assert.rejects(collect(readNar(readerOf(new WireWriter().string('nix-archive-1').u64(2 ** 40).toBytes()))),
    { name: 'DaemonProtocolError', message: /NAR node start: length \d+ exceeds the limit/ })
  const nar = await narOf(root => { writeFileSync(root, new Uint8Array(1000)) })
  await assert.rejects(collect(readNar(readerOf(nar.slice(0, 500)))), { name: 'DaemonProtocolError', message: /closed while reading NAR contents/ })
})

test('a BuildResult is read field by field, with its realisations', async () => {
  const bytes = new WireWriter().string('/nix/store/aaaa-x.drv!*').u64(BuildStatus.PermanentFailure).string('builder failed')
    .u64(1).bool(false).u64(100).u64(104).u64(1).string('sha256:abc!out').string('{"outPath":"bbbb-x"}').toBytes()
  assert.deepEqual(await readBuildResult(readerOf(bytes)), {
    path: '/nix/store/aaaa-x.drv!*',
    status: BuildStatus.PermanentFailure,
    errorMsg: 'builder failed',
    timesBuilt: 1,
    isNonDeterministic: false,
    startTime: 100,
    stopTime: 104,
    builtOutputs: { 'sha256:abc!out': '{"outPath":"bbbb-x"}' }
  })
  await assert.rejects(readBuildResult(readerOf(bytes.slice(0, 40))), { name: 'DaemonProtocolError', message: /closed while reading build error message/ })
})

test('frames are a length and the bytes unpadded, ended by an empty frame', () => {
  assert.deepEqual([...frameHeader(3)], [3, 0, 0, 0, 0, 0, 0, 0])
  assert.deepEqual([...FRAME_END], [0, 0, 0, 0, 0, 0, 0, 0])
})
