// The HTTP listener's /metrics: two real nodes on loopback (this machine's Nix store), A owning a
// small DAG and B stealing part of it. /metrics is read by a strict parser of Prometheus' text
// format; the counters must move as the DAG builds, and end where the builds say. The listener
// refuses writes and bodies, answers only its paths, and `join`'s default binds loopback only.
//
// Both nodes share one Nix store, where a peer's outputs are valid before the owner fetches
// them, so no NAR would cross. A's store pretends the test's outputs absent until it has
// received them: they stream from B as they would between two machines.
import { describe, it, after, before } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { connect } from 'node:net'
import { networkInterfaces } from 'node:os'
import { join } from 'node:path'
import type { MeshNode } from '../../node/mesh/mesh-node.ts'
import { openLocalStore } from '../../node/nix/local-store.ts'
import type { StoreBackend } from '../../node/nix/store-backend.ts'
import type { StatusReport } from '../../node/mesh/reports.ts'
import { createLogger } from '../../node/log.ts'
import { exec } from '../../node/nix/exec.ts'
import { TOPIC_BEACON } from '../../protocols/mesh/constants.ts'
import { generateKeyPair } from '../../protocols/nix/signing-key.ts'
import { shDrv, instantiate, tempDir } from '../helpers/nix.ts'
import { waitFor, within } from '../helpers/wait.ts'
import { startLoopbackNode } from '../helpers/loopback-mesh.ts'
import { MESHBUILD_BIN } from '../helpers/mesh-hosts.ts'
import { parseHostPort } from '../../node/cli/commands/join.ts'
import { HTTP_LISTEN_DEFAULT_HOST } from '../../node/observe/http-listener.ts'

const SECRET = 'metrics-test'
const LEAVES = 3
const DAG_SIZE = LEAVES + 1
const REPLY_TIMEOUT_MS = 10_000

// --- a strict parser of the text format (version 0.0.4) ------------------------------------

interface Sample { name: string, labels: Record<string, string>, value: number }
interface Family { type: string, help: string, samples: Sample[] }

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*'
const SAMPLE_LINE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: (-?\\d+))?$`)
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"(,|$)/
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped'])

/** Every line must be a HELP, a TYPE or a sample of a family typed before it; anything else throws. */
function parseExposition (text: string): Map<string, Family> {
  assert.ok(text.endsWith('\n'), 'the exposition ends with a newline')
  const families = new Map<string, Family>()
  const help = new Map<string, string>()
  text.slice(0, -1).split('\n').forEach((line, i) => {
    const where = `line ${i + 1}: ${JSON.stringify(line)}`
    if (line === '') return
    let m: RegExpExecArray | null
    if ((m = new RegExp(`^# HELP (${NAME}) (.*)$`).exec(line)) !== null) {
      assert.ok(!help.has(m[1] ?? ''), `${where}: a second HELP`)
      help.set(m[1] ?? '', m[2] ?? '')
      return
    }
    if ((m = new RegExp(`^# TYPE (${NAME}) (\\w+)$`).exec(line)) !== null) {
      const name = m[1] ?? ''
      assert.ok(TYPES.has(m[2] ?? ''), `${where}: unknown type`)
      assert.ok(!families.has(name), `${where}: a second TYPE`)
      families.set(name, { type: m[2] ?? '', help: help.get(name) ?? '', samples: [] })
      return
    }
    assert.ok(!line.startsWith('#'), `${where}: a comment that is neither HELP nor TYPE`)
    m = SAMPLE_LINE.exec(line)
    assert.ok(m !== null, `${where}: not a sample`)
    const name = m[1] ?? ''
    const family = families.get(name) ?? families.get(name.replace(/_(total|sum|count|bucket)$/, ''))
    assert.ok(family !== undefined, `${where}: a sample of no declared family`)
    const labels: Record<string, string> = {}
    let rest = m[2] ?? ''
    while (rest !== '') {
      const l = LABEL.exec(rest)
      assert.ok(l !== null, `${where}: malformed labels at ${JSON.stringify(rest)}`)
      labels[l[1] ?? ''] = (l[2] ?? '').replace(/\\(["\\n])/g, (_, c: string) => c === 'n' ? '\n' : c)
      rest = rest.slice(l[0].length)
    }
    const raw = m[3] ?? ''
    const value = raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : raw === 'NaN' ? NaN : Number(raw)
    assert.ok(raw === 'NaN' || !Number.isNaN(value), `${where}: value ${raw} is not a number`)
    family.samples.push({ name, labels, value })
  })
  for (const [name, f] of families) assert.ok(f.help !== '', `${name} has no HELP text`)
  return families
}

