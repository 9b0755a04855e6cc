// Two owners needing the same derivation: the one that sorts later defers it to the other
// (which claims it) instead of building it, fetches its outputs from that owner once it no longer
// claims it, and builds it itself if that fetch fails. Jobs ready at submission wait one
// announcement round (CLAIM_HOLD_MS) where an earlier peer could be submitting them too.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { CLAIM_HOLD_MS, CLAIM_OPEN_WAIT_MS, Scheduler, SCHEDULER_DEFAULTS, type Decision, type PeerView, type SchedulerConfig } from '../../node/scheduler/scheduler.ts'
import { claimKey, type Claims } from '../../node/scheduler/claims.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec, SubmissionSpec } from '../../node/scheduler/job.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }
const drv = (name: string): string => `/nix/store/${name.padEnd(32, '0')}-${name}.drv`
const spec = (name: string, inputs: string[] = []): JobSpec => ({ drvPath: drv(name), outputs: { out: `/nix/store/${name}` }, inputJobs: inputs.map(drv), system: 'x86_64-linux', requiredFeatures: [] })
const submission = (jobs: JobSpec[]): SubmissionSpec => ({ id: 's', requested: jobs.map(j => j.drvPath), jobs, substituted: [], priority: 5, submittedAt: 0 })

function config (selfId: string): SchedulerConfig {
  return { selfId, capabilities: X86, maxJobs: 2, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS }
}

const owner = (peerId: string, claims?: Claims): PeerView => ({
  peerId, capabilities: X86, maxJobs: 2, running: 0, queued: 0, speedFactor: 1, offers: [], ...(claims !== undefined ? { claims } : {})
})
const claiming = (open: string[], started: string[] = []): Claims => ({ open: open.map(n => claimKey(drv(n))), started: started.map(n => claimKey(drv(n))) })

const builds = (ds: Decision[]): string[] => ds.flatMap(d => d.type === 'build' ? [d.item.drvPath] : [])
const imports = (ds: Decision[]): Array<{ from: string, drvPath: string }> => ds.flatMap(d => d.type === 'import' ? [{ from: d.from, drvPath: d.drvPath }] : [])

describe('claims between owners', () => {
  it('a job an earlier owner claims is not built here; once that owner stops claiming it, its outputs are fetched from it', () => {
    const s = new Scheduler(config('owner-b'))
    s.handle({ type: 'peer-seen', peer: owner('owner-a', claiming(['x'])) }, 0)
    assert.deepEqual(builds(s.handle({ type: 'submit', submission: submission([spec('x'), spec('y')]) }, 1)), [])
    // Past the hold: y (unclaimed) is built, x stays deferred and out of the offer and the claims.
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 1 + CLAIM_HOLD_MS)), [drv('y')])
    assert.deepEqual(s.offer(), [])
    assert.deepEqual(s.claims().open, [])
    // owner-a built x: its claims no longer list it.
    const ds = s.handle({ type: 'peer-seen', peer: owner('owner-a', claiming([])) }, 2000)
    assert.deepEqual(imports(ds), [{ from: 'owner-a', drvPath: drv('x') }])
    const done = s.handle({ type: 'import-finished', from: 'owner-a', drvPath: drv('x') }, 2100)
    assert.equal(done.flatMap(d => d.type === 'job-changed' ? [d.job] : []).find(j => j.drvPath === drv('x'))?.state, 'built')
  })

  it('builds the job itself when the owner it deferred to has no outputs to give, and does not defer to it again', () => {
    const s = new Scheduler(config('owner-b'))
    s.handle({ type: 'peer-seen', peer: owner('owner-a', claiming(['x'])) }, 0)
    s.handle({ type: 'submit', submission: submission([spec('x')]) }, 1)
    s.handle({ type: 'peer-seen', peer: owner('owner-a', claiming(['z'])) }, 2000)
    assert.deepEqual(builds(s.handle({ type: 'import-finished', from: 'owner-a', drvPath: drv('x'), error: 'owner-a does not have it' }, 2100)), [drv('x')])
  })

  it('the owner that sorts first builds what both claim, and a later owner that has started a job is deferred to', () => {
    const a = new Scheduler(config('owner-a'))
    a.handle({ type: 'peer-seen', peer: owner('owner-b', claiming(['x', 'y'], ['z'])) }, 0)
    // No hold for the first owner by id: nobody earlier could claim its jobs.
    assert.deepEqual(builds(a.handle({ type: 'submit', submission: submission([spec('x'), spec('z')]) }, 1)), [drv('x')])
  })

  it('holds jobs ready at submission one announcement round where an earlier peer exists, and not a whole submission', () => {
    const s = new Scheduler(config('owner-b'))
    s.handle({ type: 'peer-seen', peer: owner('owner-a') }, 0)
    assert.deepEqual(builds(s.handle({ type: 'submit', submission: submission([spec('x')]) }, 10)), [])
    assert.equal(s.wakeAt(), 10 + CLAIM_HOLD_MS, 'the node would not be woken at the end of the hold, only at its next tick')
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 10 + CLAIM_HOLD_MS - 1)), [])
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 10 + CLAIM_HOLD_MS)), [drv('x')])
    assert.equal(s.wakeAt(), undefined)
    const socket = new Scheduler(config('owner-b'))
    socket.handle({ type: 'peer-seen', peer: owner('owner-a') }, 0)
    socket.handle({ type: 'submit', submission: { ...submission([spec('x')]), remoteOnly: true } }, 10)
    const granted = socket.handle({ type: 'steal-request', requestId: 'r', from: 'owner-a', capabilities: X86, want: 1 }, 11)
    assert.equal(granted.filter(d => d.type === 'grant').flatMap(d => d.type === 'grant' ? d.items : []).length, 1, 'a builder-socket job (never claimed) waited for claims')
    const alone = new Scheduler(config('owner-b'))
    assert.deepEqual(builds(alone.handle({ type: 'submit', submission: submission([spec('x')]) }, 10)), [drv('x')], 'a node alone waited for claims')
  })
})

