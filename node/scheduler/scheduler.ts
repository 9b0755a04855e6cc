// The scheduler: a pure state machine. Events come in (a submission, a peer's capacity, a steal
// request, a finished build, a clock tick), decisions go out (build this, ask that peer for work,
// grant these jobs, fetch those outputs). It reads no clock, opens no socket and runs no Nix:
// the node (node/mesh/) and the simulator drive the same code.
//
// One node plays two roles here:
// - owner of its submissions' jobs: keeps the DAG, the ready deque, the leases;
// - worker: runs builds in its slots, its own jobs first, then jobs stolen from peers (from the
//   owner furthest below its share first: fair-share.ts).
import { canBuild, requirementsKey, type MachineCapabilities } from './matching.ts'
import { criticalPaths } from './critical-path.ts'
import { shareUse } from './fair-share.ts'
import { claimant, claimKey, ownClaims, type Claims, type ClaimSets } from './claims.ts'
import { seededRandom } from './random.ts'
import {
  PERMANENT_FAILURES, TERMINAL_STATES,
  type CheckBuild, type Failure, type Job, type JobState, type Submission, type SubmissionSpec, type WorkItem
} from './job.ts'

export interface SchedulerConfig {
  selfId: string
  capabilities: MachineCapabilities
  maxJobs: number
  speedFactor: number
  /** How long a lease lasts without renewal. Workers renew every third of it. */
  leaseMs: number
  /** Transient failures (lapsed lease, lost peer, fetch error) before a job fails for good. */
  maxAttempts: number
  /** After an empty steal reply, leave that peer alone this long. */
  stealBackoffMs: number
  seed: number
}

export const SCHEDULER_DEFAULTS = {
  leaseMs: 20_000,
  maxAttempts: 3,
  stealBackoffMs: 2_000
} as const

/**
 * The steal back-off grows to stealBackoffMs × 2^this (32 s) after empty replies in a row: a
 * thief whose coin lost at every growth of an offer still comes back within that (6, 128 s,
 * saved only 10 % of the steals on 1,000 nodes).
 */
export const MAX_BACKOFF_DOUBLINGS = 4
/**
 * How long a job just made ready waits for a faster peer's free slot before a slower one (or this
 * node, if slower) may take it: a gossip spread and a steal round trip many times over (in the
 * simulator 1 s and 6 s gave longer makespans than 3 s).
 */
export const FASTER_HOLD_MS = 3_000
/**
 * Jobs ready when a submission arrives wait this long before this node starts or grants them,
 * where a peer with an id before its own could claim them: an announcement round (50 ms and the
 * gossip), so that of two owners submitting the same derivations at once only one builds them.
 */
export const CLAIM_HOLD_MS = 200
/**
 * A job deferred to a peer that claims it without starting it is built here after all once it
 * has waited this long: an owner whose slots stay busy, or a member that claims what it never
 * builds, delays others' work by this much, not for ever. A started claim is waited for.
 */
export const CLAIM_OPEN_WAIT_MS = 60_000

/** Ready work a peer advertises, grouped by what it needs. */
export interface OfferEntry {
  system: string
  requiredFeatures: string[]
  count: number
}

/** What the scheduler knows of a peer, from its beacons and offers. */
export interface PeerView {
  peerId: string
  capabilities: MachineCapabilities
  maxJobs: number
  running: number
  queued: number
  speedFactor: number
  offers: OfferEntry[]
  /** As an owner: slots building its jobs, and its share weight (fair-share.ts); absent: 0 and 1. */
  ownerSlots?: number
  share?: number
  /** As an owner: the jobs it will build and has started (claims.ts), from its offer. */
  claims?: Claims
}

export type BuildOutcome =
  // narHashes (output name -> sha256:<nix32>): reported for checked jobs.
  | { ok: true, outputs: Record<string, string>, narHashes?: Record<string, string> }
  | { ok: false, failure: Failure }

export type SchedulerEvent =
  | { type: 'submit', submission: SubmissionSpec }
  | { type: 'restore', submissions: Submission[], jobs: Job[] }
  | { type: 'tick' }
  | { type: 'peer-seen', peer: PeerView }
  | { type: 'peer-lost', peerId: string }
  | { type: 'disk', low: boolean }
  // owner side
  | { type: 'steal-request', requestId: string, from: string, capabilities: MachineCapabilities, want: number }
  | { type: 'lease-renew', requestId: string, from: string, drvPaths: string[] }
  | { type: 'lease-release', from: string, drvPaths: string[] }
  | { type: 'result', from: string, drvPath: string, outcome: BuildOutcome }
  | { type: 'import-finished', from: string, drvPath: string, error?: string }
  // worker side
  | { type: 'steal-reply', from: string, items: WorkItem[] }
  | { type: 'steal-failed', from: string, error: string }
  | { type: 'lease-lost', owner: string, drvPaths: string[] }
  // The owner confirmed these leases in reply to a renewal sent at `requestedAt` (ms, the
  // caller's clock): the owner's lease runs at least leaseMs from then.
  | { type: 'lease-renewed', owner: string, drvPaths: string[], requestedAt: number }
  | { type: 'build-finished', owner: string, drvPath: string, outcome: BuildOutcome }

export type Decision =
  | { type: 'build', item: WorkItem }
  | { type: 'abort', owner: string, drvPath: string, reason: string }
  | { type: 'steal', from: string, want: number }
  | { type: 'grant', requestId: string, to: string, items: WorkItem[], leaseMs: number }
  | { type: 'renew', owner: string, drvPaths: string[] }
  | { type: 'renew-reply', requestId: string, to: string, lost: string[] }
  | { type: 'report', owner: string, drvPath: string, outcome: BuildOutcome }
  // narHashes, for a checked job: the hashes both builders agreed on; the served outputs must match them.
  // remoteOnly: the outputs go to the builder socket's root, not into this store (Job.remoteOnly).
  | { type: 'import', from: string, drvPath: string, outputs: Record<string, string>, narHashes?: Record<string, string>, remoteOnly?: boolean }
  // A checked job's outputs, agreed by two builders and valid here: queue them for the signer.
  | { type: 'sign', drvPath: string, paths: string[] }
  // A checked job's outputs built here differ from another peer's build: remove them from this store.
  | { type: 'discard', drvPath: string, paths: string[] }
  | { type: 'job-changed', job: Job }
  | { type: 'submission-finished', id: string, ok: boolean }

interface Running {
  item: WorkItem
  lastRenew: number
  /** When the lease last held for certain: the grant, or the sending of an acknowledged renewal. */
  lastAck: number
}

const SUCCESS: ReadonlySet<JobState> = new Set(['built', 'substituted'])
const NO_JOBS: readonly Job[] = []

