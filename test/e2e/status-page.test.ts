// The live status page (`/` of the HTTP listener) in a real headless Chromium (Debian's, driven
// by playwright-core): three in-process nodes on loopback build a DAG submitted to A. A alone can
// build the ticker (a feature only it has), which prints markup, then a line a second; B and C
// alone the leaves, one of which fails printing markup too. A's page must show the three peers,
// the ticker's lines arriving and the submission's progress moving without a reload, and the
// markup as text, never run.
//
// Screenshots go to test-artifacts/ (gitignored); MESHBUILD_UPDATE_SCREENSHOT=1 also writes
// docs/status-page.png, the README's.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { setImmediate as yieldToLoop } from 'node:timers/promises'
import { join } from 'node:path'
import { chromium, type Browser, type BrowserServer, type Page } from 'playwright-core'
import type { MeshNode } from '../../node/mesh/mesh-node.ts'
import { createLogger } from '../../node/log.ts'
import { SSE_MAX_BUFFERED_BYTES, SSE_MAX_CLIENTS } from '../../node/observe/events.ts'
import { startHttpListener } from '../../node/observe/http-listener.ts'
import { NodeMetrics } from '../../node/observe/metrics.ts'
import type { StatusReport } from '../../node/mesh/reports.ts'
import { instantiate, shDrv, tempDir } from '../helpers/nix.ts'
import { LOCAL_SYSTEM, startLoopbackNode } from '../helpers/loopback-mesh.ts'
import { waitFor, within } from '../helpers/wait.ts'

const CHROMIUM = '/usr/bin/chromium'
const SECRET = 'status-page-test'
const FEATURE = 'status-page-ticker'
/** Only B and C have it: the leaves build there while A builds the ticker. */
const LEAF_FEATURE = 'status-page-leaf'
const TICKS = 14
const LEAVES = 4
const ARTIFACTS = join(import.meta.dirname, '..', '..', 'test-artifacts')
const DOCS_SCREENSHOT = join(import.meta.dirname, '..', '..', 'docs', 'status-page.png')
const SCRIPT_LINE = '<script>window.pwned=1</script>'
const IMG_LINE = '<img src=x onerror="window.pwned=2">'
const FAIL_LINE = '<b>bold</b><script>window.pwned=3</script>'
const STEP_MS = 30_000

