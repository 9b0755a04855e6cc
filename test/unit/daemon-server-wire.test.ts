// The server side of the worker protocol: requests written as Nix 2.8's remote-store.cc (and
// meshbuild's own client, node/nix/daemon-connection.ts) writes them are decoded field for
// field; replies and stderr messages are read back with the client-side readers of daemon-wire.ts.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  WireWriter, WireReader, readStderr, readServerHello, readNar, frameHeader, FramedReader, FRAME_END,
  WORKER_MAGIC_1, PROTOCOL_VERSION, STDERR_LAST, VERBOSITY_ERROR, BuildStatus, DaemonError
} from '../../protocols/nix/daemon-wire.ts'
import {
  serverHandshake, refuseClientVersion, readSetOptions, buildOptionsOf, readQueryValidPaths, readPathRequest,
  readAddToStoreNar, readAddMultipleToStore, readMultipleCount, readValidPathInfo, readBuildDerivation, readQueryMissing,
  encodePathInfoReply, encodeBuildResult, encodeMissing, stderrError, stderrStartBuild, stderrResult, stderrStopActivity,
  stderrNext, stderrLast, opName
} from '../../protocols/nix/daemon-server-wire.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { encodeNar } from '../../protocols/nix/nar-encoder.ts'
import { narDigestOfPath } from '../../protocols/nix/nar-hash.ts'

const P1 = '/nix/store/00000000000000000000000000000000-a'
const P2 = '/nix/store/11111111111111111111111111111111-b'
const DRV = '/nix/store/22222222222222222222222222222222-c.drv'
const OUT = '/nix/store/33333333333333333333333333333333-c'
const V134 = PROTOCOL_VERSION
const V125 = 0x119

/** A source that yields the bytes in small pieces and then ends, so no read can hang. */
function readerOf (...parts: Uint8Array[]): WireReader {
  const bytes = Buffer.concat(parts)
  async function * gen (): AsyncGenerator<Uint8Array> {
    for (let i = 0; i < bytes.length; i += 5) yield bytes.subarray(i, i + 5)
  }
  return new WireReader(gen())
}

async function collect (source: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const out: Uint8Array[] = []
  for await (const c of source) out.push(c)
  return Buffer.concat(out)
}

function framed (data: Uint8Array, frame = 7): Uint8Array {
  const parts: Uint8Array[] = []
  for (let i = 0; i < data.length; i += frame) { const f = data.subarray(i, i + frame); parts.push(frameHeader(f.length), f) }
  return Buffer.concat([...parts, FRAME_END])
}

test('the handshake: the client sees our magic and version, we see its version; affinity and reserve-space are read', async () => {
  const sent: Uint8Array[] = []
  const client = new WireWriter().u64(WORKER_MAGIC_1).u64(V134).u64(1).u64(3).u64(0).toBytes() // affinity on, CPU 3
  const version = await serverHandshake(readerOf(client), async (b) => { sent.push(b) }, 'test 1.0')
  assert.equal(version, V134)
  const back = readerOf(...sent, stderrLast())
  assert.equal(await readServerHello(back), PROTOCOL_VERSION)
  assert.equal(await back.readString('nix version'), 'test 1.0')
  await readStderr(back)
  assert.equal(refuseClientVersion(V134), null)
  assert.match(refuseClientVersion(0x110) ?? '', /1\.16 is too old/)
  assert.match(refuseClientVersion(0x222) ?? '', /not protocol 1\.x/)
})

test('the handshake refuses a wrong magic, naming it', async () => {
  await assert.rejects(serverHandshake(readerOf(new WireWriter().u64(0x12345678).toBytes()), async () => {}, 'x'),
    { name: 'DaemonProtocolError', message: /client magic: expected 0x6e697863, got 0x12345678/ })
})

