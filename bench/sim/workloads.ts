// Seeded generators of the DAGs the simulator runs, and the submission the real planner
// (node/mesh/planner.ts) would make of one. Every job's inputs have smaller indices than the job,
// so index order is a topological order. Durations are the work at speed factor 1.
import type { JobSpec, SubmissionSpec } from '../../node/scheduler/job.ts'
import { seededRandom } from '../../node/scheduler/random.ts'

export const WORKLOADS = ['nixpkgs', 'layered', 'chain', 'independent', 'sleep'] as const
export type WorkloadName = typeof WORKLOADS[number]

export const SIM_SYSTEM = 'x86_64-linux'
/** The feature a few heavy nixpkgs-like jobs require (as nixpkgs marks big builds). */
export const BIG_FEATURE = 'big-parallel'
/** Largest workload the generators make. */
export const MAX_WORKLOAD_JOBS = 100_000
/** What the CLI submits with by default (`meshbuild submit --priority`). */
export const DEFAULT_PRIORITY = 5

export interface SimJob {
  index: number
  name: string
  drvPath: string
  outputs: Record<string, string>
  /** Indices of the jobs whose outputs this one needs. */
  inputs: number[]
  system: string
  requiredFeatures: string[]
  /** Build time at speed factor 1, the start-up cost excluded. */
  workMs: number
  /** NAR size of its outputs. */
  outputBytes: number
}

export interface Workload {
  name: WorkloadName
  seed: number
  jobs: SimJob[]
}

export class WorkloadError extends Error {
  override name = 'WorkloadError'
}

const SECOND = 1_000
const KIB = 1024
const MIB = 1024 * KIB
const GIB = 1024 * MIB
/** Longest single build the heavy tails may draw: four hours. */
const MAX_WORK_MS = 4 * 3600 * SECOND
const MAX_OUTPUT_BYTES = 2 * GIB
/** A sleep builder's output (an empty file and its NAR framing). */
const TINY_OUTPUT_BYTES = 200

// nixpkgs-like shape: a few cross-linked bootstrap chains (stdenv's stages), a band of
// libraries that depend on the last stages, and a wide fan-out of leaves on top.
const BOOTSTRAP_CHAINS = 3
const LIBRARY_SHARE = 0.15
const BIG_SHARE = 0.01
const BIG_WORK_FACTOR = 4
const MAX_LEAF_INPUTS = 5
const MAX_LIBRARY_INPUTS = 3
// layered: every job needs 1–3 jobs of the layer before.
const MAX_LAYER_INPUTS = 3
// chain: chains of this many jobs (a long chain of dependent builds each).
const CHAIN_LENGTH = 500
// sleep: issue 9's calibration DAG, 5 layers, builders sleeping 0–4 s.
const SLEEP_LAYERS = 5
const SLEEP_MAX_MS = 4 * SECOND

const NIX32 = '0123456789abcdfghijklmnpqrsvwxyz'

/** Makes workload `name` of `jobs` derivations from `seed`: the same arguments, the same DAG. */
export function generateWorkload (name: WorkloadName, jobs: number, seed: number): Workload {
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > MAX_WORKLOAD_JOBS) {
    throw new WorkloadError(`a workload has 1..${MAX_WORKLOAD_JOBS} jobs, not ${jobs}`)
  }
  const g = new Generator(seed)
  switch (name) {
    case 'nixpkgs': nixpkgs(g, jobs); break
    case 'layered': layered(g, jobs); break
    case 'chain': chains(g, jobs); break
    case 'independent': independent(g, jobs); break
    case 'sleep': sleep(g, jobs); break
  }
  return { name, seed, jobs: g.jobs }
}

/** Several owners' workloads in one: owner o's jobs are ranges[o] = [from, to) of the whole. */
export interface OwnedWorkload {
  workload: Workload
  ranges: Array<[number, number]>
}

/**
 * The workloads of several owners side by side, as each submitting its own: part c's jobs follow
 * part c − 1's, under store paths marked with c (from the second part on), so copies of one
 * workload stay distinct derivations.
 */
export function concatWorkloads (parts: readonly Workload[]): OwnedWorkload {
  const first = parts[0]
  if (first === undefined) throw new WorkloadError('no workload to concatenate')
  const total = parts.reduce((s, w) => s + w.jobs.length, 0)
  if (total > MAX_WORKLOAD_JOBS) throw new WorkloadError(`${total} jobs in all: a workload has 1..${MAX_WORKLOAD_JOBS} jobs`)
  if (parts.length === 1) return { workload: first, ranges: [[0, total]] }
  const jobs: SimJob[] = []
  const ranges: Array<[number, number]> = []
  parts.forEach((w, c) => {
    const offset = jobs.length
    // After /nix/store/<hash>-: the part's mark keeps the path valid and distinct.
    const rename = (path: string): string => c === 0 ? path : `${path.slice(0, 44)}o${c}-${path.slice(44)}`
    for (const j of w.jobs) {
      jobs.push({
        ...j,
        index: j.index + offset,
        name: c === 0 ? j.name : `o${c}-${j.name}`,
        drvPath: rename(j.drvPath),
        outputs: Object.fromEntries(Object.entries(j.outputs).map(([k, p]) => [k, rename(p)])),
        inputs: j.inputs.map(i => i + offset)
      })
    }
    ranges.push([offset, jobs.length])
  })
  return { workload: { name: first.name, seed: first.seed, jobs }, ranges }
}

