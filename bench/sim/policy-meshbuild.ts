// meshbuild in the simulator: one real Scheduler per virtual node (node/scheduler/scheduler.ts,
// the production module, driven only through its exported API), wired as node/mesh/ wires it:
// - dispatch-loop.ts: every event through handle(event, now), a tick every TICK_MS, peers'
//   beacons and offers as `peer-seen` (views made by the real PeerTable), silent peers `peer-lost`;
// - announcer.ts: beacon and offer every BEACON_INTERVAL_MS and ANNOUNCE_DELAY_MS after a
//   build, job-changed or submission-finished decision;
// - effects.ts and protocols/: steal → steal-request at the victim → its grant → steal-reply;
//   renew → lease-renew → renew-reply → lease-renewed / lease-lost; report → result (retried
//   while the owner is unreachable); import → the NAR from the worker → import-finished;
// - builder.ts: a stolen job first fetches its .drv and missing inputs from the owner.
// With owners submitting the same derivations (shared), their offers carry their claims as
// announcer.ts puts them there, and an owner fetches a job it deferred from the owner that built it.
// Each message takes the network's latency; NARs take their size over the sender's uplink.
import {
  ANNOUNCE_DELAY_MS, BEACON_INTERVAL_MS, MAX_STEAL_WANT, PEER_EXPIRY_MS, REPORT_GIVE_UP_MS, REPORT_RETRY_MS, TICK_MS
} from '../../protocols/mesh/constants.ts'
import type { Beacon, Offer } from '../../protocols/mesh/messages.ts'
import { PeerTable } from '../../node/mesh/peer-table.ts'
import { DEFAULT_SHARE } from '../../node/scheduler/fair-share.ts'
import type { JobState, WorkItem } from '../../node/scheduler/job.ts'
import {
  Scheduler, SCHEDULER_DEFAULTS, type BuildOutcome, type Decision, type PeerView, type SchedulerEvent
} from '../../node/scheduler/scheduler.ts'
import type { SimNodeSpec } from './cluster.ts'
import { SimInvariantError, type JobEnd } from './invariants.ts'
import { bump } from './metrics.ts'
import type { Policy } from './policy.ts'
import { KIND, type World } from './world.ts'
import { submissionSpec, type Estimates, type SimJob, type Workload } from './workloads.ts'

/** The class every simulated node runs: the production scheduler (a test checks the identity). */
export const SIMULATED_SCHEDULER = Scheduler

/**
 * exact: every beacon and offer reaches every peer's scheduler, as on the wire. coalesced: a
 * publish whose view differs from the sender's previous one only in `running` is not handed to
 * the receivers' schedulers (it is still counted as sent): what large meshes need to run fast.
 */
export type GossipMode = 'exact' | 'coalesced'

export interface MeshbuildOptions {
  gossip: GossipMode
  /** Submit with --check-reproducible: every job built on two peers and compared. */
  check?: boolean
  seed: number
  /**
   * Owners: node o submits the workload's jobs ranges[o] = [from, to) (concatWorkloads());
   * unless given, node 0 submits them all.
   */
  ownerRanges?: ReadonlyArray<readonly [number, number]>
  /** Each owner's share weight (join --share), by owner; DEFAULT_SHARE for those not given. */
  shares?: readonly number[]
  /** Every owner submits the same jobs (its range all of them): an owner's job is (owner, index). */
  shared?: boolean
  /** With shared: offers carry the owners' claims (claims.ts); false: none, so no owner defers. */
  claims?: boolean
  /** The build times the owners know from history; none unless given. */
  estimates?: Estimates
}

export const SUBMISSION_ID = 'sim-submission'

/** The submission of owner `o` (the first owner's keeps the single-owner id). */
export function submissionId (o: number): string {
  return o === 0 ? SUBMISSION_ID : `${SUBMISSION_ID}-${o}`
}
/** Free disk a beacon announces: plenty, the simulator has no disk. */
const FREE_DISK_BYTES = 1e12
/** The size of a steal grant's JSON per item, for its transfer time. Assumption: ~400 bytes. */
const GRANT_ITEM_BYTES = 400

interface Run {
  token: number
  job: number
  /** The node index of the job's owner. */
  owner: number
  item: WorkItem
  begun: boolean
}

interface MeshNode {
  spec: SimNodeSpec
  index: number
  id: string
  scheduler: Scheduler
  runs: Map<string, Run>
  beaconSeq: number
  offerSeq: number
  lastOfferEmpty: boolean
  announceDue: boolean
  lastSignature: string
  lastPublishAt: number
  capabilitiesJson?: string
  beaconCapabilities?: { systems: string[], features: string[], mandatoryFeatures: string[] }
  /** Its timers' callbacks, made once: a node schedules millions of them. */
  onBeacon: () => void
  onTick: () => void
  onAnnounce: () => void
}