test('SetOptions: positional fields and the overrides, with timeout and its alias build-timeout', async () => {
  // The order of remote-store.cc's setOptions (and daemon-connection.ts's).
  const setOptions = (overrides: Array<[string, string]>): Uint8Array => {
    const w = new WireWriter().bool(true).bool(false).bool(true).u64(4).u64(8).u64(30).bool(true).u64(VERBOSITY_ERROR).u64(0).u64(0).u64(2).bool(false)
    w.u64(overrides.length)
    for (const [k, v] of overrides) w.string(k).string(v)
    return w.toBytes()
  }
  const s = await readSetOptions(readerOf(setOptions([['timeout', '2'], ['builders', '']])), V134)
  assert.deepEqual(s, {
    keepFailed: true, keepGoing: false, tryFallback: true, verbosity: 4, maxBuildJobs: 8, maxSilentTime: 30,
    verboseBuild: true, buildCores: 2, useSubstitutes: false, overrides: { timeout: '2', builders: '' }
  })
  assert.deepEqual(buildOptionsOf(s), { maxSilentTime: 30, timeout: 2, verbosity: 4 })
  const alias = await readSetOptions(readerOf(setOptions([['build-timeout', '9']])), V134)
  assert.equal(buildOptionsOf(alias).timeout, 9)
  assert.equal(buildOptionsOf(await readSetOptions(readerOf(setOptions([])), V134)).timeout, 0)
  await assert.rejects(readSetOptions(readerOf(setOptions([]).slice(0, 40)), V134), { message: /closed while reading maxSilentTime/ })
  const tooMany = Buffer.concat([setOptions([]).slice(0, 96), new WireWriter().u64(1e6).toBytes()])
  await assert.rejects(readSetOptions(readerOf(tooMany), V134), { message: /overrides: count 1000000 exceeds the limit/ })
})

test('QueryValidPaths reads the substitute flag from 1.27; bad paths are a BadRequest after the whole list', async () => {
  assert.deepEqual(await readQueryValidPaths(readerOf(new WireWriter().strings([P1, P2]).bool(true).toBytes()), V134), { paths: [P1, P2], substitute: true })
  assert.deepEqual(await readQueryValidPaths(readerOf(new WireWriter().strings([P1]).toBytes()), V125), { paths: [P1], substitute: false })
  const r = readerOf(new WireWriter().strings(['/etc/passwd', P1]).bool(false).u64(7).toBytes())
  await assert.rejects(readQueryValidPaths(r, V134), { name: 'BadRequest', message: /'\/etc\/passwd' is not a store path/ })
  assert.equal(await r.readU64('next op'), 7, 'the stream is still in step')
  await assert.rejects(readPathRequest(readerOf(new WireWriter().u64(2 ** 40).toBytes())), { message: /path: length 1099511627776 exceeds the limit of 4096/ })
})

test('QueryPathInfo\'s reply reads back as ValidPathInfo::read does, narHash in base 16', async () => {
  const narHash = Hash.of('sha256', 'nar')
  const r = readerOf(encodePathInfoReply({ path: P1, narHash, narSize: 120, references: [P2, P1], signatures: ['k:sig'], deriver: DRV, ca: '' }), encodePathInfoReply(null))
  assert.equal(await r.readBool('valid'), true)
  assert.equal(await r.readString('deriver'), DRV)
  const hashText = await r.readString('narHash')
  assert.equal(hashText, Buffer.from(narHash.digest).toString('hex'))
  assert.ok(Hash.parse(hashText, 'sha256').equals(narHash))
  assert.deepEqual(await r.readStrings('references'), [P1, P2])
  assert.equal(await r.readU64('registrationTime'), 0)
  assert.equal(await r.readU64('narSize'), 120)
  assert.equal(await r.readBool('ultimate'), false)
  assert.deepEqual(await r.readStrings('sigs'), ['k:sig'])
  assert.equal(await r.readString('ca'), '')
  assert.equal(await r.readBool('second valid'), false)
})

