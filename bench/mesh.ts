// The mesh's latency and per-job overhead, with real nodes on test hosts (network namespaces with
// a /nix store each, test/helpers/test-hosts.ts), finding each other by mDNS:
//
//   start→steal: 2 hosts. Node A (--max-jobs 1) holds a submission of STEAL_JOBS derivations that
//     sleep STEAL_SLEEP_S s each; node B is started on the other host (fresh data dir, so a new
//     peer id) and timed from its spawn to its `stole N job(s)` log line, with the phases between
//     read from both nodes' log timestamps. RUNS times, new derivations each time.
//   overhead: a DAG of DAG_SIZE derivations that do nothing but `echo > $out`, (a) submitted on A
//     of a 3-host mesh with --max-jobs 2 each (`meshbuild submit` wall time), against (b) the same
//     shape under a fresh tag realised by `nix-store --realise -j 6` on a fourth host, its own
//     store: the same total slots. RUNS times, alternating which goes first; one unmeasured
//     round of each first.
//
// The timestamps of log lines and the bench's own clock are the same machine clock. Nodes run at
// --log-level debug; BENCH_MESH_LOGS=DIR keeps their logs after the test hosts are gone.
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createWriteStream, existsSync, readdirSync, statSync, type WriteStream } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { TestNetwork, type HostExecResult, type TestHost } from '../test/helpers/test-hosts.ts'
import { within } from '../test/helpers/wait.ts'
import { meshSecretFile } from '../test/helpers/mesh-hosts.ts'
import type { StatusReport, SubmissionReport } from '../node/mesh/reports.ts'
import type { BenchRow } from './run.ts'

const RUNS = Number(process.env.BENCH_MESH_RUNS ?? 3)
const STEAL_JOBS = 20
const STEAL_SLEEP_S = 3
/** The DAG: base, then levels of these widths, then top; every node reaches top. */
const DAG_LEVELS = [15, 20, 15, 8]
const DAG_SIZE = 2 + DAG_LEVELS.reduce((a, b) => a + b, 0)
const MESH_HOSTS = 3
const SLOTS_PER_NODE = 2
const LOCAL_JOBS = MESH_HOSTS * SLOTS_PER_NODE
const READY_TIMEOUT_MS = 30_000
const STEAL_TIMEOUT_MS = 60_000
const MESH_TIMEOUT_MS = 60_000
const BUILD_TIMEOUT_MS = 300_000
const STOP_TIMEOUT_MS = 15_000

const ROOT = new URL('..', import.meta.url)
const COMPILED = fileURLToPath(new URL('dist/node/cli/main.js', ROOT))
const SOURCE_BIN = fileURLToPath(new URL('bin/meshbuild.js', ROOT))

/**
 * The CLI the nodes run: the compiled one when it is at least as new as every source file (as an
 * npm-installed meshbuild, and what `npm run bench` builds), else the checkout's bin, which adds
 * Node's type stripping to every start. BENCH_MESH_CLI names another.
 */
export function chooseCli (): { path: string, note: string } {
  if (process.env.BENCH_MESH_CLI != null) return { path: process.env.BENCH_MESH_CLI, note: 'BENCH_MESH_CLI' }
  if (!existsSync(COMPILED)) return { path: SOURCE_BIN, note: 'bin/meshbuild.js (no dist/: npm run build)' }
  const built = statSync(COMPILED).mtimeMs
  const newer = newestSource([fileURLToPath(new URL('node', ROOT)), fileURLToPath(new URL('protocols', ROOT))])
  if (newer > built) return { path: SOURCE_BIN, note: 'bin/meshbuild.js (dist/ older than the sources)' }
  return { path: COMPILED, note: 'dist/node/cli/main.js' }
}

function newestSource (dirs: string[]): number {
  let newest = 0
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs)
    }
  }
  for (const d of dirs) walk(d)
  return newest
}

/** A line a node wrote: `2026-11-23T04:40:00.000Z INFO  [meshbuild:net] message`. */
export interface LogLine { at: number, level: string, scope: string, msg: string }

const LOG_LINE = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) (\w+)\s+\[([^\]]*)\] (.*)$/

