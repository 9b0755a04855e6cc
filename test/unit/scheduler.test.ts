import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler, SCHEDULER_DEFAULTS, type Decision, type PeerView, type SchedulerConfig } from '../../node/scheduler/scheduler.ts'
import { canBuild, type MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec, SubmissionSpec } from '../../node/scheduler/job.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }

function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: 'self', capabilities: X86, maxJobs: 1, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, ...over }
}

function spec (name: string, inputs: string[] = [], extra: Partial<JobSpec> = {}): JobSpec {
  return { drvPath: `/nix/store/${name}.drv`, outputs: { out: `/nix/store/${name}` }, inputJobs: inputs.map(i => `/nix/store/${i}.drv`), system: 'x86_64-linux', requiredFeatures: [], ...extra }
}

function submission (jobs: JobSpec[], over: Partial<SubmissionSpec> = {}): SubmissionSpec {
  return { id: 's1', requested: jobs.map(j => j.drvPath), jobs, substituted: [], priority: 5, submittedAt: 0, ...over }
}

const builds = (ds: Decision[]): string[] => ds.flatMap(d => d.type === 'build' ? [d.item.drvPath] : [])
const ok = { ok: true as const, outputs: {} }

describe('matching follows Nix remote builders', () => {
  const cases: Array<[string, MachineCapabilities, string, string[], boolean]> = [
    ['same system, no features', X86, 'x86_64-linux', [], true],
    ['other system', X86, 'aarch64-linux', [], false],
    ['builtin goes anywhere', X86, 'builtin', [], true],
    ['required feature supported', { ...X86, features: ['big'] }, 'x86_64-linux', ['big'], true],
    ['required feature missing', X86, 'x86_64-linux', ['big'], false],
    ['mandatory feature counts as supported', { ...X86, mandatoryFeatures: ['big'] }, 'x86_64-linux', ['big'], true],
    ['mandatory feature not required', { ...X86, mandatoryFeatures: ['big'] }, 'x86_64-linux', [], false],
    ['mandatory met, other required supported', { ...X86, features: ['kvm'], mandatoryFeatures: ['big'] }, 'x86_64-linux', ['big', 'kvm'], true]
  ]
  for (const [name, machine, system, required, expected] of cases) {
    it(name, () => { assert.equal(canBuild(machine, { system, requiredFeatures: required }), expected) })
  }
})

