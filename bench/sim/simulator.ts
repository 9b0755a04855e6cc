// One simulated run: a workload on a mesh under a policy, from a seed. The same options give the
// same result and the same event trace (its hash is in the result).
import { BEACON_INTERVAL_MS } from '../../protocols/mesh/constants.ts'
import type { Calibration, CalibrationName } from './calibration.ts'
import type { SimNodeSpec } from './cluster.ts'
import { checkEnds } from './invariants.ts'
import { lowerBound } from './lower-bound.ts'
import type { Counters } from './metrics.ts'
import { CentralPullPolicy } from './policy-central-pull.ts'
import { MeshbuildPolicy, type GossipMode } from './policy-meshbuild.ts'
import { DEFAULT_SHARE } from '../../node/scheduler/fair-share.ts'
import { StaticHookPolicy } from './policy-static-hook.ts'
import type { Policy, PolicyName } from './policy.ts'
import { randomFailures, World, type Failure } from './world.ts'
import { concatWorkloads, type Estimates, type Workload } from './workloads.ts'

export interface SimOptions {
  workload: Workload
  cluster: SimNodeSpec[]
  policy: PolicyName
  seed: number
  /** Share of the nodes (the submitter excepted) that die at random times within the first LB. */
  failRate?: number
  /** Deaths at chosen times, beside those of failRate. */
  failures?: Failure[]
  /** meshbuild's gossip: exact below COALESCE_FROM_NODES nodes unless given. */
  gossip?: GossipMode
  /** Build every job twice on two peers (meshbuild's --check-reproducible). */
  check?: boolean
  /** The costs: a profile of bench/sim/calibration.ts (daemon unless given) or one of calibrate.ts. */
  calibration?: CalibrationName | Calibration
  /** Keep every build's node and times in the result (memory grows with the jobs). */
  timeline?: boolean
  /**
   * Owners submitting at once (meshbuild only): nodes 0 … owners − 1, each its own copy of the
   * workload, so the run builds owners × its jobs. 1 unless given.
   */
  owners?: number
  /** Instead of copies: owner o submits ownerWorkloads[o] (workload is then only the first's name). */
  ownerWorkloads?: Workload[]
  /**
   * Instead of copies: every owner submits the workload itself, the same derivations, so the
   * run needs its jobs built once (claims.ts); the owners' offers carry their claims.
   */
  shared?: boolean
  /** With shared: false gossips no claims, so no owner defers to another (the mesh before claims). */
  claims?: boolean
  /** Each owner's share weight (join --share), by owner; 1 for those not given. */
  shares?: number[]
  /** The build times meshbuild's owners know from history (workloads.ts Estimates); none unless given. */
  estimates?: Estimates
}

/** One owner of a run with several: when its submission finished and what of the mesh it got. */
export interface OwnerResult {
  share: number
  /** From the submission to its last job's outputs at that owner, seconds. */
  makespan: number
  /** Whether every job of its submission was built and its outputs reached it. */
  allBuilt: boolean
  /**
   * Its part of the slot-time spent building owners' jobs while every owner had a job ready and
   * unstarted (the time the owners competed): about share ÷ total share when the mesh is fair.
   */
  slotShare: number
}

export class SimUsageError extends Error {
  override name = 'SimUsageError'
}

