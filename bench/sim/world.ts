// The simulated world every policy runs in: simulated time and its agenda, the machines (alive or
// dead, their stores), the network (latency, each node's uplink as a FIFO queue of NAR bytes),
// and what is measured. Policies schedule events here and never read a clock.
import { seededRandom } from '../../node/scheduler/random.ts'
import { CALIBRATIONS, type Calibration, type CalibrationName } from './calibration.ts'
import type { SimNodeSpec } from './cluster.ts'
import { EventQueue } from './event-queue.ts'
import { BuildTracker, SimInvariantError } from './invariants.ts'
import { IdleIntegrator, newCounters, TraceHash, type Counters } from './metrics.ts'
import type { SimJob } from './workloads.ts'

/** Event kinds, for the trace hash. */
export const KIND = {
  tick: 2,
  beacon: 3,
  announce: 4,
  gossip: 5,
  stealArrive: 6,
  stealReply: 7,
  stealFailed: 8,
  fetchDone: 9,
  buildDone: 10,
  importDone: 11,
  renewArrive: 12,
  renewReply: 13,
  reportArrive: 14,
  death: 15,
  peerLost: 16,
  submit: 17,
  hookPass: 18,
  hookAccepted: 19,
  copyBackDone: 20,
  requeue: 21,
  poll: 22,
  pollArrive: 23,
  pollReply: 24,
  uploadDone: 25,
  hookPoll: 26,
  flowStart: 27,
  flowEnd: 28
} as const

interface SimEvent {
  kind: number
  node: number
  detail: number
  run: () => void
}

/**
 * A node's uplink, shared equally by the NAR streams it sends (processor sharing, as TCP flows
 * share a link): with n streams each gets rate ÷ n. `served` is the bytes every active stream has
 * received so far; a stream ends when `served` reaches its tag (served at its start + its size),
 * so streams end in the order of their tags and only the next end needs an event.
 */
interface Uplink {
  served: number
  lastAt: number
  flows: EventQueue<() => void>
  generation: number
  busyMs: number
}

/** A node's death at a chosen time (its scheduler stops answering, its builds vanish). */
export interface Failure {
  node: number
  atMs: number
}

export class World {
  now = 0
  readonly jobs: readonly SimJob[]
  readonly nodes: readonly SimNodeSpec[]
  readonly alive: Uint8Array
  /** Which jobs' outputs each node's store holds. */
  readonly stores: Array<Set<number>>
  readonly counters: Counters = newCounters()
  readonly trace = new TraceHash()
  readonly tracker: BuildTracker
  readonly idle: IdleIntegrator
  readonly random: () => number
  readonly cal: Calibration
  failuresHappened = false
  private readonly queue = new EventQueue<SimEvent>()
  private readonly uplinks: Uplink[]
  private readonly jitter: () => number
  private readonly onDeath: Array<(node: number) => void> = []

  /** `owners`: owners each holding a job of the same derivations (their builds are tracked apart). */
  constructor (jobs: readonly SimJob[], nodes: readonly SimNodeSpec[], seed: number, allowedAtOnce: (job: number) => number, calibration: CalibrationName | Calibration = 'daemon', owners = 1) {
    this.cal = typeof calibration === 'string' ? CALIBRATIONS[calibration] : calibration
    this.jobs = jobs
    this.nodes = nodes
    this.alive = new Uint8Array(nodes.length).fill(1)
    this.stores = nodes.map(() => new Set<number>())
    this.tracker = new BuildTracker(jobs, allowedAtOnce, owners)
    this.idle = new IdleIntegrator(jobs, nodes)
    this.random = seededRandom((seed ^ 0x68e31da4) >>> 0)
    this.jitter = seededRandom((seed ^ 0x1b873593) >>> 0)
    this.uplinks = nodes.map(() => ({ served: 0, lastAt: 0, flows: new EventQueue<() => void>(), generation: 0, busyMs: 0 }))
  }

  /** Runs `run` at `time` (never before now); `kind`, `node` and `detail` go into the trace. */
  at (time: number, kind: number, node: number, detail: number, run: () => void): void {
    this.queue.push(Math.max(time, this.now), { kind, node, detail, run })
  }

  /** Processes events until `done()` or the agenda empties; throws past `limitMs`. */
  run (done: () => boolean, limitMs: number): void {
    while (!done()) {
      const time = this.queue.peekTime()
      if (time === undefined) throw new SimInvariantError(`at ${(this.now / 1000).toFixed(3)} s nothing is left to happen, yet the run has not finished: jobs are stuck`)
      if (time > limitMs) throw new SimInvariantError(`the run passed its limit of ${(limitMs / 1000).toFixed(0)} s of simulated time without finishing`)
      const e = this.queue.pop() as SimEvent
      this.now = time
      this.counters.events++
      this.trace.add(time, e.kind, e.node, e.detail)
      e.run()
    }
  }

  whenNodeDies (f: (node: number) => void): void {
    this.onDeath.push(f)
  }