describe('the status page in Chromium', { timeout: 240_000, skip: existsSync(CHROMIUM) ? false : `no ${CHROMIUM} (scripts/setup.sh installs it)` }, () => {
  const nodes: MeshNode[] = []
  let a: MeshNode
  let server: BrowserServer | undefined
  let browser: Browser | undefined
  let dir: string
  let cleanup: (() => Promise<void>) | undefined
  const tag = randomBytes(6).toString('hex')

  before(async () => {
    ({ dir, cleanup } = await tempDir('meshbuild-status-page-'))
    await rm(join(ARTIFACTS, 'status-page-failure.png'), { force: true })
    const httpListen = { host: '127.0.0.1', port: 0 }
    a = await startLoopbackNode(join(dir, 'a'), SECRET, {
      log: createLogger('a', 'error'), httpListen, capabilities: { systems: [LOCAL_SYSTEM], features: [FEATURE], mandatoryFeatures: [] }
    })
    nodes.push(a)
    const bootstrap = [a.network.addresses()[0] ?? assert.fail('A listens nowhere')]
    for (const name of ['b', 'c']) {
      nodes.push(await startLoopbackNode(join(dir, name), SECRET, {
        log: createLogger(name, 'error'), httpListen, bootstrap, capabilities: { systems: [LOCAL_SYSTEM], features: [LEAF_FEATURE], mandatoryFeatures: [] }
      }))
    }
    await waitFor(() => nodes.every(n => n.status().peers.length === 2), 30_000, 'the three nodes to hear each other')
    // A server rather than launch(): its process() is the one to kill should closing fail.
    server = await within(chromium.launchServer({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: STEP_MS }), STEP_MS + 5_000, 'Chromium to start')
    browser = await within(chromium.connect(server.wsEndpoint(), { timeout: STEP_MS }), STEP_MS + 5_000, 'connecting to Chromium')
  })

  after(async () => {
    const proc = server?.process()
    await within(browser?.close() ?? Promise.resolve(), 10_000, 'the browser connection to close').catch(() => {})
    await within(server?.close() ?? Promise.resolve(), 10_000, 'Chromium to close').catch(() => {})
    // Playwright starts Chromium in a process group of its own: end all of it.
    if (proc?.pid !== undefined && proc.exitCode === null) { try { process.kill(-proc.pid, 'SIGKILL') } catch {} }
    for (const n of nodes) await n.stop().catch(() => {})
    await cleanup?.()
  })

  const url = (n: MeshNode): string => `${n.httpUrl ?? assert.fail('the node has no HTTP listener')}/`
  const text = async (page: Page, selector: string): Promise<string> => await page.locator(selector).first().textContent({ timeout: 5_000 }) ?? ''

  it('shows the peers, a build\'s log lines and the submission\'s progress live, markup as text', async () => {
    const page = await (browser ?? assert.fail('no browser')).newPage({ viewport: { width: 1000, height: 700 } })
    const pageErrors: string[] = []
    page.on('pageerror', (err) => { pageErrors.push(err.message) })
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()) })
    try {
      await showsTheMesh(page, pageErrors)
    } catch (err) {
      await mkdir(ARTIFACTS, { recursive: true })
      await page.screenshot({ path: join(ARTIFACTS, 'status-page-failure.png') }).catch(() => {})
      throw err
    } finally {
      await page.close().catch(() => {})
    }
  })

  async function showsTheMesh (page: Page, pageErrors: string[]): Promise<void> {
    const res = await page.goto(url(a), { timeout: STEP_MS })
    assert.equal(res?.status(), 200)
    // A mark in the page's window: gone if the page reloaded.
    await page.evaluate(() => { (globalThis as unknown as { mark: number }).mark = 1 })

    await page.locator('#peers tr[data-peer]').nth(2).waitFor({ timeout: STEP_MS })
    for (const n of nodes) assert.equal(await page.locator(`#peers tr[data-peer="${n.peerId}"]`).count(), 1, `the page lists ${n.peerId}`)
    assert.match(await text(page, '#conn'), /live/)

    const leaves = Array.from({ length: LEAVES }, (_, i) => `l${i}`)
    const leafOnly = `requiredSystemFeatures = [ "${LEAF_FEATURE}" ];`
    const ticker = shDrv(`page-ticker-${tag}`, `echo '${SCRIPT_LINE}'; echo '${IMG_LINE}'; i=0; while [ $i -lt ${TICKS} ]; do i=$((i+1)); echo "tick-$i ${tag}"; /bin/sleep 1; done; echo ${tag} > $out`,
      `requiredSystemFeatures = [ "${FEATURE}" ];`)
    const expr = `let ${leaves.map((n, i) => `${n} = ${shDrv(`page-${n}-${tag}`, `/bin/sleep ${4 + 2 * i}; echo ${n} ${tag} > $out`, leafOnly)};`).join(' ')} ticker = ${ticker}; in {
      ${leaves.map(n => `${n} = ${n};`).join(' ')} ticker = ticker;
      bad = ${shDrv(`page-bad-${tag}`, `/bin/sleep 1; echo '${FAIL_LINE}'; exit 1`, leafOnly)};
      root = ${shDrv(`page-root-${tag}`, `echo \${ticker} ${leaves.map(n => `\${${n}}`).join(' ')} > $out`)}; }`
    const drvs = await instantiate(expr, dir, [...leaves, 'ticker', 'bad', 'root'])
    const tickerDrv = drvs[LEAVES] ?? assert.fail('no ticker')
    const id = await a.submit(drvs, { priority: 0 })
    const row = `#submissions tr[data-submission="${id}"]`

    await page.locator(row).waitFor({ timeout: STEP_MS })
    const firstCounts = await text(page, `${row} td.counts`)
    const log = page.locator(`#running pre[data-drv="${tickerDrv}"]`)
    await log.filter({ hasText: `tick-2 ${tag}` }).waitFor({ timeout: STEP_MS * 2 })
    const early = await log.textContent() ?? ''
    assert.doesNotMatch(early, new RegExp(`tick-${TICKS} `), 'the ticker\'s last line was there from the start: nothing was followed')
    // The other nodes build the leaves meanwhile: the page shows what a peer builds.
    await waitFor(async () => await page.locator('#peers tr[data-peer] td:nth-child(5) span.mono').count() >= 2, STEP_MS, 'a peer\'s build on the page')
    // A later line arrives in the same page.
    await log.filter({ hasText: `tick-6 ${tag}` }).waitFor({ timeout: STEP_MS })
    assert.ok((await log.textContent() ?? '').includes(SCRIPT_LINE), 'the markup the builder echoed shows as text in its log')
    assert.ok((await log.textContent() ?? '').includes(IMG_LINE))
    await mkdir(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: join(ARTIFACTS, 'status-page-running.png') })
    if (process.env.MESHBUILD_UPDATE_SCREENSHOT === '1') await page.screenshot({ path: DOCS_SCREENSHOT })

    await waitFor(async () => await text(page, `${row} td.counts`) !== firstCounts, STEP_MS, 'the submission\'s progress to change on the page')
    await waitFor(() => a.submissionReport(id)?.state === 'failed', 120_000, 'the submission to end (one leaf fails)')
    const finalCounts = `${drvs.length - 1} / ${drvs.length} done, 1 failed`
    await waitFor(async () => /failed/.test(await text(page, `${row} td:nth-child(2)`)) && await text(page, `${row} td.counts`) === finalCounts,
      STEP_MS, `the page to show the submission failed, ${finalCounts}`)
    const failure = page.locator('#failures .failure pre')
    await failure.filter({ hasText: FAIL_LINE }).waitFor({ timeout: STEP_MS })
    assert.equal(await page.locator('#failures b').count(), 0, 'the failure\'s markup made no element')
    assert.equal(await page.locator('body script').count(), 1, 'the page\'s own script only')
    assert.equal(await page.evaluate(() => (globalThis as unknown as { pwned?: number }).pwned), undefined, 'no injected script ran')
    assert.equal(await page.evaluate(() => (globalThis as unknown as { mark?: number }).mark), 1, 'the page was not reloaded')
    await page.screenshot({ path: join(ARTIFACTS, 'status-page-done.png') })
    assert.deepEqual(pageErrors, [], 'the page ran without errors (nor refusals by its Content-Security-Policy)')
  }

  it(`holds at most ${SSE_MAX_CLIENTS} event streams and refuses more with 503, the page still served`, async () => {
    const aborts: AbortController[] = []
    try {
      // The browser's page closed: its stream goes shortly.
      await waitFor(async () => {
        const ctl = new AbortController()
        const r = await fetch(`${url(a)}events`, { signal: ctl.signal })
        ctl.abort()
        await r.body?.cancel().catch(() => {})
        return r.status === 200
      }, 10_000, 'a free event stream')
      for (let i = 0; i < SSE_MAX_CLIENTS; i++) {
        const ctl = new AbortController()
        aborts.push(ctl)
        const r = await fetch(`${url(a)}events`, { signal: ctl.signal })
        assert.equal(r.status, 200, `stream ${i + 1}`)
        assert.match(r.headers.get('content-type') ?? '', /^text\/event-stream/)
      }
      const refused = await fetch(`${url(a)}events`, { signal: AbortSignal.timeout(10_000) })
      assert.equal(refused.status, 503)
      await refused.text()
      const page = await fetch(url(a), { signal: AbortSignal.timeout(10_000) })
      assert.equal(page.status, 200)
      assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'sha256-/)
      await page.text()
    } finally {
      for (const c of aborts) c.abort()
    }
  })
})

