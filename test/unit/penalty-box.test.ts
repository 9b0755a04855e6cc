// The penalty box with time injected: bad data boxes at once, malformed messages after strikes,
// penalties end, repeat offenders stay out longer, memory is bounded.
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { PenaltyBox, type PenaltyBoxOptions } from '../../node/mesh/penalty-box.ts'

const OPTS: PenaltyBoxOptions = { durationMs: 60_000, maxDurationMs: 240_000, strikes: 3, strikeWindowMs: 10_000, forgetAfterMs: 600_000, maxPeers: 100 }

describe('PenaltyBox', () => {
  it('boxes a peer that served bad data at once, until the penalty ends', () => {
    const box = new PenaltyBox(OPTS)
    const p = box.offence('evil', 'bad-data', 'NAR hash mismatch', 1000)
    assert.deepEqual(p, { peer: 'evil', reason: 'NAR hash mismatch', since: 1000, until: 61_000, count: 1 })
    assert.equal(box.isBoxed('evil', 60_999), true)
    assert.equal(box.isBoxed('evil', 61_000), false)
    assert.equal(box.isBoxed('honest', 2000), false)
    assert.deepEqual(box.active(2000).map(x => x.peer), ['evil'])
    assert.deepEqual(box.active(61_000), [])
  })

  it('boxes for malformed messages only after enough strikes within the window', () => {
    const box = new PenaltyBox(OPTS)
    assert.equal(box.offence('p', 'invalid-message', 'bad steal', 0), undefined)
    assert.equal(box.offence('p', 'invalid-message', 'bad steal', 1000), undefined)
    assert.equal(box.isBoxed('p', 1000), false)
    const p = box.offence('p', 'invalid-message', 'bad steal', 2000)
    assert.equal(p?.until, 62_000)
    assert.equal(box.isBoxed('p', 2000), true)
  })

  it('lets strikes outside the window lapse', () => {
    const box = new PenaltyBox(OPTS)
    for (let t = 0; t < 100_000; t += 6000) assert.equal(box.offence('p', 'invalid-message', 'x', t), undefined, `at ${t}`)
    assert.equal(box.isBoxed('p', 100_000), false)
  })

  it('doubles the penalty of a repeat offender, up to the maximum', () => {
    const box = new PenaltyBox(OPTS)
    let now = 0
    const durations: number[] = []
    for (let i = 0; i < 5; i++) {
      const p = box.offence('p', 'bad-data', 'x', now) ?? assert.fail()
      durations.push(p.until - p.since)
      now = p.until + 1000
    }
    assert.deepEqual(durations, [60_000, 120_000, 240_000, 240_000, 240_000])
    const later = now + OPTS.forgetAfterMs + 1
    const fresh = box.offence('p', 'bad-data', 'x', later) ?? assert.fail()
    assert.equal(fresh.until - fresh.since, 60_000, 'forgotten after a long good behaviour')
  })

  it('never shortens a penalty in force', () => {
    const box = new PenaltyBox({ ...OPTS, maxDurationMs: 60_000 })
    box.offence('p', 'bad-data', 'x', 0)
    const again = box.offence('p', 'bad-data', 'y', 30_000) ?? assert.fail()
    assert.equal(again.until, 90_000)
    assert.equal(again.reason, 'y')
  })

  it('tracks a bounded number of peers', () => {
    const box = new PenaltyBox(OPTS)
    for (let i = 0; i < 5000; i++) {
      box.offence(`bad${i}`, 'bad-data', 'x', 0)
      box.offence(`odd${i}`, 'invalid-message', 'x', 0)
    }
    assert.equal(box.active(1).length, 100)
    assert.equal(box.isBoxed('bad4999', 1), true)
    assert.ok((box as unknown as { strikes: Map<string, number[]> }).strikes.size <= 100)
  })
})