describe('claims remembered for jobs not ready yet', () => {
  it('a waiting job an earlier owner claimed and has built since is fetched from it when it becomes ready, not built again', () => {
    const s = new Scheduler(config('owner-b'))
    s.handle({ type: 'submit', submission: submission([spec('dep'), spec('x', ['dep'])]) }, 0)
    // owner-a claims x while ours waits on dep (leased to a thief here, say).
    s.handle({ type: 'peer-seen', peer: owner('owner-a', claiming(['x'])) }, 10)
    // owner-a built x: its offer has no claims left.
    s.handle({ type: 'peer-seen', peer: owner('owner-a') }, 20)
    // dep finishes here; x becomes ready and must come from owner-a.
    const ds = s.handle({ type: 'build-finished', owner: 'owner-b', drvPath: drv('dep'), outcome: { ok: true, outputs: { out: '/nix/store/dep' } } }, 30)
    assert.deepEqual(builds(ds), [], 'x was built again although owner-a had built it')
    assert.deepEqual(imports(ds), [{ from: 'owner-a', drvPath: drv('x') }])
  })

  it('forgets the claims of an owner that went silent: the job is built here', () => {
    const s = new Scheduler(config('owner-b'))
    s.handle({ type: 'submit', submission: submission([spec('dep'), spec('x', ['dep'])]) }, 0)
    s.handle({ type: 'peer-seen', peer: owner('owner-a', claiming(['x'])) }, 10)
    s.handle({ type: 'peer-lost', peerId: 'owner-a' }, 20)
    const ds = s.handle({ type: 'build-finished', owner: 'owner-b', drvPath: drv('dep'), outcome: { ok: true, outputs: { out: '/nix/store/dep' } } }, 30)
    assert.deepEqual(builds(ds), [drv('x')])
  })
})

describe('claims that are never built', () => {
  it('an open claim that stays unstarted delays the job by CLAIM_OPEN_WAIT_MS at most, then it is built here (a member claiming everything cannot stall others)', () => {
    const s = new Scheduler(config('owner-b'))
    s.handle({ type: 'peer-seen', peer: owner('owner-a', claiming(['x'])) }, 0)
    s.handle({ type: 'submit', submission: submission([spec('x')]) }, 1)
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 1 + CLAIM_OPEN_WAIT_MS - 1)), [])
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 1 + CLAIM_OPEN_WAIT_MS + CLAIM_HOLD_MS)), [drv('x')])
  })

  it('a started claim is waited for past that bound', () => {
    const s = new Scheduler(config('owner-b'))
    s.handle({ type: 'peer-seen', peer: owner('owner-c', claiming([], ['x'])) }, 0)
    s.handle({ type: 'submit', submission: submission([spec('x')]) }, 1)
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 1 + 3 * CLAIM_OPEN_WAIT_MS)), [])
  })
})