/** The tick event, one for all: a scheduler keeps no event. */
const TICK: SchedulerEvent = { type: 'tick' }

const TERMINAL: ReadonlySet<JobState> = new Set(['built', 'substituted', 'failed', 'dependency-failed'])

export class MeshbuildPolicy implements Policy {
  private readonly w: World
  private readonly workload: Workload
  private readonly options: MeshbuildOptions
  private readonly nodes: MeshNode[]
  private readonly byId = new Map<string, MeshNode>()
  private readonly jobOf = new Map<string, number>()
  /** What every peer's PeerTable holds of each publisher: gossip reaches all alive peers in order. */
  private readonly gossipTable = new PeerTable(PEER_EXPIRY_MS)
  /** The order in which a publish spreads: a fixed random permutation, read from the publisher on. */
  private readonly spread: number[]
  private readonly positionInSpread: Int32Array
  private readonly lastState: Array<JobState | undefined>
  /** Shared derivations: whether each counts as ready work for the idle measure (sharedReady). */
  private readonly idleReady: Uint8Array
  /** Shared derivations, at owner × jobs + job: the node that last built that owner's job (-1: none), and when the owner had it built. */
  private readonly builderOf: Int32Array
  private readonly builtAt: Float64Array
  /** Shared derivations: outputs an owner fetched from another owner it deferred the job to, and those it found missing. */
  private ownerFetches = 0
  private ownerFetchesMissing = 0
  private readonly pendingRenewals = new Map<string, { worker: MeshNode, drvPaths: string[], requestedAt: number }>()
  private tokens = 0
  private requests = 0
  private readonly owners: number
  private readonly ranges: ReadonlyArray<readonly [number, number]>
  private readonly shared: boolean
  /** Whether offers carry claims: only with shared derivations, where they change what is built. */
  private readonly gossipClaims: boolean
  /** The owner (node index) of each job. */
  private readonly ownerOfJob: Uint16Array
  /** When each owner's submission finished, and whether with every job built. */
  private readonly ownerDoneAt: Array<number | undefined>
  private readonly ownerOk: boolean[]
  /** By owner: its ready jobs, its builds running, and its slot-ms while every owner had a ready job. */
  private readonly readyOf: Int32Array
  private readonly runningOf: Int32Array
  private readonly contendedMs: Float64Array
  private contendedSince = 0
  private contendedTotalMs = 0
  private doneAt: number | undefined
  private ok = false

  constructor (w: World, workload: Workload, options: MeshbuildOptions) {
    this.w = w
    this.workload = workload
    this.options = options
    this.ranges = options.ownerRanges ?? [[0, workload.jobs.length]]
    this.owners = this.ranges.length
    if (this.owners > w.nodes.length) throw new SimInvariantError(`${this.owners} owners on ${w.nodes.length} nodes: owners are nodes`)
    this.shared = options.shared === true
    this.gossipClaims = this.shared && options.claims !== false
    this.ownerOfJob = new Uint16Array(workload.jobs.length)
    if (!this.shared) this.ranges.forEach(([from, to], o) => { this.ownerOfJob.fill(o, from, to) })
    this.ownerDoneAt = new Array<number | undefined>(this.owners).fill(undefined)
    this.ownerOk = new Array<boolean>(this.owners).fill(false)
    this.readyOf = new Int32Array(this.owners)
    this.runningOf = new Int32Array(this.owners)
    this.contendedMs = new Float64Array(this.owners)
    workload.jobs.forEach(j => this.jobOf.set(j.drvPath, j.index))
    this.lastState = new Array<JobState | undefined>(workload.jobs.length * (this.shared ? this.owners : 1)).fill(undefined)
    this.idleReady = new Uint8Array(this.shared ? workload.jobs.length : 0)
    this.builderOf = new Int32Array(this.shared ? workload.jobs.length * this.owners : 0).fill(-1)
    this.builtAt = new Float64Array(this.shared ? workload.jobs.length * this.owners : 0).fill(-1)
    this.nodes = w.nodes.map(spec => {
      const scheduler = new Scheduler({
        ...SCHEDULER_DEFAULTS,
        selfId: spec.id,
        capabilities: spec.capabilities,
        maxJobs: spec.slots,
        speedFactor: spec.speedFactor,
        seed: (Math.imul(options.seed, 2654435761) + spec.index * 40503 + 1) >>> 0
      })
      const n: MeshNode = {
        spec, index: spec.index, id: spec.id, scheduler, runs: new Map(),
        beaconSeq: 0, offerSeq: 0, lastOfferEmpty: true, announceDue: false, lastSignature: '', lastPublishAt: 0,
        onBeacon: () => { this.beaconTimer(n) },
        onTick: () => { this.tickTimer(n) },
        onAnnounce: () => { if (n.announceDue) this.publish(n) }
      }
      this.byId.set(spec.id, n)
      return n
    })
    this.spread = this.nodes.map(n => n.index)
    for (let i = this.spread.length - 1; i > 0; i--) {
      const k = Math.floor(w.random() * (i + 1))
      const t = this.spread[i] as number
      this.spread[i] = this.spread[k] as number
      this.spread[k] = t
    }
    this.positionInSpread = new Int32Array(this.spread.length)
    this.spread.forEach((node, pos) => { this.positionInSpread[node] = pos })
    w.whenNodeDies(node => { this.onDeath(node) })
  }