/**
 * The submission `meshbuild submit` makes of the workload, as planSubmission() builds it: every
 * job with its outputs, system, required features and the input derivations that are jobs too;
 * requested = the jobs nothing depends on, in index order; nothing substituted. With `range`
 * [from, to): only those jobs (one owner's copy; their inputs lie in the range too).
 */
export function submissionSpec (w: Workload, id: string, submittedAt: number, options: { priority?: number, check?: boolean, range?: [number, number], estimates?: Estimates } = {}): SubmissionSpec {
  const hasDependent = new Uint8Array(w.jobs.length)
  for (const j of w.jobs) for (const i of j.inputs) hasDependent[i] = 1
  const [from, to] = options.range ?? [0, w.jobs.length]
  const part = from === 0 && to === w.jobs.length ? w.jobs : w.jobs.slice(from, to)
  const jobs: JobSpec[] = part.map(j => ({
    drvPath: j.drvPath,
    outputs: j.outputs,
    inputJobs: j.inputs.map(i => (w.jobs[i] as SimJob).drvPath),
    system: j.system,
    requiredFeatures: j.requiredFeatures,
    ...(options.estimates !== undefined ? { estimatedMs: estimateOf(j, options.estimates, w.seed) } : {})
  }))
  return {
    id,
    requested: part.filter(j => hasDependent[j.index] === 0).map(j => j.drvPath),
    jobs,
    substituted: [],
    priority: options.priority ?? DEFAULT_PRIORITY,
    ...(options.check === true ? { check: true } : {}),
    submittedAt
  }
}

/**
 * What the owner's build history (node/state/build-history.ts) would know of each job's work:
 * exact, or off by a log-normal factor of this sigma (0.5: half the estimates within ×0.71–1.40),
 * as the previous version of a package built in a different time.
 */
export type Estimates = { kind: 'exact' } | { kind: 'noisy', sigma: number }

function estimateOf (j: SimJob, e: Estimates, seed: number): number {
  if (e.kind === 'exact') return j.workMs
  // One draw per job from its own stream, so an estimate does not depend on the order asked.
  const r = seededRandom((Math.imul(seed ^ 0x68e31da4, 2654435761) + j.index * 40503) >>> 0)
  return Math.round(logNormal(r, j.workMs, e.sigma))
}

/** A log-normal draw with this median (Box–Muller, two draws of `random`). */
function logNormal (random: () => number, median: number, sigma: number): number {
  const u = Math.max(random(), 1e-12)
  const v = random()
  const z = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v)
  return median * Math.exp(sigma * z)
}

class Generator {
  readonly jobs: SimJob[] = []
  readonly random: () => number
  private readonly nameRandom: () => number

  constructor (seed: number) {
    this.random = seededRandom(seed)
    // Names from their own stream, so the shape of a DAG does not depend on how names are drawn.
    this.nameRandom = seededRandom((seed ^ 0x5bd1e995) >>> 0)
  }

  add (name: string, inputs: number[], workMs: number, outputBytes: number, requiredFeatures: string[] = []): number {
    const index = this.jobs.length
    const full = `${name}-${index}`
    this.jobs.push({
      index,
      name: full,
      drvPath: `/nix/store/${this.hash()}-${full}.drv`,
      outputs: { out: `/nix/store/${this.hash()}-${full}` },
      inputs: [...new Set(inputs)].sort((a, b) => a - b),
      system: SIM_SYSTEM,
      requiredFeatures,
      workMs: Math.round(Math.min(workMs, MAX_WORK_MS)),
      outputBytes: Math.round(Math.min(outputBytes, MAX_OUTPUT_BYTES))
    })
    return index
  }

  int (lo: number, hi: number): number {
    return lo + Math.floor(this.random() * (hi - lo + 1))
  }

  pick (from: readonly number[]): number {
    return from[Math.floor(this.random() * from.length)] as number
  }

  /** A log-normal draw with this median: the heavy tail of build times and sizes. */
  logNormal (median: number, sigma: number): number {
    return logNormal(this.random, median, sigma)
  }

  private hash (): string {
    let s = ''
    for (let i = 0; i < 32; i++) s += NIX32[Math.floor(this.nameRandom() * 32)]
    return s
  }
}

