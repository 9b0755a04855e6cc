// Leases seen from both ends: a worker stops a stolen build nobody confirmed for a whole lease
// (it was stopped or cut off, and the job has gone elsewhere), and an owner takes one result per
// job however late the others come back.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler, SCHEDULER_DEFAULTS, type Decision, type SchedulerConfig } from '../../node/scheduler/scheduler.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec, SubmissionSpec, WorkItem } from '../../node/scheduler/job.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }
const LEASE = 6_000
const A = '/nix/store/a.drv'

function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: 'self', capabilities: X86, maxJobs: 1, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, leaseMs: LEASE, ...over }
}

function spec (name: string): JobSpec {
  return { drvPath: `/nix/store/${name}.drv`, outputs: { out: `/nix/store/${name}` }, inputJobs: [], system: 'x86_64-linux', requiredFeatures: [] }
}

function submission (jobs: JobSpec[]): SubmissionSpec {
  return { id: 's1', requested: jobs.map(j => j.drvPath), jobs, substituted: [], priority: 5, submittedAt: 0 }
}

function item (owner: string, drvPath = A): WorkItem {
  return { owner, drvPath, outputs: { out: drvPath.replace(/\.drv$/, '') }, system: 'x86_64-linux', requiredFeatures: [] }
}

const ok = { ok: true as const, outputs: { out: '/nix/store/a' } }
const of = <T extends Decision['type']>(ds: Decision[], type: T): Array<Extract<Decision, { type: T }>> =>
  ds.filter((d): d is Extract<Decision, { type: T }> => d.type === type)

/** A worker holding one job stolen from 'O' at time 0. */
function worker (): Scheduler {
  const s = new Scheduler(config())
  const d = s.handle({ type: 'steal-reply', from: 'O', items: [item('O')] }, 0)
  assert.equal(of(d, 'build').length, 1)
  return s
}

describe('worker side: a lease nobody confirmed', () => {
  it('aborts a stolen build when no renewal was confirmed for a whole lease', () => {
    const s = worker()
    const renew = s.handle({ type: 'tick' }, LEASE / 3)
    assert.deepEqual(of(renew, 'renew'), [{ type: 'renew', owner: 'O', drvPaths: [A] }])
    assert.deepEqual(of(s.handle({ type: 'tick' }, LEASE - 1), 'abort'), [])
    const d = s.handle({ type: 'tick' }, LEASE)
    assert.equal(of(d, 'abort').length, 1)
    assert.equal(of(d, 'abort')[0]?.drvPath, A)
    assert.match(of(d, 'abort')[0]?.reason ?? '', /longer than the lease/)
    assert.deepEqual(of(d, 'renew'), [], 'no renewal is sent for an aborted build')
    assert.deepEqual(s.runningItems(), [], 'the slot is free again')
    // The build's end, if it comes, is not reported: the owner has given the job to another.
    assert.deepEqual(s.handle({ type: 'build-finished', owner: 'O', drvPath: A, outcome: ok }, LEASE + 1), [])
  })

  it('keeps a build whose renewals the owner confirms, counting from when each was sent', () => {
    const s = worker()
    s.handle({ type: 'tick' }, 2_000)
    s.handle({ type: 'lease-renewed', owner: 'O', drvPaths: [A], requestedAt: 2_000 }, 2_050)
    assert.deepEqual(of(s.handle({ type: 'tick' }, 7_000), 'abort'), [])
    assert.equal(s.runningItems().length, 1)
    // Renewals sent at 4000 and 6000 get no answer (the owner is cut off): the lease confirmed
    // at 2000 ends at 8000, and the worker stops there, not later.
    s.handle({ type: 'tick' }, 4_000)
    s.handle({ type: 'tick' }, 6_000)
    assert.deepEqual(of(s.handle({ type: 'tick' }, 7_999), 'abort'), [])
    assert.equal(of(s.handle({ type: 'tick' }, 8_000), 'abort').length, 1)
  })

  it('a confirmation that arrives after a long stop does not revive the lease', () => {
    // The worker sent a renewal at 2000, was stopped (SIGSTOP) until 20000, and the reply to that
    // old renewal is read after it resumes: the owner's lease ran from about 2000, so it is gone.
    const s = worker()
    s.handle({ type: 'tick' }, 2_000)
    s.handle({ type: 'lease-renewed', owner: 'O', drvPaths: [A], requestedAt: 2_000 }, 20_000)
    const d = s.handle({ type: 'tick' }, 20_000)
    assert.equal(of(d, 'abort').length, 1)
  })

  it('the owner saying the lease lapsed aborts at once', () => {
    const s = worker()
    const d = s.handle({ type: 'lease-lost', owner: 'O', drvPaths: [A] }, 100)
    assert.equal(of(d, 'abort').length, 1)
    assert.match(of(d, 'abort')[0]?.reason ?? '', /lapsed/)
  })

  it('never aborts the node\'s own builds for want of renewal', () => {
    const s = new Scheduler(config())
    const d = s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    assert.equal(of(d, 'build').length, 1)
    assert.deepEqual(of(s.handle({ type: 'tick' }, 10 * LEASE), 'abort'), [])
    assert.equal(s.runningItems().length, 1)
  })
})

