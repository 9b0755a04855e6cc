// The jobs and submissions the scheduler tracks: plain data, so they can be persisted as JSON.

/** Where a job is in its life. Terminal: built, substituted, failed, dependency-failed. */
export type JobState =
  | 'waiting' // some input derivation is not built yet
  | 'ready' // in the deque, may be built or stolen
  | 'leased' // granted to a worker (this node or a peer) under a lease
  | 'importing' // built elsewhere; the owner is fetching the outputs
  | 'built'
  | 'substituted' // already valid or available from a cache when submitted
  | 'failed'
  | 'dependency-failed'

export const TERMINAL_STATES: ReadonlySet<JobState> = new Set(['built', 'substituted', 'failed', 'dependency-failed'])

/** Nix's failure classes, from `nix-store --realise` exit codes, plus the mesh's own. */
export type FailureKind =
  | 'build-failed' // 100: the builder failed; permanent
  | 'timed-out' // 101: timeout or max-silent-time; permanent
  | 'hash-mismatch' // 102: fixed-output hash mismatch; permanent
  | 'not-deterministic' // 104: --check found a difference; permanent
  | 'transient' // anything else: lost peer, fetch error, Nix crashed; retried elsewhere

/** Failures that building again would repeat: every kind Nix reports (BuildFailure.permanent agrees). */
export const PERMANENT_FAILURES: ReadonlySet<FailureKind> = new Set(['build-failed', 'timed-out', 'hash-mismatch', 'not-deterministic'])

/**
 * One successful build of a job that must be built twice (--check-reproducible): who built it
 * and the NAR hash of each output, by output name (`sha256:<nix32>`).
 */
export interface CheckBuild {
  builtBy: string
  narHashes: Record<string, string>
}

export interface Failure {
  kind: FailureKind
  message: string
  /** Last lines of the build log, when there was a build. */
  logTail?: string[]
}

/** What the owner knows of one derivation to build. */
export interface JobSpec {
  drvPath: string
  /** Output name -> store path. */
  outputs: Record<string, string>
  /** Input derivations that are jobs of the same owner (the others were already available). */
  inputJobs: string[]
  system: string
  requiredFeatures: string[]
  /** Build time at speed factor 1 (ms), from earlier builds of this name; absent when unknown. */
  estimatedMs?: number
}

export interface Job extends JobSpec {
  state: JobState
  priority: number
  /** Longest chain of estimated work from this one to a requested output, itself included (critical-path.ts). */
  criticalPath: number
  timeout?: number
  maxSilentTime?: number
  /** Peer id holding the lease, while leased or importing. */
  worker?: string
  /** Peers this job was ever leased to: only they may report a result for it. */
  grantedTo?: string[]
  leaseExpires?: number
  /** Times the job went back to the deque after a transient failure or a lapsed lease. */
  attempts: number
  builtBy?: string
  failure?: Failure
  /**
   * Built on two different peers and admitted only if their NAR hashes agree. Until the second
   * build the job is ready again, offered only to peers not in checkBuilds.
   */
  check?: boolean
  /** With check: the successful builds so far, first one first (at most two). */
  checkBuilds?: CheckBuild[]
  /**
   * Never built on the owner, and its outputs not imported into the owner's store: a job of the
   * builder socket, whose client (plain Nix, in this node's store) holds the outputs' locks.
   */
  remoteOnly?: boolean
  /**
   * Owners this job was deferred to (another owner claimed it, claims.ts) whose outputs could not
   * be fetched afterwards: it is not deferred to them again.
   */
  notDeferTo?: string[]
  /** Submissions that asked for this job (directly or as a dependency). */
  submissions: string[]
}

export interface SubmissionSpec {
  id: string
  /** The derivations the user listed, in their order. */
  requested: string[]
  /** Jobs to build, dependencies included, not yet available anywhere. */
  jobs: JobSpec[]
  /** Requested or needed derivations whose outputs were already available. */
  substituted: JobSpec[]
  priority: number
  timeout?: number
  maxSilentTime?: number
  /** Build every job on two different peers and compare (--check-reproducible). */
  check?: boolean
  /** Jobs for the builder socket: see Job.remoteOnly. */
  remoteOnly?: boolean
  submittedAt: number
}

export interface Submission {
  id: string
  requested: string[]
  /** Every derivation of the submission, jobs and substituted ones. */
  drvPaths: string[]
  priority: number
  submittedAt: number
}

/** A job as a worker holds it: what it needs to build and whom to answer. */
export interface WorkItem {
  owner: string
  drvPath: string
  outputs: Record<string, string>
  system: string
  requiredFeatures: string[]
  timeout?: number
  maxSilentTime?: number
  /** A checked job: the worker reports its outputs' NAR hashes and does not offer them to the signer. */
  check?: boolean
}