export interface BenchNode {
  name: string
  host: TestHost
  dataDir: string
  child: ChildProcess
  /** Date.now() just before the spawn. */
  spawnedAt: number
  peerId: string
  lines: LogLine[]
  exited: Promise<void>
}

export class MeshBench {
  readonly net: TestNetwork
  readonly cli: string
  readonly logDir: string
  readonly #logs: WriteStream[] = []

  constructor (net: TestNetwork, cli: string, logDir: string) {
    this.net = net
    this.cli = cli
    this.logDir = logDir
  }

  /** Spawns `meshbuild join` in the host, keeps its log lines, waits for its `ready` line. */
  async start (name: string, host: TestHost, dataDir: string, args: string[]): Promise<BenchNode> {
    const log = createWriteStream(join(this.logDir, `${name}.log`), { flags: 'a' })
    this.#logs.push(log)
    const spawnedAt = Date.now()
    const child = host.spawn(process.execPath, [
      this.cli, 'join', '--data-dir', dataDir, '--listen', `/ip4/${host.address}/tcp/0`, '--log-level', 'debug',
      // Every bench node shares one secret: with none, each would make its own and mesh with nobody.
      '--mesh-secret-file', await meshSecretFile(this.net), ...args
    ])
    const lines: LogLine[] = []
    let partial = ''
    child.stderr?.setEncoding('utf8')
    child.stderr?.on('data', (d: string) => {
      log.write(d)
      const parts = (partial + d).split('\n')
      partial = parts.pop() ?? ''
      for (const l of parts) {
        const m = LOG_LINE.exec(l)
        if (m != null) lines.push({ at: Date.parse(m[1] ?? ''), level: m[2] ?? '', scope: m[3] ?? '', msg: m[4] ?? '' })
      }
    })
    child.stdout?.resume()
    const exited = new Promise<void>(resolve => { child.once('exit', () => { resolve() }) })
    const node: BenchNode = { name, host, dataDir, child, spawnedAt, peerId: '', lines, exited }
    const ready = await waitForLine(node, /node (\S+) ready/, READY_TIMEOUT_MS)
    node.peerId = ready.match[1] ?? ''
    return node
  }

  async stop (node: BenchNode): Promise<void> {
    if (node.child.exitCode !== null || node.child.signalCode !== null) return
    node.child.kill('SIGTERM')
    await within(node.exited, STOP_TIMEOUT_MS, `${node.name} to exit after SIGTERM`)
  }

  /** Runs the CLI in the node's host against its data dir. */
  async run (node: BenchNode, args: string[], input?: string, timeoutMs = BUILD_TIMEOUT_MS): Promise<HostExecResult> {
    return await node.host.exec(process.execPath, [this.cli, ...args, '--data-dir', node.dataDir], {
      timeoutMs, ...(input !== undefined ? { input } : {})
    })
  }

  /** Waits until every node has a beacon from every other (`meshbuild status` peers). */
  async waitForMesh (nodes: BenchNode[]): Promise<void> {
    const deadline = Date.now() + MESH_TIMEOUT_MS
    for (;;) {
      let all = true
      for (const n of nodes) {
        const r = await this.run(n, ['status', '--json'], undefined, 20_000)
        if (r.code !== 0) throw new Error(`status on ${n.name} exited with ${r.code}: ${r.stderr}`)
        const seen = new Set((JSON.parse(r.stdout) as StatusReport).peers.map(p => p.peerId))
        if (!nodes.every(o => o === n || seen.has(o.peerId))) { all = false; break }
      }
      if (all) return
      if (Date.now() > deadline) throw new Error(`${nodes.length} nodes did not see each other within ${MESH_TIMEOUT_MS} ms`)
      await sleep(300)
    }
  }

  /** nix-instantiate in the host; returns the .drv paths of `attr`. */
  async instantiate (host: TestHost, expr: string, attr: string): Promise<string[]> {
    const file = join(this.net.sharedDir, `expr-${randomBytes(4).toString('hex')}.nix`)
    await writeFile(file, expr)
    const out = await host.execText('nix-instantiate', [file, '-A', attr])
    return out.split('\n').filter(l => l !== '')
  }

