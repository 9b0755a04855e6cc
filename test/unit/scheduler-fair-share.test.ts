// Fair shares between owners, on the pure scheduler and the wire: a thief asks the owner with the
// fewest slots per unit of share before the most loaded one; an owner counts the slots building
// its jobs for its beacon; --share and the beacon's new fields are bounded.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler, SCHEDULER_DEFAULTS, type Decision, type PeerView, type SchedulerConfig } from '../../node/scheduler/scheduler.ts'
import { parseShare } from '../../node/scheduler/fair-share.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec } from '../../node/scheduler/job.ts'
import { MAX_SHARE, validateBeacon } from '../../protocols/mesh/messages.ts'
import { PeerTable } from '../../node/mesh/peer-table.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }

function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: 'self', capabilities: X86, maxJobs: 1, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, ...over }
}

const owner = (id: string, queued: number, over: Partial<PeerView> = {}): PeerView => ({
  peerId: id, capabilities: X86, maxJobs: 4, running: 4, queued, speedFactor: 1, offers: [{ system: 'x86_64-linux', requiredFeatures: [], count: queued }], ...over
})

const stealsFrom = (ds: Decision[]): string[] => ds.flatMap(d => d.type === 'steal' ? [d.from] : [])

/** A thief that has seen `peers` and asks for work once they are all known. */
function thiefAfter (peers: PeerView[], over: Partial<SchedulerConfig> = {}): { s: Scheduler, first: string[] } {
  const s = new Scheduler(config(over))
  s.handle({ type: 'disk', low: true }, 0) // hold steals until every peer is known
  for (const p of peers) s.handle({ type: 'peer-seen', peer: p }, 0)
  return { s, first: stealsFrom(s.handle({ type: 'disk', low: false }, 0)) }
}

describe('scheduler victim choice between owners', () => {
  const cases: Array<[string, PeerView[], string]> = [
    ['the owner using fewer slots, though the other has more queued',
      [owner('big', 900, { ownerSlots: 30 }), owner('small', 10, { ownerSlots: 12 })], 'small'],
    ['the owner with fewer slots per unit of share: 20 ÷ 2 below 12 ÷ 1',
      [owner('heavy', 50, { ownerSlots: 20, share: 2 }), owner('light', 50, { ownerSlots: 12, share: 1 })], 'heavy'],
    ['at equal slots per share, the most loaded relative to its speed (the rule before shares)',
      [owner('fast', 40, { ownerSlots: 10, speedFactor: 4 }), owner('slow', 20, { ownerSlots: 10 })], 'slow'],
    ['an owner announcing no slots or share (an older peer) counts as 0 slots, share 1',
      [owner('old', 5), owner('new', 500, { ownerSlots: 1, share: 1 })], 'old'],
    ['not an owner whose offer it cannot build, however few its slots',
      [owner('gpu', 50, { ownerSlots: 0, offers: [{ system: 'x86_64-linux', requiredFeatures: ['cuda'], count: 50 }] }), owner('cpu', 50, { ownerSlots: 40 })], 'cpu']
  ]
  for (const [what, peers, expected] of cases) {
    it(`asks ${what}`, () => {
      assert.deepEqual(thiefAfter(peers).first, [expected])
    })
  }

  it('counts the jobs it was just granted against that owner until its next beacon', () => {
    // Two owners at 10 slots each; granted 2 of A's jobs, the next free slot goes to B.
    const a = owner('A', 50, { ownerSlots: 10 })
    const b = owner('B', 40, { ownerSlots: 10 })
    const { s, first } = thiefAfter([a, b], { maxJobs: 3 })
    assert.deepEqual(first, ['A'], 'ties broken by the larger queue')
    const item = (n: string): { owner: string, drvPath: string, outputs: Record<string, string>, system: string, requiredFeatures: string[] } =>
      ({ owner: 'A', drvPath: `/nix/store/${n}.drv`, outputs: { out: `/nix/store/${n}` }, system: 'x86_64-linux', requiredFeatures: [] })
    assert.deepEqual(stealsFrom(s.handle({ type: 'steal-reply', from: 'A', items: [item('a1'), item('a2')] }, 10)), ['B'])
    // B grants one (B 11, A 12): all three slots build. A's next beacon says what A really
    // holds, 8: when a slot frees, A is asked again.
    s.handle({ type: 'steal-reply', from: 'B', items: [{ ...item('b1'), owner: 'B' }] }, 20)
    s.handle({ type: 'peer-seen', peer: { ...a, ownerSlots: 8 } }, 30)
    assert.deepEqual(stealsFrom(s.handle({ type: 'build-finished', owner: 'A', drvPath: '/nix/store/a1.drv', outcome: { ok: true, outputs: {} } }, 40)), ['A'])
  })
})

