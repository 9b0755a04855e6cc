// What this node tells the mesh about itself: its beacon (capabilities, load, disk, signer) and
// its offer of stealable jobs, published on a timer and shortly after every burst of changes;
// and the disk check that decides whether it takes work at all.
import { statfs } from 'node:fs/promises'
import { loadavg } from 'node:os'
import {
  ANNOUNCE_DELAY_MS, BEACON_INTERVAL_MS, DISK_CHECK_MS, MAX_BEACON_ADDRESSES, MAX_BUILDING_LISTED, TOPIC_BEACON, TOPIC_OFFER
} from '../../protocols/mesh/constants.ts'
import type { Beacon } from '../../protocols/mesh/messages.ts'
import { DEFAULT_SHARE } from '../scheduler/fair-share.ts'
import type { Decision, Scheduler } from '../scheduler/scheduler.ts'
import type { Logger } from '../log.ts'
import type { MeshNetwork } from './network.ts'
import type { NodeOptions } from './node-options.ts'

export interface AnnouncerInit {
  network: MeshNetwork
  scheduler: Pick<Scheduler, 'runningItems' | 'queuedCount' | 'offer' | 'ownerSlots' | 'claims'>
  options: Pick<NodeOptions, 'capabilities' | 'maxJobs' | 'speedFactor' | 'minFreeDiskBytes' | 'share'>
  /** This node's key, as its beacon announces it. */
  signingKey: string
  /** The signer fields of the beacon, when this node is the signer. */
  selfSigner: () => Beacon['signer']
  /** Called after every disk check with whether the store is short of space. */
  onDisk: (low: boolean) => void
  log: Logger
}

export class Announcer {
  private readonly init: AnnouncerInit
  private timers: NodeJS.Timeout[] = []
  // Sequence numbers start from the clock so that a restarted node's messages are newer than
  // the ones its peers remember from before.
  private beaconSeq = Date.now()
  private offerSeq = Date.now()
  private lastOfferEmpty = true
  private beaconDue = false
  private freeDiskBytes = 0
  private diskLowNow = false
  private stopping = false

  constructor (init: AnnouncerInit) {
    this.init = init
  }

  get diskLow (): boolean {
    return this.diskLowNow
  }

  start (): void {
    this.init.network.on('peer-connected', () => { this.announceSoon() })
    this.timers.push(setInterval(() => { void this.publish() }, BEACON_INTERVAL_MS))
    this.timers.push(setInterval(() => { void this.checkDisk().then(() => { this.init.onDisk(this.diskLowNow) }) }, DISK_CHECK_MS))
    void this.publish()
  }

  stop (): void {
    this.stopping = true
    for (const t of this.timers) clearInterval(t)
  }

  /** A decision subscriber: a change of work is announced soon. */
  readonly onDecision = (d: Decision): void => {
    if (d.type === 'build' || d.type === 'job-changed' || d.type === 'submission-finished') this.announceSoon()
  }

  /** Publishes beacon and offer shortly after a change, once per burst of changes. */
  announceSoon (): void {
    if (this.beaconDue) return
    this.beaconDue = true
    setTimeout(() => { if (this.beaconDue) void this.publish() }, ANNOUNCE_DELAY_MS).unref()
  }

  beacon (): Beacon {
    const { options: { capabilities: caps }, scheduler } = this.init
    const running = scheduler.runningItems()
    const signer = this.init.selfSigner()
    return {
      v: 1,
      seq: this.beaconSeq,
      systems: [...caps.systems],
      features: [...caps.features],
      mandatoryFeatures: [...caps.mandatoryFeatures],
      maxJobs: this.init.options.maxJobs,
      running: running.length,
      queued: scheduler.queuedCount(),
      speedFactor: this.init.options.speedFactor,
      load: Math.round((loadavg()[0] ?? 0) * 100) / 100,
      freeDiskBytes: this.freeDiskBytes,
      diskLow: this.diskLowNow,
      building: running.map(i => i.drvPath).slice(0, MAX_BUILDING_LISTED),
      ownerSlots: scheduler.ownerSlots(),
      share: this.init.options.share ?? DEFAULT_SHARE,
      addresses: this.init.network.addresses().slice(0, MAX_BEACON_ADDRESSES),
      signingKey: this.init.signingKey,
      ...(signer !== undefined ? { signer } : {})
    }
  }

  async checkDisk (): Promise<void> {
    try {
      const s = await statfs('/nix/store')
      this.freeDiskBytes = s.bavail * s.bsize
      const low = this.freeDiskBytes < this.init.options.minFreeDiskBytes
      if (low !== this.diskLowNow) this.init.log.warn(low ? `only ${this.freeDiskBytes} bytes free in /nix/store: taking no work` : 'enough disk again: taking work')
      this.diskLowNow = low
    } catch {
      this.freeDiskBytes = 0
    }
  }

  private async publish (): Promise<void> {
    if (this.stopping) return
    this.beaconDue = false
    this.beaconSeq++
    await this.init.network.publish(TOPIC_BEACON, this.beacon())
    const entries = this.init.scheduler.offer()
    const claims = this.init.scheduler.claims()
    const empty = entries.length === 0 && claims.open.length === 0 && claims.started.length === 0
    if (!empty || !this.lastOfferEmpty) {
      this.offerSeq++
      await this.init.network.publish(TOPIC_OFFER, { v: 1, seq: this.offerSeq, entries, ...(empty ? {} : { claims }) })
    }
    this.lastOfferEmpty = empty
  }
}
