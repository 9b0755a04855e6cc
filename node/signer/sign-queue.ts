// The outputs this node built that the signer has not stored yet. The queue is durable (LevelDB):
// with no signer online, outputs wait here, across restarts, and are offered when one appears.
// Paths the signer refused for good leave the queue; the others are offered again later (a
// reference built elsewhere may not have reached the cache yet).
import type { SignReply } from '../../protocols/mesh/messages.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { StateDb } from '../state/state-db.ts'
import { buildOffer } from './offer.ts'
import type { NodeKey } from './node-key.ts'
import type { SignOffer } from '../../protocols/mesh/messages.ts'
import type { Logger } from '../log.ts'

/** Sends an offer to the signer (over the network, or to this node's own signer). */
export type OfferSender = (offer: SignOffer) => Promise<SignReply>

const PATHS_PER_OFFER = 500

export class SignQueue {
  private readonly db: StateDb
  private readonly store: StoreBackend
  private readonly key: NodeKey
  private readonly log: Logger
  private draining = false
  private size = 0

  constructor (db: StateDb, store: StoreBackend, key: NodeKey, log: Logger) {
    this.db = db
    this.store = store
    this.key = key
    this.log = log
  }

  async load (): Promise<void> {
    this.size = (await this.db.signQueue()).length
  }

  add (paths: string[]): void {
    this.db.queueForSigner(paths)
    this.size += paths.length
  }

  pending (): number {
    return this.size
  }

  /** One pass over the queue; does nothing while a pass is running. */
  async drain (send: OfferSender): Promise<void> {
    if (this.draining) return
    this.draining = true
    try {
      const queued = await this.db.signQueue()
      this.size = queued.length
      for (let i = 0; i < queued.length; i += PATHS_PER_OFFER) {
        const roots = queued.slice(i, i + PATHS_PER_OFFER)
        const valid = await this.store.isValid(roots)
        const gone = roots.filter(r => !valid.has(r))
        if (gone.length > 0) {
          this.log.warn(`${gone.length} queued output(s) are no longer in the store; dropped: ${gone.join(', ')}`)
          this.db.dequeueForSigner(gone)
        }
        const offer = await buildOffer(this.store, this.key, roots.filter(r => valid.has(r)))
        if (offer.length === 0) continue
        const reply = await send({ paths: offer })
        const done = new Set([...reply.stored, ...reply.rejected.filter(r => r.permanent).map(r => r.path)])
        const finished = roots.filter(r => done.has(r))
        this.db.dequeueForSigner(finished)
        for (const r of reply.rejected) {
          if (roots.includes(r.path)) this.log.info(`signer ${r.permanent ? 'refused' : 'deferred'} ${r.path}: ${r.reason}`)
        }
        if (reply.stored.length > 0) this.log.info(`signer stored ${reply.stored.length} path(s) from this node`)
      }
      await this.db.flush()
      this.size = (await this.db.signQueue()).length
    } finally {
      this.draining = false
    }
  }
}
