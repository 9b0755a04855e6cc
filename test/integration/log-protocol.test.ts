// The log protocol between two real libp2p nodes on loopback: a log read whole and followed as
// its file grows, a peer without the log saying so, the size limits, garbage requests refused
// without harm to the server, and the pruning of the logs directory.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { appendFile, mkdir, readdir, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { MeshNetwork } from '../../node/mesh/network.ts'
import { BuildLogs, pruneLogDir, type BuildLogsPorts } from '../../node/mesh/build-logs.ts'
import { buildLogPath } from '../../node/mesh/builder.ts'
import { requestLog, serveLog } from '../../node/mesh/protocols/log.ts'
import { createLogger } from '../../node/log.ts'
import { LOG_BACKLOG_BYTES, LOG_LINE_CHARS, PROTOCOL_LOG, REPLY_TIMEOUT_MS } from '../../protocols/mesh/constants.ts'
import { validateLogFrame, validateLogRequest, type LogFrame } from '../../protocols/mesh/messages.ts'
import type { Job } from '../../node/scheduler/job.ts'
import { validateControlRequest } from '../../node/control/control-protocol.ts'
import { tempDir } from '../helpers/temp-dir.ts'
import { waitFor, within } from '../helpers/wait.ts'

const log = createLogger('test', 'warn')

/** A .drv path of valid syntax with a random hash. */
function drv (name: string): string {
  const nix32 = '0123456789abcdfghijklmnpqrsvwxyz'
  return `/nix/store/${[...randomBytes(32)].map(b => nix32[b % 32]).join('')}-${name}.drv`
}

async function node (bootstrap: string[] = [], penaltiesOff = false): Promise<MeshNetwork> {
  const net = new MeshNetwork({
    privateKey: await generateKeyPair('Ed25519'), listen: ['/ip4/127.0.0.1/tcp/0'], meshSecret: 'log-test', mdns: false, bootstrap, log,
    ...(penaltiesOff ? { penalties: { durationMs: 0 } } : {})
  })
  await net.start()
  return net
}

async function collect (frames: AsyncIterable<LogFrame>): Promise<{ lines: string[], end: LogFrame | undefined }> {
  const lines: string[] = []
  let end: LogFrame | undefined
  for await (const f of frames) {
    if (f.type === 'lines') lines.push(...f.lines)
    else end = f
  }
  return { lines, end }
}

function logsOf (network: MeshNetwork, logDir: string, running: Set<string>, extra: Partial<BuildLogsPorts> = {}): BuildLogs {
  return new BuildLogs({
    selfId: network.peerId,
    logDir,
    network,
    log,
    runningHere: (d) => running.has(d),
    job: () => undefined,
    submissionJobs: () => [],
    allJobs: () => [] as Job[],
    peersBuilding: () => [],
    peers: () => [],
    deriver: async () => undefined,
    ...extra
  })
}