export interface SimResult {
  workload: string
  policy: PolicyName
  jobs: number
  nodes: number
  seed: number
  failRate: number
  /** From the submission to the last job's outputs at the submitter, seconds. */
  makespan: number
  lowerBound: number
  criticalPath: number
  workBound: number
  ratio: number
  /** A bound no schedule beats either, nearer where a narrow head blocks the rest (lower-bound.ts). */
  tightLowerBound: number
  /** makespan ÷ tightLowerBound: how far from the best possible, at most. */
  tightRatio: number
  messagesPerJob: number
  stealsPerJob: number
  /**
   * Completed builds ÷ derivations: 1 when each was built once in the whole mesh, more where
   * owners needing the same derivation both built it (or a checked job's two builds).
   */
  buildsPerJob: number
  bytesMoved: number
  idleSlotSeconds: number
  /** Seconds the submitter's uplink carried NARs: near the makespan, the network is the limit. */
  submitterUplinkSeconds: number
  wallMs: number
  /** Nodes that died during the run. */
  deaths: number
  allBuilt: boolean
  traceHash: string
  counters: Counters
  /** With options.timeline: each build, ms of simulated time from the submission. */
  timeline?: Array<{ job: number, node: number, start: number, end: number }>
  /** With several owners: each one's figures, by owner (node index). */
  owners?: OwnerResult[]
  /**
   * With several owners submitting the same derivations: whether their offers carried claims;
   * the outputs owners fetched from the owner they deferred a job to, and how many of those
   * found them missing (then the owner built the job itself); and how long after the first
   * owner had a derivation's outputs the last one had them (seconds, mean and max).
   */
  shared?: { claims: boolean, ownerFetches: number, ownerFetchesMissing: number, meanLag: number, maxLag: number }
  /**
   * With several owners: Jain's index of slotShare ÷ share over the owners, 1 when each got
   * slots exactly in proportion to its share, 1 ÷ owners when one got them all.
   */
  fairness?: number
}

/** The submission arrives once every node has gossiped once: the mesh is up, as a user finds it. */
export const SUBMIT_AT_MS = BEACON_INTERVAL_MS + 100
/** From this mesh size on, meshbuild's gossip is coalesced by default (see GossipMode). */
export const COALESCE_FROM_NODES = 200
/** A run that has not finished by this many lower bounds (plus an hour) is stuck. */
const LIMIT_LB_FACTOR = 50
const LIMIT_SLACK_MS = 3_600_000

export function simulate (options: SimOptions): SimResult {
  const started = performance.now()
  const { cluster, seed } = options
  const owners = options.ownerWorkloads?.length ?? options.owners ?? 1
  if (!Number.isInteger(owners) || owners < 1 || owners > cluster.length) throw new SimUsageError(`owners must be 1..${cluster.length} (the nodes), not ${owners}`)
  if (owners > 1 && options.policy !== 'meshbuild') throw new SimUsageError(`several owners are simulated for meshbuild only; ${options.policy} has one submitter`)
  if ((options.shares ?? []).some(s => !(s > 0))) throw new SimUsageError(`shares must be positive numbers, not ${(options.shares ?? []).join(',')}`)
  const shared = options.shared === true
  if (shared && (owners < 2 || options.ownerWorkloads !== undefined)) throw new SimUsageError('shared derivations need two owners or more, all submitting the workload (no ownerWorkloads)')
  // Shared: the workload once, and every owner's range all of it.
  const { workload, ranges } = shared
    ? { workload: options.workload, ranges: new Array<[number, number]>(owners).fill([0, options.workload.jobs.length]) }
    : concatWorkloads(options.ownerWorkloads ?? new Array<Workload>(owners).fill(options.workload))
  const lb = lowerBound(workload.jobs, cluster)
  const check = options.check === true && options.policy === 'meshbuild'
  const world = new World(workload.jobs, cluster, seed, () => check ? 2 : 1, options.calibration ?? 'daemon', shared ? owners : 1)
  world.tracker.recordTimeline = options.timeline === true
  const policy = makePolicy({ ...options, workload }, world, check, ranges)
  const failRate = options.failRate ?? 0
  const failures = [...(options.failures ?? []), ...randomFailures(cluster.length, failRate, SUBMIT_AT_MS, lb.lowerBoundMs, seed, owners)]
  world.scheduleFailures(failures)
  policy.start(SUBMIT_AT_MS)
  world.run(() => policy.finished(), SUBMIT_AT_MS + LIMIT_LB_FACTOR * lb.lowerBoundMs * (check ? 2 : 1) + LIMIT_SLACK_MS)
  // Shared: each owner must end with every job, its outputs in that owner's store.
  const endsByOwner = shared && policy instanceof MeshbuildPolicy
    ? Array.from({ length: owners }, (_, o) => ({ ends: policy.endsOfOwner(o), has: (job: number) => policy.ownerHas(job, o) }))
    : [{ ends: policy.ends(), has: (job: number) => policy.ownerHas(job) }]
  for (const e of endsByOwner) checkEnds(workload.jobs, e.ends, world.failuresHappened, e.has)
  const makespanMs = policy.finishedAt() - SUBMIT_AT_MS
  const n = workload.jobs.length
  const c = world.counters
  const perOwner = owners > 1 && policy instanceof MeshbuildPolicy ? ownerResults(policy, options.shares ?? [], shared) : undefined
  return {
    workload: workload.name,
    policy: options.policy,
    jobs: n,
    nodes: cluster.length,
    seed,
    failRate,
    makespan: makespanMs / 1000,
    lowerBound: lb.lowerBoundMs / 1000,
    criticalPath: lb.criticalPathMs / 1000,
    workBound: lb.workBoundMs / 1000,
    ratio: makespanMs / lb.lowerBoundMs,
    tightLowerBound: lb.tightLowerBoundMs / 1000,
    tightRatio: makespanMs / lb.tightLowerBoundMs,
    messagesPerJob: c.messages / n,
    stealsPerJob: c.steals / n,
    buildsPerJob: world.tracker.completed / n,
    bytesMoved: c.bytesMoved,
    idleSlotSeconds: world.idle.idleSlotSeconds(policy.finishedAt()),
    submitterUplinkSeconds: world.uplinkBusyMs(0) / 1000,
    wallMs: performance.now() - started,
    deaths: world.alive.reduce((s, a) => s + (a === 1 ? 0 : 1), 0),
    allBuilt: endsByOwner.every(e => e.ends.every(x => x === 'built')),
    traceHash: world.trace.hex(),
    counters: c,
    ...(options.timeline === true ? { timeline: world.tracker.timeline.map(t => ({ ...t, start: t.start - SUBMIT_AT_MS, end: t.end < 0 ? -1 : t.end - SUBMIT_AT_MS })) } : {}),
    // Owners sharing derivations build them for each other: their slot shares say nothing of fairness.
    ...(perOwner !== undefined ? { owners: perOwner, ...(shared ? {} : { fairness: jainIndex(perOwner.map(o => o.slotShare / o.share)) }) } : {}),
    ...(shared && policy instanceof MeshbuildPolicy ? { shared: { claims: options.claims !== false, ...policy.sharing() } } : {})
  }
}