  async close (): Promise<void> {
    await Promise.all(this.#logs.map(async l => { await new Promise<void>(resolve => { l.end(() => { resolve() }) }) }))
  }
}

export async function waitForLine (node: BenchNode, pattern: RegExp, timeoutMs: number, from = 0): Promise<LogLine & { match: RegExpMatchArray }> {
  const deadline = Date.now() + timeoutMs
  let i = from
  for (;;) {
    for (; i < node.lines.length; i++) {
      const line = node.lines[i]
      const m = line?.msg.match(pattern)
      if (line != null && m != null) return { ...line, match: m }
    }
    if (node.child.exitCode !== null || node.child.signalCode !== null) {
      throw new Error(`${node.name} exited before logging ${pattern}; see ${node.name}.log`)
    }
    if (Date.now() > deadline) throw new Error(`${node.name} did not log ${pattern} within ${timeoutMs} ms`)
    await sleep(10)
  }
}

/** The first line at or after `since` matching `pattern`, or undefined. */
function firstLine (node: BenchNode, pattern: RegExp, since: number): LogLine | undefined {
  return node.lines.find(l => l.at >= since && pattern.test(l.msg))
}

// --- derivations ----------------------------------------------------------------------------

function sleepersExpr (tag: string): string {
  return `
let mk = i: derivation {
  name = "sleeper-\${toString i}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "/bin/sleep ${STEAL_SLEEP_S}; echo ${tag} > $out" ];
};
in { jobs = builtins.genList mk ${STEAL_JOBS}; }`
}

/**
 * DAG_SIZE derivations that only write their name: base; levels of DAG_LEVELS widths, job i of a
 * level of width W depending on jobs i and i + W (mod its width) of the level before, which covers
 * all of it as long as no level is less than half as wide as the one before; top on the last level
 * and base.
 */
function dagExpr (tag: string): string {
  const [w1, w2, w3, w4] = DAG_LEVELS
  return `
let
  mk = name: deps: derivation {
    inherit name deps;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${tag} \${name} > $out" ];
  };
  at = builtins.elemAt;
  mod = a: b: a - (a / b) * b;
  level = prefix: width: prev: builtins.genList (i: mk "\${prefix}-\${toString i}"
    [ (at prev (mod i (builtins.length prev))) (at prev (mod (i + width) (builtins.length prev))) ]) width;
  base = mk "base" [];
  l1 = builtins.genList (i: mk "l1-\${toString i}" [ base ]) ${w1};
  l2 = level "l2" ${w2} l1;
  l3 = level "l3" ${w3} l2;
  l4 = level "l4" ${w4} l3;
in { top = mk "top" (l4 ++ [ base ]); }`
}

// --- start → steal ---------------------------------------------------------------------------

/** Offsets in ms from B's spawn of what B and A logged. */
interface StealRun {
  total: number
  listening?: number
  ready: number
  connected?: number
  lent?: number
  stole: number
  building?: number
  jobs: number
}

async function startToSteal (bench: MeshBench): Promise<StealRun[]> {
  const [hA, hB] = [bench.net.host(0), bench.net.host(1)]
  const a = await bench.start('steal-A', hA, join(bench.net.sharedDir, 'steal-a'), ['--max-jobs', '1'])
  const runs: StealRun[] = []
  try {
    for (let i = 0; i < RUNS; i++) {
      const tag = randomBytes(6).toString('hex')
      const drvs = await bench.instantiate(hA, sleepersExpr(tag), 'jobs')
      if (drvs.length !== STEAL_JOBS) throw new Error(`expected ${STEAL_JOBS} sleepers, nix-instantiate gave ${drvs.length}`)
      const aFrom = a.lines.length
      const r = await bench.run(a, ['submit', '-', '--detach'], drvs.join('\n') + '\n', 60_000)
      if (r.code !== 0) throw new Error(`submit on A exited with ${r.code}: ${r.stderr}`)
      // A is busy with one of them; the rest wait in its queue, offered.
      await waitForLine(a, /building \S+sleeper-/, 30_000, aFrom)
      await sleep(500)

      const b = await bench.start(`steal-B${i}`, hB, join(bench.net.sharedDir, `steal-b${i}`), ['--max-jobs', '2'])
      try {
        const stole = await waitForLine(b, /stole (\d+) job\(s\) from/, STEAL_TIMEOUT_MS)
        const building = await waitForLine(b, /building \S+ for /, STEAL_TIMEOUT_MS).catch(() => undefined)
        const ready = firstLine(b, /node \S+ ready/, 0)
        const listening = firstLine(b, /^listening on /, 0)
        const connects = [
          firstLine(b, new RegExp(`connected to ${a.peerId}`), b.spawnedAt)?.at,
          firstLine(a, new RegExp(`connected to ${b.peerId}`), b.spawnedAt)?.at
        ].filter((t): t is number => t !== undefined)
        const lent = firstLine(a, new RegExp(`lent \\d+ job\\(s\\) to ${b.peerId}`), b.spawnedAt)
        runs.push({
          total: stole.at - b.spawnedAt,
          ready: (ready?.at ?? NaN) - b.spawnedAt,
          ...(listening !== undefined ? { listening: listening.at - b.spawnedAt } : {}),
          ...(connects.length > 0 ? { connected: Math.min(...connects) - b.spawnedAt } : {}),
          ...(lent !== undefined ? { lent: lent.at - b.spawnedAt } : {}),
          stole: stole.at - b.spawnedAt,
          ...(building !== undefined ? { building: building.at - b.spawnedAt } : {}),
          jobs: Number(stole.match[1])
        })
        process.stderr.write(`mesh bench: start→steal run ${i + 1}: ${JSON.stringify(runs.at(-1))}\n`)
      } finally {
        await bench.stop(b)
      }
    }
  } finally {
    await bench.stop(a).catch(() => {})
  }
  return runs
}

// --- per-job overhead ------------------------------------------------------------------------

interface MeshRun {
  seconds: number
  /** From the owner's `submission … N to build` line to its `finished` line. */
  ownerSeconds: number
  builtBy: Map<string, number>
  steals: number
  /** Per job, ms, from the logs: see jobPhases. */
  phases: JobPhases
}

/** Where a job's time goes, in ms per job, gathered from the nodes' log lines. */
interface JobPhases {
  /** Owner's own builds: `building X` → `built X` (one nix-store --realise). */
  localBuild: number[]
  /** Stolen jobs: the worker's last `stole` line before `building X for` → that line (.drv closure and inputs fetched). */
  stolenFetch: number[]
  /** Stolen jobs: worker's `building X for` → `built X`. */
  stolenBuild: number[]
  /** Stolen jobs: worker's `built X` → owner's `X built by …; fetched` (result report, outputs fetched back). */
  stolenReturn: number[]
  /** Fetches of a stolen job's inputs that failed (the job went back to the owner). */
  fetchFailures: number
}

/** Reads the phases of each job of one round from the log lines the nodes wrote during it. */
function jobPhases (owner: BenchNode, workers: BenchNode[], since: number): JobPhases {
  const phases: JobPhases = { localBuild: [], stolenFetch: [], stolenBuild: [], stolenReturn: [], fetchFailures: 0 }
  const ownerLines = owner.lines.filter(l => l.at >= since)
  const started = new Map<string, number>()
  for (const l of ownerLines) {
    const b = /^building (\S+)$/.exec(l.msg)
    if (b?.[1] != null) started.set(b[1], l.at)
    const d = /^built (\S+)$/.exec(l.msg)
    const t = d?.[1] != null ? started.get(d[1]) : undefined
    if (t !== undefined) phases.localBuild.push(l.at - t)
  }
  const returned = new Map<string, number>()
  for (const l of ownerLines) {
    const m = /^(\S+) built by \S+; fetched/.exec(l.msg)
    if (m?.[1] != null) returned.set(m[1], l.at)
  }
  for (const w of workers) {
    let lastSteal: number | undefined
    const building = new Map<string, number>()
    for (const l of w.lines.filter(x => x.at >= since)) {
      if (/^stole \d+ job/.test(l.msg)) lastSteal = l.at
      if (/^fetching inputs of .* failed/.test(l.msg)) phases.fetchFailures++
      const b = /^building (\S+) for /.exec(l.msg)
      if (b?.[1] != null) {
        building.set(b[1], l.at)
        if (lastSteal !== undefined) phases.stolenFetch.push(l.at - lastSteal)
      }
      const d = /^built (\S+)$/.exec(l.msg)
      const t = d?.[1] != null ? building.get(d[1]) : undefined
      if (d?.[1] != null && t !== undefined) {
        phases.stolenBuild.push(l.at - t)
        const back = returned.get(d[1])
        if (back !== undefined) phases.stolenReturn.push(back - l.at)
      }
    }
  }
  return phases
}

async function meshRound (bench: MeshBench, nodes: BenchNode[]): Promise<MeshRun> {
  const a = nodes[0]
  if (a === undefined) throw new Error('no nodes')
  const tag = randomBytes(6).toString('hex')
  const [top] = await bench.instantiate(a.host, dagExpr(tag), 'top')
  if (top === undefined) throw new Error('nix-instantiate gave no top')
  const marks = nodes.map(n => n.lines.length)
  const since = Date.now()
  const started = performance.now()
  const r = await bench.run(a, ['submit', '-', '--json'], `${top}\n`)
  const seconds = (performance.now() - started) / 1000
  if (r.code !== 0) throw new Error(`meshbuild submit exited with ${r.code}: ${r.stderr.slice(-2000)}`)
  const report = JSON.parse(r.stdout) as SubmissionReport
  if (report.results.length !== DAG_SIZE || !report.results.every(x => x.state === 'built')) {
    throw new Error(`the mesh built ${report.results.filter(x => x.state === 'built').length} of ${report.results.length} jobs, expected ${DAG_SIZE}`)
  }
  const outs = report.results.filter(x => x.requested).flatMap(x => Object.values(x.outputs))
  await a.host.execText('nix-store', ['--verify-path', ...outs])
  const accepted = await waitForLine(a, new RegExp(`submission ${report.id}: `), 5_000, marks[0])
  const finished = await waitForLine(a, new RegExp(`submission ${report.id} finished`), 5_000, marks[0])
  const builtBy = new Map<string, number>()
  for (const x of report.results) {
    const who = nodes.find(n => n.peerId === x.builtBy)?.name ?? String(x.builtBy)
    builtBy.set(who, (builtBy.get(who) ?? 0) + 1)
  }
  const steals = nodes.reduce((sum, n, i) => sum + n.lines.slice(marks[i]).filter(l => /^stole \d+ job/.test(l.msg)).length, 0)
  // The owner's last lines (outputs fetched back) come before its `finished` line; give the
  // workers' pipes a moment to deliver theirs.
  await sleep(200)
  return { seconds, ownerSeconds: (finished.at - accepted.at) / 1000, builtBy, steals, phases: jobPhases(a, nodes.slice(1), since) }
}

async function localRound (bench: MeshBench, host: TestHost): Promise<number> {
  const tag = randomBytes(6).toString('hex')
  const [top] = await bench.instantiate(host, dagExpr(tag), 'top')
  if (top === undefined) throw new Error('nix-instantiate gave no top')
  const started = performance.now()
  await host.execText('nix-store', ['--realise', '-j', String(LOCAL_JOBS), top], { timeoutMs: BUILD_TIMEOUT_MS })
  const seconds = (performance.now() - started) / 1000
  // Every one of the DAG's outputs must have been built, not found.
  const built = (await host.execText('nix-store', ['--query', '--requisites', top])).split('\n').filter(l => l.endsWith('.drv'))
  if (built.length !== DAG_SIZE) throw new Error(`the local DAG has ${built.length} derivations, expected ${DAG_SIZE}`)
  return seconds
}

async function overhead (bench: MeshBench): Promise<{ mesh: MeshRun[], local: number[] }> {
  const nodes: BenchNode[] = []
  const localHost = bench.net.host(MESH_HOSTS)
  try {
    for (let i = 0; i < MESH_HOSTS; i++) {
      const name = `dag-${String.fromCharCode(65 + i)}`
      nodes.push(await bench.start(name, bench.net.host(i), join(bench.net.sharedDir, name), ['--max-jobs', String(SLOTS_PER_NODE)]))
    }
    await bench.waitForMesh(nodes)
    // One unmeasured round of each: first-use costs (JIT, first streams, store locks) land here.
    await meshRound(bench, nodes)
    await localRound(bench, localHost)
    const mesh: MeshRun[] = []
    const local: number[] = []
    for (let i = 0; i < RUNS; i++) {
      if (i % 2 === 0) {
        mesh.push(await meshRound(bench, nodes))
        local.push(await localRound(bench, localHost))
      } else {
        local.push(await localRound(bench, localHost))
        mesh.push(await meshRound(bench, nodes))
      }
      const m = mesh.at(-1)
      process.stderr.write(`mesh bench: overhead run ${i + 1}: mesh ${m?.seconds.toFixed(2)} s (owner ${m?.ownerSeconds.toFixed(2)} s, ${m?.steals} steals, built by ${JSON.stringify(Object.fromEntries(m?.builtBy ?? []))}), local ${local.at(-1)?.toFixed(2)} s\n`)
    }
    return { mesh, local }
  } finally {
    for (const n of nodes) await bench.stop(n).catch(() => {})
  }
}

// --- rows -------------------------------------------------------------------------------------

function median (xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] ?? NaN
}