describe('the log protocol', { timeout: 120_000 }, () => {
  let builder: MeshNetwork
  let reader: MeshNetwork
  let dir: { dir: string, cleanup: () => Promise<void> }
  let logDir: string
  const running = new Set<string>()
  let builderLogs: BuildLogs

  before(async () => {
    dir = await tempDir('meshbuild-log-')
    logDir = join(dir.dir, 'logs')
    await mkdir(logDir)
    // Penalties off: the garbage test is about the protocol's checks (penalty-box.ts has its own tests).
    builder = await node([], true)
    const addr = builder.addresses()[0] ?? assert.fail('no address')
    reader = await node([addr])
    await waitFor(() => builder.connectedPeers().includes(reader.peerId), 10_000, 'the reader to connect')
    builderLogs = logsOf(builder, logDir, running)
    await serveLog(builder, builderLogs.local, log)
  })

  after(async () => {
    await reader?.stop()
    await builder?.stop()
    await dir?.cleanup()
  })

  it('sends a finished build\'s log whole, then an end saying it was found', async () => {
    const d = drv('done')
    await writeFile(buildLogPath(logDir, d), 'one\ntwo\nthree without newline')
    const { lines, end } = await within(collect(requestLog(reader, builder.peerId, { drvPath: d, follow: false })), 10_000, 'the log')
    assert.deepEqual(lines, ['one', 'two', 'three without newline'])
    assert.deepEqual(end, { type: 'end', found: true, outcome: 'unknown' })
  })

  it('a peer without the log says so', async () => {
    const { lines, end } = await within(collect(requestLog(reader, builder.peerId, { drvPath: drv('absent'), follow: true })), 10_000, 'the answer')
    assert.deepEqual(lines, [])
    assert.deepEqual(end, { type: 'end', found: false, outcome: 'unknown' })
  })

  it('following, lines arrive as the file grows, and the stream ends when the build does', async () => {
    const d = drv('growing')
    const file = buildLogPath(logDir, d)
    running.add(d)
    const got: string[] = []
    let end: LogFrame | undefined
    const reading = (async () => {
      for await (const f of requestLog(reader, builder.peerId, { drvPath: d, follow: true })) {
        if (f.type === 'lines') got.push(...f.lines)
        else end = f
      }
    })()
    // The file appears after the follow began (a build still fetching its inputs).
    await new Promise(resolve => setTimeout(resolve, 300))
    await writeFile(file, 'first\n')
    await waitFor(() => got.includes('first'), 5_000, 'the first line while the build runs')
    await appendFile(file, 'second\npart')
    await waitFor(() => got.includes('second'), 5_000, 'the second line while the build runs')
    assert.equal(end, undefined, 'no end while the build runs')
    await appendFile(file, 'ial\n')
    running.delete(d)
    builderLogs.onDecision({ type: 'report', owner: reader.peerId, drvPath: d, outcome: { ok: false, failure: { kind: 'build-failed', message: 'x' } } })
    await within(reading, 5_000, 'the end of the followed log')
    assert.deepEqual(got, ['first', 'second', 'partial'])
    assert.deepEqual(end, { type: 'end', found: true, outcome: 'failed' })
  })

  it('sends only the last part of a long log, from a line start, and cuts long lines', async () => {
    const d = drv('long')
    const line = 'x'.repeat(999)
    const count = Math.ceil(LOG_BACKLOG_BYTES / 1000) + 500
    await writeFile(buildLogPath(logDir, d), `${Array.from({ length: count }, () => line).join('\n')}\n${'y'.repeat(LOG_LINE_CHARS + 100)}\n`)
    const { lines, end } = await within(collect(requestLog(reader, builder.peerId, { drvPath: d, follow: false })), 20_000, 'the long log')
    assert.ok(end?.type === 'end' && (end.skippedBytes ?? 0) > 0, 'the end says bytes were skipped')
    assert.ok(lines.slice(0, -1).every(l => l === line), 'every line sent is whole')
    assert.ok(lines.length < count, `${lines.length} of ${count} lines`)
    assert.equal(lines.at(-1)?.length, LOG_LINE_CHARS)
  })

  it('answers a garbage request with a cut stream, not a reply, and keeps serving the others', async () => {
    const rogue = await node([builder.addresses()[0] ?? assert.fail('no address')])
    await waitFor(() => builder.connectedPeers().includes(rogue.peerId), 10_000, 'the rogue to connect')
    const bad: Array<[string, unknown]> = [
      ['not a derivation', { drvPath: '/nix/store/00000000000000000000000000000000-x', follow: false }],
      ['a path outside the store', { drvPath: '/etc/passwd.drv', follow: false }],
      ['a traversal', { drvPath: '/nix/store/../../etc/x.drv', follow: false }],
      ['follow not a boolean', { drvPath: drv('a'), follow: 'yes' }],
      ['a negative offset', { drvPath: drv('a'), follow: false, fromByte: -1 }],
      ['not an object', [1, 2, 3]],
      ['a frame of 4 GiB', undefined]
    ]
    for (const [what, req] of bad) {
      if (req !== undefined) assert.throws(() => validateLogRequest(req), { name: 'SchemaError' }, what)
      try {
        const ch = await rogue.open(builder.peerId, PROTOCOL_LOG)
        if (req === undefined) await ch.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3]))
        else await ch.writeMessage(req)
        const err = await within(ch.readMessage(validateLogFrame, { maxBytes: 1 << 20, timeoutMs: REPLY_TIMEOUT_MS }).then(() => undefined, (e: Error) => e), 10_000, what)
        assert.ok(err !== undefined, `${what}: the rogue got a reply`)
      } catch (err) {
        await rogue.stop()
        throw err
      }
    }
    await rogue.stop()
    const d = drv('after-garbage')
    await writeFile(buildLogPath(logDir, d), 'still here\n')
    const { lines } = await within(collect(requestLog(reader, builder.peerId, { drvPath: d, follow: false })), 10_000, 'an honest request')
    assert.deepEqual(lines, ['still here'])
  })

  it('the reader rejects a malformed frame from a peer', () => {
    assert.throws(() => validateLogFrame({ type: 'lines' }), { name: 'SchemaError' })
    assert.throws(() => validateLogFrame({ type: 'lines', lines: ['x'.repeat(LOG_LINE_CHARS + 1)] }), { name: 'SchemaError' })
    assert.throws(() => validateLogFrame({ type: 'end', found: true }), { name: 'SchemaError' })
    assert.throws(() => validateLogFrame({ type: 'end', found: true, outcome: 'exploded' }), { name: 'SchemaError' })
    assert.deepEqual(validateLogFrame({ type: 'end', found: false, outcome: 'unknown', extra: 1 }), { type: 'end', found: false, outcome: 'unknown' })
  })

  it('a node without the log asks its peers and relays the one that has it', async () => {
    const d = drv('relayed')
    await writeFile(buildLogPath(logDir, d), 'from the builder\n')
    const readerDir = join(dir.dir, 'reader-logs')
    const readerLogs = logsOf(reader, readerDir, new Set(), { peers: () => [builder.peerId] })
    const frames: Array<LogFrame & { from?: string }> = []
    for await (const f of readerLogs.read(d, false, AbortSignal.timeout(10_000))) frames.push(f)
    assert.deepEqual(frames, [
      { type: 'lines', lines: ['from the builder'], from: builder.peerId },
      { type: 'end', found: true, outcome: 'unknown', from: builder.peerId }
    ])
    const none: LogFrame[] = []
    for await (const f of readerLogs.read(drv('nowhere'), false, AbortSignal.timeout(10_000))) none.push(f)
    assert.deepEqual(none, [{ type: 'end', found: false, outcome: 'unknown' }])
  })
})

