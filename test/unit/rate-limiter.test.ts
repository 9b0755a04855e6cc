// The per-peer GCRA limiter with time injected: bursts, the sustained rate, keys apart, memory bound.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { RateLimiter } from '../../node/mesh/rate-limiter.ts'

/** How many of `n` requests at `now` are allowed. */
function takeMany (l: RateLimiter, key: string, n: number, now: number): number {
  let ok = 0
  for (let i = 0; i < n; i++) if (l.take(key, now)) ok++
  return ok
}

describe('RateLimiter', () => {
  it('allows a burst at once, then refuses and counts', () => {
    const l = new RateLimiter({ perSecond: 10, burst: 5 })
    assert.equal(takeMany(l, 'a', 8, 1000), 5)
    assert.equal(l.refused, 3)
    assert.equal(l.refusedFor('a'), 3)
    assert.equal(l.refusedFor('b'), 0)
  })

  it('refills one request per interval', () => {
    const l = new RateLimiter({ perSecond: 10, burst: 5 })
    assert.equal(takeMany(l, 'a', 5, 0), 5)
    assert.equal(l.take('a', 50), false, 'half an interval later')
    assert.equal(l.take('a', 100), true, 'one interval later')
    assert.equal(l.take('a', 100), false)
    assert.equal(takeMany(l, 'a', 10, 10_000), 5, 'full again after a quiet period, but no more than the burst')
  })

  it('holds a steady stream to the sustained rate', () => {
    const l = new RateLimiter({ perSecond: 20, burst: 10 })
    let ok = 0
    // 1000 requests a second for 10 s: 10 of the burst plus 20 a second.
    for (let t = 0; t < 10_000; t++) if (l.take('a', t)) ok++
    assert.ok(ok >= 200 && ok <= 211, `allowed ${ok}`)
  })

  it('keeps peers apart', () => {
    const l = new RateLimiter({ perSecond: 1, burst: 2 })
    assert.equal(takeMany(l, 'a', 5, 0), 2)
    assert.equal(takeMany(l, 'b', 5, 0), 2)
  })

  it('tracks a bounded number of keys', () => {
    const l = new RateLimiter({ perSecond: 1, burst: 1 }, 100)
    for (let i = 0; i < 10_000; i++) l.take(`k${i}`, 0)
    // The newest keys are still limited: their state was kept.
    assert.equal(l.take('k9999', 0), false)
    assert.ok((l as unknown as { tat: Map<string, number> }).tat.size <= 100)
  })

  it('rejects a nonsensical limit', () => {
    assert.throws(() => new RateLimiter({ perSecond: 0, burst: 1 }), RangeError)
    assert.throws(() => new RateLimiter({ perSecond: 1, burst: 0 }), RangeError)
  })
})