describe('scheduler as owner', () => {
  it('builds a chain in dependency order, one job per free slot', () => {
    const s = new Scheduler(config())
    let d = s.handle({ type: 'submit', submission: submission([spec('a'), spec('b', ['a']), spec('c', ['b'])]) }, 0)
    assert.deepEqual(builds(d), ['/nix/store/a.drv'])
    d = s.handle({ type: 'build-finished', owner: 'self', drvPath: '/nix/store/a.drv', outcome: ok }, 1)
    assert.deepEqual(builds(d), ['/nix/store/b.drv'])
    d = s.handle({ type: 'build-finished', owner: 'self', drvPath: '/nix/store/b.drv', outcome: ok }, 2)
    assert.deepEqual(builds(d), ['/nix/store/c.drv'])
    d = s.handle({ type: 'build-finished', owner: 'self', drvPath: '/nix/store/c.drv', outcome: ok }, 3)
    assert.deepEqual(d.filter(x => x.type === 'submission-finished'), [{ type: 'submission-finished', id: 's1', ok: true }])
    assert.equal(s.job('/nix/store/c.drv')?.builtBy, 'self')
  })

  it('orders the deque by priority, then by longest remaining path', () => {
    const s = new Scheduler(config({ maxJobs: 0 }))
    s.handle({ type: 'submit', submission: submission([spec('lone'), spec('head'), spec('tail', ['head'])], { id: 'low', priority: 5 }) }, 0)
    s.handle({ type: 'submit', submission: submission([spec('urgent')], { id: 'high', priority: 0 }) }, 0)
    const d = s.handle({ type: 'steal-request', requestId: 'r', from: 'thief', capabilities: X86, want: 3 }, 1)
    const grant = d.find(x => x.type === 'grant')
    assert.deepEqual(grant?.type === 'grant' && grant.items.map(i => i.drvPath), ['/nix/store/urgent.drv', '/nix/store/head.drv', '/nix/store/lone.drv'])
  })

  it('grants only jobs the thief can build and prefers those whose inputs it built', () => {
    const s = new Scheduler(config({ maxJobs: 0 }))
    s.handle({ type: 'submit', submission: submission([spec('big', [], { requiredFeatures: ['big'] }), spec('plain'), spec('base'), spec('child', ['base'])]) }, 0)
    let d = s.handle({ type: 'steal-request', requestId: 'r1', from: 'T', capabilities: X86, want: 1 }, 1)
    // 'base' heads the longest path, so it goes first.
    let g = d.find(x => x.type === 'grant')
    assert.deepEqual(g?.type === 'grant' && g.items.map(i => i.drvPath), ['/nix/store/base.drv'])
    s.handle({ type: 'result', from: 'T', drvPath: '/nix/store/base.drv', outcome: ok }, 2)
    s.handle({ type: 'import-finished', from: 'T', drvPath: '/nix/store/base.drv' }, 3)
    d = s.handle({ type: 'steal-request', requestId: 'r2', from: 'T', capabilities: X86, want: 1 }, 4)
    g = d.find(x => x.type === 'grant')
    assert.deepEqual(g?.type === 'grant' && g.items.map(i => i.drvPath), ['/nix/store/child.drv'])
    d = s.handle({ type: 'steal-request', requestId: 'r3', from: 'T', capabilities: X86, want: 5 }, 5)
    g = d.find(x => x.type === 'grant')
    assert.deepEqual(g?.type === 'grant' && g.items.map(i => i.drvPath), ['/nix/store/plain.drv'])
  })

  it('returns a job to the deque when its lease lapses, and fails it after maxAttempts', () => {
    const s = new Scheduler(config({ maxJobs: 0, leaseMs: 100, maxAttempts: 2 }))
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 }, 0)
    s.handle({ type: 'tick' }, 50)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'leased')
    s.handle({ type: 'tick' }, 100)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'ready')
    assert.equal(s.job('/nix/store/a.drv')?.attempts, 1)
    s.handle({ type: 'steal-request', requestId: 'r2', from: 'T2', capabilities: X86, want: 1 }, 110)
    const d = s.handle({ type: 'tick' }, 210)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'failed')
    assert.match(s.job('/nix/store/a.drv')?.failure?.message ?? '', /lapsed.*gave up after 2 attempts/)
    assert.deepEqual(d.filter(x => x.type === 'submission-finished'), [{ type: 'submission-finished', id: 's1', ok: false }])
  })

  it('extends a lease the holder renews and tells anyone else it is lost', () => {
    const s = new Scheduler(config({ maxJobs: 0, leaseMs: 100 }))
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 }, 0)
    let d = s.handle({ type: 'lease-renew', requestId: 'n1', from: 'T1', drvPaths: ['/nix/store/a.drv'] }, 90)
    assert.deepEqual(d.find(x => x.type === 'renew-reply'), { type: 'renew-reply', requestId: 'n1', to: 'T1', lost: [] })
    s.handle({ type: 'tick' }, 150)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'leased')
    d = s.handle({ type: 'lease-renew', requestId: 'n2', from: 'T2', drvPaths: ['/nix/store/a.drv'] }, 160)
    assert.deepEqual(d.find(x => x.type === 'renew-reply'), { type: 'renew-reply', requestId: 'n2', to: 'T2', lost: ['/nix/store/a.drv'] })
  })

  it('marks dependents of a permanent failure dependency-failed and builds the rest', () => {
    const s = new Scheduler(config({ maxJobs: 2 }))
    let d = s.handle({ type: 'submit', submission: submission([spec('bad'), spec('good'), spec('mid', ['bad']), spec('top', ['mid', 'good'])]) }, 0)
    assert.deepEqual(builds(d).sort(), ['/nix/store/bad.drv', '/nix/store/good.drv'])
    d = s.handle({ type: 'build-finished', owner: 'self', drvPath: '/nix/store/bad.drv', outcome: { ok: false, failure: { kind: 'build-failed', message: 'exit 1' } } }, 1)
    assert.equal(s.job('/nix/store/mid.drv')?.state, 'dependency-failed')
    assert.equal(s.job('/nix/store/top.drv')?.state, 'dependency-failed')
    assert.equal(s.job('/nix/store/good.drv')?.state, 'leased')
    d = s.handle({ type: 'build-finished', owner: 'self', drvPath: '/nix/store/good.drv', outcome: ok }, 2)
    assert.equal(s.job('/nix/store/good.drv')?.state, 'built')
    assert.deepEqual(d.filter(x => x.type === 'submission-finished'), [{ type: 'submission-finished', id: 's1', ok: false }])
  })

  it('retries a transient failure elsewhere but not a permanent one', () => {
    const s = new Scheduler(config({ maxJobs: 0 }))
    s.handle({ type: 'submit', submission: submission([spec('a'), spec('b')]) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r', from: 'T', capabilities: X86, want: 2 }, 0)
    s.handle({ type: 'result', from: 'T', drvPath: '/nix/store/a.drv', outcome: { ok: false, failure: { kind: 'transient', message: 'fetch failed' } } }, 1)
    s.handle({ type: 'result', from: 'T', drvPath: '/nix/store/b.drv', outcome: { ok: false, failure: { kind: 'timed-out', message: 'timed out' } } }, 1)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'ready')
    assert.equal(s.job('/nix/store/b.drv')?.state, 'failed')
  })

  it('keeps the first completed result when a job finishes twice', () => {
    const s = new Scheduler(config({ maxJobs: 0, leaseMs: 10 }))
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 }, 0)
    s.handle({ type: 'tick' }, 20) // T1 partitioned away: lease lapses
    s.handle({ type: 'steal-request', requestId: 'r2', from: 'T2', capabilities: X86, want: 1 }, 21)
    let d = s.handle({ type: 'result', from: 'T2', drvPath: '/nix/store/a.drv', outcome: ok }, 30)
    assert.deepEqual(d.filter(x => x.type === 'import').map(x => x.type === 'import' && x.from), ['T2'])
    d = s.handle({ type: 'result', from: 'T1', drvPath: '/nix/store/a.drv', outcome: ok }, 31)
    assert.deepEqual(d, [])
    s.handle({ type: 'import-finished', from: 'T2', drvPath: '/nix/store/a.drv' }, 32)
    assert.equal(s.job('/nix/store/a.drv')?.builtBy, 'T2')
  })

  it('ignores results from peers the job was never leased to, and from a past holder while another holds it', () => {
    const s = new Scheduler(config({ maxJobs: 0, leaseMs: 10 }))
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 }, 0)
    let d = s.handle({ type: 'result', from: 'stranger', drvPath: '/nix/store/a.drv', outcome: ok }, 1)
    assert.deepEqual(d, [])
    d = s.handle({ type: 'result', from: 'stranger', drvPath: '/nix/store/a.drv', outcome: { ok: false, failure: { kind: 'build-failed', message: 'forged' } } }, 1)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'leased')
    s.handle({ type: 'tick' }, 20) // T1's lease lapses
    s.handle({ type: 'steal-request', requestId: 'r2', from: 'T2', capabilities: X86, want: 1 }, 21)
    d = s.handle({ type: 'result', from: 'T1', drvPath: '/nix/store/a.drv', outcome: ok }, 22)
    assert.deepEqual(d, [], 'T2 holds the lease now; its result is the one awaited')
    s.handle({ type: 'tick' }, 40) // T2 vanishes too
    d = s.handle({ type: 'result', from: 'T1', drvPath: '/nix/store/a.drv', outcome: ok }, 41)
    assert.deepEqual(d.filter(x => x.type === 'import').map(x => x.type === 'import' && x.from), ['T1'], 'a past holder\'s result counts once nobody holds the job')
  })

  it('resumes after a restart without rebuilding what finished', () => {
    const first = new Scheduler(config({ maxJobs: 1 }))
    first.handle({ type: 'submit', submission: submission([spec('a'), spec('b', ['a'])]) }, 0)
    first.handle({ type: 'build-finished', owner: 'self', drvPath: '/nix/store/a.drv', outcome: ok }, 1)
    assert.equal(first.job('/nix/store/b.drv')?.state, 'leased') // building when the node died
    const saved = first.submissionJobs('s1')
    const second = new Scheduler(config({ maxJobs: 1 }))
    const d = second.handle({ type: 'restore', submissions: [first.submission('s1')!], jobs: saved }, 100)
    assert.deepEqual(builds(d), ['/nix/store/b.drv'])
    assert.equal(second.job('/nix/store/a.drv')?.state, 'built')
  })
})