describe('pruning the logs directory', () => {
  it('deletes logs older than the age limit, then the oldest until under the size cap, never a running build\'s', async () => {
    const { dir, cleanup } = await tempDir('meshbuild-prune-')
    try {
      const now = Date.now()
      const day = 24 * 3600_000
      const files: Array<[string, number, number]> = [
        ['ancient.drv.log', 10, 30 * day], ['running-old.drv.log', 10, 30 * day],
        ['old.drv.log', 400, 3 * day], ['middle.drv.log', 400, 2 * day], ['new.drv.log', 400, 1 * day]
      ]
      for (const [name, size, age] of files) {
        const p = join(dir, name)
        await writeFile(p, 'x'.repeat(size))
        await utimes(p, new Date(now - age), new Date(now - age))
      }
      await writeFile(join(dir, 'not-a-log.txt'), 'kept')
      const removed = await pruneLogDir(dir, { maxAgeMs: 7 * day, maxTotalBytes: 900, now, keep: (n) => n === 'running-old.drv.log' })
      assert.equal(removed, 2)
      assert.deepEqual((await readdir(dir)).sort(), ['middle.drv.log', 'new.drv.log', 'not-a-log.txt', 'running-old.drv.log'])
      assert.equal(await pruneLogDir(join(dir, 'missing'), { maxAgeMs: day, maxTotalBytes: 1, now, keep: () => false }), 0)
    } finally {
      await cleanup()
    }
  })
})

describe('the control socket\'s log requests', () => {
  it('accepts a store path with follow, and a watch asking for logs', () => {
    const d = drv('ok')
    assert.deepEqual(validateControlRequest(JSON.stringify({ op: 'log', path: d, follow: true })), { op: 'log', path: d, follow: true })
    const out = d.replace(/\.drv$/, '')
    assert.deepEqual(validateControlRequest(JSON.stringify({ op: 'log', path: out })), { op: 'log', path: out })
    assert.deepEqual(validateControlRequest(JSON.stringify({ op: 'watch', id: 'x-1', logs: true })), { op: 'watch', id: 'x-1', logs: true })
  })

  it('refuses a path outside the store, a missing path, a non-boolean follow, naming the field', () => {
    for (const [req, field] of [
      [{ op: 'log', path: '/etc/passwd' }, 'request.path'],
      [{ op: 'log' }, 'request.path'],
      [{ op: 'log', path: drv('x'), follow: 1 }, 'request.follow'],
      [{ op: 'watch', id: 'x', logs: 'yes' }, 'request.logs']
    ] as const) {
      assert.throws(() => validateControlRequest(JSON.stringify(req)), (err: Error) => err.name === 'BadRequest' && err.message.startsWith(field), JSON.stringify(req))
    }
  })
})