describe('scheduler counts the slots building its own jobs', () => {
  const spec = (name: string): JobSpec => ({ drvPath: `/nix/store/${name}.drv`, outputs: { out: `/nix/store/${name}` }, inputJobs: [], system: 'x86_64-linux', requiredFeatures: [] })

  it('here and on peers, while leased', () => {
    const s = new Scheduler(config({ maxJobs: 1 }))
    s.handle({ type: 'submit', submission: { id: 's', requested: [], jobs: [spec('a'), spec('b'), spec('c')], substituted: [], priority: 5, submittedAt: 0 } }, 0)
    assert.equal(s.ownerSlots(), 1, 'one built in its own slot')
    s.handle({ type: 'steal-request', requestId: 'r', from: 'T', capabilities: X86, want: 1 }, 5_000)
    assert.equal(s.ownerSlots(), 2, 'and one granted to a thief')
    s.handle({ type: 'result', from: 'T', drvPath: s.submissionJobs('s').find(j => j.worker === 'T')?.drvPath ?? '', outcome: { ok: true, outputs: {} } }, 6_000)
    assert.equal(s.ownerSlots(), 1, 'a job being imported holds no slot')
  })
})

describe('--share and the beacon fields', () => {
  const refused: Array<[string | number, RegExp]> = [
    ['0', /positive number, not 0/], ['-1', /positive number/], ['NaN', /positive number/], [Number.NaN, /positive number/],
    ['', /positive number/], ['two', /positive number/], ['Infinity', /positive number/], [String(MAX_SHARE * 2), /between/]
  ]
  for (const [text, message] of refused) {
    it(`refuses --share ${typeof text === 'string' ? JSON.stringify(text) : String(text)}`, () => {
      assert.throws(() => parseShare(text), (e: Error) => e.name === 'ShareError' && message.test(e.message))
    })
  }
  for (const [text, value] of [['1', 1], ['2.5', 2.5], [0.5, 0.5]] as const) {
    it(`takes --share ${text}`, () => { assert.equal(parseShare(text), value) })
  }

  const beacon = {
    v: 1, seq: 1, systems: ['x86_64-linux'], features: [], mandatoryFeatures: [], maxJobs: 4, running: 0, queued: 0,
    speedFactor: 1, load: 0, freeDiskBytes: 0, diskLow: false, building: [], addresses: []
  }
  it('a beacon carries ownerSlots and share to the scheduler\'s view; one without them (an older peer) still validates', () => {
    const table = new PeerTable(7_000)
    table.beacon('new', validateBeacon({ ...beacon, ownerSlots: 12, share: 2 }), 0)
    table.beacon('old', validateBeacon(beacon), 0)
    const seen = table.view('new')
    assert.equal(seen?.ownerSlots, 12)
    assert.equal(seen?.share, 2)
    assert.equal(table.view('old')?.ownerSlots, undefined)
    assert.equal(table.view('old')?.share, undefined)
  })
  const bad: Array<[string, Record<string, unknown>, RegExp]> = [
    ['a share of 0', { share: 0 }, /beacon\.share: 0 is outside/],
    ['a share beyond MAX_SHARE', { share: MAX_SHARE + 1 }, /beacon\.share/],
    ['a negative slot count', { ownerSlots: -1 }, /beacon\.ownerSlots/],
    ['a fractional slot count', { ownerSlots: 1.5 }, /beacon\.ownerSlots: not an integer/],
    ['a slot count past its bound', { ownerSlots: 1e9 }, /beacon\.ownerSlots/]
  ]
  for (const [what, fields, message] of bad) {
    it(`refuses a beacon with ${what}`, () => {
      assert.throws(() => validateBeacon({ ...beacon, ...fields }), (e: Error) => e.name === 'SchemaError' && message.test(e.message))
    })
  }
})
