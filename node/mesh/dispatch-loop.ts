// The loop around the pure scheduler: events in (gossip, the tick, protocol handlers, effects),
// decisions out to every subscriber, in order.
import { TICK_MS } from '../../protocols/mesh/constants.ts'
import { Scheduler, SCHEDULER_DEFAULTS, type Decision, type SchedulerEvent } from '../scheduler/scheduler.ts'
import type { Logger } from '../log.ts'
import type { MeshNetwork } from './network.ts'
import type { NodeOptions } from './node-options.ts'
import type { PeerTable } from './peer-table.ts'

export type DecisionSubscriber = (decision: Decision) => void

export interface DispatchLoopInit {
  options: Pick<NodeOptions, 'capabilities' | 'maxJobs' | 'speedFactor' | 'leaseMs'>
  network: MeshNetwork
  peers: PeerTable
  log: Logger
  tickMs?: number
}

export class DispatchLoop {
  readonly scheduler: Scheduler
  private readonly init: DispatchLoopInit
  private readonly subscribers: DecisionSubscriber[] = []
  private timer: NodeJS.Timeout | undefined
  private wake: { at: number, timer: NodeJS.Timeout } | undefined

  /** Makes the scheduler of this node (needs the started network's peer id). */
  constructor (init: DispatchLoopInit) {
    this.init = init
    const o = init.options
    const selfId = init.network.peerId
    this.scheduler = new Scheduler({
      selfId,
      capabilities: o.capabilities,
      maxJobs: o.maxJobs,
      speedFactor: o.speedFactor,
      leaseMs: o.leaseMs ?? SCHEDULER_DEFAULTS.leaseMs,
      maxAttempts: SCHEDULER_DEFAULTS.maxAttempts,
      stealBackoffMs: SCHEDULER_DEFAULTS.stealBackoffMs,
      seed: hashSeed(selfId)
    })
  }

  /** Every decision is passed to `subscriber`, after those subscribed before it. */
  subscribe (subscriber: DecisionSubscriber): void {
    this.subscribers.push(subscriber)
  }

  /** Feeds one event to the scheduler and hands its decisions out. */
  dispatch (event: SchedulerEvent): Decision[] {
    const decisions = this.scheduler.handle(event, Date.now())
    for (const d of decisions) for (const s of this.subscribers) s(d)
    this.wakeWhenDue()
    return decisions
  }

  /** A tick at the scheduler's next deadline (a claim hold's end) when it comes before the regular one. */
  private wakeWhenDue (): void {
    const at = this.scheduler.wakeAt()
    if (at === undefined || this.timer === undefined || (this.wake !== undefined && this.wake.at <= at)) return
    if (this.wake !== undefined) clearTimeout(this.wake.timer)
    const timer = setTimeout(() => { this.wake = undefined; this.dispatch({ type: 'tick' }) }, Math.max(0, at - Date.now()))
    timer.unref()
    this.wake = { at, timer }
  }

  /** Turns peers' beacons and offers into scheduler events, and starts the tick. */
  start (): void {
    const { network, peers } = this.init
    network.on('beacon', (from, beacon) => {
      if (peers.beacon(from, beacon, Date.now())) this.peerChanged(from)
    })
    network.on('offer', (from, offer) => {
      if (peers.offer(from, offer, Date.now())) this.peerChanged(from)
    })
    this.timer = setInterval(() => { this.tick() }, this.init.tickMs ?? TICK_MS)
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
    if (this.wake !== undefined) clearTimeout(this.wake.timer)
    this.wake = undefined
  }

  private tick (): void {
    for (const gone of this.init.peers.expire(Date.now())) {
      this.init.log.info(`peer ${gone} went silent`)
      this.dispatch({ type: 'peer-lost', peerId: gone })
    }
    this.dispatch({ type: 'tick' })
  }

  private peerChanged (peerId: string): void {
    const view = this.init.peers.view(peerId)
    if (view !== undefined) this.dispatch({ type: 'peer-seen', peer: view })
  }
}

/** The scheduler's seed from the peer id: each node breaks ties its own way, the same after a restart. */
function hashSeed (s: string): number {
  let h = 2166136261
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619)
  return h >>> 0
}
