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
import { StaticHookPolicy } from './policy-static-hook.ts'
import type { Policy, PolicyName } from './policy.ts'
import { randomFailures, World, type Failure } from './world.ts'
import type { Workload } from './workloads.ts'

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
  messagesPerJob: number
  stealsPerJob: number
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
  const { workload, cluster, seed } = options
  const lb = lowerBound(workload.jobs, cluster)
  const check = options.check === true && options.policy === 'meshbuild'
  const world = new World(workload.jobs, cluster, seed, () => check ? 2 : 1, options.calibration ?? 'daemon')
  world.tracker.recordTimeline = options.timeline === true
  const policy = makePolicy(options, world, check)
  const failRate = options.failRate ?? 0
  const failures = [...(options.failures ?? []), ...randomFailures(cluster.length, failRate, SUBMIT_AT_MS, lb.lowerBoundMs, seed)]
  world.scheduleFailures(failures)
  policy.start(SUBMIT_AT_MS)
  world.run(() => policy.finished(), SUBMIT_AT_MS + LIMIT_LB_FACTOR * lb.lowerBoundMs * (check ? 2 : 1) + LIMIT_SLACK_MS)
  const ends = policy.ends()
  checkEnds(workload.jobs, ends, world.failuresHappened, job => policy.ownerHas(job))
  const makespanMs = policy.finishedAt() - SUBMIT_AT_MS
  const n = workload.jobs.length
  const c = world.counters
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
    messagesPerJob: c.messages / n,
    stealsPerJob: c.steals / n,
    bytesMoved: c.bytesMoved,
    idleSlotSeconds: world.idle.idleSlotSeconds(policy.finishedAt()),
    submitterUplinkSeconds: world.uplinkBusyMs(0) / 1000,
    wallMs: performance.now() - started,
    deaths: world.alive.reduce((s, a) => s + (a === 1 ? 0 : 1), 0),
    allBuilt: ends.every(e => e === 'built'),
    traceHash: world.trace.hex(),
    counters: c,
    ...(options.timeline === true ? { timeline: world.tracker.timeline.map(t => ({ ...t, start: t.start - SUBMIT_AT_MS, end: t.end < 0 ? -1 : t.end - SUBMIT_AT_MS })) } : {})
  }
}

function makePolicy (options: SimOptions, world: World, check: boolean): Policy {
  switch (options.policy) {
    case 'meshbuild': return new MeshbuildPolicy(world, options.workload, {
      gossip: options.gossip ?? (options.cluster.length >= COALESCE_FROM_NODES ? 'coalesced' : 'exact'),
      check,
      seed: options.seed
    })
    case 'static-hook': return new StaticHookPolicy(world, options.workload)
    case 'central-pull': return new CentralPullPolicy(world, options.workload)
  }
}