export class Scheduler {
  readonly config: SchedulerConfig
  /** config.selfId and config.maxJobs, read on every event (fields here, not loads through config). */
  private readonly selfId: string
  private readonly maxJobs: number
  private now = 0
  private readonly random: () => number
  private readonly jobs = new Map<string, Job>()
  private readonly submissions = new Map<string, Submission>()
  private readonly finished = new Set<string>()
  private readonly running = new Map<string, Running>()
  /** running.size, kept after each change: schedule() reads it on every event. */
  private runningSize = 0
  private readonly peers = new Map<string, PeerView>()
  private readonly stealBackoff = new Map<string, number>()
  /** Empty replies in a row from each peer: the back-off doubles with each, up to MAX_BACKOFF_DOUBLINGS. */
  private readonly emptyInARow = new Map<string, number>()
  /** When this node last reported a stolen build to each owner. */
  private readonly reportedTo = new Map<string, number>()
  /** Peers whose offer holds work this node can build: the victims to choose from. */
  private readonly offering = new Set<string>()
  /** Free slots the known peers announce (maxJobs − running, summed): the thieves a new offer draws. */
  private peerFreeSlots = 0
  /** The known peers' slots × speed factor, summed: the capacity remaining work is spread over. */
  private peerCapacity = 0
  /** Estimated work (ms at speed 1) of the unfinished jobs with an estimate, and which those are. */
  private estimatedLeftMs = 0
  private readonly estimatedLeft = new Set<string>()
  /** When each ready job became ready: a young one may be kept for a faster peer (FASTER_HOLD_MS). */
  private readonly readySince = new Map<string, number>()
  /** Peers' claims (those that announce any). */
  private readonly claimsByPeer = new Map<string, ClaimSets>()
  /** Ready jobs deferred to the peer that claims them (claims.ts), and until when a new submission's are held. */
  private readonly deferredTo = new Map<string, string>()
  /** Since when each deferred job has been deferred to that peer. */
  private readonly deferredSince = new Map<string, number>()
  private readonly claimHold = new Map<string, number>()
  /** Whether claimHold, claimsByPeer, deferredTo or claimedBy ever held anything: until then reviewClaims has nothing to do. */
  private claimsSeen = false
  /** Jobs whose outputs are being fetched from the owner they were deferred to. */
  private readonly claimFetches = new Set<string>()
  /**
   * Unfinished jobs (waiting ones too) a peer claimed as one this node would defer to: when such
   * a job is ready and nobody claims it any more, that peer built it, so it is fetched, not built.
   */
  private readonly claimedBy = new Map<string, string>()
  /** This node's jobs by claim key, to find what a peer's claims name. */
  private readonly byClaimKey = new Map<string, string>()
  /** Jobs by the input jobs they wait on (inputJobs reversed), so a success reaches its dependents at once. */
  private readonly dependents = new Map<string, Set<string>>()
  /** Each job's place in the order jobs were first known: ties among ready jobs go by it. */
  private readonly order = new Map<string, number>()
  /** Per unfinished submission: drvPaths before this index are known to be finished. */
  private readonly finishedUpTo = new Map<string, number>()
  /**
   * The ready jobs most urgent first (priority, then longest remaining path, then first known),
   * kept by changed() like readySince: schedule and steal requests walk it instead of sorting.
   */
  private readonly readyOrder = new ReadyQueue()
  /** Per input drvPath: the jobs in readyOrder that list it (a thief's affinity: stealOrder). */
  private readonly readyDependents = new Map<string, Set<Job>>()
  /**
   * Per peer, by the priority and path of their place in readyOrder: the jobs in readyOrder with
   * inputs that peer built, and how many (its affinity to them as a thief: stealOrder).
   */
  private readonly affinity = new Map<string, Map<number, Map<number, Map<ReadyEntry, number>>>>()
  /** The known peers' speed factors, counted: the fastest one without a scan of every peer. */
  private readonly peerSpeeds = new Map<number, number>()
  /** No peer's lease lapses before this (a lower bound): the tick skips its scan of the leases until then. */
  private leaseCheckAt = Infinity
  /** No stolen build needs a renewal or an abort before this (a lower bound, 1 ms early): the tick's scan of running builds. */
  private runningCheckAt = Infinity
  /** Ready jobs by requirementsKey, for offer() while nothing is held or claimed (no ready job is then unstartable). */
  private readonly readyGroups = new Map<string, OfferEntry>()
  /** Two jobs with one requirementsKey but different feature lists: offer() must take the slow way. */
  private readyGroupsAmbiguous = false
  /** The leased jobs (kept by changed(), like readySince): the tick's lease checks and ownerSlots. */
  private readonly leased = new Set<string>()
  /** Each peer's capabilities as a string, to group free slots by them without re-encoding. */
  private readonly capabilitiesKey = new WeakMap<MachineCapabilities, string>()
  private pendingSteal: { from: string, want: number } | undefined
  private diskLow = false
  private out: Decision[] = []

  constructor (config: SchedulerConfig) {
    this.config = config
    this.selfId = config.selfId
    this.maxJobs = config.maxJobs
    this.random = seededRandom(config.seed)
  }

  /** Feeds one event at time `now` (ms); returns what the node must do. */
  handle (event: SchedulerEvent, now: number): Decision[] {
    this.now = Math.max(this.now, now)
    this.out = []
    switch (event.type) {
      case 'submit': this.onSubmit(event.submission); break
      case 'restore': this.onRestore(event.submissions, event.jobs); break
      case 'tick': this.onTick(); break
      case 'peer-seen': this.onPeerSeen(event.peer); break
      case 'peer-lost': this.onPeerLost(event.peerId); break
      case 'disk': this.diskLow = event.low; break
      case 'steal-request': this.onStealRequest(event.requestId, event.from, event.capabilities, event.want); break
      case 'lease-renew': this.onLeaseRenew(event.requestId, event.from, event.drvPaths); break
      case 'lease-release': this.onLeaseRelease(event.from, event.drvPaths); break
      case 'result': this.onResult(event.from, event.drvPath, event.outcome); break
      case 'import-finished': this.onImportFinished(event.from, event.drvPath, event.error); break
      case 'steal-reply': this.onStealReply(event.from, event.items); break
      case 'steal-failed': this.onStealFailed(event.from); break
      case 'lease-lost': this.onLeaseLost(event.owner, event.drvPaths); break
      case 'lease-renewed': this.onLeaseRenewed(event.owner, event.drvPaths, event.requestedAt); break
      case 'build-finished': this.onBuildFinished(event.owner, event.drvPath, event.outcome); break
    }
    this.schedule()
    return this.out
  }

  // --- queries (for beacons, offers and status) ---------------------------------------------

  job (drvPath: string): Job | undefined {
    const j = this.jobs.get(drvPath)
    return j === undefined ? undefined : { ...j }
  }

  submission (id: string): Submission | undefined {
    return this.submissions.get(id)
  }

  submissionIds (): string[] {
    return [...this.submissions.keys()]
  }

  /** Jobs of a submission, in the order they were recorded. */
  submissionJobs (id: string): Job[] {
    const s = this.submissions.get(id)
    if (s === undefined) return []
    return s.drvPaths.map(p => this.jobs.get(p)).filter((j): j is Job => j !== undefined).map(j => ({ ...j }))
  }

  isFinished (id: string): boolean {
    return this.finished.has(id)
  }

  /** How many builds run in this node's slots (runningItems().length without the copy). */
  runningCount (): number {
    return this.runningSize
  }

  /** Builds running in this node's slots: its own jobs and stolen ones. */
  runningItems (): WorkItem[] {
    return [...this.running.values()].map(r => r.item)
  }

  /** Slots building this node's own jobs, here and on peers (the leases it holds): for its beacon. */
  ownerSlots (): number {
    return this.leased.size
  }

  /** Ready jobs this node holds. */
  queuedCount (): number {
    return this.readySince.size
  }

  /** This node's jobs by state (for the metrics' queue gauge). */
  jobStateCounts (): Map<JobState, number> {
    const counts = new Map<JobState, number>()
    for (const j of this.jobs.values()) counts.set(j.state, (counts.get(j.state) ?? 0) + 1)
    return counts
  }

  /** When the scheduler next has something to do without an event: the end of a claim hold. */
  wakeAt (): number | undefined {
    let at: number | undefined
    for (const until of this.claimHold.values()) if (at === undefined || until < at) at = until
    return at
  }

  /** What this owner claims, for its offer (claims.ts). */
  claims (): Claims {
    return ownClaims(this.jobs.values(), j => this.deferredTo.has(j.drvPath))
  }