/** The one sample of `name` with these labels (a counter's `_total` name is its own). */
function value (families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number {
  const family = families.get(name) ?? families.get(name.replace(/_total$/, ''))
  assert.ok(family !== undefined, `no metric ${name}`)
  const matching = family.samples.filter(s => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  assert.equal(matching.length, 1, `${name}${JSON.stringify(labels)}: ${matching.length} samples`)
  return matching[0]?.value ?? NaN
}

async function scrape (url: string): Promise<Map<string, Family>> {
  const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(REPLY_TIMEOUT_MS) })
  assert.equal(res.status, 200)
  assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/)
  return parseExposition(await res.text())
}

/** Sends raw bytes to host:port; resolves with the status line and headers the server sent before closing. */
async function raw (port: number, bytes: string | Buffer, host = '127.0.0.1'): Promise<{ status: number, head: string, body: string }> {
  return await within(new Promise((resolve, reject) => {
    const sock = connect(port, host)
    let text = ''
    sock.on('data', (d: Buffer) => { text += d.toString('utf8') })
    // The server closes without reading the body: the rest of our write may meet a reset.
    sock.on('error', (err: NodeJS.ErrnoException) => { if (text === '') reject(err) })
    sock.on('close', () => {
      const [head = '', body = ''] = text.split('\r\n\r\n')
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]), head, body })
    })
    sock.write(bytes)
  }), REPLY_TIMEOUT_MS, 'the listener to answer and close')
}

/**
 * `store`, except that the outputs `absent` picks are not valid until imported; their NARs are
 * read to the end and dropped (the one store holds them already).
 */
function pretendingAbsent (store: StoreBackend, absent: (path: string) => boolean): StoreBackend {
  const received = new Set<string>()
  return new Proxy(store, {
    get (target, prop) {
      if (prop === 'isValid') {
        return async (paths: string[]) => {
          const valid = await target.isValid(paths)
          for (const p of paths) if (absent(p) && !received.has(p)) valid.delete(p)
          return valid
        }
      }
      if (prop === 'importNars') {
        const importNars: StoreBackend['importNars'] = async (infos, nars) => {
          for await (const { path, nar } of nars) {
            for await (const _ of nar) {}
            received.add(path)
          }
          return { imported: infos.map(i => i.path) }
        }
        return importNars
      }
      const v: unknown = Reflect.get(target, prop, target)
      return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v
    }
  })
}

