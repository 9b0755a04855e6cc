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

export class Scheduler {
  readonly config: SchedulerConfig
  private now = 0
  private readonly random: () => number
  private readonly jobs = new Map<string, Job>()
  private readonly submissions = new Map<string, Submission>()
  private readonly finished = new Set<string>()
  private readonly running = new Map<string, Running>()
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
  private readonly readyOrder: Job[] = []
  private readonly inReadyOrder = new Set<string>()
  /** The leased jobs (kept by changed(), like readySince): the tick's lease checks and ownerSlots. */
  private readonly leased = new Set<string>()
  /** Each peer's capabilities as a string, to group free slots by them without re-encoding. */
  private readonly capabilitiesKey = new WeakMap<MachineCapabilities, string>()
  private pendingSteal: { from: string, want: number } | undefined
  private diskLow = false
  private out: Decision[] = []

  constructor (config: SchedulerConfig) {
    this.config = config
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
        if (job?.state === 'ready' && job.remoteOnly !== true) this.claimHold.set(s.drvPath, this.now + CLAIM_HOLD_MS)
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
    if (peer.peerId !== this.config.selfId) this.peerClaims(peer.peerId, peer.claims)
    const before = this.peers.get(peer.peerId)
    if (peer.peerId !== this.config.selfId) {
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
    // A thief that just reported a build to this owner asks at its next growth in any case: that
    // is likely the job's dependent, whose input it holds (once per report, so still O(1) a job).
    const backedOff = (this.stealBackoff.get(peer.peerId) ?? 0) > this.now
    if (before !== undefined && backedOff) {
      const growth = this.buildableCount(peer.offers) - this.buildableCount(before.offers)
      if (growth > 0) {
        const free = Math.max(1, this.peerFreeSlots + this.freeSlotsHere())
        const reported = this.now - (this.reportedTo.get(peer.peerId) ?? -Infinity) < this.config.stealBackoffMs
        if (reported || this.random() < (2 * growth) / free) {
          this.stealBackoff.delete(peer.peerId)
          this.reportedTo.delete(peer.peerId)
        }
      }
    }
    this.peers.set(peer.peerId, peer)
    if (peer.peerId !== this.config.selfId && this.buildableCount(peer.offers) > 0) this.offering.add(peer.peerId)
    else this.offering.delete(peer.peerId)
  }

  private onPeerLost (peerId: string): void {
    const before = this.peers.get(peerId)
    if (before !== undefined && peerId !== this.config.selfId) {
      this.peerFreeSlots -= freeSlots(before)
      this.peerCapacity -= before.maxJobs * before.speedFactor
    }
    this.peers.delete(peerId)
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
    if (view !== undefined) this.peers.set(from, { ...view, ownerSlots: (view.ownerSlots ?? 0) + items.length })
    for (const item of items) {
      this.running.set(runKey(item.owner, item.drvPath), { item, lastRenew: this.now, lastAck: this.now })
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
    return Math.max(0, this.config.maxJobs - this.running.size)
  }

  /** How many of the offered jobs this node could build. */
  private buildableCount (offers: OfferEntry[]): number {
    let n = 0
    for (const o of offers) if (o.count > 0 && canBuild(this.config.capabilities, o)) n += o.count
    return n
  }

  private onLeaseLost (owner: string, drvPaths: string[]): void {
    for (const p of drvPaths) {
      if (this.running.delete(runKey(owner, p))) this.out.push({ type: 'abort', owner, drvPath: p, reason: `${owner} says the lease lapsed` })
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
    for (const drvPath of this.leased) {
      const job = this.jobs.get(drvPath)
      if (job?.state === 'leased' && job.worker !== this.config.selfId && (job.leaseExpires ?? Infinity) <= this.now) {
        this.fail(job, { kind: 'transient', message: `lease held by ${job.worker ?? '?'} lapsed` })
      }
    }
    // A stolen build whose lease nobody confirmed for a whole lease (this node was stopped, or
    // cut off from the owner) has been handed to another peer by now: stop it rather than run
    // two copies; the owner drops a late result anyway.
    for (const [key, r] of this.running) {
      if (r.item.owner === this.config.selfId || this.now - r.lastAck < this.config.leaseMs) continue
      this.running.delete(key)
      this.out.push({ type: 'abort', owner: r.item.owner, drvPath: r.item.drvPath, reason: `no renewal confirmed for ${this.now - r.lastAck} ms, longer than the lease` })
    }
    const due = new Map<string, string[]>()
    for (const r of this.running.values()) {
      if (r.item.owner === this.config.selfId) continue
      if (this.now - r.lastRenew < this.config.leaseMs / 3) continue
      r.lastRenew = this.now
      const list = due.get(r.item.owner) ?? []
      list.push(r.item.drvPath)
      due.set(r.item.owner, list)
    }
    for (const [owner, drvPaths] of due) this.out.push({ type: 'renew', owner, drvPaths })
  }

  /** Fills free slots: own ready jobs first, then one steal request to the best victim. */
  private schedule (): void {
    this.reviewClaims()
    if (this.diskLow) return
    let free = this.config.maxJobs - this.running.size
    if (free <= 0) return
    const mine = this.pick(this.buildableHere(), free, this.config.speedFactor, this.config.selfId)
    for (const job of mine) {
      job.state = 'leased'
      job.worker = this.config.selfId
      delete job.leaseExpires
      this.changed(job)
      const item = this.workItem(job)
      this.running.set(runKey(item.owner, item.drvPath), { item, lastRenew: this.now, lastAck: this.now })
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
    const fastest = new Map<string, number>()
    for (const job of ordered) {
      if (out.length >= limit) break
      if (speed !== undefined && job.estimatedMs !== undefined) {
        horizon ??= this.horizonMs()
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
    let top = 0
    for (const j of this.readyOrder) { top = Math.max(top, j.criticalPath); if (j.priority !== this.readyOrder[0]?.priority) break }
    let fastest = this.config.speedFactor
    for (const p of this.peers.values()) fastest = Math.max(fastest, p.speedFactor)
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
    job.builtBy = builtBy
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
    this.jobs.set(job.drvPath, job)
    this.countEstimate(job)
    if (!this.order.has(job.drvPath)) this.order.set(job.drvPath, this.order.size)
    for (const input of job.inputJobs) {
      const set = this.dependents.get(input)
      if (set === undefined) this.dependents.set(input, new Set([job.drvPath]))
      else set.add(job.drvPath)
    }
  }

  private orderOf (job: Job): number { return this.order.get(job.drvPath) ?? 0 }

  /** Ready jobs this node may build itself, most urgent first (a lazy walk of readyOrder). */
  private * buildableHere (): Generator<Job> {
    for (const j of this.readyOrder) if (canBuild(this.config.capabilities, j) && this.mayBuild(j, this.config.selfId)) yield j
  }

  /**
   * Ready jobs a thief may be granted, in grant order: readyOrder, with each run of equal
   * priority and path put in order of the inputs the thief built (most first), stably.
   */
  private * stealOrder (capabilities: MachineCapabilities, from: string): Generator<Job> {
    const order = this.readyOrder
    let i = 0
    while (i < order.length) {
      const head = order[i] as Job
      let end = i + 1
      while (end < order.length && (order[end] as Job).priority === head.priority && (order[end] as Job).criticalPath === head.criticalPath) end++
      const run = order.slice(i, end).filter(j => canBuild(capabilities, j) && this.mayBuild(j, from))
      i = end
      if (run.length > 1) {
        const affinity = new Map(run.map(j => [j, j.inputJobs.filter(x => this.jobs.get(x)?.builtBy === from).length]))
        run.sort((a, b) => (affinity.get(b) ?? 0) - (affinity.get(a) ?? 0))
      }
      yield * run
    }
  }

  /** Where `job` goes in readyOrder (binary search by its key). */
  private readyIndex (job: Job): number {
    const key = (j: Job): [number, number, number] => [j.priority, -j.criticalPath, this.orderOf(j)]
    const [p, c, o] = key(job)
    let lo = 0
    let hi = this.readyOrder.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      const [mp, mc, mo] = key(this.readyOrder[mid] as Job)
      if (mp < p || (mp === p && (mc < c || (mc === c && mo < o)))) lo = mid + 1
      else hi = mid
    }
    return lo
  }

  /** Takes `job` out of readyOrder and, if ready, puts it back where its key says (it may have changed). */
  private reorder (job: Job): void {
    if (this.inReadyOrder.delete(job.drvPath)) {
      const at = this.readyOrder.findIndex(j => j.drvPath === job.drvPath)
      if (at >= 0) this.readyOrder.splice(at, 1)
    }
    if (job.state === 'ready') {
      this.readyOrder.splice(this.readyIndex(job), 0, job)
      this.inReadyOrder.add(job.drvPath)
    }
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
      this.claimsByPeer.delete(peerId)
      return
    }
    this.claimsByPeer.set(peerId, { open: new Set(claims.open), started: new Set(claims.started) })
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
    for (const [drvPath, until] of this.claimHold) if (this.now >= until || this.jobs.get(drvPath)?.state !== 'ready') this.claimHold.delete(drvPath)
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
    if (job.state === 'ready' || this.inReadyOrder.has(job.drvPath)) this.reorder(job)
    this.out.push({ type: 'job-changed', job: { ...job } })
  }
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
