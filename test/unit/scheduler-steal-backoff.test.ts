// The steal back-off, on the pure scheduler: a peer that answers a steal with nothing (or whose
// steal fails) is left alone for stealBackoffMs, and asked again once that has passed; other
// peers are asked meanwhile. Empty replies in a row double the wait (jittered); a grown offer
// ends it only for as many thieves as the growth needs, so a large mesh does not stampede.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { MAX_BACKOFF_DOUBLINGS, Scheduler, SCHEDULER_DEFAULTS, type Decision, type PeerView, type SchedulerConfig, type SchedulerEvent } from '../../node/scheduler/scheduler.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }
const BACKOFF = 5_000

function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: 'self', capabilities: X86, maxJobs: 1, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, stealBackoffMs: BACKOFF, ...over }
}

const peer = (id: string, queued: number): PeerView => ({
  peerId: id, capabilities: X86, maxJobs: 1, running: 1, queued, speedFactor: 1, offers: [{ system: 'x86_64-linux', requiredFeatures: [], count: queued }]
})

const steals = (ds: Decision[]): Decision[] => ds.filter(d => d.type === 'steal')

describe('scheduler steal back-off', () => {
  const nothings: Array<[string, SchedulerEvent]> = [
    ['an empty steal reply', { type: 'steal-reply', from: 'o', items: [] }],
    ['a failed steal', { type: 'steal-failed', from: 'o', error: 'timed out' }]
  ]
  for (const [what, nothing] of nothings) {
    it(`leaves a peer alone for stealBackoffMs after ${what}, then asks it again`, () => {
      const s = new Scheduler(config())
      assert.deepEqual(steals(s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 0)), [{ type: 'steal', from: 'o', want: 1 }])
      const t = 10
      assert.deepEqual(steals(s.handle(nothing, t)), [], 'asked again at once')
      // Every tick and every fresh beacon with the same offer inside the window leaves it alone.
      for (const at of [t + 1, t + BACKOFF / 2, t + BACKOFF - 1]) {
        assert.deepEqual(steals(s.handle({ type: 'tick' }, at)), [], `asked again ${at - t} ms after`)
        assert.deepEqual(steals(s.handle({ type: 'peer-seen', peer: peer('o', 3) }, at)), [], `a beacon ${at - t} ms after made it ask`)
      }
      assert.deepEqual(steals(s.handle({ type: 'tick' }, t + BACKOFF)), [{ type: 'steal', from: 'o', want: 1 }], 'not asked again after the back-off')
    })
  }

  it('asks another peer while the first is backed off, and the first again after', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'disk', low: true }, 0) // hold steals until both peers are known
    s.handle({ type: 'peer-seen', peer: peer('busy', 9) }, 0)
    s.handle({ type: 'peer-seen', peer: peer('idle', 2) }, 0)
    assert.deepEqual(steals(s.handle({ type: 'disk', low: false }, 0)), [{ type: 'steal', from: 'busy', want: 1 }])
    assert.deepEqual(steals(s.handle({ type: 'steal-reply', from: 'busy', items: [] }, 1)), [{ type: 'steal', from: 'idle', want: 1 }])
    assert.deepEqual(steals(s.handle({ type: 'steal-reply', from: 'idle', items: [] }, 2)), [], 'both backed off')
    assert.deepEqual(steals(s.handle({ type: 'tick' }, 1 + BACKOFF)), [{ type: 'steal', from: 'busy', want: 1 }])
  })

  it('ends the back-off when the peer offers something new, and backs off again on the same offer', () => {
    const s = new Scheduler(config())
    assert.deepEqual(steals(s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 0)), [{ type: 'steal', from: 'o', want: 1 }])
    assert.deepEqual(steals(s.handle({ type: 'steal-reply', from: 'o', items: [] }, 10)), [])
    // Long before the back-off ends, the peer's offer changes: it is asked in that same event.
    assert.deepEqual(steals(s.handle({ type: 'peer-seen', peer: peer('o', 5) }, 20)), [{ type: 'steal', from: 'o', want: 1 }], 'a new offer did not end the back-off')
    assert.deepEqual(steals(s.handle({ type: 'steal-reply', from: 'o', items: [] }, 30)), [])
    // Empty again, and the offer stays as it was: left alone for the whole window.
    assert.deepEqual(steals(s.handle({ type: 'peer-seen', peer: peer('o', 5) }, 40)), [], 'the same offer ended the back-off')
    assert.deepEqual(steals(s.handle({ type: 'tick' }, 30 + BACKOFF - 1)), [])
    // The same entries in another order are the same offer.
    const offers = [{ system: 'x86_64-linux', requiredFeatures: [], count: 5 }, { system: 'aarch64-linux', requiredFeatures: [], count: 1 }]
    const s2 = new Scheduler(config())
    s2.handle({ type: 'peer-seen', peer: { ...peer('o', 6), offers } }, 0)
    s2.handle({ type: 'steal-reply', from: 'o', items: [] }, 1)
    assert.deepEqual(steals(s2.handle({ type: 'peer-seen', peer: { ...peer('o', 6), offers: [...offers].reverse() } }, 2)), [], 'a reordered offer ended the back-off')
  })

  it('doubles the wait with each empty reply in a row, jittered, up to its cap, and starts over after a grant', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 0)
    let t = 0
    for (let n = 1; n <= MAX_BACKOFF_DOUBLINGS + 2; n++) {
      assert.deepEqual(steals(s.handle({ type: 'steal-reply', from: 'o', items: [] }, t)), [])
      const base = BACKOFF * 2 ** Math.min(n - 1, MAX_BACKOFF_DOUBLINGS)
      // The first wait is exact; later ones lie within ±25 % of the doubled base.
      const earliest = n === 1 ? base : base * 0.75
      const latest = n === 1 ? base : base * 1.25
      assert.deepEqual(steals(s.handle({ type: 'tick' }, t + earliest - 1)), [], `empty reply ${n}: asked again before ${earliest} ms`)
      let asked = -1
      for (let at = t + earliest; at <= t + latest; at += 50) {
        if (steals(s.handle({ type: 'tick' }, at)).length > 0) { asked = at; break }
      }
      assert.ok(asked >= 0, `empty reply ${n}: not asked again within ${latest} ms`)
      t = asked
    }
    // A grant starts the count over: the next empty reply waits stealBackoffMs again.
    const item = { owner: 'o', drvPath: '/nix/store/x.drv', outputs: { out: '/nix/store/x' }, system: 'x86_64-linux', requiredFeatures: [] }
    s.handle({ type: 'steal-reply', from: 'o', items: [item] }, t + 1)
    s.handle({ type: 'build-finished', owner: 'o', drvPath: item.drvPath, outcome: { ok: true, outputs: {} } }, t + 2)
    s.handle({ type: 'steal-reply', from: 'o', items: [] }, t + 3)
    assert.deepEqual(steals(s.handle({ type: 'tick' }, t + 3 + BACKOFF)), [{ type: 'steal', from: 'o', want: 1 }])
  })

  it('a grown offer ends the back-off of about as many thieves as the growth needs, not of every thief', () => {
    // 200 thieves of one free slot each, all backed off by owner 'o'; the peers announce 1,000
    // free slots in all. The owner's offer grows by one job: about 2 / 1,000 of them should ask.
    const crowd = (growth: number): number => {
      let asking = 0
      for (let k = 0; k < 200; k++) {
        const s = new Scheduler(config({ selfId: `t${k}`, seed: k + 1 }))
        s.handle({ type: 'disk', low: true }, 0)
        s.handle({ type: 'peer-seen', peer: { ...peer('others', 0), maxJobs: 1000, running: 0, offers: [] } }, 0)
        s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 0)
        s.handle({ type: 'disk', low: false }, 0)
        s.handle({ type: 'steal-reply', from: 'o', items: [] }, 1)
        if (steals(s.handle({ type: 'peer-seen', peer: peer('o', 3 + growth) }, 2)).length > 0) asking++
      }
      return asking
    }
    const one = crowd(1)
    assert.ok(one <= 5, `${one} of 200 thieves asked for one new job`)
    assert.equal(crowd(600), 200, 'a growth beyond half of all free slots did not wake every thief')
  })

  it('a thief that just reported a build to the owner asks at the next growth of its offer, whatever the crowd', () => {
    const item = { owner: 'o', drvPath: '/nix/store/x.drv', outputs: { out: '/nix/store/x' }, system: 'x86_64-linux', requiredFeatures: [] }
    const run = (report: boolean): Decision[] => {
      const s = new Scheduler(config())
      s.handle({ type: 'disk', low: true }, 0)
      // Others announce 1,000 free slots: a growth of one job alone would almost never wake it.
      s.handle({ type: 'peer-seen', peer: { ...peer('others', 0), maxJobs: 1000, running: 0, offers: [] } }, 0)
      s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 0)
      s.handle({ type: 'disk', low: false }, 0)
      if (report) {
        s.handle({ type: 'steal-reply', from: 'o', items: [item] }, 1)
        s.handle({ type: 'build-finished', owner: 'o', drvPath: item.drvPath, outcome: { ok: true, outputs: {} } }, 2)
      }
      s.handle({ type: 'steal-reply', from: 'o', items: [] }, 3)
      return steals(s.handle({ type: 'peer-seen', peer: peer('o', 4) }, 4))
    }
    assert.deepEqual(run(true), [{ type: 'steal', from: 'o', want: 1 }])
    assert.deepEqual(run(false), [], 'a thief that built nothing for the owner was woken too')
  })

  it('a thief that just reported asks at the owner\'s next beacon offering work, even one whose offer did not grow', () => {
    // In a chain the dependent becomes ready as another thief takes a job: the count stays the
    // same, yet the reporter holds the dependent's input (it waited up to a back-off before).
    const item = { owner: 'o', drvPath: '/nix/store/x.drv', outputs: { out: '/nix/store/x' }, system: 'x86_64-linux', requiredFeatures: [] }
    const s = new Scheduler(config())
    s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 0)
    s.handle({ type: 'steal-reply', from: 'o', items: [item] }, 1)
    s.handle({ type: 'steal-reply', from: 'o', items: [] }, 2)
    s.handle({ type: 'build-finished', owner: 'o', drvPath: item.drvPath, outcome: { ok: true, outputs: {} } }, 3)
    assert.deepEqual(steals(s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 4)), [{ type: 'steal', from: 'o', want: 1 }])
    // Once per report: the next unchanged beacon leaves the back-off alone again.
    s.handle({ type: 'steal-reply', from: 'o', items: [] }, 5)
    assert.deepEqual(steals(s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 6)), [])
  })

  it('a shrinking offer never ends the back-off', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'peer-seen', peer: peer('o', 5) }, 0)
    s.handle({ type: 'steal-reply', from: 'o', items: [] }, 1)
    assert.deepEqual(steals(s.handle({ type: 'peer-seen', peer: peer('o', 2) }, 2)), [], 'others took jobs, and that made it ask')
    assert.deepEqual(steals(s.handle({ type: 'tick' }, BACKOFF)), [])
    assert.deepEqual(steals(s.handle({ type: 'tick' }, 1 + BACKOFF)), [{ type: 'steal', from: 'o', want: 1 }])
  })

  it('does not back off a peer that granted work', () => {
    const s = new Scheduler(config({ maxJobs: 2 }))
    s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 0)
    const item = { owner: 'o', drvPath: '/nix/store/x.drv', outputs: { out: '/nix/store/x' }, system: 'x86_64-linux', requiredFeatures: [] }
    assert.deepEqual(steals(s.handle({ type: 'steal-reply', from: 'o', items: [item] }, 1)), [{ type: 'steal', from: 'o', want: 1 }], 'the peer that granted work is asked again at once for the slot left')
  })
})