/** Each owner's makespan, and its part of the building slot-time while every owner had a job ready. */
function ownerResults (policy: MeshbuildPolicy, shares: readonly number[], shared: boolean): OwnerResult[] {
  const { slotShares } = policy.contention()
  const ends = policy.ends()
  return policy.ownersFinishedAt().map((at, o) => ({
    share: shares[o] ?? DEFAULT_SHARE,
    makespan: (at - SUBMIT_AT_MS) / 1000,
    allBuilt: (shared ? policy.endsOfOwner(o) : ends.filter((_, j) => policy.ownerOf(j) === o)).every(e => e === 'built'),
    slotShare: slotShares[o] ?? 0
  }))
}

/** Jain's fairness index of `xs`: (Σx)² ÷ (n Σx²). */
function jainIndex (xs: readonly number[]): number {
  const sum = xs.reduce((s, x) => s + x, 0)
  const squares = xs.reduce((s, x) => s + x * x, 0)
  return squares === 0 ? 1 : sum * sum / (xs.length * squares)
}

function makePolicy (options: SimOptions, world: World, check: boolean, ownerRanges: Array<[number, number]>): Policy {
  switch (options.policy) {
    case 'meshbuild': return new MeshbuildPolicy(world, options.workload, {
      gossip: options.gossip ?? (options.cluster.length >= COALESCE_FROM_NODES ? 'coalesced' : 'exact'),
      check,
      seed: options.seed,
      ownerRanges,
      ...(options.shares !== undefined ? { shares: options.shares } : {}),
      ...(options.shared === true ? { shared: true, claims: options.claims !== false } : {}),
      ...(options.estimates !== undefined ? { estimates: options.estimates } : {})
    })
    case 'static-hook': return new StaticHookPolicy(world, options.workload)
    case 'central-pull': return new CentralPullPolicy(world, options.workload)
  }
}