  start (submitAt: number): void {
    for (const n of this.nodes) {
      // Each node started at its own moment: its timers run with their own phase.
      const phase = this.w.random()
      this.w.at(phase * BEACON_INTERVAL_MS, KIND.beacon, n.index, 0, n.onBeacon)
      this.w.at(phase * TICK_MS, KIND.tick, n.index, 0, n.onTick)
    }
    for (let o = 0; o < this.owners; o++) {
      const owner = this.nodes[o] as MeshNode
      this.w.at(submitAt, KIND.submit, o, 0, () => {
        const spec = submissionSpec(this.workload, submissionId(o), submitAt, {
          ...(this.options.check === true ? { check: true } : {}),
          ...(this.options.estimates !== undefined ? { estimates: this.options.estimates } : {}),
          ...(this.owners > 1 && !this.shared ? { range: [...(this.ranges[o] as [number, number])] as [number, number] } : {})
        })
        this.dispatch(owner, { type: 'submit', submission: spec })
      })
    }
  }

  /** When each owner's submission finished (ms of simulated time), by owner. */
  ownersFinishedAt (): number[] {
    return this.ownerDoneAt.map(t => t ?? this.w.now)
  }

  /**
   * Each owner's part of the slot-time spent while every owner had a job ready and unstarted
   * (what the shares divide), and how long that was (ms); with one owner, 1 and the whole run.
   */
  contention (): { slotShares: number[], ms: number } {
    this.account()
    const total = this.contendedMs.reduce((s, x) => s + x, 0)
    return { slotShares: [...this.contendedMs].map(x => total > 0 ? x / total : 0), ms: this.contendedTotalMs }
  }

  /** Adds the slot-time since the last change of a ready or running count, if all owners had work ready. */
  private account (): void {
    const now = this.w.now
    if (now > this.contendedSince && this.readyOf.every(r => r > 0)) {
      const dt = now - this.contendedSince
      this.contendedTotalMs += dt
      for (let o = 0; o < this.owners; o++) this.contendedMs[o] = (this.contendedMs[o] ?? 0) + (this.runningOf[o] ?? 0) * dt
    }
    this.contendedSince = now
  }

  /** Owner `o`'s builds running changed by `delta`. */
  private running (o: number, delta: number): void {
    this.account()
    this.runningOf[o] = (this.runningOf[o] ?? 0) + delta
  }

  /** The owner (node index) of job `job`; with shared derivations every owner has it, and this says 0. */
  ownerOf (job: number): number {
    return this.ownerOfJob[job] ?? 0
  }

  finished (): boolean {
    return this.doneAt !== undefined
  }

  finishedAt (): number {
    return this.doneAt ?? this.w.now
  }

  /** With shared derivations, a job is built when every owner has it built (else the first other end). */
  ends (): JobEnd[] {
    if (this.shared) {
      const ends = this.endsOfOwner(0)
      for (let o = 1; o < this.owners; o++) this.endsOfOwner(o).forEach((e, i) => { if (ends[i] === 'built') ends[i] = e })
      return ends
    }
    const ends: JobEnd[] = new Array<JobEnd>(this.workload.jobs.length).fill('unfinished')
    for (let o = 0; o < this.owners; o++) this.endsOf(o, ends)
    return ends
  }

  /** How owner `o`'s jobs ended, by job index ('unfinished' for those not its own). */
  endsOfOwner (o: number): JobEnd[] {
    const ends: JobEnd[] = new Array<JobEnd>(this.workload.jobs.length).fill('unfinished')
    this.endsOf(o, ends)
    return ends
  }

