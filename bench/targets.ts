// The mesh against one machine, on the workloads issue 9 sets targets for, side by side in one
// run: real nodes on test hosts (test/helpers/test-hosts.ts, a /nix store each, mDNS only), the
// mesh of MESH_HOSTS hosts × SLOTS_PER_NODE slots against `nix-store --realise -j <same slots>` on
// one more host with its own store.
//
//   sleep DAG: SLEEP_LAYERS layers × SLEEP_WIDTH derivations, each sleeping 0–4 s and depending on
//     1–3 of the layer before; a new random DAG every run. LB = max(critical path, work ÷ slots).
//   zero-length DAG: the 60-derivation DAG of bench/mesh.ts's shape, random edges, no work at all.
//   independent: INDEPENDENT_JOBS zero-length derivations with no edges: throughput.
//   planning: a submission of PLAN_JOBS derivations, `submit --detach` timed until it returns.
//   memory: a node's RSS idle (meshed, nothing to do) and with QUEUED_JOBS jobs queued.
//
// The makespan of the mesh is the `meshbuild submit` wall time (the client's start included, as
// a user sees it); the owner's own `submission … finished` log line gives the time inside the node.
// BENCH_TARGETS=sleep,zero,independent,planning,memory picks parts; BENCH_TARGETS_RUNS the runs;
// BENCH_INDEPENDENT_JOBS the size of the independent part (2,000); BENCH_SLEEP_LAYERS and
// BENCH_SLEEP_WIDTH the sleep DAG's shape (5 × 8; issue 10's 200-job run is 5 × 40).
// BENCH_TRACE_DIR=DIR starts every node with `--trace DIR/<node>.json` and keeps the traces.
import { randomBytes } from 'node:crypto'
import { readFile, mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { TestNetwork, type TestHost } from '../test/helpers/test-hosts.ts'
import type { SubmissionReport } from '../node/mesh/reports.ts'
import { chooseCli, MeshBench, waitForLine, type BenchNode } from './mesh.ts'
import type { BenchRow } from './run.ts'
import { commandLine, gitCommit, loadAverage, machine, markdownTable, PLACES, wrap, writeBlock } from './doc-block.ts'
import { seededRandom } from '../node/scheduler/random.ts'

const RUNS = Number(process.env.BENCH_TARGETS_RUNS ?? 3)
const PARTS = new Set((process.env.BENCH_TARGETS ?? 'sleep,zero,independent,planning,memory').split(','))
const TRACE_DIR = process.env.BENCH_TRACE_DIR
const MESH_HOSTS = 3
const SLOTS_PER_NODE = 2
const SLOTS = MESH_HOSTS * SLOTS_PER_NODE
const SLEEP_LAYERS = Number(process.env.BENCH_SLEEP_LAYERS ?? 5)
const SLEEP_WIDTH = Number(process.env.BENCH_SLEEP_WIDTH ?? 8)
const SLEEP_MAX_S = 4
const ZERO_LAYERS = [1, 15, 20, 15, 8, 1]
const INDEPENDENT_JOBS = Number(process.env.BENCH_INDEPENDENT_JOBS ?? 2_000)
const PLAN_JOBS = 50_000
const QUEUED_JOBS = 10_000
const BUILD_TIMEOUT_MS = 600_000

/** One derivation of a generated DAG: its inputs are indices of earlier jobs. */
export interface DagJob { name: string, deps: number[], sleepS: number }

/**
 * Layers of the given widths; each job depends on 1–3 jobs of the layer before. Names carry the
 * seed: the mesh's build history goes by name, and another DAG's `l0-3` sleeps another time.
 */
export function layeredDag (widths: number[], sleepMaxS: number, seed: number): DagJob[] {
  const random = seededRandom(seed)
  const prefix = `s${Math.floor(Math.abs(seed)).toString(36)}`
  const jobs: DagJob[] = []
  let prev: number[] = []
  widths.forEach((width, layer) => {
    const cur: number[] = []
    for (let i = 0; i < width; i++) {
      const deps = new Set<number>()
      const want = prev.length === 0 ? 0 : 1 + Math.floor(random() * Math.min(3, prev.length))
      while (deps.size < want) deps.add(prev[Math.floor(random() * prev.length)] ?? 0)
      const sleepS = sleepMaxS === 0 ? 0 : Math.round(random() * sleepMaxS * 10) / 10
      cur.push(jobs.length)
      jobs.push({ name: `${prefix}-l${layer}-${i}`, deps: [...deps].sort((a, b) => a - b), sleepS })
    }
    prev = cur
  })
  return jobs
}

/** The lower bound of a DAG's makespan on `slots` slots of speed 1: max(critical path, work ÷ slots). */
export function lowerBound (jobs: DagJob[], slots: number): { lb: number, criticalPath: number, work: number } {
  const finish: number[] = []
  for (const j of jobs) finish.push(j.sleepS + Math.max(0, ...j.deps.map(d => finish[d] ?? 0)))
  const criticalPath = Math.max(0, ...finish)
  const work = jobs.reduce((s, j) => s + j.sleepS, 0)
  return { lb: Math.max(criticalPath, work / slots), criticalPath, work }
}

/** A Nix expression whose attribute `all` is the list of the DAG's derivations, in order. */
export function dagExpr (jobs: DagJob[], tag: string): string {
  const binds = jobs.map((j, i) => {
    const script = j.sleepS > 0 ? `/bin/sleep ${j.sleepS}; echo ${tag} ${j.name} > $out` : `echo ${tag} ${j.name} > $out`
    return `  d${i} = derivation { name = "${j.name}"; system = builtins.currentSystem; builder = "/bin/sh"; ` +
      `deps = [ ${j.deps.map(d => `d${d}`).join(' ')} ]; args = [ "-c" "${script}" ]; };`
  })
  return `let\n${binds.join('\n')}\nin { all = [ ${jobs.map((_, i) => `d${i}`).join(' ')} ]; }\n`
}

/** `n` independent derivations, as one genList (quick to instantiate even for 50,000). */
function independentExpr (n: number, tag: string, sleepS: number): string {
  const body = sleepS > 0 ? `/bin/sleep ${sleepS}; echo ${tag} > $out` : `echo ${tag} > $out`
  return `{ all = builtins.genList (i: derivation { name = "ind-\${toString i}"; system = builtins.currentSystem; ` +
    `builder = "/bin/sh"; args = [ "-c" "${body}" ]; }) ${n}; }\n`
}

interface MeshResult { seconds: number, ownerSeconds: number, builtBy: Map<string, number> }

async function submitOnMesh (bench: MeshBench, nodes: BenchNode[], drvs: string[]): Promise<MeshResult> {
  const a = nodes[0]
  if (a === undefined) throw new Error('no nodes')
  const mark = a.lines.length
  const started = performance.now()
  const r = await bench.run(a, ['submit', '-', '--json'], drvs.join('\n') + '\n', BUILD_TIMEOUT_MS)
  const seconds = (performance.now() - started) / 1000
  if (r.code !== 0) throw new Error(`meshbuild submit exited with ${r.code}: ${r.stderr.slice(-2000)}`)
  const report = JSON.parse(r.stdout) as SubmissionReport
  const built = report.results.filter(x => x.state === 'built').length
  if (built !== drvs.length) throw new Error(`the mesh built ${built} of ${drvs.length} jobs`)
  const accepted = await waitForLine(a, new RegExp(`submission ${report.id}: `), 5_000, mark)
  const finished = await waitForLine(a, new RegExp(`submission ${report.id} finished`), 5_000, mark)
  const builtBy = new Map<string, number>(nodes.map(n => [n.name, 0]))
  for (const x of report.results) {
    const who = nodes.find(n => n.peerId === x.builtBy)?.name ?? String(x.builtBy)
    builtBy.set(who, (builtBy.get(who) ?? 0) + 1)
  }
  return { seconds, ownerSeconds: (finished.at - accepted.at) / 1000, builtBy }
}

async function realiseLocally (host: TestHost, drvs: string[]): Promise<number> {
  const started = performance.now()
  await host.execText('nix-store', ['--realise', '-j', String(SLOTS), ...drvs], { timeoutMs: BUILD_TIMEOUT_MS })
  return (performance.now() - started) / 1000
}

async function instantiate (bench: MeshBench, hosts: TestHost[], expr: string): Promise<string[]> {
  // Every host instantiates the same expression: the .drv files are the same, each store holds them.
  const lists = await Promise.all(hosts.map(async h => await bench.instantiate(h, expr, 'all')))
  return lists[0] ?? []
}

async function startMesh (bench: MeshBench, extra: string[] = []): Promise<BenchNode[]> {
  const nodes: BenchNode[] = []
  for (let i = 0; i < MESH_HOSTS; i++) {
    const name = `t-${String.fromCharCode(65 + i)}`
    const trace = TRACE_DIR !== undefined ? ['--trace', join(TRACE_DIR, `${name}-${Date.now()}.json`)] : []
    nodes.push(await bench.start(name, bench.net.host(i), join(bench.net.sharedDir, `${name}-${randomBytes(3).toString('hex')}`),
      ['--max-jobs', String(SLOTS_PER_NODE), ...trace, ...extra]))
  }
  await bench.waitForMesh(nodes)
  return nodes
}

const fmt = (x: number, d = 2): string => x.toFixed(d)
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN

function whoBuilt (runs: MeshResult[]): string {
  const sum = new Map<string, number[]>()
  for (const r of runs) for (const [k, v] of r.builtBy) sum.set(k, [...(sum.get(k) ?? []), v])
  return [...sum].map(([k, v]) => `${k} ${v.join('/')}`).join(', ')
}

async function sleepDag (bench: MeshBench, nodes: BenchNode[], local: TestHost): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const mesh: MeshResult[] = []
  const ratios: Array<{ mesh: number, local: number, lb: number }> = []
  let last: DagJob[] | undefined
  for (let i = 0; i < RUNS; i++) {
    const jobs = layeredDag(Array.from({ length: SLEEP_LAYERS }, () => SLEEP_WIDTH), SLEEP_MAX_S, Date.now() + i)
    last = jobs
    const { lb, criticalPath, work } = lowerBound(jobs, SLOTS)
    const tagM = randomBytes(6).toString('hex')
    const tagL = randomBytes(6).toString('hex')
    const drvsM = await instantiate(bench, bench.net.hosts.slice(0, MESH_HOSTS), dagExpr(jobs, tagM))
    const drvsL = await instantiate(bench, [local], dagExpr(jobs, tagL))
    // Alternate which goes first: the machine's background load drifts.
    let m: MeshResult
    let l: number
    if (i % 2 === 0) { m = await submitOnMesh(bench, nodes, drvsM); l = await realiseLocally(local, drvsL) } else { l = await realiseLocally(local, drvsL); m = await submitOnMesh(bench, nodes, drvsM) }
    mesh.push(m)
    ratios.push({ mesh: m.seconds, local: l, lb })
    process.stderr.write(`targets: sleep DAG run ${i + 1}: LB ${fmt(lb)} s (critical path ${fmt(criticalPath)}, work ${fmt(work)}), mesh ${fmt(m.seconds)} s (owner ${fmt(m.ownerSeconds)}), local ${fmt(l)} s\n`)
    rows.push(sleepRow(i + 1, lb, m, l))
  }
  rows.push({ workload: 'sleep DAG', run: 'median', 'mesh/LB': fmt(median(ratios.map(r => r.mesh / r.lb))), 'local/LB': fmt(median(ratios.map(r => r.local / r.lb))), 'mesh/local': fmt(median(ratios.map(r => r.mesh / r.local))), note: `built by ${whoBuilt(mesh)}` })
  if (last !== undefined) rows.push(await sleepRebuild(bench, nodes, local, last))
  return rows
}

