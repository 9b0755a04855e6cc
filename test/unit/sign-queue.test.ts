// The signer's queue on a real LevelDB: an output queued while a drain runs is offered by that
// drain (not left for the next build to wake it), and the count of what waits never drops a path.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import { SignQueue } from '../../node/signer/sign-queue.ts'
import { StateDb } from '../../node/state/state-db.ts'
import { Hash } from '../../protocols/nix/hash.ts'
import { generateKeyPair } from '../../protocols/nix/signing-key.ts'
import type { PathInfo, StoreBackend } from '../../node/nix/store-backend.ts'
import type { SignOffer, SignReply } from '../../protocols/mesh/messages.ts'
import { createLogger } from '../../node/log.ts'

const path = (name: string): string => `/nix/store/${'a'.repeat(32)}-${name}`
const A = path('a')
const B = path('b')

/** Just what buildOffer reads: every path valid, no references. */
function fakeStore (): StoreBackend {
  const info = (p: string): PathInfo => ({ path: p, narHash: Hash.of('sha256', p), narSize: 8, references: [], signatures: [] })
  const store: Partial<StoreBackend> = {
    isValid: async (paths) => new Set(paths),
    closure: async (paths) => [...paths],
    queryPathInfos: async (paths) => new Map(paths.map(p => [p, info(p)]))
  }
  return store as StoreBackend
}

/** Calls `hook` once, at the first signQueue() read after it is armed. */
class HookedDb extends StateDb {
  hook: (() => void) | undefined
  fire (): void {
    const h = this.hook
    this.hook = undefined
    h?.()
  }

  override async signQueue (): Promise<string[]> {
    const r = await super.signQueue()
    this.fire()
    return r
  }
}

async function withQueue (fn: (q: SignQueue, db: HookedDb) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'mb-signq-'))
  const db = new HookedDb(join(dir, 'state'))
  await db.open()
  try {
    const pair = generateKeyPair('test-1')
    const q = new SignQueue(db, fakeStore(), { secret: pair.secretKey, public: pair.publicKey }, createLogger('test', 'error'))
    await q.load()
    await fn(q, db)
  } finally {
    await db.close()
    await rm(dir, { recursive: true, force: true })
  }
}

/** A signer that stores everything; records what it was offered. */
function recordingSigner (offered: string[], during?: () => Promise<void>): (offer: SignOffer) => Promise<SignReply> {
  return async (offer) => {
    offered.push(...offer.paths.map(p => p.path))
    await during?.()
    return { stored: offer.paths.map(p => p.path), rejected: [] }
  }
}

describe('sign queue', () => {
  it('offers a path added while the signer call is in flight in the same drain', async () => {
    await withQueue(async (q, db) => {
      q.add([A])
      const offered: string[] = []
      let first = true
      await q.drain(recordingSigner(offered, async () => {
        if (!first) return
        first = false
        q.add([B])
        // A second drain called meanwhile (the 3 s timer) returns at once; the running one goes on.
        await q.drain(async () => { throw new Error('a second drain ran concurrently') })
      }))
      assert.deepEqual(offered, [A, B])
      assert.equal(q.pending(), 0)
      assert.deepEqual(await db.signQueue(), [])
    })
  })

  it('never counts out a path added while the queue is read back', async () => {
    await withQueue(async (q, db) => {
      q.add([A])
      const offered: string[] = []
      // Before the fix, drain re-read the queue from LevelDB after the signer's reply and
      // overwrote the count with it: a path added during that read was in the database but
      // pending() said 0, so nothing offered it until the next build. The add comes at that
      // read where there is one, else right after the drain.
      await q.drain(recordingSigner(offered, async () => { db.hook = () => { q.add([B]) } }))
      db.fire()
      const onDisk = await db.signQueue()
      assert.deepEqual(onDisk, [B])
      assert.equal(q.pending(), 1, `pending() says ${q.pending()}, the database holds ${onDisk.join(', ')}`)
      await q.drain(recordingSigner(offered))
      assert.deepEqual(offered, [A, B])
      assert.equal(q.pending(), 0)
    })
  })

  it('keeps what the signer did not store, across a restart', async () => {
    await withQueue(async (q, db) => {
      q.add([A, B])
      await q.drain(async (offer) => ({ stored: [A], rejected: offer.paths.filter(p => p.path === B).map(p => ({ path: p.path, reason: 'reference not cached yet', permanent: false })) }))
      assert.equal(q.pending(), 1)
      const pair = generateKeyPair('test-2')
      const again = new SignQueue(db, fakeStore(), { secret: pair.secretKey, public: pair.publicKey }, createLogger('test', 'error'))
      await again.load()
      assert.equal(again.pending(), 1)
      const offered: string[] = []
      await again.drain(recordingSigner(offered))
      assert.deepEqual(offered, [B])
    })
  })
})