  private endsOf (o: number, ends: JobEnd[]): void {
    const owner = this.nodes[o] as MeshNode
    for (const j of owner.scheduler.submissionJobs(submissionId(o))) {
      const i = this.jobOf.get(j.drvPath)
      if (i === undefined) continue
      ends[i] = j.state === 'built' ? 'built'
        : j.state === 'dependency-failed' ? 'dependency-failed'
          : j.state === 'failed' ? (j.failure?.kind === 'transient' ? 'failed-transient' : 'failed-permanent')
            : 'unfinished'
    }
  }

  /** Whether `owner` (unless given: the job's owner; with shared derivations, every owner) holds the outputs. */
  ownerHas (job: number, owner?: number): boolean {
    if (owner !== undefined) return this.w.stores[owner]?.has(job) === true
    if (this.shared) return this.w.stores.slice(0, this.owners).every(s => s.has(job))
    return this.w.stores[this.ownerOf(job)]?.has(job) === true
  }

  /**
   * Shared derivations: the fetches of outputs from another owner a job was deferred to (and
   * how many found them missing, so the owner built the job itself), and how long after the
   * first owner had a derivation's outputs the last had them (mean and max, seconds).
   */
  sharing (): { ownerFetches: number, ownerFetchesMissing: number, meanLag: number, maxLag: number } {
    const n = this.workload.jobs.length
    let sum = 0
    let max = 0
    let counted = 0
    for (let job = 0; job < n; job++) {
      let first = Infinity
      let last = -Infinity
      for (let o = 0; o < this.owners; o++) {
        const t = this.builtAt[o * n + job] ?? -1
        if (t < 0) { first = Infinity; break }
        first = Math.min(first, t)
        last = Math.max(last, t)
      }
      if (first === Infinity) continue
      sum += last - first
      max = Math.max(max, last - first)
      counted++
    }
    return { ownerFetches: this.ownerFetches, ownerFetchesMissing: this.ownerFetchesMissing, meanLag: counted > 0 ? sum / counted / 1000 : 0, maxLag: max / 1000 }
  }

  /** Whether the submission finished with every job built. */
  allBuilt (): boolean {
    return this.ok
  }

  // --- the dispatch loop ---------------------------------------------------------------------

  private dispatch (n: MeshNode, event: SchedulerEvent): void {
    if (!this.w.isAlive(n.index)) return
    const decisions = n.scheduler.handle(event, this.w.now)
    this.w.counters.handleCalls++
    for (const d of decisions) this.apply(n, d)
    this.w.idle.setBusy(n.index, n.scheduler.runningCount(), this.w.now)
  }

  private apply (n: MeshNode, d: Decision): void {
    switch (d.type) {
      case 'build': this.announceSoon(n); this.startBuild(n, d.item); break
      case 'abort': this.abort(n, d.owner, d.drvPath); break
      case 'steal': this.steal(n, d.from, d.want); break
      case 'grant': this.grant(n, d.to, d.items); break
      case 'renew': this.renew(n, d.owner, d.drvPaths); break
      case 'renew-reply': this.renewReply(n, d.requestId, d.lost); break
      case 'report': this.report(n, d.owner, d.drvPath, d.outcome, this.w.now + REPORT_GIVE_UP_MS); break
      case 'import': this.importOutputs(n, d.from, d.drvPath); break
      case 'job-changed': this.announceSoon(n); this.jobChanged(n.index, d.job.drvPath, d.job.state); break
      case 'submission-finished':
        this.announceSoon(n)
        if (n.index < this.owners && d.id === submissionId(n.index)) this.ownerFinished(n.index, d.ok)
        break
      case 'sign':
      case 'discard':
        bump(this.w.counters.ignoredDecisions, d.type)
        break
      default:
        // A decision this simulator does not know yet (the scheduler grew one): counted, not fatal.
        bump(this.w.counters.unknownDecisions, (d as { type: string }).type)
    }
  }

  private ownerFinished (o: number, ok: boolean): void {
    this.ownerDoneAt[o] = this.w.now
    this.ownerOk[o] = ok
    if (this.ownerDoneAt.every(t => t !== undefined)) {
      this.doneAt = this.w.now
      this.ok = this.ownerOk.every(x => x)
    }
  }

  private beaconTimer (n: MeshNode): void {
    if (!this.w.isAlive(n.index) || this.finished()) return
    this.publish(n)
    this.w.at(this.w.now + BEACON_INTERVAL_MS, KIND.beacon, n.index, 0, n.onBeacon)
  }

  private tickTimer (n: MeshNode): void {
    if (!this.w.isAlive(n.index) || this.finished()) return
    this.dispatch(n, TICK)
    this.w.at(this.w.now + TICK_MS, KIND.tick, n.index, 0, n.onTick)
  }

