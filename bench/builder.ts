// Plain Nix through the builder socket (issue 11), side by side in one run with `meshbuild submit`
// and with one machine: real nodes on test hosts (test/helpers/test-hosts.ts, a /nix store each).
//
//   host 0: the submitting host. Its node serves the socket (--serve-builder) with --max-jobs 0,
//     so it builds nothing itself; plain `nix-build` there is told only
//     `--option builders @<data-dir>/nix-machines --max-jobs 0`, and `meshbuild submit` runs there.
//   hosts 1–3: workers, --max-jobs 2 each (6 slots).
//   host 4: no node; `nix-build -j 6` with its own store.
//
//   sleep DAG: 5 layers × 8 derivations sleeping 0–4 s (bench/targets.ts's shape), a new random DAG
//     every run; LB = max(critical path, work ÷ 6 slots).
//   chain, independent: zero-length derivations, a chain of CHAIN_JOBS and INDEPENDENT_JOBS with no
//     edges: the per-derivation cost of each path.
//
// Each path builds the same DAG under a tag of its own, so nothing is found already built; the
// .drv files are instantiated beforehand on host 0 (host 4 for the local path) only, so the
// workers fetch them as they would a user's; the order of the three rotates from run to run. The
// socket's phases are read from the log lines of the serving node (its connections, the mesh's
// submission) and of the workers: see socketPhases.
//
// BENCH_BUILDER=sleep,chain,independent picks parts; BENCH_BUILDER_RUNS the runs (3);
// BENCH_BUILDER_POLL=N adds `--option build-poll-interval N` to the socket's nix-build (Nix's
// default 5 s is how long a build it postponed, every machine slot being taken, waits to retry);
// BENCH_BUILDER_SOCKET_JOBS=N points that nix-build at a copy of the node's machines file whose
// max-jobs is N instead of the peers' slots (what the mesh would accept, it queues the rest);
// BENCH_TRACE_DIR=DIR starts every node with `--trace DIR/<node>.json`; BENCH_MESH_LOGS=DIR keeps
// the nodes' logs.
import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { cpus, totalmem } from 'node:os'
import { join } from 'node:path'
import { TestNetwork, type TestHost } from '../test/helpers/test-hosts.ts'
import type { SubmissionReport } from '../node/mesh/reports.ts'
import { builderPaths } from '../node/builder/builder-paths.ts'
import { defaultMaxJobs } from '../node/builder/machines-file.ts'
import { chooseCli, MeshBench, waitForLine, type BenchNode, type LogLine } from './mesh.ts'
import { dagExpr, layeredDag, lowerBound, type DagJob } from './targets.ts'
import type { BenchRow } from './run.ts'

const RUNS = Number(process.env.BENCH_BUILDER_RUNS ?? 3)
const PARTS = new Set((process.env.BENCH_BUILDER ?? 'sleep,chain,independent').split(','))
const TRACE_DIR = process.env.BENCH_TRACE_DIR
const WORKERS = 3
const SLOTS_PER_NODE = 2
const SLOTS = WORKERS * SLOTS_PER_NODE
const SLEEP_LAYERS = 5
const SLEEP_WIDTH = 8
const SLEEP_MAX_S = 4
const CHAIN_JOBS = 20
const INDEPENDENT_JOBS = 60
const BUILD_TIMEOUT_MS = 600_000
const MACHINES_TIMEOUT_MS = 30_000
const POLL = process.env.BENCH_BUILDER_POLL
const POLL_ARGS = POLL !== undefined ? ['--option', 'build-poll-interval', POLL] : []
const SOCKET_JOBS = process.env.BENCH_BUILDER_SOCKET_JOBS

type Path = 'socket' | 'submit' | 'local'
/** Run i goes in order ORDERS[i % 3]: the machine's background load drifts. */
const ORDERS: Path[][] = [['socket', 'submit', 'local'], ['submit', 'local', 'socket'], ['local', 'socket', 'submit']]

interface Mesh {
  submitter: BenchNode
  workers: BenchNode[]
  local: TestHost
  machinesFile: string
}

interface PathResult {
  seconds: number
  /** For submit: the owner's `submission … :` line to its `finished` line (the client's start left out). */
  ownerSeconds?: number
  builtBy: Map<string, number>
}