/**
 * The last run's DAG again under new hashes (new tags), as after a change every job depends on:
 * the names are the same, so the owner plans each job with its build time from the first build.
 */
async function sleepRebuild (bench: MeshBench, nodes: BenchNode[], local: TestHost, jobs: DagJob[]): Promise<BenchRow> {
  const { lb } = lowerBound(jobs, SLOTS)
  const drvsM = await instantiate(bench, bench.net.hosts.slice(0, MESH_HOSTS), dagExpr(jobs, randomBytes(6).toString('hex')))
  const drvsL = await instantiate(bench, [local], dagExpr(jobs, randomBytes(6).toString('hex')))
  const m = await submitOnMesh(bench, nodes, drvsM)
  const l = await realiseLocally(local, drvsL)
  process.stderr.write(`targets: sleep DAG rebuilt with the history: LB ${fmt(lb)} s, mesh ${fmt(m.seconds)} s (owner ${fmt(m.ownerSeconds)}), local ${fmt(l)} s\n`)
  return { ...sleepRow(`run ${RUNS} rebuilt, with build times`, lb, m, l), note: 'the same names: the owner knows every time' }
}

/** One sleep DAG run's row: the mesh and one host against LB. */
function sleepRow (run: number | string, lb: number, m: MeshResult, l: number): BenchRow {
  return {
    workload: `sleep DAG ${SLEEP_LAYERS}×${SLEEP_WIDTH}, 0–${SLEEP_MAX_S} s`,
    run,
    'LB s': fmt(lb),
    'mesh s': fmt(m.seconds),
    'mesh (owner) s': fmt(m.ownerSeconds),
    [`local -j ${SLOTS} s`]: fmt(l),
    'mesh/LB': fmt(m.seconds / lb),
    'owner/LB': fmt(m.ownerSeconds / lb),
    'local/LB': fmt(l / lb),
    'mesh/local': fmt(m.seconds / l)
  }
}