  /** Ready jobs it will not start now, grouped for the offer gossip; empty when there are none. */
  offer (): OfferEntry[] {
    if (!this.readyGroupsAmbiguous && this.claimHold.size === 0 && this.claimsByPeer.size === 0 && this.deferredTo.size === 0 && this.claimedBy.size === 0) {
      // Nothing held or claimed: every ready job is startable, and readyGroups counts them.
      if (this.readyGroups.size === 0) return []
      return [...this.readyGroups].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
        .map(([, g]) => ({ system: g.system, requiredFeatures: [...g.requiredFeatures], count: g.count }))
    }
    const groups = new Map<string, OfferEntry>()
    for (const j of this.readyJobs()) {
      if (!this.startable(j)) continue
      const key = requirementsKey(j)
      const g = groups.get(key)
      if (g === undefined) groups.set(key, { system: j.system, requiredFeatures: [...j.requiredFeatures].sort(), count: 1 })
      else g.count++
    }
    // In a stable order, whatever order the jobs became ready in.
    return [...groups].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0).map(([, g]) => g)
  }

  // --- owner side ------------------------------------------------------------------------

  private onSubmit (spec: SubmissionSpec): void {
    const paths = criticalPaths(spec.jobs)
    const drvPaths: string[] = []
    for (const s of spec.substituted) {
      drvPaths.push(s.drvPath)
      const existing = this.jobs.get(s.drvPath)
      if (existing !== undefined && !TERMINAL_STATES.has(existing.state)) continue
      const job: Job = {
        ...s, state: 'substituted', priority: spec.priority, criticalPath: 0, attempts: 0,
        submissions: [...new Set([...(existing?.submissions ?? []), spec.id])]
      }
      this.addJob(job)
    }
    for (const s of spec.jobs) {
      drvPaths.push(s.drvPath)
      const existing = this.jobs.get(s.drvPath)
      const criticalPath = paths.get(s.drvPath) ?? 1
      if (existing !== undefined && !TERMINAL_STATES.has(existing.state)) {
        // Shared with a running submission: the more urgent one decides.
        existing.priority = Math.min(existing.priority, spec.priority)
        existing.criticalPath = Math.max(existing.criticalPath, criticalPath)
        if (!existing.submissions.includes(spec.id)) existing.submissions.push(spec.id)
        // A job not started yet can still be checked; one already building is not built again.
        if (spec.check === true && (existing.state === 'waiting' || existing.state === 'ready')) existing.check = true
        this.changed(existing)
        continue
      }
      // Built already: its outputs are (or were) in this store. Not for the builder socket, which
      // asks only for outputs its Nix lacks, and whose earlier copies left the root once copied.
      if (existing !== undefined && SUCCESS.has(existing.state) && spec.remoteOnly !== true) {
        if (!existing.submissions.includes(spec.id)) existing.submissions.push(spec.id)
        continue
      }
      // New, or failed before: a new submission tries it again.
      const job: Job = {
        ...s,
        state: 'waiting',
        priority: spec.priority,
        criticalPath,
        timeout: spec.timeout,
        maxSilentTime: spec.maxSilentTime,
        ...(spec.check === true ? { check: true } : {}),
        ...(spec.remoteOnly === true ? { remoteOnly: true } : {}),
        attempts: 0,
        submissions: [...new Set([...(existing?.submissions ?? []), spec.id])]
      }
      this.addJob(job)
      this.byClaimKey.set(claimKey(job.drvPath), job.drvPath)
    }
    this.submissions.set(spec.id, {
      id: spec.id, requested: spec.requested, drvPaths: [...new Set(drvPaths)], priority: spec.priority, submittedAt: spec.submittedAt
    })
    // Readiness after all jobs exist, so inputs listed later in the spec are seen.
    for (const p of drvPaths) {
      const job = this.jobs.get(p)
      if (job?.state === 'waiting') this.updateReadiness(job)
      else if (job !== undefined && job.submissions.includes(spec.id)) this.changed(job)
    }
    // Where a peer with an earlier id could be submitting the same derivations now, the jobs ready
    // already wait one announcement round for its claims (CLAIM_HOLD_MS).
    if ([...this.peers.keys()].some(p => p < this.config.selfId)) {
      // Not the builder socket's: nobody claims those (claims.ts), and each is a submission of its own.
      for (const s of spec.jobs) {
        const job = this.jobs.get(s.drvPath)
        if (job?.state === 'ready' && job.remoteOnly !== true) { this.claimHold.set(s.drvPath, this.now + CLAIM_HOLD_MS); this.claimsSeen = true }
      }
    }
    this.checkSubmission(spec.id)
  }

  private onRestore (submissions: Submission[], jobs: Job[]): void {
    for (const j of jobs) {
      const job = { ...j }
      if (job.state === 'leased' && job.worker === this.config.selfId) {
        // Our own build died with the previous process.
        job.state = 'ready'
        delete job.worker
        delete job.leaseExpires
      } else if (job.state === 'leased') {
        // A peer may still be building it: give it a fresh lease to renew or report on.
        job.leaseExpires = this.now + this.config.leaseMs
        this.leaseCheckAt = Math.min(this.leaseCheckAt, job.leaseExpires)
      } else if (job.state === 'importing' && job.worker !== undefined) {
        // Built elsewhere; fetch the outputs again rather than build again.
        this.out.push(this.importDecision(job, job.worker))
      }
      this.addJob(job)
      if (!TERMINAL_STATES.has(job.state)) this.byClaimKey.set(claimKey(job.drvPath), job.drvPath)
    }
    for (const s of submissions) this.submissions.set(s.id, s)
    for (const j of this.jobs.values()) {
      if (j.state === 'ready' && !this.readySince.has(j.drvPath)) { this.readySince.set(j.drvPath, this.now); this.reorder(j) }
      if (j.state === 'leased') this.leased.add(j.drvPath)
    }
    for (const j of this.jobs.values()) if (j.state === 'waiting') this.updateReadiness(j)
    for (const s of submissions) this.checkSubmission(s.id)
  }

  private onStealRequest (requestId: string, from: string, capabilities: MachineCapabilities, want: number): void {
    // Priority first; then the longest remaining path (the critical path decides the makespan);
    // then jobs whose inputs the thief built (it holds them already), counted only within a run
    // of equal priority and path; then the order jobs were first known.
    const candidates = this.stealOrder(capabilities, from)
    const thiefSpeed = this.peers.get(from)?.speedFactor
    const granted = this.pick(candidates, Math.max(0, Math.min(want, 64)), thiefSpeed, from)
    for (const job of granted) {
      job.state = 'leased'
      job.worker = from
      job.grantedTo = [...new Set([...(job.grantedTo ?? []), from])]
      job.leaseExpires = this.now + this.config.leaseMs
      this.leaseCheckAt = Math.min(this.leaseCheckAt, job.leaseExpires)
      this.changed(job)
    }
    this.out.push({ type: 'grant', requestId, to: from, items: granted.map(j => this.workItem(j)), leaseMs: this.config.leaseMs })
  }

  private onLeaseRenew (requestId: string, from: string, drvPaths: string[]): void {
    const lost: string[] = []
    for (const p of drvPaths) {
      const job = this.jobs.get(p)
      if (job?.state === 'leased' && job.worker === from) {
        job.leaseExpires = this.now + this.config.leaseMs
        this.leaseCheckAt = Math.min(this.leaseCheckAt, job.leaseExpires)
      } else {
        lost.push(p)
      }
    }
    this.out.push({ type: 'renew-reply', requestId, to: from, lost })
  }

  /** A worker shutting down gives jobs back: they return to the deque at once, no attempt counted. */
  private onLeaseRelease (from: string, drvPaths: string[]): void {
    for (const p of drvPaths) {
      const job = this.jobs.get(p)
      if (job?.state !== 'leased' || job.worker !== from) continue
      job.state = 'ready'
      delete job.worker
      delete job.leaseExpires
      this.changed(job)
    }
  }

  /** Running builds of other owners, to give back when this node stops. */
  stolenItems (): WorkItem[] {
    return [...this.running.values()].map(r => r.item).filter(i => i.owner !== this.config.selfId)
  }

  private onResult (from: string, drvPath: string, outcome: BuildOutcome): void {
    const job = this.jobs.get(drvPath)
    // A result for a job that is done or already being imported lost the race: the first
    // completed result wins, the other is dropped quietly (both built the same output paths).
    if (job === undefined || TERMINAL_STATES.has(job.state) || job.state === 'importing') return
    // Only a peer the job was leased to may report on it, and while another holds the lease,
    // that holder's result is the one awaited: a stray or forged report cannot take it over.
    if (!(job.grantedTo ?? []).includes(from)) return
    if (job.state === 'leased' && job.worker !== from) return
    if (outcome.ok && job.check === true) {
      this.checkedSuccess(job, from, outcome)
      return
    }
    if (outcome.ok) {
      job.state = 'importing'
      job.worker = from
      delete job.leaseExpires
      this.changed(job)
      this.out.push(this.importDecision(job, from))
      return
    }
    // A failure from a worker whose lease lapsed says nothing about the job now.
    if (job.worker !== from) return
    this.fail(job, outcome.failure)
  }

  private onImportFinished (from: string, drvPath: string, error: string | undefined): void {
    const job = this.jobs.get(drvPath)
    if (job?.state !== 'importing' || job.worker !== from) return
    if (this.claimFetches.delete(drvPath) && error !== undefined) {
      // The owner it was deferred to has no outputs to give (it failed, is gone, or had stopped
      // listing it for others): this node builds it, and does not defer it to that owner again.
      job.state = 'ready'
      delete job.worker
      job.notDeferTo = [...new Set([...(job.notDeferTo ?? []), from])]
      this.changed(job)
      return
    }
    if (error !== undefined) {
      // That build is not admitted: another peer may take its place as the second builder.
      if (job.checkBuilds !== undefined) job.checkBuilds = job.checkBuilds.filter(b => b.builtBy !== from)
      this.fail(job, { kind: 'transient', message: `fetching outputs from ${from} failed: ${error}` })
      return
    }
    this.succeed(job, from)
  }

  private onPeerSeen (peer: PeerView): void {
    const other = peer.peerId !== this.selfId
    if (other) this.peerClaims(peer.peerId, peer.claims)
    const before = this.peers.get(peer.peerId)
    if (other) {
      if (before !== undefined) {
        this.peerFreeSlots -= freeSlots(before)
        this.peerCapacity -= before.maxJobs * before.speedFactor
      }
      this.peerFreeSlots += freeSlots(peer)
      this.peerCapacity += peer.maxJobs * peer.speedFactor
    }
    // An empty reply said nothing about work that peer has made ready since. But every idle
    // thief sees the same new offer at the same moment: were each to ask at once, a mesh of N
    // nodes would send N requests for every job made ready. So only growth counts (a shrinking
    // offer is others' steals), and a thief ends its back-off with the chance that its slots are
    // among the 2 × growth that all the free slots the peers announce would need to take it.
    // A thief that just reported a build to this owner asks at its next beacon offering work it
    // can build, grown or not: that is likely the job's dependent, whose input it holds (once per
    // report, so still O(1) a job). Waiting for growth missed it in chains, where the dependent
    // appears as another thief takes a job (simulator, chain 2,000 × 30: hops of 0.25–1 s).
    const backedOff = (this.stealBackoff.get(peer.peerId) ?? 0) > this.now
    let buildable: number | undefined
    if (before !== undefined && backedOff) {
      buildable = this.buildableCount(peer.offers)
      const growth = buildable - this.buildableCount(before.offers)
      const reported = this.now - (this.reportedTo.get(peer.peerId) ?? -Infinity) < this.config.stealBackoffMs
      if (reported && buildable > 0) {
        this.stealBackoff.delete(peer.peerId)
        this.reportedTo.delete(peer.peerId)
      } else if (growth > 0) {
        const free = Math.max(1, this.peerFreeSlots + this.freeSlotsHere())
        if (this.random() < (2 * growth) / free) {
          this.stealBackoff.delete(peer.peerId)
          this.reportedTo.delete(peer.peerId)
        }
      }
    }
    this.setPeer(peer, before)
    if (other && (buildable ?? this.buildableCount(peer.offers)) > 0) this.offering.add(peer.peerId)
    else this.offering.delete(peer.peerId)
  }

  /** peers.set, keeping peerSpeeds. */
  private setPeer (peer: PeerView, before = this.peers.get(peer.peerId)): void {
    this.peers.set(peer.peerId, peer)
    if (before?.speedFactor === peer.speedFactor) return
    if (before !== undefined) this.uncountSpeed(before.speedFactor)
    this.peerSpeeds.set(peer.speedFactor, (this.peerSpeeds.get(peer.speedFactor) ?? 0) + 1)
  }

  /** peers.delete, keeping peerSpeeds. */
  private deletePeer (peerId: string): void {
    const before = this.peers.get(peerId)
    if (before !== undefined) this.uncountSpeed(before.speedFactor)
    this.peers.delete(peerId)
  }

  private uncountSpeed (speed: number): void {
    const n = (this.peerSpeeds.get(speed) ?? 0) - 1
    if (n > 0) this.peerSpeeds.set(speed, n)
    else this.peerSpeeds.delete(speed)
  }

  private onPeerLost (peerId: string): void {
    const before = this.peers.get(peerId)
    if (before !== undefined && peerId !== this.config.selfId) {
      this.peerFreeSlots -= freeSlots(before)
      this.peerCapacity -= before.maxJobs * before.speedFactor
    }
    this.deletePeer(peerId)
    this.offering.delete(peerId)
    this.emptyInARow.delete(peerId)
    this.reportedTo.delete(peerId)
    // Gone: it will not serve what it claimed; those jobs are built here.
    this.claimsByPeer.delete(peerId)
    for (const [drvPath, peer] of this.claimedBy) if (peer === peerId) this.claimedBy.delete(drvPath)
    if (this.pendingSteal?.from === peerId) this.pendingSteal = undefined
    // Jobs leased to it come back when their leases lapse (see onTick): a peer that merely
    // dropped out of gossip may still be building.
  }

  // --- worker side -----------------------------------------------------------------------

  private onStealReply (from: string, items: WorkItem[]): void {
    if (this.pendingSteal?.from === from) this.pendingSteal = undefined
    if (items.length === 0) {
      this.backOff(from)
      return
    }
    this.emptyInARow.delete(from)
    // The owner's next beacon will count these slots; until then other owners come first here
    // (a copy: the view may be shared with whoever delivered it).
    const view = this.peers.get(from)
    if (view !== undefined) this.setPeer({ ...view, ownerSlots: (view.ownerSlots ?? 0) + items.length })
    for (const item of items) {
      this.running.set(runKey(item.owner, item.drvPath), { item, lastRenew: this.now, lastAck: this.now })
      this.runningSize = this.running.size
      if (item.owner !== this.config.selfId) this.runningCheckAt = Math.min(this.runningCheckAt, this.now + this.config.leaseMs / 3 - 1)
      this.out.push({ type: 'build', item })
    }
  }

  private onStealFailed (from: string): void {
    if (this.pendingSteal?.from === from) this.pendingSteal = undefined
    this.backOff(from)
  }

  /**
   * Leaves `peer` alone after it had nothing: stealBackoffMs the first time, then twice as long
   * for each empty reply in a row (up to 2^MAX_BACKOFF_DOUBLINGS times), jittered by ±25 % so
   * that thieves turned away together do not all come back together.
   */
  private backOff (peer: string): void {
    const n = (this.emptyInARow.get(peer) ?? 0) + 1
    this.emptyInARow.set(peer, n)
    const base = this.config.stealBackoffMs * 2 ** Math.min(n - 1, MAX_BACKOFF_DOUBLINGS)
    const ms = n === 1 ? base : base * (0.75 + 0.5 * this.random())
    this.stealBackoff.set(peer, this.now + ms)
  }

  private freeSlotsHere (): number {
    return Math.max(0, this.maxJobs - this.runningSize)
  }

  /** How many of the offered jobs this node could build. */
  private buildableCount (offers: OfferEntry[]): number {
    let n = 0
    for (const o of offers) if (o.count > 0 && canBuild(this.config.capabilities, o)) n += o.count
    return n
  }

  private onLeaseLost (owner: string, drvPaths: string[]): void {
    for (const p of drvPaths) {
      if (this.running.delete(runKey(owner, p))) {
        this.runningSize = this.running.size
        this.out.push({ type: 'abort', owner, drvPath: p, reason: `${owner} says the lease lapsed` })
      }
    }
  }

  private onLeaseRenewed (owner: string, drvPaths: string[], requestedAt: number): void {
    for (const p of drvPaths) {
      const r = this.running.get(runKey(owner, p))
      if (r !== undefined) r.lastAck = Math.max(r.lastAck, requestedAt)
    }
  }

  private onBuildFinished (owner: string, drvPath: string, outcome: BuildOutcome): void {
    if (!this.running.delete(runKey(owner, drvPath))) return
    this.runningSize = this.running.size
    if (owner !== this.config.selfId) {
      this.reportedTo.set(owner, this.now)
      this.out.push({ type: 'report', owner, drvPath, outcome })
      return
    }
    const job = this.jobs.get(drvPath)
    if (job === undefined || job.state !== 'leased' || job.worker !== this.config.selfId) return
    if (outcome.ok && job.check === true) this.checkedSuccess(job, this.config.selfId, outcome)
    else if (outcome.ok) this.succeed(job, this.config.selfId)
    else this.fail(job, outcome.failure)
  }

  // --- both --------------------------------------------------------------------------------

  private onTick (): void {
    if (this.now >= this.leaseCheckAt) this.checkLeases()
    if (this.now >= this.runningCheckAt) this.checkRunning()
  }

  /** Fails the jobs whose peer's lease lapsed, and finds when the next one can. */
  private checkLeases (): void {
    for (const drvPath of this.leased) {
      const job = this.jobs.get(drvPath)
      if (job?.state === 'leased' && job.worker !== this.config.selfId && (job.leaseExpires ?? Infinity) <= this.now) {
        this.fail(job, { kind: 'transient', message: `lease held by ${job.worker ?? '?'} lapsed` })
      }
    }
    let next = Infinity
    for (const drvPath of this.leased) {
      const job = this.jobs.get(drvPath)
      if (job?.state === 'leased' && job.worker !== this.config.selfId) next = Math.min(next, job.leaseExpires ?? Infinity)
    }
    this.leaseCheckAt = next
  }

  /** Aborts stolen builds whose lease nobody confirmed, renews the others' when due, and finds when next to look. */
  private checkRunning (): void {
    // A stolen build whose lease nobody confirmed for a whole lease (this node was stopped, or
    // cut off from the owner) has been handed to another peer by now: stop it rather than run
    // two copies; the owner drops a late result anyway. The others' renewals are sent after
    // the aborts, by owner. One pass does both and finds when next to look.
    let due: Map<string, string[]> | undefined
    let next = Infinity
    const leaseMs = this.config.leaseMs
    for (const [key, r] of this.running) {
      if (r.item.owner === this.selfId) continue
      if (!(this.now - r.lastAck < leaseMs)) {
        this.running.delete(key)
        this.runningSize = this.running.size
        this.out.push({ type: 'abort', owner: r.item.owner, drvPath: r.item.drvPath, reason: `no renewal confirmed for ${this.now - r.lastAck} ms, longer than the lease` })
        continue
      }
      if (!(this.now - r.lastRenew < leaseMs / 3)) {
        r.lastRenew = this.now
        due ??= new Map()
        const list = due.get(r.item.owner)
        if (list === undefined) due.set(r.item.owner, [r.item.drvPath])
        else list.push(r.item.drvPath)
      }
      next = Math.min(next, r.lastAck + leaseMs - 1, r.lastRenew + leaseMs / 3 - 1)
    }
    if (due !== undefined) for (const [owner, drvPaths] of due) this.out.push({ type: 'renew', owner, drvPaths })
    this.runningCheckAt = next
  }

  /** Fills free slots: own ready jobs first, then one steal request to the best victim. */
  private schedule (): void {
    this.reviewClaims()
    if (this.diskLow) return
    let free = this.maxJobs - this.runningSize
    if (free <= 0) return
    const mine = this.readyOrder.size === 0 ? NO_JOBS : this.pick(this.buildableHere(), free, this.config.speedFactor, this.config.selfId)
    for (const job of mine) {
      job.state = 'leased'
      job.worker = this.config.selfId
      delete job.leaseExpires
      this.changed(job)
      const item = this.workItem(job)
      this.running.set(runKey(item.owner, item.drvPath), { item, lastRenew: this.now, lastAck: this.now })
      this.runningSize = this.running.size
      this.out.push({ type: 'build', item })
      free--
    }
    if (free <= 0 || this.pendingSteal !== undefined) return
    const victim = this.chooseVictim()
    if (victim === undefined) return
    this.pendingSteal = { from: victim, want: free }
    this.out.push({ type: 'steal', from: victim, want: free })
  }

  /**
   * Up to `limit` of `ordered` (most urgent first) for a builder of speed `speed`: the most
   * urgent jobs belong in the fastest slots, so a job made ready less than FASTER_HOLD_MS ago
   * is passed over while peers faster than that builder announce free slots that could build it
   * (one job kept per such slot). Older jobs go to anyone: views of free slots are stale.
   */
  private pick (ordered: Iterable<Job>, limit: number, speed: number | undefined, builder: string): Job[] {
    const out: Job[] = []
    if (limit <= 0) return out
    // Computed at the first young job only: a scan of every peer.
    let faster: Array<{ capabilities: MachineCapabilities, free: number }> | undefined
    let kept = 0
    let horizon: number | undefined
    let fastest: Map<string, number> | undefined
    for (const job of ordered) {
      if (out.length >= limit) break
      if (speed !== undefined && job.estimatedMs !== undefined) {
        horizon ??= this.horizonMs()
        fastest ??= new Map()
        if (this.heldForFaster(job, speed, horizon, fastest)) continue
      }
      if (speed !== undefined && this.now - (this.readySince.get(job.drvPath) ?? -Infinity) < FASTER_HOLD_MS) {
        faster ??= this.fasterFreeSlots(speed, builder)
        let room = 0
        for (const g of faster) if (canBuild(g.capabilities, job)) room += g.free
        if (kept < room) { kept++; continue }
      }
      out.push(job)
    }
    return out
  }

  /**
   * How soon, at best, this owner's remaining work is done: its longest remaining path at the
   * fastest speed known, or its estimated work spread over the mesh's capacity, the later.
   */
  private horizonMs (): number {
    // The first ready job has the longest path of the most urgent priority.
    const top = this.readyOrder.first()?.job.criticalPath ?? 0
    let fastest = this.config.speedFactor
    for (const speed of this.peerSpeeds.keys()) fastest = Math.max(fastest, speed)
    const capacity = this.peerCapacity + this.config.maxJobs * this.config.speedFactor
    return Math.max(top / Math.max(fastest, 0.001), this.estimatedLeftMs / Math.max(capacity, 0.001))
  }

  /**
   * Whether a job with an estimate is kept from a builder of speed `speed` for a faster one: when
   * its own build at that speed, with the rest of its path at the fastest speed, would end after
   * `horizon` (it would make the whole build later), and only while it has been ready for less
   * than the fastest machine able to take it would save on that path, so that a busy mesh still
   * gets it built. Only its own build is counted at this speed: its dependents go wherever they
   * go (counting the whole path at this speed kept nearly every job of a layered DAG for the
   * fastest machines, and doubled its makespan in the simulator). `fastest` caches, per
   * requirements, the fastest known machine that can build them.
   */
  private heldForFaster (job: Job, speed: number, horizon: number, fastest: Map<string, number>): boolean {
    const key = requirementsKey(job)
    let best = fastest.get(key)
    if (best === undefined) {
      best = canBuild(this.config.capabilities, job) && job.remoteOnly !== true ? this.config.speedFactor : 0
      for (const p of this.peers.values()) if (p.speedFactor > best && canBuild(p.capabilities, job)) best = p.speedFactor
      fastest.set(key, best)
    }
    if (best <= speed) return false
    const path = job.criticalPath
    const own = Math.min(job.estimatedMs ?? 0, path)
    const slow = Math.max(speed, 0.001)
    if (own / slow + (path - own) / best <= horizon) return false
    const saved = path / slow - path / best
    return this.now - (this.readySince.get(job.drvPath) ?? -Infinity) < saved
  }

  /** Free slots of peers (and this node) faster than `speed`, other than `builder`, by capabilities. */
  private fasterFreeSlots (speed: number, builder: string): Array<{ capabilities: MachineCapabilities, free: number }> {
    const groups = new Map<string, { capabilities: MachineCapabilities, free: number }>()
    const add = (capabilities: MachineCapabilities, free: number): void => {
      if (free <= 0) return
      let key = this.capabilitiesKey.get(capabilities)
      if (key === undefined) {
        key = JSON.stringify(capabilities)
        this.capabilitiesKey.set(capabilities, key)
      }
      const g = groups.get(key)
      if (g === undefined) groups.set(key, { capabilities, free })
      else g.free += free
    }
    for (const p of this.peers.values()) {
      if (p.peerId === this.config.selfId || p.peerId === builder || p.speedFactor <= speed) continue
      add(p.capabilities, freeSlots(p))
    }
    if (builder !== this.config.selfId && this.config.speedFactor > speed && !this.diskLow) add(this.config.capabilities, this.freeSlotsHere())
    return [...groups.values()]
  }

  /**
   * Among the peers offering work we can build: the owner with the fewest slots per unit of its
   * share (fair-share.ts), then the most loaded relative to its speed, then a seeded coin.
   */
  private chooseVictim (): string | undefined {
    if (this.offering.size === 0) return undefined
    let best: string[] = []
    let bestUse = Infinity
    let bestScore = -Infinity
    for (const id of this.offering) {
      const peer = this.peers.get(id)
      if (peer === undefined) continue
      if ((this.stealBackoff.get(peer.peerId) ?? 0) > this.now) continue
      const use = shareUse(peer)
      const score = peer.queued / Math.max(peer.speedFactor, 0.001)
      if (use < bestUse || (use === bestUse && score > bestScore)) {
        bestUse = use
        bestScore = score
        best = [peer.peerId]
      } else if (use === bestUse && score === bestScore) best.push(peer.peerId)
    }
    if (best.length === 0) return undefined
    best.sort()
    return best[Math.floor(this.random() * best.length)]
  }

  /**
   * A successful build of a checked job, by this node or a peer. The first is recorded and the
   * job goes back to the deque for another peer; the second is compared with it: the same NAR
   * hashes admit the outputs (fetched from the second builder unless built here), different
   * ones fail the job as not deterministic, and nothing of it is imported.
   */
  private checkedSuccess (job: Job, by: string, outcome: { outputs: Record<string, string>, narHashes?: Record<string, string> }): void {
    const builds = job.checkBuilds ?? []
    // The same peer twice proves nothing (a repeated report): ignored.
    if (builds.some(b => b.builtBy === by)) return
    const hashes = outcome.narHashes
    const names = Object.keys(job.outputs).sort()
    if (hashes === undefined || !sameList(Object.keys(hashes).sort(), names)) {
      if (job.worker === by) this.fail(job, { kind: 'transient', message: `${by} reported no NAR hash for some output of a checked build` })
      return
    }
    const build: CheckBuild = { builtBy: by, narHashes: { ...hashes } }
    const first = builds[0]
    if (first === undefined) {
      job.checkBuilds = [build]
      job.state = 'ready'
      delete job.worker
      delete job.leaseExpires
      this.changed(job)
      return
    }
    job.checkBuilds = [first, build]
    const differing = names.filter(n => first.narHashes[n] !== hashes[n])
    if (differing.length === 0) {
      if (by === this.config.selfId) {
        this.succeed(job, by)
        return
      }
      job.state = 'importing'
      job.worker = by
      delete job.leaseExpires
      this.changed(job)
      this.out.push(this.importDecision(job, by))
      return
    }
    const builtHere = first.builtBy === this.config.selfId || by === this.config.selfId
    const paths = Object.values(job.outputs)
    const detail = differing.map(n => `${n}: ${first.narHashes[n] ?? '?'} (${first.builtBy}) vs ${hashes[n] ?? '?'} (${by})`).join('; ')
    this.fail(job, {
      kind: 'not-deterministic',
      message: `derivation ${job.drvPath} may not be deterministic: built by ${first.builtBy} and ${by} with different NAR hashes: ${detail}; ` +
        `nothing was imported or cached${builtHere ? '; the copy built here is deleted from this store' : ''}`
    })
    if (builtHere) this.out.push({ type: 'discard', drvPath: job.drvPath, paths })
  }

  private importDecision (job: Job, from: string): Extract<Decision, { type: 'import' }> {
    const agreed = job.check === true ? job.checkBuilds?.[0]?.narHashes : undefined
    return {
      type: 'import', from, drvPath: job.drvPath, outputs: job.outputs,
      ...(agreed !== undefined ? { narHashes: agreed } : {}),
      ...(job.remoteOnly === true ? { remoteOnly: true } : {})
    }
  }

  private succeed (job: Job, builtBy: string): void {
    job.state = 'built'
    this.unindexBuilder(job)
    job.builtBy = builtBy
    this.indexBuilder(job)
    delete job.worker
    delete job.leaseExpires
    delete job.failure
    this.changed(job)
    // Workers do not offer a checked job's outputs to the signer; the owner does, once agreed.
    if (job.check === true) this.out.push({ type: 'sign', drvPath: job.drvPath, paths: Object.values(job.outputs) })
    for (const d of this.dependentsOf(job.drvPath)) if (d.state === 'waiting') this.updateReadiness(d)
    this.checkSubmissionsOf(job)
  }

  private fail (job: Job, failure: Failure): void {
    delete job.worker
    delete job.leaseExpires
    if (!PERMANENT_FAILURES.has(failure.kind)) {
      job.attempts++
      if (job.attempts < this.config.maxAttempts) {
        job.state = 'ready'
        job.failure = failure
        this.changed(job)
        return
      }
      failure = { ...failure, message: `${failure.message} (gave up after ${job.attempts} attempts)` }
    }
    job.state = 'failed'
    job.failure = failure
    this.changed(job)
    this.failDependents(job)
    this.checkSubmissionsOf(job)
  }

  private failDependents (failed: Job): void {
    const stack = [failed]
    while (stack.length > 0) {
      const cur = stack.pop()
      if (cur === undefined) break
      for (const d of this.dependentsOf(cur.drvPath)) {
        if (TERMINAL_STATES.has(d.state)) continue
        d.state = 'dependency-failed'
        d.failure = { kind: 'build-failed', message: `dependency ${failed.drvPath} failed` }
        this.changed(d)
        stack.push(d)
        this.checkSubmissionsOf(d)
      }
    }
  }

  private updateReadiness (job: Job): void {
    let ready = true
    for (const input of job.inputJobs) {
      const dep = this.jobs.get(input)
      if (dep === undefined || SUCCESS.has(dep.state)) continue
      if (dep.state === 'failed' || dep.state === 'dependency-failed') {
        job.state = 'dependency-failed'
        job.failure = { kind: 'build-failed', message: `dependency ${input} failed` }
        this.changed(job)
        this.failDependents(job)
        this.checkSubmissionsOf(job)
        return
      }
      ready = false
    }
    if (ready) job.state = 'ready'
    this.changed(job)
  }

  private dependentsOf (drvPath: string): Job[] {
    const out: Job[] = []
    for (const d of this.dependents.get(drvPath) ?? []) {
      const job = this.jobs.get(d)
      if (job?.inputJobs.includes(drvPath) === true) out.push(job)
    }
    return out.sort((a, b) => this.orderOf(a) - this.orderOf(b))
  }

  /** Records a job (new, restored, or replacing a finished one) and its place in the indexes. */
  private addJob (job: Job): void {
    const before = this.jobs.get(job.drvPath)
    if (before !== undefined && this.estimatedLeft.delete(job.drvPath)) this.estimatedLeftMs -= before.estimatedMs ?? 0
    if (before !== undefined) this.unindexBuilder(before)
    this.jobs.set(job.drvPath, job)
    this.indexBuilder(job)
    this.countEstimate(job)
    if (!this.order.has(job.drvPath)) this.order.set(job.drvPath, this.order.size)
    for (const input of job.inputJobs) {
      const set = this.dependents.get(input)
      if (set === undefined) this.dependents.set(input, new Set([job.drvPath]))
      else set.add(job.drvPath)
    }
  }

  /** Counts `job`'s builder (after it is set, or the job recorded) in the affinity of its ready dependents. */
  private indexBuilder (job: Job): void {
    if (job.builtBy === undefined) return
    for (const d of this.readyDependents.get(job.drvPath) ?? []) this.addAffinity(job.builtBy, this.readyEntry(d), occurrences(d.inputJobs, job.drvPath))
  }

  /** Uncounts `job`'s builder (before it changes, or the job is replaced). */
  private unindexBuilder (job: Job): void {
    if (job.builtBy === undefined) return
    for (const d of this.readyDependents.get(job.drvPath) ?? []) this.addAffinity(job.builtBy, this.readyEntry(d), -occurrences(d.inputJobs, job.drvPath))
  }

  /** The entry of `job` in readyOrder (readyDependents holds only jobs in it). */
  private readyEntry (job: Job): ReadyEntry {
    const e = this.readyOrder.get(job.drvPath)
    if (e?.job !== job) throw new Error(`readyDependents holds ${job.drvPath}, which is not in readyOrder`)
    return e
  }

  /** Adds `n` to the affinity of `peer` to the job of `e` (an entry of readyOrder, or one just taken out). */
  private addAffinity (peer: string, e: ReadyEntry, n: number): void {
    if (n === 0) return
    let byPriority = this.affinity.get(peer)
    if (byPriority === undefined) { byPriority = new Map(); this.affinity.set(peer, byPriority) }
    let byPath = byPriority.get(e.priority)
    if (byPath === undefined) { byPath = new Map(); byPriority.set(e.priority, byPath) }
    let jobs = byPath.get(e.criticalPath)
    if (jobs === undefined) { jobs = new Map(); byPath.set(e.criticalPath, jobs) }
    const count = (jobs.get(e) ?? 0) + n
    if (count > 0) { jobs.set(e, count); return }
    jobs.delete(e)
    if (jobs.size > 0) return
    byPath.delete(e.criticalPath)
    if (byPath.size > 0) return
    byPriority.delete(e.priority)
    if (byPriority.size === 0) this.affinity.delete(peer)
  }

  private orderOf (job: Job): number { return this.order.get(job.drvPath) ?? 0 }

  /** Ready jobs this node may build itself, most urgent first (a lazy walk of readyOrder). */
  private * buildableHere (): Generator<Job> {
    for (const e of this.readyOrder) if (canBuild(this.config.capabilities, e.job) && this.mayBuild(e.job, this.config.selfId)) yield e.job
  }

  /**
   * Ready jobs a thief may be granted, in grant order: readyOrder, with each run of equal
   * priority and path put in order of the inputs the thief built (most first), stably. The jobs
   * with any such input come from the index (affinity), so a run is walked lazily, not sorted
   * whole.
   */
  private * stealOrder (capabilities: MachineCapabilities, from: string): Generator<Job> {
    const affine = this.affinity.get(from)
    let head: ReadyEntry | undefined
    let first: Map<ReadyEntry, number> | undefined
    for (const e of this.readyOrder) {
      if (head === undefined || e.priority !== head.priority || e.criticalPath !== head.criticalPath) {
        head = e
        first = affine?.get(head.priority)?.get(head.criticalPath)
        // Most inputs first, then first known: taken from a heap, as far as the grant reads.
        if (first !== undefined) {
          const heap = new AffinityHeap(first)
          for (let a = heap.pop(); a !== undefined; a = heap.pop()) if (canBuild(capabilities, a.job) && this.mayBuild(a.job, from)) yield a.job
        }
      }
      if (first?.has(e) === true) continue
      if (canBuild(capabilities, e.job) && this.mayBuild(e.job, from)) yield e.job
    }
  }

  /** Takes `job` out of readyOrder and, if ready, puts it back where its key says (it may have changed). */
  private reorder (job: Job): void {
    const was = this.readyOrder.remove(job.drvPath)
    if (was !== undefined) this.leftReady(was)
    if (job.state === 'ready') {
      const e: ReadyEntry = { job, priority: job.priority, criticalPath: job.criticalPath, order: this.orderOf(job) }
      this.readyOrder.insert(e)
      this.enteredReady(e)
    }
  }

  /** Keeps the indexes of the jobs in readyOrder: readyDependents, affinity and readyGroups. */
  private enteredReady (e: ReadyEntry): void {
    const job = e.job
    for (const input of job.inputJobs) {
      const set = this.readyDependents.get(input)
      if (set === undefined) this.readyDependents.set(input, new Set([job]))
      else set.add(job)
      const by = this.jobs.get(input)?.builtBy
      if (by !== undefined) this.addAffinity(by, e, 1)
    }
    const key = requirementsKey(job)
    const features = [...job.requiredFeatures].sort()
    const g = this.readyGroups.get(key)
    if (g === undefined) this.readyGroups.set(key, { system: job.system, requiredFeatures: features, count: 1 })
    else {
      g.count++
      if (g.system !== job.system || !sameList(g.requiredFeatures, features)) this.readyGroupsAmbiguous = true
    }
  }

  /** Called with the entry just taken out of readyOrder (its key places it in affinity). */
  private leftReady (e: ReadyEntry): void {
    const job = e.job
    for (const input of job.inputJobs) {
      const by = this.jobs.get(input)?.builtBy
      if (by !== undefined) this.addAffinity(by, e, -1)
      const set = this.readyDependents.get(input)
      if (set === undefined) continue
      set.delete(job)
      if (set.size === 0) this.readyDependents.delete(input)
    }
    const key = requirementsKey(job)
    const g = this.readyGroups.get(key)
    if (g === undefined) return
    if (--g.count <= 0) this.readyGroups.delete(key)
  }

  /** The ready jobs (readySince holds exactly them), unordered: every caller sorts, ties by orderOf. */
  private readyJobs (): Job[] {
    const out: Job[] = []
    for (const drvPath of this.readySince.keys()) {
      const job = this.jobs.get(drvPath)
      if (job?.state === 'ready') out.push(job)
    }
    return out
  }

  private checkSubmissionsOf (job: Job): void {
    for (const id of job.submissions) this.checkSubmission(id)
  }

  private checkSubmission (id: string): void {
    if (this.finished.has(id)) return
    const s = this.submissions.get(id)
    if (s === undefined) return
    // Jobs finish roughly in the order listed: resume from the first one not known finished, so
    // a submission of n jobs costs O(n) over its life, not O(n) per change. Once all seem
    // finished, one whole pass confirms (a job before the mark may have been tried again).
    let i = this.finishedUpTo.get(id) ?? 0
    while (i < s.drvPaths.length) {
      const j = this.jobs.get(s.drvPaths[i] ?? '')
      if (j !== undefined && !TERMINAL_STATES.has(j.state)) break
      i++
    }
    this.finishedUpTo.set(id, i)
    if (i < s.drvPaths.length) return
    let ok = true
    for (const [k, p] of s.drvPaths.entries()) {
      const j = this.jobs.get(p)
      if (j === undefined) continue
      if (!TERMINAL_STATES.has(j.state)) { this.finishedUpTo.set(id, k); return }
      if (!SUCCESS.has(j.state)) ok = false
    }
    this.finishedUpTo.delete(id)
    this.finished.add(id)
    this.out.push({ type: 'submission-finished', id, ok })
  }

  private workItem (job: Job): WorkItem {
    return {
      owner: this.config.selfId,
      drvPath: job.drvPath,
      outputs: job.outputs,
      system: job.system,
      requiredFeatures: job.requiredFeatures,
      ...(job.timeout !== undefined ? { timeout: job.timeout } : {}),
      ...(job.maxSilentTime !== undefined ? { maxSilentTime: job.maxSilentTime } : {}),
      ...(job.check === true ? { check: true } : {})
    }
  }

  /**
   * Whether `peer` may be given `job`: a checked job goes only to a peer that has not built it
   * yet, and a remote-only one (the builder socket's) never to this node.
   */
  private mayBuild (job: Job, peer: string): boolean {
    if (job.remoteOnly === true && peer === this.config.selfId) return false
    if (!this.startable(job)) return false
    return job.check !== true || !(job.checkBuilds ?? []).some(b => b.builtBy === peer)
  }

  /** Whether this owner may start or grant a ready job now: not held for claims, not deferred to another owner. */
  private startable (job: Job): boolean {
    const hold = this.claimHold.get(job.drvPath)
    if (hold !== undefined && this.now < hold) return false
    if (job.state !== 'ready' || (this.claimsByPeer.size === 0 && this.deferredTo.size === 0 && this.claimedBy.size === 0)) return true
    return !this.deferredTo.has(job.drvPath) && !this.claimedBy.has(job.drvPath) && claimant(job, this.claimsByPeer, this.config.selfId) === undefined
  }

  private peerClaims (peerId: string, claims: Claims | undefined): void {
    // No claims now (its last offer had none): what it claimed before is remembered in claimedBy.
    if (claims === undefined || (claims.open.length === 0 && claims.started.length === 0)) {
      if (this.claimsSeen) this.claimsByPeer.delete(peerId)
      return
    }
    this.claimsByPeer.set(peerId, { open: new Set(claims.open), started: new Set(claims.started) })
    this.claimsSeen = true
    for (const key of [...claims.open, ...claims.started]) {
      const drvPath = this.byClaimKey.get(key)
      const job = drvPath === undefined ? undefined : this.jobs.get(drvPath)
      if (job === undefined || (job.state !== 'waiting' && job.state !== 'ready')) continue
      const to = claimant(job, this.claimsByPeer, this.config.selfId)
      if (to !== undefined) this.claimedBy.set(job.drvPath, to)
    }
  }

  /**
   * Defers ready jobs another owner claims (claims.ts), and fetches from that owner those it has
   * stopped claiming: built there, the outputs come from its store; otherwise the fetch fails and
   * this node builds the job.
   */
  private reviewClaims (): void {
    if (!this.claimsSeen) return
    if (this.claimHold.size > 0) {
      for (const [drvPath, until] of this.claimHold) if (this.now >= until || this.jobs.get(drvPath)?.state !== 'ready') this.claimHold.delete(drvPath)
    }
    if (this.claimsByPeer.size === 0 && this.deferredTo.size === 0 && this.claimedBy.size === 0) return
    for (const drvPath of this.readySince.keys()) {
      const job = this.jobs.get(drvPath)
      if (job?.state !== 'ready') continue
      const to = claimant(job, this.claimsByPeer, this.config.selfId)
      const was = this.deferredTo.get(drvPath) ?? this.claimedBy.get(drvPath)
      if (to !== undefined) {
        const since = this.deferredTo.get(drvPath) === to ? (this.deferredSince.get(drvPath) ?? this.now) : this.now
        if (this.now - since >= CLAIM_OPEN_WAIT_MS && this.claimsByPeer.get(to)?.started.has(claimKey(drvPath)) !== true) {
          // Claimed for a minute and still not started there: build it here.
          job.notDeferTo = [...new Set([...(job.notDeferTo ?? []), to])]
          this.deferredTo.delete(drvPath)
          this.deferredSince.delete(drvPath)
          this.claimedBy.delete(drvPath)
          this.changed(job)
          continue
        }
        this.deferredTo.set(drvPath, to)
        this.deferredSince.set(drvPath, since)
      } else if (was !== undefined) {
        this.deferredTo.delete(drvPath)
        this.deferredSince.delete(drvPath)
        this.claimedBy.delete(drvPath)
        job.state = 'importing'
        job.worker = was
        job.grantedTo = [...new Set([...(job.grantedTo ?? []), was])]
        this.claimFetches.add(drvPath)
        this.changed(job)
        this.out.push(this.importDecision(job, was))
      }
    }
    for (const drvPath of this.deferredTo.keys()) {
      if (this.jobs.get(drvPath)?.state !== 'ready') { this.deferredTo.delete(drvPath); this.deferredSince.delete(drvPath) }
    }
    for (const drvPath of this.claimedBy.keys()) {
      const state = this.jobs.get(drvPath)?.state
      if (state !== 'waiting' && state !== 'ready') this.claimedBy.delete(drvPath)
    }
  }

  /** Keeps estimatedLeftMs: the estimate of a job counts while it is unfinished. */
  private countEstimate (job: Job): void {
    if (job.estimatedMs === undefined) return
    const counted = this.estimatedLeft.has(job.drvPath)
    const unfinished = !TERMINAL_STATES.has(job.state)
    if (unfinished && !counted) { this.estimatedLeft.add(job.drvPath); this.estimatedLeftMs += job.estimatedMs }
    if (!unfinished && counted) { this.estimatedLeft.delete(job.drvPath); this.estimatedLeftMs -= job.estimatedMs }
  }

  private changed (job: Job): void {
    this.countEstimate(job)
    if (job.state !== 'ready') this.readySince.delete(job.drvPath)
    else if (!this.readySince.has(job.drvPath)) this.readySince.set(job.drvPath, this.now)
    if (job.state === 'leased') this.leased.add(job.drvPath)
    else this.leased.delete(job.drvPath)
    if (job.state === 'ready' || this.readyOrder.has(job.drvPath)) this.reorder(job)
    this.out.push({ type: 'job-changed', job: { ...job } })
  }
}