/** Nodes started as bench/targets.ts starts them, into `nodes` (for the caller to stop); the submitter also serves the socket. */
async function startMesh (bench: MeshBench, nodes: BenchNode[]): Promise<void> {
  const start = async (name: string, host: TestHost, args: string[]): Promise<void> => {
    const trace = TRACE_DIR !== undefined ? ['--trace', join(TRACE_DIR, `${name}-${Date.now()}.json`)] : []
    nodes.push(await bench.start(name, host, join(bench.net.sharedDir, `${name}-${randomBytes(3).toString('hex')}`), [...args, ...trace]))
  }
  await start('b-S', bench.net.host(0), ['--max-jobs', '0', '--serve-builder'])
  for (let i = 1; i <= WORKERS; i++) await start(`b-${String.fromCharCode(64 + i)}`, bench.net.host(i), ['--max-jobs', String(SLOTS_PER_NODE)])
  await bench.waitForMesh(nodes)
}

/** The machines file's max-jobs once every worker is seen: the node's rule on their slots. */
const OFFERED_JOBS = defaultMaxJobs(Array.from({ length: WORKERS }, () => ({ systems: [], features: [], maxJobs: SLOTS_PER_NODE })))

/**
 * Waits until the machines file offers the socket with all the workers' slots; returns the file
 * the socket's nix-build names (with BENCH_BUILDER_SOCKET_JOBS, a copy with that max-jobs).
 */