async function zeroDag (bench: MeshBench, nodes: BenchNode[], local: TestHost, what: 'zero' | 'independent'): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const mesh: MeshResult[] = []
  const ratios: number[] = []
  const label = what === 'zero' ? `zero-length DAG of ${ZERO_LAYERS.reduce((a, b) => a + b, 0)}` : `${INDEPENDENT_JOBS} independent zero-length`
  for (let i = 0; i < RUNS; i++) {
    const exprFor = (tag: string): string => what === 'zero' ? dagExpr(layeredDag(ZERO_LAYERS, 0, Date.now() + i), tag) : independentExpr(INDEPENDENT_JOBS, tag, 0)
    const drvsM = await instantiate(bench, bench.net.hosts.slice(0, MESH_HOSTS), exprFor(randomBytes(6).toString('hex')))
    const drvsL = await instantiate(bench, [local], exprFor(randomBytes(6).toString('hex')))
    let m: MeshResult
    let l: number
    if (i % 2 === 0) { m = await submitOnMesh(bench, nodes, drvsM); l = await realiseLocally(local, drvsL) } else { l = await realiseLocally(local, drvsL); m = await submitOnMesh(bench, nodes, drvsM) }
    mesh.push(m)
    ratios.push(m.seconds / l)
    process.stderr.write(`targets: ${label} run ${i + 1}: mesh ${fmt(m.seconds)} s (owner ${fmt(m.ownerSeconds)}), local ${fmt(l)} s, built by ${JSON.stringify(Object.fromEntries(m.builtBy))}\n`)
    rows.push({
      workload: label,
      run: i + 1,
      'mesh s': fmt(m.seconds),
      'mesh (owner) s': fmt(m.ownerSeconds),
      [`local -j ${SLOTS} s`]: fmt(l),
      'mesh/local': fmt(m.seconds / l),
      'owner/local': fmt(m.ownerSeconds / l),
      'mesh jobs/s': fmt(drvsM.length / m.seconds, 1),
      'local jobs/s': fmt(drvsL.length / l, 1)
    })
  }
  rows.push({ workload: label, run: 'median', 'mesh/local': fmt(median(ratios)), note: `built by ${whoBuilt(mesh)}` })
  return rows
}