  // --- gossip (announcer.ts, peer-table.ts) --------------------------------------------------

  private announceSoon (n: MeshNode): void {
    if (n.announceDue) return
    n.announceDue = true
    this.w.at(this.w.now + ANNOUNCE_DELAY_MS, KIND.announce, n.index, 0, n.onAnnounce)
  }

  private publish (n: MeshNode): void {
    if (!this.w.isAlive(n.index)) return
    n.announceDue = false
    n.lastPublishAt = this.w.now
    const s = n.scheduler
    // One copy of its capabilities for all its beacons: nobody changes a beacon once sent.
    const caps = n.beaconCapabilities ??= {
      systems: [...n.spec.capabilities.systems],
      features: [...n.spec.capabilities.features],
      mandatoryFeatures: [...n.spec.capabilities.mandatoryFeatures]
    }
    const beacon: Beacon = {
      v: 1,
      seq: ++n.beaconSeq,
      systems: caps.systems,
      features: caps.features,
      mandatoryFeatures: caps.mandatoryFeatures,
      maxJobs: n.spec.slots,
      running: s.runningCount(),
      queued: s.queuedCount(),
      speedFactor: n.spec.speedFactor,
      load: 0,
      freeDiskBytes: FREE_DISK_BYTES,
      diskLow: false,
      building: [],
      ownerSlots: s.ownerSlots(),
      share: this.options.shares?.[n.index] ?? DEFAULT_SHARE,
      addresses: []
    }
    const c = this.w.counters
    c.messages++
    c.gossipPublishes++
    this.gossipTable.beacon(n.id, beacon, this.w.now)
    const views: PeerView[] = []
    const first = this.gossipTable.view(n.id)
    if (first !== undefined) views.push(first)
    const entries = s.offer()
    // announcer.ts: an offer goes out while it has entries or claims, and once more when empty.
    const claims = this.gossipClaims ? s.claims() : undefined
    const empty = entries.length === 0 && (claims === undefined || (claims.open.length === 0 && claims.started.length === 0))
    if (!empty || !n.lastOfferEmpty) {
      const offer: Offer = { v: 1, seq: ++n.offerSeq, entries, ...(empty || claims === undefined ? {} : { claims }) }
      c.messages++
      c.gossipPublishes++
      this.gossipTable.offer(n.id, offer, this.w.now)
      const second = this.gossipTable.view(n.id)
      if (second !== undefined) views.push(second)
    }
    n.lastOfferEmpty = empty
    const last = views[views.length - 1]
    if (last === undefined) return
    if (this.options.gossip === 'coalesced') {
      // With several owners, their slots in use steer the thieves (fair-share.ts): a change counts.
      const slots = this.owners > 1 ? `|${last.ownerSlots ?? 0}` : ''
      // And their claims: a claim dropped is another owner's cue to fetch the outputs.
      const claimed = this.gossipClaims ? `|${JSON.stringify(last.claims ?? null)}` : ''
      // A node's capabilities never change: their JSON is made once.
      n.capabilitiesJson ??= JSON.stringify(last.capabilities)
      const signature = `${last.queued}|${last.maxJobs}|${last.speedFactor}|${JSON.stringify(last.offers)}|${n.capabilitiesJson}${slots}${claimed}`
      if (signature === n.lastSignature) return
      n.lastSignature = signature
      this.deliver(n, [last])
    } else {
      this.deliver(n, views)
    }
  }

  /** Hop by hop: fanout peers after one hop, fanout² after two, …, each hop one latency later. */
  private deliver (from: MeshNode, views: PeerView[]): void {
    const total = this.spread.length
    const origin = this.positionInSpread[from.index] as number
    // One event per view for all receivers: a scheduler keeps the view, never the event.
    const events: SchedulerEvent[] = views.map(peer => ({ type: 'peer-seen', peer }))
    let offset = 1
    let hop = 1
    let width = this.w.cal.gossipFanout
    let delay = 0
    while (offset < total) {
      const begin = offset
      const end = Math.min(total, offset + width)
      delay += this.w.oneWay()
      this.w.at(this.w.now + delay, KIND.gossip, from.index, hop, () => {
        for (let k = begin; k < end; k++) {
          const r = this.nodes[this.spread[(origin + k) % total] as number] as MeshNode
          if (!this.w.isAlive(r.index)) continue
          for (const event of events) {
            this.w.counters.gossipDeliveries++
            this.dispatch(r, event)
          }
        }
      })
      offset = end
      hop++
      width *= this.w.cal.gossipFanout
    }
  }

  // --- builds (effects.ts, builder.ts) -------------------------------------------------------