async function waitForMachines (file: string, sharedDir: string): Promise<string> {
  const deadline = Date.now() + MACHINES_TIMEOUT_MS
  for (;;) {
    const text = await readFile(file, 'utf8').catch(() => '')
    const fields = text.trim().split(' ')
    if (text.startsWith('unix://') && fields[3] === String(OFFERED_JOBS)) {
      if (SOCKET_JOBS === undefined) return file
      const copy = join(sharedDir, 'bench-machines')
      await writeFile(copy, fields.map((f, i) => i === 3 ? SOCKET_JOBS : f).join(' ') + '\n')
      return copy
    }
    if (Date.now() > deadline) throw new Error(`${file} did not offer max-jobs ${OFFERED_JOBS} (the ${SLOTS} slots) within ${MACHINES_TIMEOUT_MS} ms: ${JSON.stringify(text)}`)
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

/** How many of `drvs` each worker logged `building <drv> for …` for since its line `marks[i]`. */
function builtBy (workers: BenchNode[], marks: number[], drvs: string[]): Map<string, number> {
  const mine = new Set(drvs)
  return new Map(workers.map((w, i) => [w.name, w.lines.slice(marks[i]).filter(l => {
    const m = /^building (\S+) for /.exec(l.msg)
    return m?.[1] !== undefined && mine.has(m[1])
  }).length]))
}

/** Plain nix-build on the submitting host, only the socket as builder. */
async function viaSocket (mesh: Mesh, drvs: string[]): Promise<PathResult> {
  const marks = mesh.workers.map(w => w.lines.length)
  const sMark = mesh.submitter.lines.length
  const started = performance.now()
  const r = await mesh.submitter.host.exec('nix-build', [...drvs, '--no-out-link', '--option', 'builders', `@${mesh.machinesFile}`, '--max-jobs', '0', ...POLL_ARGS], { timeoutMs: BUILD_TIMEOUT_MS })
  const seconds = (performance.now() - started) / 1000
  if (r.code !== 0) throw new Error(`nix-build through the socket exited with ${r.code}:\n${r.stderr.slice(-3000)}`)
  const outs = r.stdout.split('\n').filter(l => l !== '')
  if (outs.length !== drvs.length) throw new Error(`nix-build through the socket gave ${outs.length} outputs for ${drvs.length} derivations`)
  // Every one went through the socket: none was found, none built by the host's own Nix.
  const mine = new Set(drvs)
  const asked = mesh.submitter.lines.slice(sMark).filter(l => mine.has(/^building (\S+) \(timeout/.exec(l.msg)?.[1] ?? '')).length
  if (asked !== drvs.length) throw new Error(`the socket was asked to build ${asked} of ${drvs.length} derivations`)
  await settle()
  return { seconds, builtBy: builtBy(mesh.workers, marks, drvs) }
}

async function viaSubmit (bench: MeshBench, mesh: Mesh, drvs: string[]): Promise<PathResult> {
  const marks = mesh.workers.map(w => w.lines.length)
  const sMark = mesh.submitter.lines.length
  const started = performance.now()
  const r = await bench.run(mesh.submitter, ['submit', '-', '--json'], drvs.join('\n') + '\n', BUILD_TIMEOUT_MS)
  const seconds = (performance.now() - started) / 1000
  if (r.code !== 0) throw new Error(`meshbuild submit exited with ${r.code}: ${r.stderr.slice(-2000)}`)
  const report = JSON.parse(r.stdout) as SubmissionReport
  const built = report.results.filter(x => x.state === 'built').length
  if (built !== drvs.length) throw new Error(`the mesh built ${built} of ${drvs.length} jobs`)
  const accepted = await waitForLine(mesh.submitter, new RegExp(`submission ${report.id}: `), 5_000, sMark)
  const finished = await waitForLine(mesh.submitter, new RegExp(`submission ${report.id} finished`), 5_000, sMark)
  await settle()
  return { seconds, ownerSeconds: (finished.at - accepted.at) / 1000, builtBy: builtBy(mesh.workers, marks, drvs) }
}

async function viaLocal (host: TestHost, drvs: string[]): Promise<PathResult> {
  const started = performance.now()
  const r = await host.exec('nix-build', [...drvs, '--no-out-link', '-j', String(SLOTS), '--option', 'builders', ''], { timeoutMs: BUILD_TIMEOUT_MS })
  const seconds = (performance.now() - started) / 1000
  if (r.code !== 0) throw new Error(`local nix-build exited with ${r.code}:\n${r.stderr.slice(-3000)}`)
  return { seconds, builtBy: new Map([['local', drvs.length]]) }
}

/** The workers' pipes deliver their last lines a little after the build returns. */
async function settle (): Promise<void> { await new Promise(resolve => setTimeout(resolve, 200)) }

/** The DAG under a fresh tag, instantiated on the host `path` runs from; the .drv paths in job order. */
async function instantiate (bench: MeshBench, mesh: Mesh, path: Path, jobs: DagJob[]): Promise<string[]> {
  const host = path === 'local' ? mesh.local : mesh.submitter.host
  const drvs = await bench.instantiate(host, dagExpr(jobs, randomBytes(6).toString('hex')), 'all')
  if (drvs.length !== jobs.length) throw new Error(`nix-instantiate gave ${drvs.length} derivations for ${jobs.length}`)
  return drvs
}

interface Round {
  jobs: DagJob[]
  results: Record<Path, PathResult>
  socketDrvs: string[]
  /** Index of the serving node's first log line of the socket's part. */
  socketSince: number
  /** Date.now() when the socket's nix-build began. */
  socketStarted: number
}

/** One DAG built by the three paths in the run's order. */
async function round (bench: MeshBench, mesh: Mesh, jobs: DagJob[], i: number): Promise<Round> {
  const drvs: Record<Path, string[]> = {
    socket: await instantiate(bench, mesh, 'socket', jobs),
    submit: await instantiate(bench, mesh, 'submit', jobs),
    local: await instantiate(bench, mesh, 'local', jobs)
  }
  const results: Partial<Record<Path, PathResult>> = {}
  let socketSince = 0
  let socketStarted = 0
  for (const path of ORDERS[i % ORDERS.length] ?? []) {
    if (path === 'socket') { socketSince = mesh.submitter.lines.length; socketStarted = Date.now() }
    results[path] = path === 'socket'
      ? await viaSocket(mesh, drvs.socket)
      : path === 'submit' ? await viaSubmit(bench, mesh, drvs.submit) : await viaLocal(mesh.local, drvs.local)
  }
  const { socket, submit, local } = results
  if (socket === undefined || submit === undefined || local === undefined) throw new Error('a path did not run')
  return { jobs, results: { socket, submit, local }, socketDrvs: drvs.socket, socketSince, socketStarted }
}

// --- where a socket job's time goes ---------------------------------------------------------

/** Medians in ms over one round's socket jobs, from the serving node's and the workers' logs. */
interface SocketPhases {
  /** A connection's first operation → its BuildDerivation (SetOptions, QueryValidPaths, inputs uploaded). */
  beforeBuild: number[]
  /** BuildDerivation → a worker's `building X for` (submission, lending, .drv and inputs fetched). */
  toWorker: number[]
  /** The build on the worker. */
  build: number[]
  /** Worker's `built X` → the submission's `finished` line (outputs fetched back, into the root): the reply. */
  back: number[]
  /** The reply → the connection's last operation (Nix reading the outputs back). */
  afterReply: number[]
  /** The last dependency's connection done → this job's connection's first operation: Nix's own time between. */
  nixBetween: number[]
  /** A job with no dependency: nix-build's start → its connection's first operation (waits for a machine slot included). */
  rootWait: number[]
}

function socketPhases (mesh: Mesh, r: Round): SocketPhases {
  const p: SocketPhases = { beforeBuild: [], toWorker: [], build: [], back: [], afterReply: [], nixBetween: [], rootWait: [] }
  const lines = mesh.submitter.lines.slice(r.socketSince)
  const byConn = new Map<string, LogLine[]>()
  for (const l of lines) {
    const c = /:conn (\d+)$/.exec(l.scope)?.[1]
    if (c !== undefined) byConn.set(c, [...(byConn.get(c) ?? []), l])
  }
  const workerAt = (pattern: RegExp): Map<string, number> => {
    const at = new Map<string, number>()
    for (const w of mesh.workers) {
      for (const l of w.lines) {
        const d = pattern.exec(l.msg)?.[1]
        if (d !== undefined) at.set(d, l.at)
      }
    }
    return at
  }
  const wBuilding = workerAt(/^building (\S+) for /)
  const wBuilt = workerAt(/^built (\S+)$/)
  const submissionOf = new Map<string, string>()
  const finishedAt = new Map<string, number>()
  for (const l of lines) {
    const s = /^(\S+): building in the mesh for plain Nix \(submission (\S+)\)$/.exec(l.msg)
    if (s?.[1] !== undefined && s[2] !== undefined) submissionOf.set(s[1], s[2])
    const f = /^submission (\S+) finished/.exec(l.msg)
    if (f?.[1] !== undefined) finishedAt.set(f[1], l.at)
  }
  // Per job index: its connection's first line, BuildDerivation, last line.
  const conn = new Map<number, { first: number, request: number, last: number }>()
  for (const ls of byConn.values()) {
    const req = ls.find(l => /^building \S+ \(timeout/.test(l.msg))
    const drv = req !== undefined ? /^building (\S+) /.exec(req.msg)?.[1] : undefined
    const index = drv !== undefined ? r.socketDrvs.indexOf(drv) : -1
    if (req === undefined || drv === undefined || index < 0) continue
    const first = ls[0]?.at ?? req.at
    const last = ls.at(-1)?.at ?? req.at
    conn.set(index, { first, request: req.at, last })
    p.beforeBuild.push(req.at - first)
    const wb = wBuilding.get(drv)
    const wd = wBuilt.get(drv)
    const sub = submissionOf.get(drv)
    const fin = sub !== undefined ? finishedAt.get(sub) : undefined
    if (wb !== undefined) p.toWorker.push(wb - req.at)
    if (wb !== undefined && wd !== undefined) p.build.push(wd - wb)
    if (wd !== undefined && fin !== undefined) p.back.push(fin - wd)
    if (fin !== undefined) p.afterReply.push(last - fin)
  }
  for (const [index, c] of conn) {
    const deps = r.jobs[index]?.deps ?? []
    const ready = Math.max(...deps.map(d => conn.get(d)?.last ?? NaN))
    if (deps.length > 0 && Number.isFinite(ready)) p.nixBetween.push(c.first - ready)
    if (deps.length === 0) p.rootWait.push(c.first - r.socketStarted)
  }
  return p
}

// --- rows -------------------------------------------------------------------------------------

const fmt = (x: number, d = 2): string => x.toFixed(d)
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN

function whoBuilt (rounds: Round[], path: Path): string {
  const sum = new Map<string, number[]>()
  for (const r of rounds) for (const [k, v] of r.results[path].builtBy) sum.set(k, [...(sum.get(k) ?? []), v])
  return [...sum].map(([k, v]) => `${k} ${v.join('/')}`).join(', ')
}

function phaseNote (p: SocketPhases): string {
  const ms = (xs: number[]): string => xs.length === 0 ? '–' : `${Math.round(median(xs))}`
  const max = (xs: number[]): string => xs.length === 0 ? '–' : `${Math.round(Math.max(...xs))}`
  return `median ms per job: conn → BuildDerivation ${ms(p.beforeBuild)}, → worker building ${ms(p.toWorker)}, ` +
    `build ${ms(p.build)}, built → reply ${ms(p.back)}, reply → conn done ${ms(p.afterReply)}; ` +
    `Nix between a dependency's conn and the next ${ms(p.nixBetween)} (${p.nixBetween.length} jobs, max ${max(p.nixBetween)}); ` +
    `nix-build start → conn of a job without inputs ${ms(p.rootWait)} (${p.rootWait.length} jobs, max ${max(p.rootWait)})`
}

async function loadavg (): Promise<string> {
  return (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ')
}

async function sleepDag (bench: MeshBench, mesh: Mesh): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const rounds: Round[] = []
  const label = `sleep DAG ${SLEEP_LAYERS}×${SLEEP_WIDTH}, 0–${SLEEP_MAX_S} s`
  for (let i = 0; i < RUNS; i++) {
    const jobs = layeredDag(Array.from({ length: SLEEP_LAYERS }, () => SLEEP_WIDTH), SLEEP_MAX_S, Date.now() + i)
    const { lb, criticalPath, work } = lowerBound(jobs, SLOTS)
    const r = await round(bench, mesh, jobs, i)
    rounds.push(r)
    const { socket, submit, local } = r.results
    const phases = socketPhases(mesh, r)
    process.stderr.write(`builder: ${label} run ${i + 1}: LB ${fmt(lb)} s (critical path ${fmt(criticalPath)}, work ${fmt(work)}), ` +
      `socket ${fmt(socket.seconds)} s, submit ${fmt(submit.seconds)} s, local ${fmt(local.seconds)} s; load ${await loadavg()}; ${phaseNote(phases)}\n`)
    rows.push({
      workload: label,
      run: i + 1,
      'LB s': fmt(lb),
      'socket s': fmt(socket.seconds),
      'submit s': fmt(submit.seconds),
      'submit (owner) s': fmt(submit.ownerSeconds ?? NaN),
      [`local -j ${SLOTS} s`]: fmt(local.seconds),
      'socket/LB': fmt(socket.seconds / lb),
      'submit/LB': fmt(submit.seconds / lb),
      'local/LB': fmt(local.seconds / lb),
      'socket/submit': fmt(socket.seconds / submit.seconds),
      note: `load ${await loadavg()}; socket built by ${whoBuilt([r], 'socket')}`
    })
    rows.push({ workload: label, run: `${i + 1} socket`, note: phaseNote(phases) })
  }
  const ratio = (f: (r: Round) => number): string => fmt(median(rounds.map(f)))
  const lbOf = (r: Round): number => lowerBound(r.jobs, SLOTS).lb
  rows.push({
    workload: label,
    run: 'median',
    'socket/LB': ratio(r => r.results.socket.seconds / lbOf(r)),
    'submit/LB': ratio(r => r.results.submit.seconds / lbOf(r)),
    'local/LB': ratio(r => r.results.local.seconds / lbOf(r)),
    'socket/submit': ratio(r => r.results.socket.seconds / r.results.submit.seconds),
    note: `socket built by ${whoBuilt(rounds, 'socket')}; submit by ${whoBuilt(rounds, 'submit')}`
  })
  return rows
}

async function zeroLength (bench: MeshBench, mesh: Mesh, what: 'chain' | 'independent'): Promise<BenchRow[]> {
  const rows: BenchRow[] = []
  const rounds: Round[] = []
  const n = what === 'chain' ? CHAIN_JOBS : INDEPENDENT_JOBS
  const label = what === 'chain' ? `chain of ${n} zero-length` : `${n} independent zero-length`
  // A chain: n layers of one, each on the one before; independent: one layer of n.
  const widths = what === 'chain' ? Array.from({ length: n }, () => 1) : [n]
  for (let i = 0; i < RUNS; i++) {
    const r = await round(bench, mesh, layeredDag(widths, 0, Date.now() + i), i)
    rounds.push(r)
    const { socket, submit, local } = r.results
    const phases = socketPhases(mesh, r)
    process.stderr.write(`builder: ${label} run ${i + 1}: socket ${fmt(socket.seconds)} s, submit ${fmt(submit.seconds)} s, local ${fmt(local.seconds)} s; load ${await loadavg()}; ${phaseNote(phases)}\n`)
    rows.push({
      workload: label,
      run: i + 1,
      'socket s': fmt(socket.seconds),
      'submit s': fmt(submit.seconds),
      'submit (owner) s': fmt(submit.ownerSeconds ?? NaN),
      [`local -j ${SLOTS} s`]: fmt(local.seconds),
      'socket s/drv': fmt(socket.seconds / n, 3),
      'submit s/drv': fmt(submit.seconds / n, 3),
      'local s/drv': fmt(local.seconds / n, 3),
      'socket/submit': fmt(socket.seconds / submit.seconds),
      note: `load ${await loadavg()}; socket built by ${whoBuilt([r], 'socket')}`
    })
    rows.push({ workload: label, run: `${i + 1} socket`, note: phaseNote(phases) })
  }
  const per = (path: Path): string => fmt(median(rounds.map(r => r.results[path].seconds / n)), 3)
  rows.push({
    workload: label,
    run: 'median',
    'socket s/drv': per('socket'),
    'submit s/drv': per('submit'),
    'local s/drv': per('local'),
    'socket/submit': fmt(median(rounds.map(r => r.results.socket.seconds / r.results.submit.seconds))),
    note: `socket built by ${whoBuilt(rounds, 'socket')}; submit by ${whoBuilt(rounds, 'submit')}`
  })
  return rows
}

const COLUMNS = ['workload', 'run', 'LB s', 'socket s', 'submit s', 'submit (owner) s', `local -j ${SLOTS} s`, 'socket/LB', 'submit/LB', 'local/LB',
  'socket s/drv', 'submit s/drv', 'local s/drv', 'socket/submit', 'note']

export async function run (): Promise<BenchRow[]> {
  const { path: cli, note } = chooseCli()
  process.stderr.write(`builder bench: nodes run ${note}; ${RUNS} runs each; parts ${[...PARTS].join(',')}; socket nix-build options ${POLL_ARGS.join(' ') || 'none'}${SOCKET_JOBS !== undefined ? `, max-jobs ${SOCKET_JOBS} in its machines line` : ''}; ` +
    `machine: ${cpus().length} CPUs, ${Math.round(totalmem() / 2 ** 30)} GiB, load ${await loadavg()}\n`)
  if (TRACE_DIR !== undefined) await mkdir(TRACE_DIR, { recursive: true })
  const net = await TestNetwork.create({ hosts: WORKERS + 2 })
  const logDir = process.env.BENCH_MESH_LOGS ?? join(net.sharedDir, 'logs')
  await mkdir(logDir, { recursive: true })
  const bench = new MeshBench(net, cli, logDir)
  const rows: BenchRow[] = []
  const nodes: BenchNode[] = []
  try {
    await startMesh(bench, nodes)
    const [submitter, ...workers] = nodes
    if (submitter === undefined) throw new Error('no submitting node')
    const machinesFile = await waitForMachines(builderPaths(submitter.dataDir).machinesFile, net.sharedDir)
    const mesh: Mesh = { submitter, workers, local: net.host(WORKERS + 1), machinesFile }
    // One unmeasured round: first-use costs (JIT, first streams, the hook's first start) land here.
    await round(bench, mesh, layeredDag([1, 6, 1], 0, 1), 0)
    if (PARTS.has('sleep')) rows.push(...await sleepDag(bench, mesh))
    if (PARTS.has('chain')) rows.push(...await zeroLength(bench, mesh, 'chain'))
    if (PARTS.has('independent')) rows.push(...await zeroLength(bench, mesh, 'independent'))
  } finally {
    for (const n of nodes) await bench.stop(n).catch(() => {})
    await bench.close()
    await net.destroy()
  }
  return rows.map(r => Object.fromEntries(COLUMNS.map(c => [c, r[c] ?? ''])))
}

// Run alone: `node --import ./test/helpers/nix-test-env.ts bench/builder.ts`.
if (import.meta.url === `file://${process.argv[1]}`) console.table(await run())
