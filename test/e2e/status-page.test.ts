// The live status page (`/` of the HTTP listener) in a real headless Chromium (Debian's, driven
// by playwright-core) on a three-host test mesh: `meshbuild join` in each host, a DAG submitted to
// A. A alone can build the ticker (a feature only it has), which prints markup, then a line a
// second; B and C alone the leaves, one of which fails printing markup too. A's page must show the
// three peers, the ticker's lines arriving and the submission's progress moving without a reload,
// and the markup as text, never run.
//
// A's listener is on loopback inside its host, out of reach of the root namespace, so the browser
// runs in A too: test/helpers/page-probe.ts reports what the page shows, this file asserts on it.
// The event stream's limits are tested in-process: test/integration/status-page-limits.test.ts.
//
// Screenshots go to test-artifacts/ (gitignored); MESHBUILD_UPDATE_SCREENSHOT=1 also writes
// docs/status-page.png, the README's.
import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { copyFile, mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import type { ChildProcess } from 'node:child_process'
import { TestNetwork } from '../helpers/test-hosts.ts'
import { cli, instantiateIn, startNode, status, waitForMesh, type MeshNodeHandle } from '../helpers/mesh-hosts.ts'
import { shDrv } from '../helpers/nix.ts'
import type { PageView, ProbeCommand, ProbeReport } from '../helpers/page-probe.ts'
import { waitFor, within } from '../helpers/wait.ts'

const CHROMIUM = '/usr/bin/chromium'
const PROBE = join(import.meta.dirname, '..', 'helpers', 'page-probe.ts')
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

/** The probe running in a host: its reports as they arrive, and a way to send it commands. */
interface Probe {
  child: ChildProcess
  reports: ProbeReport[]
  stderr: () => string
  send: (cmd: ProbeCommand) => void
}

function startProbe (node: MeshNodeHandle, url: string): Probe {
  const child = node.host.spawn(process.execPath, [PROBE, url, CHROMIUM])
  const reports: ProbeReport[] = []
  let err = ''
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { err += d })
  createInterface({ input: child.stdout ?? assert.fail('the probe has no stdout') }).on('line', (line) => {
    reports.push(JSON.parse(line) as ProbeReport)
  })
  child.stdin?.on('error', () => {}) // it may be gone already
  return { child, reports, stderr: () => err, send: (cmd) => { child.stdin?.write(JSON.stringify(cmd) + '\n') } }
}

const killGroup = (pid: number | null | undefined): void => {
  if (pid == null) return
  try { process.kill(-pid, 'SIGKILL') } catch {}
}

