// The peer table: the newest beacon wins whatever order gossip delivers them in, offers count
// only from peers we have a beacon of, and silent peers are forgotten after the expiry.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { PeerTable } from '../../node/mesh/peer-table.ts'
import type { Beacon, Offer } from '../../protocols/mesh/messages.ts'

const EXPIRY = 7_000

function beacon (seq: number, fields: Partial<Beacon> = {}): Beacon {
  return {
    v: 1, seq, systems: ['x86_64-linux'], features: ['kvm'], mandatoryFeatures: [], maxJobs: 2, running: 0, queued: 0,
    speedFactor: 1, load: 0, freeDiskBytes: 1e9, diskLow: false, building: [], addresses: [], ...fields
  }
}

function offer (seq: number, count = 3): Offer {
  return { v: 1, seq, entries: [{ system: 'x86_64-linux', requiredFeatures: [], count }] }
}

describe('PeerTable', () => {
  it('keeps the newest beacon by seq, ignoring older ones delivered late', () => {
    const t = new PeerTable(EXPIRY)
    assert.equal(t.beacon('p', beacon(5, { running: 1 }), 1000), true)
    assert.equal(t.beacon('p', beacon(3, { running: 2 }), 1100), false, 'an older beacon is refused')
    assert.equal(t.get('p')?.beacon.running, 1)
    assert.equal(t.get('p')?.lastSeen, 1000, 'a stale beacon does not count as hearing from the peer')
    assert.equal(t.beacon('p', beacon(6, { running: 2 }), 1200), true)
    assert.equal(t.get('p')?.beacon.seq, 6)
    assert.equal(t.get('p')?.lastSeen, 1200)
  })

  it('accepts a repeated seq (the same beacon forwarded twice refreshes the peer)', () => {
    const t = new PeerTable(EXPIRY)
    t.beacon('p', beacon(5), 1000)
    assert.equal(t.beacon('p', beacon(5), 2000), true)
    assert.equal(t.get('p')?.lastSeen, 2000)
  })

  it('takes any seq from a peer it had forgotten (a restarted node may count from lower)', () => {
    const t = new PeerTable(EXPIRY)
    t.beacon('p', beacon(1000), 0)
    assert.equal(t.beacon('p', beacon(10), EXPIRY + 1), true)
    assert.equal(t.get('p')?.beacon.seq, 10)
  })

  it('keeps peers apart', () => {
    const t = new PeerTable(EXPIRY)
    t.beacon('b', beacon(9), 0)
    t.beacon('a', beacon(1), 0)
    assert.equal(t.beacon('a', beacon(2), 1), true, 'seq is per peer')
    assert.deepEqual(t.list().map(p => p.peerId), ['a', 'b'])
  })

  it('takes offers only from peers whose beacon it has', () => {
    const t = new PeerTable(EXPIRY)
    assert.equal(t.offer('stranger', offer(1), 0), false)
    assert.equal(t.get('stranger'), undefined)
    assert.equal(t.view('stranger'), undefined)
    assert.deepEqual(t.list(), [])
  })

  it('keeps the newest offer by seq and shows it while the peer has queued work', () => {
    const t = new PeerTable(EXPIRY)
    t.beacon('p', beacon(1, { queued: 4 }), 0)
    assert.equal(t.offer('p', offer(10, 4), 100), true)
    assert.equal(t.offer('p', offer(9, 1), 200), false, 'an older offer is refused')
    assert.deepEqual(t.view('p')?.offers, [{ system: 'x86_64-linux', requiredFeatures: [], count: 4 }])
    assert.equal(t.get('p')?.lastSeen, 100)
    // A newer beacon keeps the offer.
    t.beacon('p', beacon(2, { queued: 4 }), 300)
    assert.equal(t.view('p')?.offers[0]?.count, 4)
    // Once the peer says it has nothing queued, its old offer is not acted on.
    t.beacon('p', beacon(3, { queued: 0 }), 400)
    assert.deepEqual(t.view('p')?.offers, [])
  })

  it('shows what the scheduler needs from the beacon', () => {
    const t = new PeerTable(EXPIRY)
    t.beacon('p', beacon(1, { maxJobs: 8, running: 3, queued: 2, speedFactor: 2.5, mandatoryFeatures: ['big'] }), 0)
    assert.deepEqual(t.view('p'), {
      peerId: 'p',
      capabilities: { systems: ['x86_64-linux'], features: ['kvm'], mandatoryFeatures: ['big'] },
      maxJobs: 8, running: 3, queued: 2, speedFactor: 2.5, offers: []
    })
  })

  it('forgets peers silent for longer than the expiry, and only those', () => {
    const t = new PeerTable(EXPIRY)
    t.beacon('old', beacon(1), 0)
    t.beacon('new', beacon(1), 5_000)
    assert.deepEqual(t.expire(EXPIRY), [], 'exactly at the expiry the peer is still kept')
    assert.deepEqual(t.expire(EXPIRY + 1), ['old'])
    assert.deepEqual(t.list().map(p => p.peerId), ['new'])
    assert.equal(t.offer('old', offer(1), EXPIRY + 2), false, 'an expired peer\'s offer is not taken')
    assert.deepEqual(t.expire(EXPIRY + 1), [], 'a peer is reported gone once')
  })

  it('counts an offer as hearing from the peer', () => {
    const t = new PeerTable(EXPIRY)
    t.beacon('p', beacon(1), 0)
    t.offer('p', offer(1), 6_000)
    assert.deepEqual(t.expire(EXPIRY + 1), [])
    assert.deepEqual(t.expire(6_000 + EXPIRY + 1), ['p'])
  })
})
