// What a run counts: messages, steals, bytes, idle slot time while work was ready; and the
// hash of its event trace, which two runs of the same seed must share.
import { canBuild, requirementsKey, type MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { SimNodeSpec } from './cluster.ts'
import type { SimJob } from './workloads.ts'

export interface Counters {
  /** Every message a node sends: requests, replies, NAR streams, each gossip publish once. */
  messages: number
  gossipPublishes: number
  /** Gossip messages handed to a receiving node (a publish reaches every peer). */
  gossipDeliveries: number
  /** Requests for work: steal requests (meshbuild), polls (central pull); the hook asks none. */
  steals: number
  emptySteals: number
  jobsGranted: number
  bytesMoved: number
  buildsAborted: number
  /** Scheduler.handle() calls (meshbuild), to relate wall time to work. */
  handleCalls: number
  events: number
  /** Decisions the simulator does not act on, by type: new ones are counted, not fatal. */
  unknownDecisions: Record<string, number>
  /** Decisions with no effect in a simulation (sign, discard), by type. */
  ignoredDecisions: Record<string, number>
}

export function newCounters (): Counters {
  return {
    messages: 0, gossipPublishes: 0, gossipDeliveries: 0, steals: 0, emptySteals: 0, jobsGranted: 0, bytesMoved: 0,
    buildsAborted: 0, handleCalls: 0, events: 0, unknownDecisions: {}, ignoredDecisions: {}
  }
}

export function bump (record: Record<string, number>, key: string): void {
  record[key] = (record[key] ?? 0) + 1
}

/**
 * Slot time that stood idle while a job was ready that the slot's machine could build: the
 * integral over time of Σ machine classes (idle slots × [some ready job they can build]).
 * Machines are grouped by capabilities and jobs by requirements, so each change costs a few
 * operations whatever the mesh size.
 */
export class IdleIntegrator {
  private readonly classOf: Int32Array
  private readonly slotsOf: Int32Array
  private readonly busy: Int32Array
  private readonly alive: Uint8Array
  private readonly keyOf: Int32Array
  /** For each requirement key, the classes that can build it. */
  private readonly buildersOfKey: number[][]
  private readonly idleByClass: Float64Array
  private readonly readyByClass: Float64Array
  private readonly readyByKey: Float64Array
  private last = 0
  private rate = 0
  private total = 0

  constructor (jobs: readonly SimJob[], nodes: readonly SimNodeSpec[]) {
    const classes = new Map<string, number>()
    const caps: MachineCapabilities[] = []
    this.classOf = new Int32Array(nodes.length)
    this.slotsOf = new Int32Array(nodes.length)
    this.busy = new Int32Array(nodes.length)
    this.alive = new Uint8Array(nodes.length).fill(1)
    for (const n of nodes) {
      const k = JSON.stringify(n.capabilities)
      let c = classes.get(k)
      if (c === undefined) { c = classes.size; classes.set(k, c); caps.push(n.capabilities) }
      this.classOf[n.index] = c
      this.slotsOf[n.index] = n.slots
    }
    const keys = new Map<string, number>()
    this.keyOf = new Int32Array(jobs.length)
    this.buildersOfKey = []
    for (const j of jobs) {
      const k = requirementsKey(j)
      let ki = keys.get(k)
      if (ki === undefined) {
        ki = keys.size
        keys.set(k, ki)
        this.buildersOfKey.push(caps.flatMap((c, ci) => canBuild(c, j) ? [ci] : []))
      }
      this.keyOf[j.index] = ki
    }
    this.idleByClass = new Float64Array(caps.length)
    this.readyByClass = new Float64Array(caps.length)
    this.readyByKey = new Float64Array(keys.size)
    for (const n of nodes) this.addIdle(n.index, n.slots)
  }

  /** Slot-seconds idle while buildable work was ready, up to `now`. */
  idleSlotSeconds (now: number): number {
    this.advance(now)
    return this.total / 1000
  }

  setBusy (node: number, busy: number, now: number): void {
    const before = this.busy[node] as number
    if (before === busy) return
    this.advance(now)
    this.busy[node] = busy
    if (this.alive[node] === 1) {
      const slots = this.slotsOf[node] as number
      this.addIdle(node, Math.max(0, slots - busy) - Math.max(0, slots - before))
      this.recompute()
    }
  }

  kill (node: number, now: number): void {
    if (this.alive[node] !== 1) return
    this.advance(now)
    this.alive[node] = 0
    const slots = this.slotsOf[node] as number
    this.addIdle(node, -Math.max(0, slots - (this.busy[node] as number)))
    this.recompute()
  }

  private addIdle (node: number, delta: number): void {
    const c = this.classOf[node] as number
    this.idleByClass[c] = (this.idleByClass[c] as number) + delta
  }

  /** A job became ready (+1) or stopped being ready (-1). */
  ready (job: number, delta: 1 | -1, now: number): void {
    this.advance(now)
    const k = this.keyOf[job] as number
    this.readyByKey[k] = (this.readyByKey[k] as number) + delta
    for (const c of this.buildersOfKey[k] ?? []) this.readyByClass[c] = (this.readyByClass[c] as number) + delta
    this.recompute()
  }

  private advance (now: number): void {
    if (now > this.last) {
      this.total += this.rate * (now - this.last)
      this.last = now
    }
  }

  private recompute (): void {
    let r = 0
    for (let c = 0; c < this.idleByClass.length; c++) if ((this.readyByClass[c] as number) > 0) r += this.idleByClass[c] as number
    this.rate = r
  }
}

/** A 64-bit FNV-style hash over the numbers of each processed event: cheap enough for every event. */
export class TraceHash {
  private a = 0x811c9dc5
  private b = 0x01000193

  add (time: number, kind: number, node: number, detail: number): void {
    const us = Math.round(time * 1000)
    this.mix(us % 4294967296)
    this.mix(Math.floor(us / 4294967296))
    this.mix(kind)
    this.mix(node)
    this.mix(detail)
  }

  hex (): string {
    return (this.a >>> 0).toString(16).padStart(8, '0') + (this.b >>> 0).toString(16).padStart(8, '0')
  }

  private mix (x: number): void {
    this.a = Math.imul(this.a ^ (x | 0), 0x01000193)
    this.b = Math.imul(this.b ^ ((x | 0) + 0x9e3779b9), 0x85ebca6b) ^ (this.a >>> 13)
  }
}