test('AddToStoreNar: the info as daemon-connection.ts sends it, then the framed NAR', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'server-wire-'))
  try {
    writeFileSync(join(dir, 'f'), 'contents')
    const nar = await collect(encodeNar(dir))
    const { narHash, narSize } = await narDigestOfPath(dir)
    const header = new WireWriter().string(P1).string('').string(Buffer.from(narHash.digest).toString('hex')).strings([P2]).u64(0).u64(narSize)
      .bool(false).strings([]).string('').bool(false).bool(true).toBytes()
    const r = readerOf(header, framed(nar), new WireWriter().u64(99).toBytes())
    const req = await readAddToStoreNar(r)
    assert.deepEqual(req, { info: { path: P1, narHash, narSize, references: [P2], signatures: [] }, repair: false, dontCheckSigs: true })
    const frames = new FramedReader(r)
    assert.deepEqual(await collect(frames), nar)
    assert.equal(frames.ended, true)
    assert.equal(await r.readU64('next op'), 99)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('a framed stream left half read is drained back into step; a broken one is not', async () => {
  const r = readerOf(framed(Buffer.alloc(100, 1)), new WireWriter().u64(5).toBytes())
  const frames = new FramedReader(r)
  for await (const chunk of frames) { assert.ok(chunk.length > 0); break }
  await frames.drain()
  assert.equal(frames.ended, true)
  assert.equal(await r.readU64('next op'), 5)
  const huge = new FramedReader(readerOf(new WireWriter().u64(2 ** 40).toBytes()))
  await assert.rejects(collect(huge), { message: /frame 0: length 1099511627776 exceeds the limit/ })
  const cut = new FramedReader(readerOf(frameHeader(10), Buffer.alloc(4)))
  await assert.rejects(collect(cut), { message: /closed while reading frame 0/ })
  assert.equal(cut.ended, false)
})

test('AddMultipleToStore: repair, dontCheckSigs, then a framed stream of count and (info, NAR) pairs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'server-wire-'))
  try {
    writeFileSync(join(dir, 'one'), '1')
    writeFileSync(join(dir, 'two'), 'second file')
    const nars = [await collect(encodeNar(join(dir, 'one'))), await collect(encodeNar(join(dir, 'two')))]
    const hashes = [Hash.of('sha256', nars[0] ?? ''), Hash.of('sha256', nars[1] ?? '')]
    // store-api.cc copyPaths: the count, then per path info->write(sink, store, 16) (path included) and its NAR.
    const inner = new WireWriter().u64(2)
    const body: Uint8Array[] = [inner.toBytes()]
    ;[[P1, []], [P2, [P1]]].forEach(([path, refs], i) => {
      body.push(new WireWriter().string(path as string).string(DRV).string(Buffer.from(hashes[i]?.digest ?? []).toString('hex'))
        .strings(refs as string[]).u64(1700000000).u64(nars[i]?.length ?? 0).bool(true).strings(['k:s']).string('').toBytes(), nars[i] ?? new Uint8Array())
    })
    const r = readerOf(new WireWriter().bool(false).bool(true).toBytes(), framed(Buffer.concat(body), 13))
    assert.deepEqual(await readAddMultipleToStore(r), { repair: false, dontCheckSigs: true })
    const frames = new FramedReader(r)
    const s = new WireReader(frames)
    assert.equal(await readMultipleCount(s), 2)
    for (let i = 0; i < 2; i++) {
      const info = await readValidPathInfo(s)
      assert.equal(info.path, i === 0 ? P1 : P2)
      assert.equal(info.deriver, DRV)
      assert.ok(info.narHash.equals(hashes[i] as Hash))
      assert.deepEqual(info.references, i === 0 ? [] : [P1])
      assert.deepEqual(info.signatures, ['k:s'])
      assert.deepEqual(await collect(readNar(s)), nars[i])
    }
    await frames.drain()
    assert.equal(frames.ended, true)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('a path info with a narHash that is not one is a BadRequest naming the path', async () => {
  const bytes = new WireWriter().string(P1).string('').string('sha256:nothex').strings([]).u64(0).u64(1).bool(false).strings([]).string('').toBytes()
  await assert.rejects(readValidPathInfo(readerOf(bytes)), { name: 'BadRequest', message: /narHash of '\/nix\/store\/0+-a'/ })
})

test('BuildDerivation: drvPath, the BasicDerivation as writeDerivation sends it, the build mode', async () => {
  const w = new WireWriter().string(DRV)
    .u64(2).string('dev').string(`${OUT}-dev`).string('').string('').string('out').string(OUT).string('').string('')
    .strings([P1]).string('x86_64-linux').string('/bin/sh').strings(['-c', 'echo hi > $out'])
    .u64(2).string('out').string(OUT).string('name').string('c')
    .u64(0)
  const req = await readBuildDerivation(readerOf(w.toBytes()))
  assert.deepEqual(req, {
    drvPath: DRV,
    buildMode: 0,
    derivation: {
      outputs: { dev: { path: `${OUT}-dev`, hashAlgo: '', hash: '' }, out: { path: OUT, hashAlgo: '', hash: '' } },
      inputSrcs: [P1], platform: 'x86_64-linux', builder: '/bin/sh', args: ['-c', 'echo hi > $out'], env: { out: OUT, name: 'c' }
    }
  })
  const notDrv = new WireWriter().string(P1).u64(0).strings([]).string('s').string('b').strings([]).u64(0).u64(0).toBytes()
  await assert.rejects(readBuildDerivation(readerOf(notDrv)), { name: 'BadRequest', message: /is not the store path of a \.drv/ })
  const manyOutputs = new WireWriter().string(DRV).u64(1e9).toBytes()
  await assert.rejects(readBuildDerivation(readerOf(manyOutputs)), { name: 'DaemonProtocolError', message: /outputs: count 1000000000 exceeds/ })
})

test('BuildDerivation\'s reply by client version: times from 1.29, builtOutputs from 1.28', async () => {
  const reply = { status: BuildStatus.PermanentFailure, errorMsg: 'it broke', timesBuilt: 1, startTime: 100, stopTime: 105 }
  const r = readerOf(encodeBuildResult(reply, V134))
  assert.equal(await r.readU64('status'), BuildStatus.PermanentFailure)
  assert.equal(await r.readString('errorMsg'), 'it broke')
  assert.deepEqual([await r.readU64('t'), await r.readBool('nd'), await r.readU64('start'), await r.readU64('stop'), await r.readU64('outputs')], [1, false, 100, 105, 0])
  await assert.rejects(r.readU64('end'), { message: /closed/ })
  assert.equal(encodeBuildResult(reply, V125).length, 8 + 8 + 8)
})

test('QueryMissing: targets with outputs are read as their drv path; the reply has three lists and two sizes', async () => {
  assert.deepEqual(await readQueryMissing(readerOf(new WireWriter().strings([P1, `${DRV}!out`]).toBytes())), [P1, DRV])
  const r = readerOf(encodeMissing([P2]))
  assert.deepEqual([await r.readStrings('b'), await r.readStrings('s'), await r.readStrings('u'), await r.readU64('d'), await r.readU64('n')], [[], [], [P2], 0, 0])
})

test('stderr messages read back with the client\'s readStderr: build log lines, then the error or the end', async () => {
  const lines: string[] = []
  const ok = readerOf(stderrStartBuild(7, DRV), stderrResult(7, 101, ['line one']), stderrNext('daemon says\n'), stderrStopActivity(7), stderrLast())
  await readStderr(ok, (l) => { lines.push(l) })
  assert.deepEqual(lines, ['line one', 'daemon says\n'])
  const failed = readerOf(stderrStartBuild(8, DRV), stderrStopActivity(8), stderrError('the meshbuild builder socket does not serve operation FindRoots', V134))
  await assert.rejects(readStderr(failed), (err: Error) => err instanceof DaemonError && err.message === 'the meshbuild builder socket does not serve operation FindRoots')
  // Before 1.26 the error is the message and an exit status.
  const old = readerOf(stderrError('old form', V125))
  assert.equal(await old.readU64('code'), 0x63787470)
  assert.equal(await old.readString('message'), 'old form')
  assert.equal(await old.readU64('status'), 1)
  assert.equal(STDERR_LAST, 0x616c7473)
  assert.equal(opName(14), 'FindRoots')
  assert.equal(opName(200), 'number 200')
})