describe('the HTTP listener\'s /metrics', { timeout: 240_000 }, () => {
  const nodes: MeshNode[] = []
  let a: MeshNode
  let b: MeshNode
  let dir: string
  let cleanup: (() => Promise<void>) | undefined
  const tag = randomBytes(6).toString('hex')
  const realStore = openLocalStore()
  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-metrics-'))
    const httpListen = { host: '127.0.0.1', port: 0 }
    const store = pretendingAbsent(realStore, p => p.includes(tag) && !p.endsWith('.drv'))
    a = await startLoopbackNode(join(dir, 'a'), SECRET, { log: createLogger('a', 'error'), httpListen, store })
    nodes.push(a)
    b = await startLoopbackNode(join(dir, 'b'), SECRET, {
      log: createLogger('b', 'error'), httpListen, maxJobs: 2,
      bootstrap: [a.network.addresses()[0] ?? assert.fail('A listens nowhere')]
    })
    nodes.push(b)
    await waitFor(() => a.status().peers.some(p => p.peerId === b.peerId) && b.status().peers.some(p => p.peerId === a.peerId), 20_000, 'A and B to hear each other')
  })
  after(async () => {
    for (const n of nodes) await n.stop().catch(() => {})
    realStore.close()
    await cleanup?.()
  })

  const urlOf = (n: MeshNode): string => n.httpUrl ?? assert.fail('the node has no HTTP listener')
  const portOf = (n: MeshNode): number => Number(new URL(urlOf(n)).port)

  it('shows the status report\'s listener and every metric with its HELP, before any work', async () => {
    assert.equal(a.status().http?.metrics, `${urlOf(a)}/metrics`)
    const m = await scrape(urlOf(a))
    assert.equal(value(m, 'meshbuild_slots'), 1)
    assert.equal(value(m, 'meshbuild_slots_busy'), 0)
    assert.equal(value(m, 'meshbuild_peers'), 1)
    for (const state of ['waiting', 'ready', 'leased', 'importing', 'built', 'failed']) assert.equal(value(m, 'meshbuild_queue_jobs', { state }), 0)
    for (const name of ['meshbuild_jobs_built_total', 'meshbuild_jobs_failed_total', 'meshbuild_jobs_retried_total', 'meshbuild_steals_asked_total', 'meshbuild_steals_granted_total', 'meshbuild_steals_refused_total']) {
      assert.equal((m.get(name) ?? m.get(name.replace(/_total$/, '')))?.type, 'counter', `${name} is a counter`)
      assert.equal(value(m, name), 0, name)
    }
    assert.equal(value(m, 'meshbuild_nar_bytes_total', { direction: 'received' }), 0)
    // A is no signer: the cache's metrics are not there at all.
    assert.equal(m.get('meshbuild_cache_paths'), undefined)
  })

  it('moves its counters as a DAG builds: jobs built equals the DAG, NAR bytes reach the owner', async () => {
    const leaves = Array.from({ length: LEAVES }, (_, i) => `l${i}`)
    const expr = `let ${leaves.map(n => `${n} = ${shDrv(`metrics-${n}-${tag}`, `/bin/sleep 2; echo ${n} ${tag} > $out`)};`).join(' ')} in ` +
      `{ ${leaves.map(n => `${n} = ${n};`).join(' ')} root = ${shDrv(`metrics-root-${tag}`, `echo ${leaves.map(n => `\${${n}}`).join(' ')} > $out`)}; }`
    const drvs = await instantiate(expr, dir, [...leaves, 'root'])
    assert.equal(drvs.length, DAG_SIZE)
    const beaconsBefore = value(await scrape(urlOf(a)), 'meshbuild_gossip_messages_received_total', { topic: TOPIC_BEACON })

    const id = await a.submit(drvs, { priority: 0 })
    // Gauges are read at scrape time: A's one slot shows busy while a leaf builds.
    await waitFor(async () => value(await scrape(urlOf(a)), 'meshbuild_slots_busy') === 1, 60_000, 'A\'s /metrics to show its slot busy')
    await waitFor(() => a.submissionReport(id)?.state === 'built', 180_000, 'the submission to finish')
    const stolen = a.submissionReport(id)?.results.filter(r => r.builtBy === b.peerId).length ?? 0
    assert.ok(stolen > 0, 'B stole none of the jobs: the test needs a peer\'s build to see NAR bytes move')

    const ma = await scrape(urlOf(a))
    const mb = await scrape(urlOf(b))
    assert.equal(value(ma, 'meshbuild_jobs_built_total'), DAG_SIZE)
    assert.equal(value(ma, 'meshbuild_queue_jobs', { state: 'built' }), DAG_SIZE)
    assert.equal(value(ma, 'meshbuild_queue_jobs', { state: 'ready' }), 0)
    assert.equal(value(ma, 'meshbuild_jobs_failed_total'), 0)
    // B builds for A, but owns nothing.
    assert.equal(value(mb, 'meshbuild_jobs_built_total'), 0)
    assert.equal(value(ma, 'meshbuild_local_builds_total', { outcome: 'built' }) + value(mb, 'meshbuild_local_builds_total', { outcome: 'built' }), DAG_SIZE)
    assert.equal(value(mb, 'meshbuild_local_builds_total', { outcome: 'built' }), stolen)
    assert.ok(value(ma, 'meshbuild_nar_bytes_total', { direction: 'received' }) > 0, 'A imported B\'s outputs: NAR bytes received')
    assert.ok(value(mb, 'meshbuild_nar_bytes_total', { direction: 'sent' }) >= value(ma, 'meshbuild_nar_bytes_total', { direction: 'received' }),
      'B sent at least what A received from it')
    assert.ok(value(mb, 'meshbuild_steals_asked_total') >= 1)
    assert.ok(value(ma, 'meshbuild_steals_granted_total') >= 1)
    assert.ok(value(ma, 'meshbuild_gossip_messages_received_total', { topic: TOPIC_BEACON }) > beaconsBefore, 'A heard B\'s beacons meanwhile')
  })

  it('refuses writes with 405 and Allow: GET, HEAD', async () => {
    const r = await raw(portOf(a), 'POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello')
    assert.equal(r.status, 405)
    assert.match(r.head, /\r\nAllow: GET, HEAD\r\n/i)
    for (const method of ['PUT', 'DELETE']) assert.equal((await raw(portOf(a), `${method} /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)).status, 405, method)
  })

  it('refuses a request with a body, and headers over the limit, without reading them', async () => {
    const big = Buffer.alloc(1024 * 1024, 'x')
    const withBody = await raw(portOf(a), Buffer.concat([Buffer.from(`GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: ${big.length}\r\n\r\n`), big]))
    assert.equal(withBody.status, 413)
    assert.doesNotMatch(withBody.body, /meshbuild_/, 'no metrics for a request with a body')
    const chunked = await raw(portOf(a), 'GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n')
    assert.equal(chunked.status, 413)
    const hugeHeader = await raw(portOf(a), `GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ${'y'.repeat(64 * 1024)}\r\n\r\n`)
    assert.equal(hugeHeader.status, 431)
  })

  it('answers /healthz and HEAD, and 404 for any path it does not serve', async () => {
    const health = await fetch(`${urlOf(a)}/healthz`, { signal: AbortSignal.timeout(REPLY_TIMEOUT_MS) })
    assert.equal(health.status, 200)
    assert.equal(await health.text(), 'ok\n')
    const head = await raw(portOf(a), 'HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    assert.equal(head.status, 200)
    assert.equal(head.body, '')
    // `/` is the status page (test/e2e/status-page.test.ts).
    for (const path of ['/index.html', '/metrics/', '/../metrics', '/nix-cache-info', '/events/']) {
      assert.equal((await raw(portOf(a), `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)).status, 404, path)
    }
  })
})