function secs (ms: number): number {
  return Number((ms / 1000).toFixed(3))
}

function phaseRow (measure: string, values: Array<number | undefined>): BenchRow {
  const xs = values.filter((v): v is number => v !== undefined && Number.isFinite(v))
  if (xs.length === 0) return { bench: 'start→steal', measure, 'min s': '-', 'median s': '-', 'runs s': 'not seen in the logs' }
  return {
    bench: 'start→steal',
    measure,
    'min s': secs(Math.min(...xs)),
    'median s': secs(median(xs)),
    'runs s': xs.map(x => secs(x).toFixed(2)).join(' / ')
  }
}

function stealRows (runs: StealRun[]): BenchRow[] {
  const diff = (f: (r: StealRun) => number | undefined, g: (r: StealRun) => number | undefined): Array<number | undefined> =>
    runs.map(r => { const x = f(r); const y = g(r); return x !== undefined && y !== undefined ? x - y : undefined })
  return [
    phaseRow('B spawn → B stole (total)', runs.map(r => r.total)),
    phaseRow('  B spawn → B listening (libp2p up)', runs.map(r => r.listening)),
    phaseRow('  B spawn → A, B connected (mDNS, dial)', runs.map(r => r.connected)),
    phaseRow('  B spawn → B ready (control socket)', runs.map(r => r.ready)),
    phaseRow('  B spawn → A lent (steal served)', runs.map(r => r.lent)),
    phaseRow('  connected → A lent (gossip, steal request)', diff(r => r.lent, r => r.connected)),
    phaseRow('B stole → B building (fetch .drv closure)', diff(r => r.building, r => r.stole))
  ]
}

