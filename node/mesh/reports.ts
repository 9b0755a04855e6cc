// What `meshbuild status` and `meshbuild submit` show: the shapes of their --json output.
import type { FailureKind, Job, Submission } from '../scheduler/job.ts'

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

export interface StatusReport {
  self: NodeFields
  peers: NodeFields[]
  /** The mesh's signer, when one is known. */
  signer?: SignerStatus
  /** Outputs built here that the signer has not stored yet. */
  signQueue: number
  submissions: Array<{ id: string, state: SubmissionReport['state'], counts: SubmissionReport['counts'], submittedAt: string }>
  counters: { built: number, failed: number, stolen: number }
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
      ...((state === 'failed' || state === 'dependency-failed') && j.failure !== undefined ? { failure: j.failure } : {})
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