function nixpkgs (g: Generator, n: number): void {
  const chainLen = Math.max(1, Math.min(40, Math.round(2 * Math.log2(n + 1)), Math.floor(n / (BOOTSTRAP_CHAINS * 4))))
  const chains = Math.min(BOOTSTRAP_CHAINS, n)
  const bootstrap: number[][] = []
  for (let stage = 0; stage < chainLen; stage++) {
    const row: number[] = []
    for (let c = 0; c < chains && g.jobs.length < n; c++) {
      const prev = bootstrap[stage - 1]
      // Each stage needs its own chain's previous stage and the previous stage of the chain
      // before it: stdenv's stages are built with the compiler of the stage before.
      const inputs = prev === undefined ? [] : [prev[c], prev[(c + chains - 1) % chains]].filter((x): x is number => x !== undefined)
      row.push(g.add('bootstrap', inputs, g.logNormal(30 * SECOND, 0.8), g.logNormal(10 * MIB, 0.8)))
    }
    bootstrap.push(row)
  }
  const last = bootstrap[bootstrap.length - 1] ?? []
  const librariesWanted = Math.round(LIBRARY_SHARE * n)
  const libraryLayers = Math.max(2, Math.min(8, Math.round(Math.log2(n + 1) / 2)))
  const libraries: number[] = []
  for (let layer = 0; layer < libraryLayers; layer++) {
    const count = Math.ceil(librariesWanted / libraryLayers)
    const earlier = [...libraries]
    for (let k = 0; k < count && g.jobs.length < n && libraries.length < librariesWanted; k++) {
      const inputs = [...last]
      const extra = earlier.length === 0 ? 0 : g.int(0, MAX_LIBRARY_INPUTS)
      for (let e = 0; e < extra; e++) inputs.push(g.pick(earlier))
      libraries.push(g.add('lib', inputs, g.logNormal(30 * SECOND, 1), g.logNormal(1 * MIB, 1.2)))
    }
  }
  while (g.jobs.length < n) {
    const inputs = [...last]
    const k = libraries.length === 0 ? 0 : g.int(1, MAX_LEAF_INPUTS)
    // Popular libraries are needed by many leaves: a skewed pick (u² favours the first ones).
    for (let e = 0; e < k; e++) inputs.push(libraries[Math.floor(libraries.length * g.random() ** 2)] as number)
    const big = g.random() < BIG_SHARE
    const work = g.logNormal(15 * SECOND, 1.4) * (big ? BIG_WORK_FACTOR : 1)
    g.add('leaf', inputs, work, g.logNormal(512 * KIB, 1.5), big ? [BIG_FEATURE] : [])
  }
}

function layered (g: Generator, n: number): void {
  const layers = Math.max(2, Math.min(100, Math.round(Math.sqrt(n) / 2)))
  const width = Math.ceil(n / layers)
  let prev: number[] = []
  while (g.jobs.length < n) {
    const cur: number[] = []
    for (let k = 0; k < width && g.jobs.length < n; k++) {
      const inputs: number[] = []
      if (prev.length > 0) {
        const m = g.int(1, MAX_LAYER_INPUTS)
        for (let e = 0; e < m; e++) inputs.push(g.pick(prev))
      }
      cur.push(g.add('layer', inputs, 500 + g.random() * 29_500, g.logNormal(512 * KIB, 1.2)))
    }
    prev = cur
  }
}

function chains (g: Generator, n: number): void {
  const count = Math.max(1, Math.ceil(n / CHAIN_LENGTH))
  const tails: Array<number | undefined> = new Array<number | undefined>(count).fill(undefined)
  for (let k = 0; g.jobs.length < n; k++) {
    const c = k % count
    const tail = tails[c]
    tails[c] = g.add('chain', tail === undefined ? [] : [tail], 1_000 + g.random() * 9_000, g.logNormal(256 * KIB, 1))
  }
}

function independent (g: Generator, n: number): void {
  for (let k = 0; k < n; k++) g.add('job', [], g.logNormal(10 * SECOND, 1), g.logNormal(1 * MIB, 1.5))
}

function sleep (g: Generator, n: number): void {
  const width = Math.ceil(n / SLEEP_LAYERS)
  let prev: number[] = []
  while (g.jobs.length < n) {
    const cur: number[] = []
    for (let k = 0; k < width && g.jobs.length < n; k++) {
      const inputs: number[] = []
      if (prev.length > 0) {
        const m = g.int(1, MAX_LAYER_INPUTS)
        for (let e = 0; e < m; e++) inputs.push(g.pick(prev))
      }
      // Tenths of a second, as bench/targets.ts draws them.
      cur.push(g.add('sleep', inputs, Math.round(g.random() * SLEEP_MAX_MS / 100) * 100, TINY_OUTPUT_BYTES))
    }
    prev = cur
  }
}