  private startBuild (n: MeshNode, item: WorkItem): void {
    const job = this.jobOf.get(item.drvPath)
    if (job === undefined) throw new SimInvariantError(`${n.id} was told to build ${item.drvPath}, which is no job of the workload`)
    const key = runKey(item.owner, item.drvPath)
    const owner = this.byId.get(item.owner)
    if (owner === undefined) throw new SimInvariantError(`${n.id} holds a job of unknown owner ${item.owner}`)
    const run: Run = { token: ++this.tokens, job, owner: owner.index, item, begun: false }
    n.runs.set(key, run)
    if (item.owner === n.id) {
      this.beginBuild(n, key, run)
      return
    }
    // One path-info round and one NAR stream: the .drv and the inputs this store lacks.
    const j = this.workload.jobs[job] as SimJob
    const store = this.w.stores[n.index] as Set<number>
    const missing = j.inputs.filter(i => !store.has(i))
    const bytes = this.w.cal.drvBytes + missing.reduce((s, i) => s + (this.workload.jobs[i] as SimJob).outputBytes, 0)
    this.w.counters.messages += 4
    if (!this.w.isAlive(owner.index)) {
      this.w.at(this.w.now + this.w.cal.deadPeerTimeoutMs, KIND.fetchDone, n.index, job, () => { this.fetchFailed(n, key, run) })
      return
    }
    this.w.send(owner.index, n.index, bytes, missing.length + 1, this.w.now + this.w.roundTrip() + this.w.cal.fetchOverheadMs, KIND.fetchDone, job, () => {
      if (n.runs.get(key) !== run || !this.w.isAlive(n.index)) return
      if (!this.w.isAlive(owner.index)) { this.fetchFailed(n, key, run); return }
      for (const i of missing) store.add(i)
      this.beginBuild(n, key, run)
    })
  }

  private fetchFailed (n: MeshNode, key: string, run: Run): void {
    if (n.runs.get(key) !== run || !this.w.isAlive(n.index)) return
    n.runs.delete(key)
    const outcome: BuildOutcome = { ok: false, failure: { kind: 'transient', message: `fetching inputs from ${run.item.owner} failed: unreachable` } }
    this.dispatch(n, { type: 'build-finished', owner: run.item.owner, drvPath: run.item.drvPath, outcome })
  }

  private beginBuild (n: MeshNode, key: string, run: Run): void {
    this.w.tracker.begin(run.job, n.index, this.w.stores[n.index] as Set<number>, this.w.now, this.copy(run))
    this.running(run.owner, 1)
    run.begun = true
    this.w.at(this.w.now + this.w.buildMs(run.job, n.index), KIND.buildDone, n.index, run.job, () => {
      if (n.runs.get(key) !== run || !this.w.isAlive(n.index)) return
      n.runs.delete(key)
      this.w.tracker.end(run.job, true, this.w.now, this.copy(run))
      this.running(run.owner, -1)
      if (this.shared) this.builderOf[run.owner * this.workload.jobs.length + run.job] = n.index
      this.w.stores[n.index]?.add(run.job)
      const j = this.workload.jobs[run.job] as SimJob
      const outcome: BuildOutcome = run.item.check === true
        ? { ok: true, outputs: j.outputs, narHashes: { out: `sha256:${j.drvPath.slice(11, 43)}` } }
        : { ok: true, outputs: j.outputs }
      this.dispatch(n, { type: 'build-finished', owner: run.item.owner, drvPath: run.item.drvPath, outcome })
    })
  }

  /** Which owner's job of the derivation a build is, for the tracker: only shared derivations have several. */
  private copy (run: Run): number {
    return this.shared ? run.owner : 0
  }

  private abort (n: MeshNode, owner: string, drvPath: string): void {
    const key = runKey(owner, drvPath)
    const run = n.runs.get(key)
    if (run === undefined) return
    n.runs.delete(key)
    if (run.begun) { this.w.tracker.vanish(run.job, this.copy(run)); this.running(run.owner, -1) }
    this.w.counters.buildsAborted++
  }

  private onDeath (node: number): void {
    const n = this.nodes[node] as MeshNode
    for (const run of n.runs.values()) if (run.begun) { this.w.tracker.vanish(run.job, this.copy(run)); this.running(run.owner, -1) }
    n.runs.clear()
    // Every peer forgets it at its first tick after PEER_EXPIRY_MS of silence.
    const at = n.lastPublishAt + PEER_EXPIRY_MS + TICK_MS
    this.w.at(at, KIND.peerLost, node, 0, () => {
      for (const r of this.nodes) if (r.index !== node) this.dispatch(r, { type: 'peer-lost', peerId: n.id })
    })
  }

