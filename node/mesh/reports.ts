// What `meshbuild status` and `meshbuild submit` show: the shapes of their --json output.
import type { CheckBuild, FailureKind, Job, Submission } from '../scheduler/job.ts'

/** A job's state as users see it. */
export type ResultState = 'built' | 'substituted' | 'failed' | 'dependency-failed' | 'running' | 'queued' | 'waiting'

export interface JobResult {
  drvPath: string
  /** Listed by the user, rather than needed as a dependency. */
  requested: boolean
  state: ResultState
  outputs: Record<string, string>
  /** Peer id of the node that built it. */
  builtBy?: string
  /** Peer id of the node building it now. */
  worker?: string
  failure?: { kind: FailureKind, message: string, logTail?: string[] }
  /**
   * Submitted with --check-reproducible: each successful build so far (builder, NAR hash per
   * output), and, while one build is in, that the job awaits a second builder.
   */
  check?: { builds: CheckBuild[], awaiting?: 'second-builder' }
}

export interface SubmissionReport {
  id: string
  state: 'running' | 'built' | 'failed'
  submittedAt: string
  counts: Partial<Record<ResultState, number>>
  results: JobResult[]
}

export interface NodeFields {
  peerId: string
  addresses: string[]
  systems: string[]
  features: string[]
  mandatoryFeatures: string[]
  maxJobs: number
  running: number
  queued: number
  speedFactor: number
  load: number
  freeDiskBytes: number
  diskLow: boolean
  building: string[]
  signingKey?: string
  lastSeen: string
}

export interface SignerStatus {
  peerId: string
  cacheKey: string
  cacheUrls: string[]
  paths: number
  narBytes: number
  hits: number
  misses: number
  /** hits / (hits + misses) of narinfo lookups, or null before any. */
  hitRate: number | null
  /** On the signer itself: whom it trusts, and what it refused lately and why. */
  trust?: { policy: string, keys: string[] }
  rejections?: Array<{ path: string, from: string, reason: string, permanent: boolean, at: string }>
}

/** The shared cache as this node chose it (from its own configuration only). */
export interface CacheStatus {
  /** The cache URL substituted from; absent when none is usable. */
  url?: string
  reason: string
  /** Signers whose announced cache key is not configured here, and why they are ignored. */
  ignored: Array<{ peerId: string, cacheKey: string, reason: string }>
}

/**
 * Who may join this node's mesh: 'closed', only nodes holding its mesh secret file; 'open'
 * (join --open), any meshbuild node on the network also started with --open.
 */
export type Membership = 'closed' | 'open'

export interface StatusReport {
  self: NodeFields & { membership: Membership }
  peers: NodeFields[]
  /** The mesh's signer, when one this node's configuration admits is known (see `cache`). */
  signer?: SignerStatus
  /** Which shared cache this node substitutes from and why, and the signers it ignores. */
  cache?: CacheStatus
  /** Outputs built here that the signer has not stored yet. */
  signQueue: number
  /** The build history (node/state/build-history.ts): derivation names with a time, entries with package names, the bound. */
  buildHistory?: { names: number, entries: number, maxEntries: number }
  /** awaitingSecondBuilder: checked jobs built once, waiting for a peer that has not built them. */
  submissions: Array<{ id: string, state: SubmissionReport['state'], counts: SubmissionReport['counts'], submittedAt: string, awaitingSecondBuilder?: number }>
  counters: { built: number, failed: number, stolen: number }
  /** Peers this node has cut off for misbehaving (a wrong NAR, malformed messages), until when. */
  penalties: Array<{ peer: string, reason: string, since: string, until: string, count: number }>
  /** Inbound streams refused per protocol because a peer opened them too fast, since start. */
  refusedStreams: Record<string, number>
  /** The node's HTTP listener (join --http-listen), when it has one. */
  http?: { url: string, metrics: string }
  /** The builder socket (join --serve-builder), when the node serves one. */
  builder?: BuilderStatus
}

export interface BuilderStatus {
  socket: string
  machinesFile: string
  /** The machines file's line; empty while no peer builds (Nix then builds locally). */
  machines: string
  connections: number
  /** Builds plain Nix asked for since start, by how they ended (running: not ended yet). */
  builds: { built: number, failed: number, running: number }
}

const SHOWN: Record<Job['state'], ResultState> = {
  waiting: 'waiting',
  ready: 'queued',
  leased: 'running',
  importing: 'running',
  built: 'built',
  substituted: 'substituted',
  failed: 'failed',
  'dependency-failed': 'dependency-failed'
}

export function buildReport (s: Submission, jobs: Job[], finished: boolean): SubmissionReport {
  const requested = new Set(s.requested)
  const counts: Partial<Record<ResultState, number>> = {}
  const results = jobs.map((j): JobResult => {
    const state = SHOWN[j.state]
    counts[state] = (counts[state] ?? 0) + 1
    return {
      drvPath: j.drvPath,
      requested: requested.has(j.drvPath),
      state,
      outputs: j.outputs,
      ...(j.builtBy !== undefined ? { builtBy: j.builtBy } : {}),
      ...(state === 'running' && j.worker !== undefined ? { worker: j.worker } : {}),
      ...((state === 'failed' || state === 'dependency-failed') && j.failure !== undefined ? { failure: j.failure } : {}),
      ...(j.check === true ? { check: checkOf(j) } : {})
    }
  })
  const failed = (counts.failed ?? 0) + (counts['dependency-failed'] ?? 0) > 0
  return {
    id: s.id,
    state: !finished ? 'running' : failed ? 'failed' : 'built',
    submittedAt: new Date(s.submittedAt).toISOString(),
    counts,
    results
  }
}

function checkOf (j: Job): NonNullable<JobResult['check']> {
  const builds = j.checkBuilds ?? []
  // One build in and the job back in the deque: only a peer that has not built it may take it.
  const awaiting = builds.length === 1 && (j.state === 'ready' || j.state === 'waiting')
  return { builds, ...(awaiting ? { awaiting: 'second-builder' as const } : {}) }
}