/** RSS in KiB of the `meshbuild join` process whose arguments name `dataDir`. */
async function rssKiB (dataDir: string): Promise<number> {
  const { execFile } = await import('node:child_process')
  const out = await new Promise<string>((resolve, reject) => {
    execFile('ps', ['-eo', 'pid=,args='], (err, stdout) => { if (err !== null) reject(err); else resolve(stdout) })
  })
  const line = out.split('\n').find(l => l.includes(' join ') && l.includes(dataDir) && !l.includes('ip netns'))
  const pid = line?.trim().split(/\s+/)[0]
  if (pid === undefined) throw new Error(`no join process for ${dataDir}`)
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN)
}

async function idleMemory (nodes: BenchNode[]): Promise<BenchRow[]> {
  const idle = await Promise.all(nodes.map(async n => await rssKiB(n.dataDir)))
  return [{ workload: 'memory', run: 'idle, meshed', note: `RSS ${idle.map(k => `${Math.round(k / 1024)} MiB`).join(' / ')}` }]
}

/**
 * `submit --detach` of PLAN_JOBS derivations to a node of its own, after the mesh has stopped:
 * once planned, those jobs would otherwise be built by the mesh while the other parts are timed.
 */
async function planning (bench: MeshBench): Promise<BenchRow[]> {
  const host = bench.net.host(0)
  const node = await bench.start('t-plan', host, join(bench.net.sharedDir, `plan-${randomBytes(3).toString('hex')}`), ['--max-jobs', '1'])
  try {
    const t0 = performance.now()
    const drvs = await bench.instantiate(host, independentExpr(PLAN_JOBS, randomBytes(6).toString('hex'), 0), 'all')
    const inst = (performance.now() - t0) / 1000
    const started = performance.now()
    const r = await bench.run(node, ['submit', '-', '--detach'], drvs.join('\n') + '\n', BUILD_TIMEOUT_MS)
    const seconds = (performance.now() - started) / 1000
    if (r.code !== 0) throw new Error(`submit --detach of ${drvs.length} exited with ${r.code}: ${r.stderr.slice(-2000)}`)
    process.stderr.write(`targets: planning ${drvs.length}: ${fmt(seconds)} s\n`)
    return [{ workload: `planning ${drvs.length}`, run: 1, 'mesh s': fmt(seconds), note: `submit --detach until it returned; nix-instantiate took ${fmt(inst)} s` }]
  } finally {
    await bench.stop(node).catch(() => {})
  }
}