  /** Schedules the deaths; node 0 (the submitter) is never among them. */
  scheduleFailures (failures: readonly Failure[]): void {
    for (const f of failures) {
      if (f.node <= 0 || f.node >= this.nodes.length) throw new SimInvariantError(`node ${f.node} cannot be failed: only nodes 1..${this.nodes.length - 1} (node 0 is the submitter)`)
      this.at(f.atMs, KIND.death, f.node, 0, () => { this.kill(f.node) })
    }
  }

  kill (node: number): void {
    if (this.alive[node] !== 1) return
    this.alive[node] = 0
    this.failuresHappened = true
    this.idle.kill(node, this.now)
    for (const f of this.onDeath) f(node)
  }

  isAlive (node: number): boolean {
    return this.alive[node] === 1
  }

  /** One message's way from one node to another: the LAN's latency, jittered ±50 %. */
  oneWay (): number {
    return this.cal.oneWayMs * (0.5 + this.jitter())
  }

  /** A request and its reply, the answering node's work included. */
  roundTrip (): number {
    return this.oneWay() + this.cal.requestServiceMs + this.oneWay()
  }

  /**
   * Sends `bytes` of NAR from `src` to `dst`, starting at `earliest` (plus the first byte's
   * latency), and calls `then` when the last byte has arrived. The sender's uplink is shared by
   * all its streams at once; a node's own store costs nothing to reach.
   */
  transfer (src: number, dst: number, bytes: number, earliest: number, then: () => void): void {
    if (src === dst || bytes <= 0) {
      this.at(earliest, KIND.flowEnd, src, dst, then)
      return
    }
    this.counters.bytesMoved += bytes
    this.at(earliest + this.oneWay(), KIND.flowStart, src, dst, () => {
      const u = this.uplinks[src] as Uplink
      this.advanceUplink(u)
      u.flows.push(u.served + bytes, then)
      this.rescheduleUplink(u, src)
    })
  }

  /** transfer(), then the receiving store imports `paths` paths; `then` runs once they are in. */
  send (src: number, dst: number, bytes: number, paths: number, earliest: number, kind: number, detail: number, then: () => void): void {
    this.transfer(src, dst, bytes, earliest, () => { this.at(this.now + this.importMs(paths, bytes), kind, dst, detail, then) })
  }

  /** Milliseconds during which `node`'s uplink carried at least one stream. */
  uplinkBusyMs (node: number): number {
    const u = this.uplinks[node]
    if (u === undefined) return 0
    this.advanceUplink(u)
    return u.busyMs
  }

  private advanceUplink (u: Uplink): void {
    const dt = this.now - u.lastAt
    if (dt > 0 && u.flows.size > 0) {
      u.served += dt * this.cal.narBytesPerMs / u.flows.size
      u.busyMs += dt
    }
    u.lastAt = this.now
  }

  private rescheduleUplink (u: Uplink, node: number): void {
    const generation = ++u.generation
    const next = u.flows.peekTime()
    if (next === undefined) return
    const end = this.now + Math.max(0, next - u.served) * u.flows.size / this.cal.narBytesPerMs
    this.at(end, KIND.flowEnd, node, u.flows.size, () => {
      if (generation !== u.generation) return
      this.advanceUplink(u)
      const finished: Array<() => void> = []
      // Tags within a byte of what is served count as served: floating-point slack.
      for (let top = u.flows.peekTime(); top !== undefined && top <= u.served + 1; top = u.flows.peekTime()) {
        finished.push(u.flows.pop() as () => void)
      }
      this.rescheduleUplink(u, node)
      for (const f of finished) f()
    })
  }

  /** The receiving store's cost of importing `paths` paths of `bytes` in all. */
  importMs (paths: number, bytes: number): number {
    return paths * this.cal.importPerPathMs + bytes / this.cal.importBytesPerMs
  }

  /** Build time of `job` on `node`: the start-up cost, then the work at the node's speed. */
  buildMs (job: number, node: number): number {
    return this.cal.buildStartupMs + (this.jobs[job] as SimJob).workMs / (this.nodes[node] as SimNodeSpec).speedFactor
  }
}

/**
 * `rate` × (nodes other than the submitters, nodes 0 … owners − 1) nodes, chosen by `seed`, each
 * dying at a time drawn uniformly in [from, from + withinMs).
 */
export function randomFailures (nodes: number, rate: number, from: number, withinMs: number, seed: number, owners = 1): Failure[] {
  if (!(rate >= 0 && rate <= 1)) throw new SimInvariantError(`--fail-rate is a share of the nodes, 0..1, not ${rate}`)
  const random = seededRandom((seed ^ 0x7f4a7c15) >>> 0)
  const candidates = Array.from({ length: Math.max(0, nodes - owners) }, (_, i) => i + owners)
  for (let i = candidates.length - 1; i > 0; i--) {
    const k = Math.floor(random() * (i + 1))
    const t = candidates[i] as number
    candidates[i] = candidates[k] as number
    candidates[k] = t
  }
  const count = Math.round(rate * candidates.length)
  return candidates.slice(0, count).map(node => ({ node, atMs: from + random() * withinMs })).sort((a, b) => a.atMs - b.atMs || a.node - b.node)
}
