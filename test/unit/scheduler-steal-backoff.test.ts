// The steal back-off, on the pure scheduler: a peer that answers a steal with nothing (or whose
// steal fails) is left alone for stealBackoffMs, and asked again once that has passed; other
// peers are asked meanwhile.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler, SCHEDULER_DEFAULTS, type Decision, type PeerView, type SchedulerConfig, type SchedulerEvent } from '../../node/scheduler/scheduler.ts'
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

  it('does not back off a peer that granted work', () => {
    const s = new Scheduler(config({ maxJobs: 2 }))
    s.handle({ type: 'peer-seen', peer: peer('o', 3) }, 0)
    const item = { owner: 'o', drvPath: '/nix/store/x.drv', outputs: { out: '/nix/store/x' }, system: 'x86_64-linux', requiredFeatures: [] }
    assert.deepEqual(steals(s.handle({ type: 'steal-reply', from: 'o', items: [item] }, 1)), [{ type: 'steal', from: 'o', want: 1 }], 'the peer that granted work is asked again at once for the slot left')
  })
})