/** A ready job and the key it was placed by (priority, then longest path, then first known). */
interface ReadyEntry {
  job: Job
  priority: number
  criticalPath: number
  order: number
}

/** Whether `a` goes before `b` in readyOrder: the comparison readyOrder was first sorted by. */
function readyBefore (a: ReadyEntry, b: ReadyEntry): boolean {
  const ac = -a.criticalPath
  const bc = -b.criticalPath
  return a.priority < b.priority || (a.priority === b.priority && (ac < bc || (ac === bc && a.order < b.order)))
}

/** A job in readyOrder and how many of its inputs a thief built. */
interface Affine {
  entry: ReadyEntry
  count: number
}

/** A run's jobs with inputs a thief built, most such inputs first, then by first known. */
class AffinityHeap {
  private readonly h: Affine[] = []

  constructor (counts: ReadonlyMap<ReadyEntry, number>) {
    for (const [entry, count] of counts) this.h.push({ entry, count })
    for (let i = (this.h.length >> 1) - 1; i >= 0; i--) this.down(i)
  }

  pop (): ReadyEntry | undefined {
    const h = this.h
    const top = h[0]
    if (top === undefined) return undefined
    const last = h.pop() as Affine
    if (h.length > 0) { h[0] = last; this.down(0) }
    return top.entry
  }