describe('scheduler as thief', () => {
  const peer = (id: string, queued: number, speedFactor: number, over: Partial<PeerView> = {}): PeerView => ({
    peerId: id, capabilities: X86, maxJobs: 1, running: 1, queued, speedFactor, offers: [{ system: 'x86_64-linux', requiredFeatures: [], count: queued }], ...over
  })

  it('asks the peer most loaded relative to its speed, and only for work it can build', () => {
    const s = new Scheduler(config({ maxJobs: 2 }))
    s.handle({ type: 'disk', low: true }, 0) // hold steals until every peer is known
    s.handle({ type: 'peer-seen', peer: peer('fast', 8, 4) }, 0)
    s.handle({ type: 'peer-seen', peer: peer('gpu', 50, 1, { offers: [{ system: 'x86_64-linux', requiredFeatures: ['cuda'], count: 50 }] }) }, 0)
    s.handle({ type: 'peer-seen', peer: peer('slow', 6, 1) }, 0)
    const d = s.handle({ type: 'disk', low: false }, 0)
    assert.deepEqual(d.filter(x => x.type === 'steal'), [{ type: 'steal', from: 'slow', want: 2 }])
  })

  it('backs off a peer that had nothing, builds what it is granted and renews its lease', () => {
    const s = new Scheduler(config({ maxJobs: 1, leaseMs: 90 }))
    s.handle({ type: 'peer-seen', peer: peer('o', 3, 1) }, 0)
    let d = s.handle({ type: 'steal-reply', from: 'o', items: [] }, 1)
    assert.deepEqual(d.filter(x => x.type === 'steal'), [])
    d = s.handle({ type: 'tick' }, 1 + SCHEDULER_DEFAULTS.stealBackoffMs)
    assert.deepEqual(d.filter(x => x.type === 'steal'), [{ type: 'steal', from: 'o', want: 1 }])
    const item = { owner: 'o', drvPath: '/nix/store/x.drv', outputs: { out: '/nix/store/x' }, system: 'x86_64-linux', requiredFeatures: [] }
    d = s.handle({ type: 'steal-reply', from: 'o', items: [item] }, 3000)
    assert.deepEqual(builds(d), ['/nix/store/x.drv'])
    d = s.handle({ type: 'tick' }, 3030)
    assert.deepEqual(d.filter(x => x.type === 'renew'), [{ type: 'renew', owner: 'o', drvPaths: ['/nix/store/x.drv'] }])
    d = s.handle({ type: 'build-finished', owner: 'o', drvPath: '/nix/store/x.drv', outcome: ok }, 3040)
    assert.deepEqual(d.filter(x => x.type === 'report'), [{ type: 'report', owner: 'o', drvPath: '/nix/store/x.drv', outcome: ok }])
  })

  it('aborts a build whose lease the owner says is lost', () => {
    const s = new Scheduler(config({ maxJobs: 1 }))
    const item = { owner: 'o', drvPath: '/nix/store/x.drv', outputs: {}, system: 'x86_64-linux', requiredFeatures: [] }
    s.handle({ type: 'steal-reply', from: 'o', items: [item] }, 0)
    const d = s.handle({ type: 'lease-lost', owner: 'o', drvPaths: ['/nix/store/x.drv'] }, 1)
    assert.deepEqual(d.filter(x => x.type === 'abort'), [{ type: 'abort', owner: 'o', drvPath: '/nix/store/x.drv', reason: 'o says the lease lapsed' }])
    assert.equal(s.runningItems().length, 0)
  })

  it('takes no work while the store is short of disk', () => {
    const s = new Scheduler(config({ maxJobs: 1 }))
    s.handle({ type: 'disk', low: true }, 0)
    const d = s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    assert.deepEqual(builds(d), [])
    assert.deepEqual(s.offer(), [{ system: 'x86_64-linux', requiredFeatures: [], count: 1 }])
  })
})