describe('the signer\'s /metrics', { timeout: 60_000 }, () => {
  let signer: MeshNode | undefined
  let cleanup: (() => Promise<void>) | undefined
  after(async () => {
    await signer?.stop().catch(() => {})
    await cleanup?.()
  })

  it('shows the cache\'s paths, bytes, lookups and refusals, the lookups moving as the cache is asked', async () => {
    const tmp = await tempDir('meshbuild-metrics-signer-')
    cleanup = tmp.cleanup
    const s = signer = await startLoopbackNode(join(tmp.dir, 's'), SECRET, {
      log: createLogger('s', 'error'), maxJobs: 0, httpListen: { host: '127.0.0.1', port: 0 },
      signer: { cacheKey: generateKeyPair('metrics-cache-1').secretKey, cacheDir: join(tmp.dir, 'cache'), cacheListen: { host: '127.0.0.1', port: 0 } }
    })
    const url = s.httpUrl ?? assert.fail('the signer has no HTTP listener')
    const before = await scrape(url)
    for (const name of ['meshbuild_cache_paths', 'meshbuild_cache_nar_bytes', 'meshbuild_cache_hits_total', 'meshbuild_cache_misses_total', 'meshbuild_signer_refused_total']) {
      assert.equal(value(before, name), 0, name)
    }
    const cacheUrl = s.status().signer?.cacheUrls[0] ?? assert.fail('the signer serves no cache')
    for (let i = 0; i < 2; i++) {
      const r = await fetch(`${cacheUrl}/${'0'.repeat(32)}.narinfo`, { signal: AbortSignal.timeout(REPLY_TIMEOUT_MS) })
      assert.equal(r.status, 404)
      await r.arrayBuffer()
    }
    const after = await scrape(url)
    assert.equal(value(after, 'meshbuild_cache_misses_total'), 2)
    assert.equal(value(after, 'meshbuild_cache_hits_total'), 0)
  })
})