function overheadRows (mesh: MeshRun[], local: number[]): BenchRow[] {
  const ratios = mesh.map((m, i) => m.seconds / (local[i] ?? NaN))
  const row = (measure: string, xs: number[], ratio?: number): BenchRow => ({
    bench: `DAG of ${DAG_SIZE}`,
    measure,
    'min s': Number(Math.min(...xs).toFixed(3)),
    'median s': Number(median(xs).toFixed(3)),
    'per job ms': Math.round(median(xs) * 1000 / DAG_SIZE),
    'mesh/local': ratio !== undefined ? Number(ratio.toFixed(1)) : '-',
    'runs s': xs.map(x => x.toFixed(2)).join(' / ')
  })
  const builtBy = new Map<string, number>()
  for (const m of mesh) for (const [k, v] of m.builtBy) builtBy.set(k, (builtBy.get(k) ?? 0) + v)
  const all = (f: (p: JobPhases) => number[]): number[] => mesh.flatMap(m => f(m.phases))
  const phase = (measure: string, ms: number[]): BenchRow => ms.length === 0
    ? { bench: `DAG of ${DAG_SIZE}`, measure, 'runs s': 'not seen in the logs' }
    : {
        bench: `DAG of ${DAG_SIZE}`,
        measure,
        'min s': secs(Math.min(...ms)),
        'median s': secs(median(ms)),
        'runs s': `${ms.length} jobs, max ${secs(Math.max(...ms))}`
      }
  return [
    row(`mesh: ${MESH_HOSTS} hosts × --max-jobs ${SLOTS_PER_NODE}, meshbuild submit`, mesh.map(m => m.seconds), median(ratios)),
    row('  owner: submission recorded → finished', mesh.map(m => m.ownerSeconds)),
    row(`local: nix-store --realise -j ${LOCAL_JOBS}, 1 host`, local, 1),
    {
      bench: `DAG of ${DAG_SIZE}`,
      measure: 'mesh: who built, steals per run',
      'runs s': `${[...builtBy].map(([k, v]) => `${k} ${Math.round(v / mesh.length)}`).join(', ')}; ${mesh.map(m => m.steals).join(' / ')} steals; ${mesh.reduce((n, m) => n + m.phases.fetchFailures, 0)} failed input fetches`
    },
    phase('  per job: owner builds its own (nix-store --realise)', all(p => p.localBuild)),
    phase('  per stolen job: stole → inputs fetched', all(p => p.stolenFetch)),
    phase('  per stolen job: build on the worker', all(p => p.stolenBuild)),
    phase('  per stolen job: built → owner has the output', all(p => p.stolenReturn))
  ]
}