describe('the status page in Chromium on a three-host test mesh', { timeout: 300_000, skip: existsSync(CHROMIUM) ? false : `no ${CHROMIUM} (scripts/setup.sh installs it)` }, () => {
  let net: TestNetwork | undefined
  let nodes: MeshNodeHandle[] = []
  let a: MeshNodeHandle
  let probe: Probe | undefined
  const tag = randomBytes(6).toString('hex')

  before(async () => {
    await rm(join(ARTIFACTS, 'status-page-failure.png'), { force: true })
    net = await TestNetwork.create({ hosts: 3 })
    const n = net
    nodes = await Promise.all([0, 1, 2].map(async i => await startNode(n, n.host(i), {
      args: ['--http-listen', '127.0.0.1:0', '--features', i === 0 ? FEATURE : LEAF_FEATURE]
    })))
    a = nodes[0] ?? assert.fail('no node A')
    await waitForMesh(nodes)
  })

  after(async () => {
    if (probe !== undefined) {
      const p = probe
      const exited = new Promise<void>((resolve) => { if (p.child.exitCode !== null || p.child.signalCode !== null) resolve(); else p.child.once('exit', () => { resolve() }) })
      p.send({ quit: true })
      p.child.stdin?.end()
      await within(exited, 10_000, 'the probe to close Chromium and exit').catch(() => {})
      // Chromium leads a process group of its own (Playwright's doing): end it and the probe's.
      for (const r of p.reports) if (r.kind === 'browser') killGroup(r.pid)
      killGroup(p.child.pid)
    }
    // SIGTERM to every process of the hosts (the nodes, anything the probe left), SIGKILL after a
    // grace; then their namespaces go.
    await net?.destroy()
  })

  it('shows the peers, a build\'s log lines and the submission\'s progress live, markup as text', async () => {
    const s = await status(a)
    const url = `${s.http?.url ?? assert.fail('node A has no HTTP listener')}/`
    assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/$/)
    const p = startProbe(a, url)
    probe = p
    await mkdir(ARTIFACTS, { recursive: true })
    try {
      await showsTheMesh(p, url)
    } catch (err) {
      await shot(p, join(ARTIFACTS, 'status-page-failure.png')).catch(() => {})
      throw err
    }
  })

  /** The first report that `pick` maps to something, waiting up to timeoutMs for it. */
  async function next<T> (p: Probe, pick: (r: ProbeReport) => T | undefined, timeoutMs: number, what: string, from = 0): Promise<{ value: T, index: number }> {
    let found: { value: T, index: number } | undefined
    let seen = from
    await waitFor(() => {
      for (; seen < p.reports.length; seen++) {
        const r = p.reports[seen] as ProbeReport
        if (r.kind === 'failed') throw new Error(`the probe failed: ${r.message}\n${p.stderr()}`)
        const value = pick(r)
        if (value !== undefined) { found = { value, index: seen }; return true }
      }
      if (p.child.exitCode !== null || p.child.signalCode !== null) throw new Error(`the probe exited (${p.child.exitCode ?? p.child.signalCode}) before ${what}\n${p.stderr()}`)
      return false
    }, timeoutMs, what)
    return found ?? assert.fail(`no ${what}`)
  }

  /** The first snapshot from report `from` on for which `pick` gives something. */
  async function view<T> (p: Probe, pick: (v: PageView) => T | undefined | false, timeoutMs: number, what: string, from = 0): Promise<{ value: T, v: PageView, index: number }> {
    const r = await next(p, (r) => {
      if (r.kind !== 'snapshot') return undefined
      const value = pick(r.view)
      return value === undefined || value === false ? undefined : { value, v: r.view }
    }, timeoutMs, `the page to show ${what}`, from)
    return { ...r.value, index: r.index }
  }

  async function shot (p: Probe, path: string): Promise<void> {
    const from = p.reports.length
    p.send({ shot: path })
    const r = await next(p, (r) => r.kind === 'shot' && r.path === path ? r : undefined, STEP_MS + 5_000, `the screenshot ${path}`, from)
    if (r.value.error !== undefined) assert.fail(`screenshot ${path}: ${r.value.error}`)
  }

  async function showsTheMesh (p: Probe, url: string): Promise<void> {
    await next(p, (r) => r.kind === 'browser' ? r : undefined, STEP_MS + 5_000, 'Chromium to start in host A')
    const loaded = await next(p, (r) => r.kind === 'loaded' ? r : undefined, STEP_MS + 5_000, `Chromium in host A to load ${url}`)
    assert.equal(loaded.value.status, 200)

    const peers = await view(p, v => v.peers.length >= 3 && v, STEP_MS, 'three peers', loaded.index)
    for (const n of nodes) assert.equal(peers.v.peers.filter(id => id === n.peerId).length, 1, `the page lists ${n.peerId} once`)
    assert.match(peers.v.conn, /live/)

    const leaves = Array.from({ length: LEAVES }, (_, i) => `l${i}`)
    const leafOnly = `requiredSystemFeatures = [ "${LEAF_FEATURE}" ];`
    const ticker = shDrv(`page-ticker-${tag}`, `echo '${SCRIPT_LINE}'; echo '${IMG_LINE}'; i=0; while [ $i -lt ${TICKS} ]; do i=$((i+1)); echo "tick-$i ${tag}"; /bin/sleep 1; done; echo ${tag} > $out`,
      `requiredSystemFeatures = [ "${FEATURE}" ];`)
    const expr = `let ${leaves.map((n, i) => `${n} = ${shDrv(`page-${n}-${tag}`, `/bin/sleep ${4 + 2 * i}; echo ${n} ${tag} > $out`, leafOnly)};`).join(' ')} ticker = ${ticker}; in {
      ${leaves.map(n => `${n} = ${n};`).join(' ')} ticker = ticker;
      bad = ${shDrv(`page-bad-${tag}`, `/bin/sleep 1; echo '${FAIL_LINE}'; exit 1`, leafOnly)};
      root = ${shDrv(`page-root-${tag}`, `echo \${ticker} ${leaves.map(n => `\${${n}}`).join(' ')} > $out`)}; }`
    const drvs = await instantiateIn(net ?? assert.fail('no test network'), a.host, expr, [...leaves, 'ticker', 'bad', 'root'])
    assert.equal(drvs.length, LEAVES + 3)
    const tickerDrv = drvs[LEAVES] ?? assert.fail('no ticker')
    const submitted = await cli(a, ['submit', '-', '--detach', '--json', '--priority', '0'], drvs.join('\n') + '\n', 20_000)
    assert.equal(submitted.code, 0, submitted.stderr)
    const id = (JSON.parse(submitted.stdout) as { id: string }).id

    const row = await view(p, v => v.submissions.find(x => x.id === id), STEP_MS, `submission ${id}`, peers.index)
    const firstCounts = row.value.counts
    const log = (v: PageView): string | undefined => v.running.find(r => r.drv === tickerDrv)?.text
    const early = await view(p, v => log(v)?.includes(`tick-2 ${tag}`) === true && log(v), STEP_MS * 2, 'the ticker\'s second line', row.index)
    assert.doesNotMatch(early.value, new RegExp(`tick-${TICKS} `), 'the ticker\'s last line was there from the start: nothing was followed')
    // The other hosts build the leaves meanwhile: the page shows what a peer builds.
    const peerBuilds = await view(p, v => v.peerBuilds >= 2, STEP_MS, 'a peer\'s build', early.index)
    // A later line arrives in the same page.
    const later = await view(p, v => log(v)?.includes(`tick-6 ${tag}`) === true && log(v), STEP_MS, 'the ticker\'s sixth line', peerBuilds.index)
    assert.ok(later.value.includes(SCRIPT_LINE), 'the markup the builder echoed shows as text in its log')
    assert.ok(later.value.includes(IMG_LINE))
    const running = join(ARTIFACTS, 'status-page-running.png')
    await shot(p, running)
    if (process.env.MESHBUILD_UPDATE_SCREENSHOT === '1') await copyFile(running, DOCS_SCREENSHOT)

    await view(p, v => v.submissions.find(x => x.id === id && x.counts !== firstCounts), STEP_MS, 'the submission\'s progress change', later.index)
    await waitFor(async () => (await status(a)).submissions.find(x => x.id === id)?.state === 'failed', 120_000, 'the submission to end (one leaf fails)', 500)
    const finalCounts = `${drvs.length - 1} / ${drvs.length} done, 1 failed`
    const done = await view(p, v => v.submissions.find(x => x.id === id && /failed/.test(x.state) && x.counts === finalCounts), STEP_MS,
      `the submission failed, ${finalCounts}`, later.index)
    const failed = await view(p, v => v.failures.some(f => f.includes(FAIL_LINE)) && v, STEP_MS, 'the failure\'s log tail', done.index)
    assert.equal(failed.v.failureElements, 0, 'the failure\'s markup made no element')
    assert.equal(failed.v.scripts, 1, 'the page\'s own script only')
    assert.equal(failed.v.pwned, 'undefined', 'no injected script ran')
    assert.equal(failed.v.mark, 1, 'the page was not reloaded')
    await shot(p, join(ARTIFACTS, 'status-page-done.png'))
    const last = await next(p, (r) => r.kind === 'snapshot' ? r : undefined, STEP_MS, 'a snapshot after the last screenshot', p.reports.length)
    assert.deepEqual(last.value.errors, [], 'the page ran without errors (nor refusals by its Content-Security-Policy)')
  }
})