describe('join --http-listen', { timeout: 60_000 }, () => {
  let child: ChildProcess | undefined
  let cleanup: (() => Promise<void>) | undefined
  after(async () => {
    if (child?.exitCode === null) {
      child.kill('SIGTERM')
      await within(new Promise(resolve => child?.once('exit', resolve)), 20_000, 'join to stop').catch(() => { child?.kill('SIGKILL') })
    }
    await cleanup?.()
  })

  for (const [given, expected] of [
    ['9464', { host: '127.0.0.1', port: 9464 }],
    [':9464', { host: '127.0.0.1', port: 9464 }],
    ['0.0.0.0:9464', { host: '0.0.0.0', port: 9464 }],
    ['[::1]:9464', { host: '::1', port: 9464 }],
    ['localhost:0', { host: 'localhost', port: 0 }],
    ['off-by-one', undefined],
    ['9464:', undefined],
    ['127.0.0.1:70000', undefined]
  ] as const) {
    it(`takes ${given} as ${expected === undefined ? 'a usage error' : `${expected.host} port ${expected.port}`}`, () => {
      if (expected === undefined) assert.throws(() => parseHostPort('--http-listen', given, HTTP_LISTEN_DEFAULT_HOST), { name: 'UsageError' })
      else assert.deepEqual(parseHostPort('--http-listen', given, HTTP_LISTEN_DEFAULT_HOST), expected)
    })
  }

  it('by default binds 127.0.0.1 only, logs the metrics URL, and status prints it', async (t) => {
    const external = Object.values(networkInterfaces()).flat().find(i => i?.family === 'IPv4' && !i.internal)?.address
    if (external === undefined) { t.skip('no non-loopback IPv4 address to check the listener is not on'); return }
    const tmp = await tempDir('meshbuild-http-listen-')
    cleanup = tmp.cleanup
    const dataDir = join(tmp.dir, 'node')
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('MESHBUILD_')))
    const proc = child = spawn(process.execPath, [MESHBUILD_BIN, 'join', '--data-dir', dataDir, '--no-mdns', '--listen', '/ip4/127.0.0.1/tcp/0', '--max-jobs', '0'], { env, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    proc.stderr?.on('data', (d: Buffer) => { stderr += d.toString('utf8') })
    await waitFor(() => / ready; control socket /.test(stderr) || proc.exitCode !== null, 30_000, 'join to start')
    const said = /metrics on (http:\/\/[^/\s]+)\/metrics/.exec(stderr)
    assert.ok(said !== null, `join did not log its metrics URL:\n${stderr}`)
    const url = new URL(said[1] ?? '')
    assert.equal(url.hostname, '127.0.0.1')

    const st = await exec(process.execPath, [MESHBUILD_BIN, 'status', '--json', '--data-dir', dataDir], { env, signal: AbortSignal.timeout(REPLY_TIMEOUT_MS) })
    assert.equal(st.code, 0, st.stderr)
    const report = JSON.parse(st.stdout.toString('utf8')) as StatusReport
    assert.equal(report.http?.url, url.origin)
    const text = await exec(process.execPath, [MESHBUILD_BIN, 'status', '--data-dir', dataDir], { env, signal: AbortSignal.timeout(REPLY_TIMEOUT_MS) })
    assert.match(text.stdout.toString('utf8'), new RegExp(`^HTTP: status page ${url.origin.replace(/[.]/g, '\\.')}/, Prometheus metrics at ${url.origin.replace(/[.]/g, '\\.')}/metrics$`, 'm'))

    assert.equal((await raw(Number(url.port), 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).status, 200)
    // The same port on this machine's other address: nothing listens there.
    await assert.rejects(raw(Number(url.port), 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', external), { code: 'ECONNREFUSED' })
  })
})