  // --- steal, lease, result, import (protocols/) --------------------------------------------

  private steal (thief: MeshNode, victimId: string, want: number): void {
    const victim = this.byId.get(victimId)
    if (victim === undefined) throw new SimInvariantError(`${thief.id} tried to steal from unknown peer ${victimId}`)
    const c = this.w.counters
    c.steals++
    c.messages++
    const requestId = `${thief.id}/${++this.requests}`
    if (!this.w.isAlive(victim.index)) {
      this.w.at(this.w.now + this.w.cal.deadPeerTimeoutMs, KIND.stealFailed, thief.index, victim.index, () => {
        this.dispatch(thief, { type: 'steal-failed', from: victimId, error: 'unreachable' })
      })
      return
    }
    this.w.at(this.w.now + this.w.oneWay() + this.w.cal.requestServiceMs, KIND.stealArrive, victim.index, thief.index, () => {
      if (!this.w.isAlive(victim.index)) {
        this.w.at(this.w.now + this.w.cal.deadPeerTimeoutMs, KIND.stealFailed, thief.index, victim.index, () => {
          this.dispatch(thief, { type: 'steal-failed', from: victimId, error: 'unreachable' })
        })
        return
      }
      this.dispatch(victim, {
        type: 'steal-request', requestId, from: thief.id, capabilities: thief.spec.capabilities, want: Math.min(want, MAX_STEAL_WANT)
      })
    })
  }

  private grant (victim: MeshNode, to: string, items: WorkItem[]): void {
    const thief = this.byId.get(to)
    if (thief === undefined) return
    const c = this.w.counters
    c.messages++
    if (items.length === 0) c.emptySteals++
    c.jobsGranted += items.length
    const wire = items.length * GRANT_ITEM_BYTES / this.w.cal.narBytesPerMs
    this.w.at(this.w.now + this.w.oneWay() + wire, KIND.stealReply, thief.index, victim.index, () => {
      this.dispatch(thief, { type: 'steal-reply', from: victim.id, items: items.map(i => ({ ...i, owner: victim.id })) })
    })
  }

  private renew (worker: MeshNode, ownerId: string, drvPaths: string[]): void {
    const owner = this.byId.get(ownerId)
    if (owner === undefined) return
    this.w.counters.messages++
    const requestedAt = this.w.now
    const requestId = `${worker.id}/${++this.requests}`
    this.w.at(this.w.now + this.w.oneWay() + this.w.cal.requestServiceMs, KIND.renewArrive, owner.index, worker.index, () => {
      // An unreachable owner: the worker keeps building (effects.ts); its tick aborts the build
      // once no renewal has been confirmed for a whole lease.
      if (!this.w.isAlive(owner.index)) return
      this.pendingRenewals.set(requestId, { worker, drvPaths, requestedAt })
      this.dispatch(owner, { type: 'lease-renew', requestId, from: worker.id, drvPaths })
      this.pendingRenewals.delete(requestId)
    })
  }

  private renewReply (owner: MeshNode, requestId: string, lostPaths: string[]): void {
    const p = this.pendingRenewals.get(requestId)
    if (p === undefined) return
    this.w.counters.messages++
    const lost = new Set(lostPaths)
    const held = p.drvPaths.filter(x => !lost.has(x))
    this.w.at(this.w.now + this.w.oneWay(), KIND.renewReply, p.worker.index, owner.index, () => {
      if (held.length > 0) this.dispatch(p.worker, { type: 'lease-renewed', owner: owner.id, drvPaths: held, requestedAt: p.requestedAt })
      if (lostPaths.length > 0) this.dispatch(p.worker, { type: 'lease-lost', owner: owner.id, drvPaths: lostPaths })
    })
  }

  private report (worker: MeshNode, ownerId: string, drvPath: string, outcome: BuildOutcome, deadline: number): void {
    const owner = this.byId.get(ownerId)
    if (owner === undefined) return
    this.w.counters.messages++
    const job = this.jobOf.get(drvPath) ?? -1
    this.w.at(this.w.now + this.w.oneWay() + this.w.cal.requestServiceMs, KIND.reportArrive, owner.index, job, () => {
      if (this.w.isAlive(owner.index)) {
        this.w.counters.messages++ // the reply {accepted}
        this.dispatch(owner, { type: 'result', from: worker.id, drvPath, outcome })
        return
      }
      // effects.ts: retried every REPORT_RETRY_MS until REPORT_GIVE_UP_MS, while the worker lives.
      const retryAt = this.w.now + this.w.cal.deadPeerTimeoutMs + REPORT_RETRY_MS
      if (retryAt > deadline) return
      this.w.at(retryAt, KIND.reportArrive, worker.index, job, () => {
        if (this.w.isAlive(worker.index)) this.report(worker, ownerId, drvPath, outcome, deadline)
      })
    })
  }