describe('the status page\'s event stream', { timeout: 60_000 }, () => {
  it('drops a client that stops reading, and stops following logs once no client is left', async () => {
    // A node at its busiest: builds writing as fast as they can, failures with long tails, a
    // state that changes at every look.
    const drvs = Array.from({ length: 32 }, (_, i) => `/nix/store/${String(i % 10).repeat(32)}-flood-${i}.drv`)
    const long = (n: number): string[] => Array.from({ length: n }, () => 'x'.repeat(4000))
    const line = 'y'.repeat(1000)
    let following = 0
    let looks = 0
    let sentBytes = 0
    const self = {
      peerId: 'self', addresses: [], systems: ['x86_64-linux'], features: [], mandatoryFeatures: [], maxJobs: 32, running: 32, queued: 0, speedFactor: 1,
      load: 0, freeDiskBytes: 0, diskLow: false, building: drvs, lastSeen: new Date().toISOString(), membership: 'closed' as const
    }
    const submission = { id: 's1', state: 'running' as const, counts: { failed: 10 }, submittedAt: new Date().toISOString() }
    const status = (): StatusReport => ({ self: { ...self, load: looks++ }, peers: [], signQueue: 0, submissions: [submission], counters: { built: 0, failed: 0, stolen: 0 }, penalties: [], refusedStreams: {} })
    const metrics = new NodeMetrics({ slots: () => ({ total: 32, busy: 32 }), jobStates: () => new Map(), peers: () => 0, localBuilds: () => ({ built: 0, failed: 0 }) })
    const listener = await startHttpListener(metrics, { host: '127.0.0.1', port: 0 }, {
      status,
      submissionReport: () => ({
        ...submission,
        results: drvs.slice(0, 10).map((d, i) => ({ drvPath: `${d}${i}`, requested: true, state: 'failed' as const, outputs: {}, failure: { kind: 'build-failed' as const, message: `m${looks}`, logTail: long(20) } }))
      }),
      runningHere: () => drvs,
      followLog: async function * (_drv, signal) {
        following++
        try {
          while (!signal.aborted && sentBytes < 1024 * 1024 * 1024) {
            sentBytes += 512 * line.length
            yield { type: 'lines' as const, lines: Array.from({ length: 512 }, () => line) }
            await yieldToLoop()
          }
        } finally { following-- }
      }
    })
    const sock = connect(Number(new URL(listener.url).port), '127.0.0.1')
    try {
      sock.on('error', () => {})
      sock.write('GET /events HTTP/1.1\r\nHost: x\r\n\r\n')
      // Never read: what the server writes piles up in the kernel's buffers, then in its own.
      // (Not reading, the client does not see the close either: the server's side tells.)
      sock.pause()
      await waitFor(() => following > 0, 10_000, 'the stream to begin')
      await waitFor(() => listener.connectionStats().open === 0 && following === 0, 40_000, 'the server to drop the client that does not read, and follow no more')
      assert.ok(sentBytes > SSE_MAX_BUFFERED_BYTES)
      const ctl = new AbortController()
      const r = await fetch(`${listener.url}/events`, { signal: ctl.signal })
      assert.equal(r.status, 200, 'a new client is served after the dropped one')
      // A client that reads is not dropped although the builds write megabytes a second.
      const reader = r.body?.getReader() ?? assert.fail('no body')
      let got = 0
      const until = Date.now() + 3_000
      while (Date.now() < until) {
        const { value, done } = await within(reader.read(), 5_000, 'the stream to go on')
        assert.ok(done !== true, 'the server closed the stream of a client that reads')
        got += value.length
      }
      assert.ok(got > 64 * 1024, `the reading client got ${got} bytes in 3 s`)
      ctl.abort()
    } finally {
      sock.destroy()
      await listener.close()
    }
  })
})