  private down (i: number): void {
    const h = this.h
    const x = h[i] as Affine
    for (;;) {
      const l = 2 * i + 1
      if (l >= h.length) break
      const r = l + 1
      const c = r < h.length && affineBefore(h[r] as Affine, h[l] as Affine) ? r : l
      const child = h[c] as Affine
      if (!affineBefore(child, x)) break
      h[i] = child
      i = c
    }
    h[i] = x
  }
}

function affineBefore (a: Affine, b: Affine): boolean {
  return a.count > b.count || (a.count === b.count && a.entry.order < b.entry.order)
}

/** Entries per chunk of a ReadyQueue before it is split in two. */
const READY_CHUNK = 1024

/**
 * The ready jobs in order, as a list of sorted chunks: an insert or a removal costs a binary
 * search and a splice of one chunk, not of every ready job (50,000 of them in a big submission).
 */
class ReadyQueue {
  private chunks: ReadyEntry[][] = []
  private readonly entries = new Map<string, ReadyEntry>()
  /** entries.size, read on every event: a field, not a lookup through the map. */
  private count = 0

  get size (): number { return this.count }

  has (drvPath: string): boolean { return this.entries.has(drvPath) }

  get (drvPath: string): ReadyEntry | undefined { return this.entries.get(drvPath) }