describe('scheduler across restarts and shutdowns', () => {
  it('fetches the outputs of a job built elsewhere again after a restart instead of rebuilding it', () => {
    const first = new Scheduler(config({ maxJobs: 0 }))
    first.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    first.handle({ type: 'steal-request', requestId: 'r', from: 'T', capabilities: X86, want: 1 }, 0)
    first.handle({ type: 'result', from: 'T', drvPath: '/nix/store/a.drv', outcome: ok }, 1)
    const second = new Scheduler(config({ maxJobs: 1 }))
    const d = second.handle({ type: 'restore', submissions: [first.submission('s1')!], jobs: first.submissionJobs('s1') }, 5)
    assert.deepEqual(d.filter(x => x.type === 'import' || x.type === 'build').map(x => x.type), ['import'])
  })

  it('takes back, after a restart, a job a peer held when the node stopped, once that lease lapses', () => {
    const first = new Scheduler(config({ maxJobs: 0 }))
    first.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    first.handle({ type: 'steal-request', requestId: 'r', from: 'T', capabilities: X86, want: 1 }, 0)
    const second = new Scheduler(config({ maxJobs: 1 }))
    second.handle({ type: 'restore', submissions: [first.submission('s1')!], jobs: first.submissionJobs('s1') }, 5)
    assert.equal(second.ownerSlots(), 1, 'the restored lease is not counted')
    assert.deepEqual(builds(second.handle({ type: 'tick' }, 5 + SCHEDULER_DEFAULTS.leaseMs - 1)), [])
    assert.deepEqual(builds(second.handle({ type: 'tick' }, 5 + SCHEDULER_DEFAULTS.leaseMs)), ['/nix/store/a.drv'])
  })

  it('puts released jobs straight back in the deque without counting an attempt', () => {
    const s = new Scheduler(config({ maxJobs: 0 }))
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r', from: 'T', capabilities: X86, want: 1 }, 0)
    s.handle({ type: 'lease-release', from: 'other', drvPaths: ['/nix/store/a.drv'] }, 1)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'leased')
    s.handle({ type: 'lease-release', from: 'T', drvPaths: ['/nix/store/a.drv'] }, 2)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'ready')
    assert.equal(s.job('/nix/store/a.drv')?.attempts, 0)
  })
})
