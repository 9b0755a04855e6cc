// The outputs this node built that the signer has not stored yet. The queue is durable (LevelDB):
// with no signer online, outputs wait here, across restarts, and are offered when one appears.
// Paths the signer refused for good leave the queue; the others are offered again later (a
// reference built elsewhere may not have reached the cache yet).
//
// The set in memory is the queue; LevelDB only makes it survive a restart. Every change goes
// through this class, so the set never has to be re-read from the disk: a re-read raced with
// add() (a path queued during the read was counted out, and the last output a node built then
// waited for its next build to be offered).
import type { SignReply } from '../../protocols/mesh/messages.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { StateDb } from '../state/state-db.ts'
import { buildOffer } from './offer.ts'
import type { NodeKey } from './node-key.ts'
import type { SignOffer } from '../../protocols/mesh/messages.ts'
import type { Logger } from '../log.ts'

/** Sends an offer to the signer (over the network, or to this node's own signer). */
export type OfferSender = (offer: SignOffer) => Promise<SignReply>

export const PATHS_PER_OFFER = 500

export class SignQueue {
  private readonly db: StateDb
  private readonly store: StoreBackend
  private readonly key: NodeKey
  private readonly log: Logger
  private readonly queued = new Set<string>()
  private draining = false
  /** Set by add(): a running drain makes another pass for what came in meanwhile. */
  private added = false

  constructor (db: StateDb, store: StoreBackend, key: NodeKey, log: Logger) {
    this.db = db
    this.store = store
    this.key = key
    this.log = log
  }

  async load (): Promise<void> {
    for (const p of await this.db.signQueue()) this.queued.add(p)
  }

  add (paths: string[]): void {
    const fresh = paths.filter(p => !this.queued.has(p))
    for (const p of fresh) this.queued.add(p)
    this.db.queueForSigner(fresh)
    this.added = true
  }

  pending (): number {
    return this.queued.size
  }

  /**
   * Offers everything queued, in batches; repeats while add() brought more during a pass.
   * A call while a drain runs returns at once: the running one picks up what was added.
   */
  async drain (send: OfferSender): Promise<void> {
    if (this.draining) return
    this.draining = true
    try {
      do {
        this.added = false
        await this.pass(send)
      } while (this.added)
    } finally {
      this.draining = false
    }
  }

  private async pass (send: OfferSender): Promise<void> {
    const queued = [...this.queued]
    for (let i = 0; i < queued.length; i += PATHS_PER_OFFER) {
      const roots = queued.slice(i, i + PATHS_PER_OFFER)
      const valid = await this.store.isValid(roots)
      const gone = roots.filter(r => !valid.has(r))
      if (gone.length > 0) {
        this.log.warn(`${gone.length} queued output(s) are no longer in the store; dropped: ${gone.join(', ')}`)
        this.remove(gone)
      }
      const offer = await buildOffer(this.store, this.key, roots.filter(r => valid.has(r)))
      if (offer.length === 0) continue
      const reply = await send({ paths: offer })
      const done = new Set([...reply.stored, ...reply.rejected.filter(r => r.permanent).map(r => r.path)])
      this.remove(roots.filter(r => done.has(r)))
      for (const r of reply.rejected) {
        if (roots.includes(r.path)) this.log.info(`signer ${r.permanent ? 'refused' : 'deferred'} ${r.path}: ${r.reason}`)
      }
      if (reply.stored.length > 0) this.log.info(`signer stored ${reply.stored.length} path(s) from this node`)
    }
    await this.db.flush()
  }

  private remove (paths: string[]): void {
    for (const p of paths) this.queued.delete(p)
    this.db.dequeueForSigner(paths)
  }
}