  first (): ReadyEntry | undefined { return this.chunks[0]?.[0] }

  insert (e: ReadyEntry): void {
    this.entries.set(e.job.drvPath, e)
    this.count = this.entries.size
    const chunks = this.chunks
    if (chunks.length === 0) { chunks.push([e]); return }
    const ci = Math.min(this.chunkOf(e), chunks.length - 1)
    const c = chunks[ci] as ReadyEntry[]
    c.splice(lowerBound(c, e), 0, e)
    if (c.length > 2 * READY_CHUNK) chunks.splice(ci + 1, 0, c.splice(READY_CHUNK))
  }

  /** Removes the entry of `drvPath` and returns it; undefined if it had none. */
  remove (drvPath: string): ReadyEntry | undefined {
    const e = this.entries.get(drvPath)
    if (e === undefined) return undefined
    this.entries.delete(drvPath)
    this.count = this.entries.size
    const ci = this.chunkOf(e)
    const c = this.chunks[ci] as ReadyEntry[]
    const at = lowerBound(c, e)
    if (c[at] !== e) throw new Error(`readyOrder lost ${drvPath}`)
    c.splice(at, 1)
    if (c.length === 0) this.chunks.splice(ci, 1)
    return e
  }

  * [Symbol.iterator] (): Generator<ReadyEntry> {
    for (const c of this.chunks) yield * c
  }

  /** The first chunk whose last entry does not go before `e` (chunks.length if none). */
  private chunkOf (e: ReadyEntry): number {
    const chunks = this.chunks
    let lo = 0
    let hi = chunks.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      const c = chunks[mid] as ReadyEntry[]
      if (readyBefore(c[c.length - 1] as ReadyEntry, e)) lo = mid + 1
      else hi = mid
    }
    return lo
  }
}

/** The first index of `c` whose entry does not go before `e`. */
function lowerBound (c: ReadyEntry[], e: ReadyEntry): number {
  let lo = 0
  let hi = c.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (readyBefore(c[mid] as ReadyEntry, e)) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** How often `x` is in `list`. */
function occurrences (list: readonly string[], x: string): number {
  let n = 0
  for (const y of list) if (y === x) n++
  return n
}

function runKey (owner: string, drvPath: string): string {
  return `${owner}\n${drvPath}`
}

/** Slots a peer announces free. */
function freeSlots (p: PeerView): number {
  return Math.max(0, p.maxJobs - p.running)
}

function sameList (a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