async function queuedMemory (bench: MeshBench): Promise<BenchRow[]> {
  // One node alone with one slot: all but one job stay queued.
  const host = bench.net.host(0)
  const node = await bench.start('t-queue', host, join(bench.net.sharedDir, `queue-${randomBytes(3).toString('hex')}`), ['--max-jobs', '1'])
  try {
    const drvs = await bench.instantiate(host, independentExpr(QUEUED_JOBS, randomBytes(6).toString('hex'), 600), 'all')
    const before = await rssKiB(node.dataDir)
    const r = await bench.run(node, ['submit', '-', '--detach'], drvs.join('\n') + '\n', BUILD_TIMEOUT_MS)
    if (r.code !== 0) throw new Error(`submit --detach exited with ${r.code}: ${r.stderr.slice(-2000)}`)
    await new Promise(resolve => setTimeout(resolve, 3_000))
    const after = await rssKiB(node.dataDir)
    return [{ workload: 'memory', run: `${QUEUED_JOBS} queued`, note: `RSS ${Math.round(before / 1024)} MiB alone, ${Math.round(after / 1024)} MiB with ${QUEUED_JOBS} jobs queued` }]
  } finally {
    await bench.stop(node).catch(() => {})
  }
}

const COLUMNS = ['workload', 'run', 'LB s', 'mesh s', 'mesh (owner) s', `local -j ${SLOTS} s`, 'mesh/LB', 'owner/LB', 'local/LB', 'mesh/local', 'owner/local', 'mesh jobs/s', 'local jobs/s', 'note']

/** The sleep DAG's rows go into this file's generated targets block; BENCH_TARGETS_DOC=none: nowhere. */
const DOC = process.env.BENCH_TARGETS_DOC ?? fileURLToPath(new URL('../docs/benchmarks.md', import.meta.url))