const COLUMNS = ['bench', 'measure', 'min s', 'median s', 'per job ms', 'mesh/local', 'runs s']

/** The same columns in the same order in every row, so console.table lines them up. */
function normalize (rows: BenchRow[]): BenchRow[] {
  return rows.map(r => Object.fromEntries(COLUMNS.map(c => [c, r[c] ?? ''])))
}

export async function run (): Promise<BenchRow[]> {
  const { path: cli, note } = chooseCli()
  process.stderr.write(`mesh bench: nodes run ${note}; ${RUNS} runs each\n`)
  const rows: BenchRow[] = []

  const net1 = await TestNetwork.create({ hosts: 2 })
  const logDir = process.env.BENCH_MESH_LOGS ?? join(net1.sharedDir, 'logs')
  await mkdir(logDir, { recursive: true })
  const bench1 = new MeshBench(net1, cli, logDir)
  try {
    // What the harness adds to every spawn (ip netns exec, unshare, mount), not the mesh's.
    const harness: number[] = []
    for (let i = 0; i < 3; i++) {
      const t = performance.now()
      await net1.host(1).execText('/bin/true')
      harness.push(performance.now() - t)
    }
    rows.push(...stealRows(await startToSteal(bench1)))
    rows.push(phaseRow('(test-host spawn of /bin/true)', harness))
  } finally {
    await bench1.close()
    await net1.destroy()
  }

  const net2 = await TestNetwork.create({ hosts: MESH_HOSTS + 1 })
  const logDir2 = process.env.BENCH_MESH_LOGS ?? join(net2.sharedDir, 'logs')
  await mkdir(logDir2, { recursive: true })
  const bench2 = new MeshBench(net2, cli, logDir2)
  try {
    const { mesh, local } = await overhead(bench2)
    rows.push(...overheadRows(mesh, local))
    // What each store operation of the mesh costs at least: one nix-store process.
    const query: number[] = []
    for (let i = 0; i < 10; i++) {
      const t = performance.now()
      await net2.host(0).exec('nix-store', ['--check-validity', '--print-invalid', '/nix/store/00000000000000000000000000000000-x'])
      query.push(performance.now() - t)
    }
    rows.push({ ...phaseRow('one nix-store --check-validity in a host', query), bench: `DAG of ${DAG_SIZE}` })
  } finally {
    await bench2.close()
    await net2.destroy()
  }
  return normalize(rows)
}

async function sleep (ms: number): Promise<void> {
  await new Promise(resolve => setTimeout(resolve, ms))
}

// Run alone: `node bench/mesh.ts`.
if (import.meta.url === `file://${process.argv[1]}`) console.table(await run())
