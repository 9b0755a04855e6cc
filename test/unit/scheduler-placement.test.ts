// Where the pure scheduler puts ready work: the most urgent jobs in the fastest free slots (an
// owner or thief slower than a peer announcing free slots leaves a job just made ready to that
// peer for FASTER_HOLD_MS), and the longest remaining path before inputs the thief holds.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { FASTER_HOLD_MS, Scheduler, SCHEDULER_DEFAULTS, type Decision, type PeerView, type SchedulerConfig } from '../../node/scheduler/scheduler.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec, SubmissionSpec } from '../../node/scheduler/job.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }
const ARM: MachineCapabilities = { systems: ['aarch64-linux'], features: [], mandatoryFeatures: [] }

// The owner's id sorts before its peers': no claim hold (CLAIM_HOLD_MS, scheduler-claims.test.ts)
// comes between a submission and its first grants here.
function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: '0-self', capabilities: X86, maxJobs: 1, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, ...over }
}

function spec (name: string, inputs: string[] = []): JobSpec {
  return { drvPath: `/nix/store/${name}.drv`, outputs: { out: `/nix/store/${name}` }, inputJobs: inputs.map(i => `/nix/store/${i}.drv`), system: 'x86_64-linux', requiredFeatures: [] }
}

function submission (jobs: JobSpec[]): SubmissionSpec {
  return { id: 's1', requested: jobs.map(j => j.drvPath), jobs, substituted: [], priority: 5, submittedAt: 0 }
}

/** A peer with free slots and nothing to offer. */
const idlePeer = (id: string, speedFactor: number, maxJobs: number, over: Partial<PeerView> = {}): PeerView => ({
  peerId: id, capabilities: X86, maxJobs, running: 0, queued: 0, speedFactor, offers: [], ...over
})

const builds = (ds: Decision[]): string[] => ds.flatMap(d => d.type === 'build' ? [d.item.drvPath] : [])
const granted = (ds: Decision[]): string[] => ds.flatMap(d => d.type === 'grant' ? d.items.map(i => i.drvPath) : [])
const ok = { ok: true as const, outputs: {} }

describe('scheduler placement by speed', () => {
  it('an owner slower than a free peer leaves a new job to that peer, and builds it itself once the hold is over', () => {
    const s = new Scheduler(config({ speedFactor: 1, maxJobs: 1 }))
    s.handle({ type: 'peer-seen', peer: idlePeer('fast', 4, 1) }, 0)
    assert.deepEqual(builds(s.handle({ type: 'submit', submission: submission([spec('a')]) }, 10)), [], 'the slow owner started the job a fast peer could take')
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 10 + FASTER_HOLD_MS - 1)), [])
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 10 + FASTER_HOLD_MS)), ['/nix/store/a.drv'], 'the job waited past the hold')
  })

  it('an owner slower than a free peer gives the new job to that peer when it asks', () => {
    const s = new Scheduler(config({ speedFactor: 1, maxJobs: 1 }))
    s.handle({ type: 'peer-seen', peer: idlePeer('fast', 4, 1) }, 0)
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 10)
    assert.deepEqual(granted(s.handle({ type: 'steal-request', requestId: 'r', from: 'fast', capabilities: X86, want: 1 }, 20)), ['/nix/store/a.drv'])
  })

  it('builds at once when no faster peer has a free slot that could build the job', () => {
    for (const peer of [idlePeer('slow', 1, 4), idlePeer('busy', 4, 2, { running: 2 }), idlePeer('arm', 4, 2, { capabilities: ARM })]) {
      const s = new Scheduler(config({ speedFactor: 2, maxJobs: 1 }))
      s.handle({ type: 'peer-seen', peer }, 0)
      assert.deepEqual(builds(s.handle({ type: 'submit', submission: submission([spec('a')]) }, 10)), ['/nix/store/a.drv'], `waited for ${peer.peerId}`)
    }
  })

  it('grants a slow thief the jobs beyond those the faster free slots will take, most urgent to the fast', () => {
    const s = new Scheduler(config({ maxJobs: 0 }))
    s.handle({ type: 'peer-seen', peer: idlePeer('fast', 4, 1) }, 0)
    s.handle({ type: 'peer-seen', peer: idlePeer('slow', 1, 2) }, 0)
    // head → tail is the longest path: head is the most urgent of the three ready jobs.
    s.handle({ type: 'submit', submission: submission([spec('head'), spec('tail', ['head']), spec('x'), spec('y')]) }, 10)
    const toSlow = granted(s.handle({ type: 'steal-request', requestId: 'r1', from: 'slow', capabilities: X86, want: 2 }, 20))
    assert.equal(toSlow.length, 2)
    assert.ok(!toSlow.includes('/nix/store/head.drv'), `the slow thief got the head of the longest path: ${toSlow.join(', ')}`)
    assert.deepEqual(granted(s.handle({ type: 'steal-request', requestId: 'r2', from: 'fast', capabilities: X86, want: 1 }, 30)), ['/nix/store/head.drv'])
  })

  it('grants a slow thief anything once the job has waited out the hold', () => {
    const s = new Scheduler(config({ maxJobs: 0 }))
    s.handle({ type: 'peer-seen', peer: idlePeer('fast', 4, 1) }, 0)
    s.handle({ type: 'peer-seen', peer: idlePeer('slow', 1, 1) }, 0)
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 10)
    assert.deepEqual(granted(s.handle({ type: 'steal-request', requestId: 'r1', from: 'slow', capabilities: X86, want: 1 }, 20)), [])
    assert.deepEqual(granted(s.handle({ type: 'steal-request', requestId: 'r2', from: 'slow', capabilities: X86, want: 1 }, 10 + FASTER_HOLD_MS)), ['/nix/store/a.drv'])
  })
})

describe('scheduler grant order', () => {
  it('grants the longest remaining path before a job whose inputs the thief built', () => {
    const s = new Scheduler(config({ maxJobs: 0 }))
    // U builds 'deep' (path 3), T builds 'base' (path 2); then T asks again.
    s.handle({ type: 'submit', submission: submission([spec('base'), spec('child', ['base']), spec('deep'), spec('deep2', ['deep']), spec('deep3', ['deep2'])]) }, 0)
    assert.deepEqual(granted(s.handle({ type: 'steal-request', requestId: 'r1', from: 'U', capabilities: X86, want: 1 }, 1)), ['/nix/store/deep.drv'])
    assert.deepEqual(granted(s.handle({ type: 'steal-request', requestId: 'r2', from: 'T', capabilities: X86, want: 1 }, 2)), ['/nix/store/base.drv'])
    s.handle({ type: 'result', from: 'T', drvPath: '/nix/store/base.drv', outcome: ok }, 3)
    s.handle({ type: 'import-finished', from: 'T', drvPath: '/nix/store/base.drv' }, 4)
    s.handle({ type: 'result', from: 'U', drvPath: '/nix/store/deep.drv', outcome: ok }, 5)
    s.handle({ type: 'import-finished', from: 'U', drvPath: '/nix/store/deep.drv' }, 6)
    // Ready now: child (path 1, its input built by T, so T holds it) and deep2 (path 2).
    assert.deepEqual(granted(s.handle({ type: 'steal-request', requestId: 'r3', from: 'T', capabilities: X86, want: 1 }, 7)), ['/nix/store/deep2.drv'])
  })
})