  private importOutputs (owner: MeshNode, fromId: string, drvPath: string): void {
    const from = this.byId.get(fromId)
    const job = this.jobOf.get(drvPath)
    if (from === undefined || job === undefined) return
    const j = this.workload.jobs[job] as SimJob
    this.w.counters.messages += 4 // path-info request and reply, NAR request and stream
    const fail = (): void => { this.dispatch(owner, { type: 'import-finished', from: fromId, drvPath, error: `${fromId} is unreachable` }) }
    if (!this.w.isAlive(from.index)) {
      this.w.at(this.w.now + this.w.cal.deadPeerTimeoutMs, KIND.importDone, owner.index, job, fail)
      return
    }
    const arrived = (): void => {
      if (!this.w.isAlive(from.index) || this.w.stores[from.index]?.has(job) !== true) { fail(); return }
      this.w.stores[owner.index]?.add(job)
      this.dispatch(owner, { type: 'import-finished', from: fromId, drvPath })
    }
    if (!this.shared) {
      this.w.send(from.index, owner.index, j.outputBytes, 1, this.w.now + this.w.roundTrip() + this.w.cal.importOverheadMs, KIND.importDone, job, arrived)
      return
    }
    // Not from the node that built this owner's job: from the owner the job was deferred to.
    const deferred = this.builderOf[owner.index * this.workload.jobs.length + job] !== from.index
    if (deferred) this.ownerFetches++
    // From another owner the outputs may be missing (it never built them): fetchClosure's
    // path-info round says so, PathUnavailable, before any NAR moves.
    this.w.at(this.w.now + this.w.roundTrip(), KIND.importDone, owner.index, job, () => {
      if (this.w.isAlive(from.index) && this.w.stores[from.index]?.has(job) !== true) {
        if (deferred) this.ownerFetchesMissing++
        this.dispatch(owner, { type: 'import-finished', from: fromId, drvPath, error: `${fromId} has no outputs of ${drvPath}: PathUnavailable` })
        return
      }
      this.w.send(from.index, owner.index, j.outputBytes, 1, this.w.now + this.w.cal.importOverheadMs, KIND.importDone, job, arrived)
    })
  }

  // --- what the owner's jobs do, for the idle-slot measure -----------------------------------

  /** Owner `o`'s job `drvPath` is in `state` now (job-changed comes from the owner's scheduler only). */
  private jobChanged (o: number, drvPath: string, state: JobState): void {
    const job = this.jobOf.get(drvPath)
    if (job === undefined) return
    const key = this.shared ? o * this.workload.jobs.length + job : job
    const before = this.lastState[key]
    if (before !== undefined && TERMINAL.has(before) && before !== state) {
      throw new SimInvariantError(`${drvPath}${this.shared ? ` of owner ${o}` : ''} went from ${before} to ${state}`)
    }
    this.lastState[key] = state
    if (this.shared && state === 'built') this.builtAt[key] = this.w.now
    if (this.shared) { this.sharedReady(job, before === 'ready', state === 'ready', o); return }
    if (before === 'ready' && state !== 'ready') { this.w.idle.ready(job, -1, this.w.now); this.readyCount(o, -1) }
    else if (before !== 'ready' && state === 'ready') { this.w.idle.ready(job, 1, this.w.now); this.readyCount(o, 1) }
  }

  /**
   * Shared derivations: for the idle measure a derivation is ready work while some owner has it
   * ready and none has started or finished it (a second owner's copy of a job under way, or
   * deferred to it, is no work waiting for a slot).
   */
  private sharedReady (job: number, wasReady: boolean, isReady: boolean, o: number): void {
    if (wasReady !== isReady) this.readyCount(o, isReady ? 1 : -1)
    const n = this.workload.jobs.length
    let ready = false
    let taken = false
    for (let k = 0; k < this.owners; k++) {
      const st = this.lastState[k * n + job]
      if (st === 'ready') ready = true
      else if (st === 'leased' || st === 'importing' || st === 'built') taken = true
    }
    const now = ready && !taken ? 1 : 0
    if (now !== (this.idleReady[job] ?? 0)) {
      this.idleReady[job] = now
      this.w.idle.ready(job, now === 1 ? 1 : -1, this.w.now)
    }
  }

  private readyCount (o: number, delta: number): void {
    this.account()
    this.readyOf[o] = (this.readyOf[o] ?? 0) + delta
  }
}

function runKey (owner: string, drvPath: string): string {
  return `${owner}\n${drvPath}`
}
