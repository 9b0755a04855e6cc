// Fuzzing the control socket: validateControlRequest on mutated request lines, and the real
// control server (a stub node behind it) on mutated bytes over its Unix socket. A request either
// reaches the node with every field in range or is answered {ok:false}; the server answers or
// closes every connection promptly and keeps serving.
import assert from 'node:assert/strict'
import { connect } from 'node:net'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import type { Server } from 'node:net'
import { startControlServer } from '../../node/control/control-server.ts'
import type { ControlledNode } from '../../node/control/controlled-node.ts'
import { MAX_PRIORITY, MIN_PRIORITY, validateControlRequest } from '../../node/control/control-protocol.ts'
import { createLogger } from '../../node/log.ts'
import type { StatusReport } from '../../node/mesh/reports.ts'
import { tempDir } from '../helpers/nix.ts'
import { fuzz, fuzzInput, mutateValue, SEED } from './fuzz.ts'

const DRV = '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello.drv'
const SAMPLES = [
  { op: 'submit', drvPaths: [DRV, DRV.replace('hello', 'world')], priority: 5, timeout: 60, maxSilentTime: 30, checkReproducible: true },
  { op: 'submit', drvPaths: [DRV], priority: 0 },
  { op: 'status' },
  { op: 'submission', id: '20261202T170000-abcdef01' },
  { op: 'watch', id: '20261202T170000-abcdef01' }
]
const LINES = SAMPLES.map(s => Buffer.from(`${JSON.stringify(s)}\n`))

/** What reaches the node must be in range, whatever the client sent. */
function checkSubmit (drvPaths: unknown, opts: { priority?: unknown, timeout?: unknown, maxSilentTime?: unknown }): void {
  assert.ok(Array.isArray(drvPaths) && drvPaths.length > 0 && drvPaths.every(p => typeof p === 'string' && p.startsWith('/nix/store/') && p.endsWith('.drv')), `drvPaths ${JSON.stringify(drvPaths)}`)
  assert.ok(Number.isInteger(opts.priority) && (opts.priority as number) >= MIN_PRIORITY && (opts.priority as number) <= MAX_PRIORITY, `priority ${String(opts.priority)}`)
  for (const s of [opts.timeout, opts.maxSilentTime]) assert.ok(s === undefined || (Number.isInteger(s) && (s as number) > 0), `seconds ${String(s)}`)
}

describe(`fuzzing the control socket (seed ${SEED})`, { timeout: 120_000 }, () => {
  let dir: string
  let cleanup: () => Promise<void>
  let server: Server
  let socketPath: string
  const submits: string[] = []
  /** Out-of-range submits that reached the node (the server would turn a throw into a reply). */
  const violations: string[] = []

  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-fuzz-control-'))
    socketPath = join(dir, 'control.sock')
    const stub: ControlledNode = {
      submit: async (drvPaths, opts) => {
        try { checkSubmit(drvPaths, opts) } catch (err) { violations.push((err as Error).message) }
        submits.push(drvPaths[0] ?? '')
        return 'sub-1'
      },
      status: () => ({ self: { peerId: 'self' } }) as unknown as StatusReport,
      submissionReport: () => undefined,
      watch: () => () => {}
    }
    server = await startControlServer(stub, socketPath, createLogger('control', 'error'))
  })
  after(async () => {
    await new Promise<void>(resolve => { server?.close(() => { resolve() }) })
    await cleanup?.()
  })

  it('validateControlRequest: mutated lines end in BadRequest or a request with every field in range', async () => {
    const r = await fuzz({
      name: 'control-request',
      iterations: 20000,
      input: (rng) => rng.int(2) === 0
        ? fuzzInput(rng, LINES).toString('utf8').split('\n')[0] ?? ''
        : JSON.stringify(mutateValue(rng, rng.pick(SAMPLES))),
      run: (line) => {
        const req = validateControlRequest(line)
        if (req.op === 'submit') checkSubmit(req.drvPaths, req)
      },
      allowed: ['BadRequest']
    })
    assert.ok(r.ok > 0 && (r.errors.BadRequest ?? 0) > 0, JSON.stringify(r))
  })

  it('the control server answers or closes every mutated request promptly, and stays up', async () => {
    let answered = 0
    await fuzz({
      name: 'control-server',
      iterations: 2000,
      input: (rng) => fuzzInput(rng, LINES),
      run: async (bytes) => {
        await new Promise<void>((resolve, reject) => {
          const s = connect(socketPath)
          let got = ''
          s.on('data', (d: Buffer) => { got += d.toString() })
          s.on('error', reject)
          s.on('close', () => {
            // Whatever it says is one JSON reply per line.
            for (const line of got.split('\n').filter(l => l !== '')) {
              const reply = JSON.parse(line) as { ok: boolean }
              assert.equal(typeof reply.ok, 'boolean')
              answered++
            }
            resolve()
          })
          // A watch stays open: the client hangs up once it has an answer.
          s.on('data', () => { s.end() })
          s.end(bytes)
        })
      },
      allowed: []
    })
    assert.ok(answered > 0, 'the server never answered')
    assert.deepEqual(violations, [], 'requests out of range reached the node')
    // Still serving a good request afterwards.
    const reply = await new Promise<string>((resolve, reject) => {
      const s = connect(socketPath)
      let got = ''
      s.on('data', (d: Buffer) => { got += d.toString() })
      s.on('error', reject)
      s.on('close', () => { resolve(got) })
      s.write(`${JSON.stringify({ op: 'status' })}\n`)
    })
    assert.equal((JSON.parse(reply) as { ok: boolean }).ok, true)
  })
})
