// The peers this node has heard from: their last beacon and offer, and when. Silent peers are
// forgotten after PEER_EXPIRY_MS. Time comes in as an argument, so this is testable without clocks.
import type { Beacon, Offer } from '../../protocols/mesh/messages.ts'
import type { PeerView } from '../scheduler/scheduler.ts'

export interface PeerRecord {
  peerId: string
  beacon: Beacon
  offer: Offer | undefined
  lastSeen: number
}

export class PeerTable {
  private readonly peers = new Map<string, PeerRecord>()
  private readonly expiryMs: number

  constructor (expiryMs: number) {
    this.expiryMs = expiryMs
  }

  /** Records a beacon; returns false for one older than what we have (gossip may reorder). */
  beacon (peerId: string, beacon: Beacon, now: number): boolean {
    const known = this.peers.get(peerId)
    if (known !== undefined && beacon.seq < known.beacon.seq && now - known.lastSeen < this.expiryMs) return false
    this.peers.set(peerId, { peerId, beacon, offer: known?.offer, lastSeen: now })
    return true
  }

  /** Records an offer from a peer whose beacon we have; offers alone do not make a peer known. */
  offer (peerId: string, offer: Offer, now: number): boolean {
    const known = this.peers.get(peerId)
    if (known === undefined) return false
    if (known.offer !== undefined && offer.seq < known.offer.seq) return false
    known.offer = offer
    known.lastSeen = now
    return true
  }

  /** Removes and returns the peers silent for longer than the expiry. */
  expire (now: number): string[] {
    const gone: string[] = []
    for (const [id, p] of this.peers) {
      if (now - p.lastSeen > this.expiryMs) {
        this.peers.delete(id)
        gone.push(id)
      }
    }
    return gone
  }

  get (peerId: string): PeerRecord | undefined {
    return this.peers.get(peerId)
  }

  list (): PeerRecord[] {
    return [...this.peers.values()].sort((a, b) => a.peerId.localeCompare(b.peerId))
  }

  /** What the scheduler needs to know of a peer. */
  view (peerId: string): PeerView | undefined {
    const p = this.peers.get(peerId)
    if (p === undefined) return undefined
    const b = p.beacon
    return {
      peerId,
      capabilities: { systems: b.systems, features: b.features, mandatoryFeatures: b.mandatoryFeatures },
      maxJobs: b.maxJobs,
      running: b.running,
      queued: b.queued,
      speedFactor: b.speedFactor,
      ...(b.ownerSlots !== undefined ? { ownerSlots: b.ownerSlots } : {}),
      ...(b.share !== undefined ? { share: b.share } : {}),
      // A peer short of disk still hands out work; its offer stands as long as it has queued jobs.
      offers: b.queued > 0 ? (p.offer?.entries ?? []) : [],
      ...(p.offer?.claims !== undefined ? { claims: p.offer.claims } : {})
    }
  }
}