describe('owner side: late results of a re-leased job', () => {
  /** An owner that builds nothing itself; 'a' leased to T1, lapsed, re-leased to T2. */
  function releasedToT2 (): Scheduler {
    const s = new Scheduler(config({ maxJobs: 0 }))
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 }, 0)
    s.handle({ type: 'tick' }, LEASE) // T1 partitioned away
    assert.equal(s.job(A)?.state, 'ready')
    s.handle({ type: 'steal-request', requestId: 'r2', from: 'T2', capabilities: X86, want: 1 }, LEASE + 1)
    assert.equal(s.job(A)?.worker, 'T2')
    return s
  }

  it('drops the first holder\'s result while the new holder builds, and imports once', () => {
    const s = releasedToT2()
    assert.deepEqual(of(s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: ok }, LEASE + 2), 'import'), [])
    assert.equal(s.job(A)?.state, 'leased')
    const d = s.handle({ type: 'result', from: 'T2', drvPath: A, outcome: ok }, LEASE + 3)
    assert.deepEqual(of(d, 'import').map(i => i.from), ['T2'])
    // T1 retries its report (it does, while the owner is unreachable): still nothing.
    assert.deepEqual(of(s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: ok }, LEASE + 4), 'import'), [])
    const done = s.handle({ type: 'import-finished', from: 'T2', drvPath: A }, LEASE + 5)
    assert.equal(s.job(A)?.state, 'built')
    assert.deepEqual(of(done, 'submission-finished'), [{ type: 'submission-finished', id: 's1', ok: true }])
    assert.deepEqual(of(s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: ok }, LEASE + 6), 'import'), [])
    assert.deepEqual(of(s.handle({ type: 'result', from: 'T2', drvPath: A, outcome: ok }, LEASE + 7), 'import'), [])
  })

  it('takes a late result while nobody holds the job, and then leases it to nobody else', () => {
    const s = new Scheduler(config({ maxJobs: 0 }))
    s.handle({ type: 'submit', submission: submission([spec('a')]) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 }, 0)
    s.handle({ type: 'tick' }, LEASE)
    const d = s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: ok }, LEASE + 1)
    assert.deepEqual(of(d, 'import').map(i => i.from), ['T1'])
    const g = s.handle({ type: 'steal-request', requestId: 'r2', from: 'T2', capabilities: X86, want: 1 }, LEASE + 2)
    assert.deepEqual(of(g, 'grant')[0]?.items, [], 'a job being imported is not lent again')
    s.handle({ type: 'import-finished', from: 'T1', drvPath: A }, LEASE + 3)
    assert.equal(s.job(A)?.state, 'built')
  })

  it('a late failure of the first holder does not fail the job the second holds', () => {
    const s = releasedToT2()
    s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: { ok: false, failure: { kind: 'build-failed', message: 'killed' } } }, LEASE + 2)
    assert.equal(s.job(A)?.state, 'leased')
    assert.equal(s.job(A)?.worker, 'T2')
  })
})