async function writeSleepBlock (rows: BenchRow[], started: Date, loadStart: string, cliNote: string): Promise<void> {
  const sleep = rows.filter(r => String(r.workload).startsWith('sleep DAG'))
  if (DOC === 'none' || sleep.length === 0) return
  const body = [
    wrap(`\`${commandLine(['BENCH_TARGETS', 'BENCH_SLEEP_', 'BENCH_TRACE_DIR', 'BENCH_MESH_'])}\` on ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC, ` +
      `commit ${gitCommit(['node', 'protocols'])}, nodes running ${cliNote}; machine: ${machine()}; load average ${loadStart} at the start, ` +
      `${loadAverage()} at the end; the whole run (parts ${[...PARTS].join(', ')}) took ${fmt((Date.now() - started.getTime()) / 1000)} s.`),
    '',
    wrap(`**Sleep DAG**: ${SLEEP_LAYERS} layers × ${SLEEP_WIDTH} derivations sleeping 0–${SLEEP_MAX_S} s, a new random DAG each run; ` +
      `the mesh of ${MESH_HOSTS} test hosts × ${SLOTS_PER_NODE} slots (\`meshbuild submit\` wall time; "owner": inside the node) against ` +
      `\`nix-store --realise -j ${SLOTS}\` on one more host. LB = max(critical path, work ÷ ${SLOTS} slots).`),
    '',
    markdownTable(sleep, ['run', 'LB s', 'mesh s', 'mesh (owner) s', `local -j ${SLOTS} s`, 'mesh/LB', 'owner/LB', 'local/LB', 'mesh/local', 'note'])
  ].join('\n')
  await writeBlock(DOC, 'targets', body, PLACES.targets)
}

export async function run (): Promise<BenchRow[]> {
  const started = new Date()
  const loadStart = loadAverage()
  const { path: cli, note } = chooseCli()
  process.stderr.write(`targets bench: nodes run ${note}; ${RUNS} runs each; parts ${[...PARTS].join(',')}\n`)
  if (TRACE_DIR !== undefined) await mkdir(TRACE_DIR, { recursive: true })
  const net = await TestNetwork.create({ hosts: MESH_HOSTS + 1 })
  const logDir = process.env.BENCH_MESH_LOGS ?? join(net.sharedDir, 'logs')
  await mkdir(logDir, { recursive: true })
  const bench = new MeshBench(net, cli, logDir)
  const rows: BenchRow[] = []
  const local = net.host(MESH_HOSTS)
  try {
    const nodes = await startMesh(bench)
    try {
      // One unmeasured round: first-use costs (JIT, first streams) land here.
      const warm = await instantiate(bench, net.hosts.slice(0, MESH_HOSTS), dagExpr(layeredDag([1, 6, 1], 0, 1), randomBytes(6).toString('hex')))
      await submitOnMesh(bench, nodes, warm)
      if (PARTS.has('memory')) rows.push(...await idleMemory(nodes))
      if (PARTS.has('sleep')) rows.push(...await sleepDag(bench, nodes, local))
      if (PARTS.has('zero')) rows.push(...await zeroDag(bench, nodes, local, 'zero'))
      if (PARTS.has('independent')) rows.push(...await zeroDag(bench, nodes, local, 'independent'))
    } finally {
      for (const n of nodes) await bench.stop(n).catch(() => {})
    }
    // Alone, after the mesh: their queued jobs must not reach the mesh's nodes.
    if (PARTS.has('planning')) rows.push(...await planning(bench))
    if (PARTS.has('memory')) rows.push(...await queuedMemory(bench))
  } finally {
    await bench.close()
    await net.destroy()
  }
  await writeSleepBlock(rows, started, loadStart, note)
  return rows.map(r => Object.fromEntries(COLUMNS.map(c => [c, r[c] ?? ''])))
}

// Run alone: `node --import ./test/helpers/nix-test-env.ts bench/targets.ts`.
if (import.meta.url === `file://${process.argv[1]}`) console.table(await run())
