// --check-reproducible: the scheduler's rules (every checked job is built by two different peers
// and admitted only when their NAR hashes agree) and the wire fields that carry it.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler, SCHEDULER_DEFAULTS, type BuildOutcome, type Decision, type SchedulerConfig } from '../../node/scheduler/scheduler.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec, SubmissionSpec } from '../../node/scheduler/job.ts'
import { validateResultReport, validateStealGrant } from '../../protocols/mesh/messages.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }
const H1 = 'sha256:1111111111111111111111111111111111111111111111111111'
const H2 = 'sha256:2222222222222222222222222222222222222222222222222222'

function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: 'self', capabilities: X86, maxJobs: 0, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, ...over }
}

function spec (name: string, inputs: string[] = []): JobSpec {
  return { drvPath: `/nix/store/${name}.drv`, outputs: { out: `/nix/store/${name}` }, inputJobs: inputs.map(i => `/nix/store/${i}.drv`), system: 'x86_64-linux', requiredFeatures: [] }
}

function checked (jobs: JobSpec[]): SubmissionSpec {
  return { id: 's1', requested: jobs.map(j => j.drvPath), jobs, substituted: [], priority: 5, submittedAt: 0, check: true }
}

const built = (name: string, hash: string): BuildOutcome => ({ ok: true, outputs: { out: `/nix/store/${name}` }, narHashes: { out: hash } })
const A = '/nix/store/a.drv'
const B = '/nix/store/b.drv'

function granted (d: Decision[]): string[] {
  return d.flatMap(x => x.type === 'grant' ? x.items.map(i => i.drvPath) : [])
}
function steal (s: Scheduler, from: string, now: number, want = 1): string[] {
  return granted(s.handle({ type: 'steal-request', requestId: `r-${from}-${now}`, from, capabilities: X86, want }, now))
}
const of = <T extends Decision['type']>(d: Decision[], type: T): Array<Extract<Decision, { type: T }>> =>
  d.filter((x): x is Extract<Decision, { type: T }> => x.type === type)

describe('scheduler with --check-reproducible', () => {
  it('marks granted items as checked and wants a second builder after the first success', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    const d = s.handle({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 }, 1)
    assert.deepEqual(of(d, 'grant')[0]?.items.map(i => i.check), [true])
    const r = s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 2)
    assert.deepEqual(of(r, 'import'), [], 'one build is not enough: nothing imported')
    assert.deepEqual(of(r, 'sign'), [])
    assert.equal(s.job(A)?.state, 'ready')
    assert.deepEqual(s.job(A)?.checkBuilds, [{ builtBy: 'T1', narHashes: { out: H1 } }])
    assert.equal(s.job(A)?.attempts, 0, 'a first success is no failed attempt')
  })

  it('does not grant a checked job again to a thief that already built it', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    assert.deepEqual(steal(s, 'T1', 1), [A])
    s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 2)
    assert.deepEqual(steal(s, 'T1', 3), [], 'T1 built it already')
    assert.deepEqual(steal(s, 'T2', 4), [A])
  })

  it('does not build a checked job twice on the owner', () => {
    const s = new Scheduler(config({ maxJobs: 1 }))
    let d = s.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    assert.deepEqual(of(d, 'build').map(x => x.item.drvPath), [A])
    assert.equal(of(d, 'build')[0]?.item.check, true)
    d = s.handle({ type: 'build-finished', owner: 'self', drvPath: A, outcome: built('a', H1) }, 1)
    assert.deepEqual(of(d, 'build'), [], 'the owner built it once; a second copy must come from a peer')
    assert.equal(s.job(A)?.state, 'ready')
    d = s.handle({ type: 'tick' }, 2)
    assert.deepEqual(of(d, 'build'), [])
    assert.deepEqual(s.offer(), [{ system: 'x86_64-linux', requiredFeatures: [], count: 1 }], 'still offered to peers')
    // A peer's equal build admits it: the outputs are here already, the owner queues them for the signer.
    assert.deepEqual(steal(s, 'T1', 3), [A])
    d = s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 4)
    assert.deepEqual(of(d, 'import'), [{ type: 'import', from: 'T1', drvPath: A, outputs: { out: '/nix/store/a' }, narHashes: { out: H1 } }])
    d = s.handle({ type: 'import-finished', from: 'T1', drvPath: A }, 5)
    assert.equal(s.job(A)?.state, 'built')
    assert.deepEqual(of(d, 'sign'), [{ type: 'sign', drvPath: A, paths: ['/nix/store/a'] }])
    assert.deepEqual(of(d, 'submission-finished'), [{ type: 'submission-finished', id: 's1', ok: true }])
  })

  it('succeeds only once two peers reported equal hashes, importing from the second', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: checked([spec('a'), spec('b', ['a'])]) }, 0)
    steal(s, 'T1', 1)
    s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 2)
    assert.equal(s.job(B)?.state, 'waiting', 'dependents wait for the check')
    assert.deepEqual(steal(s, 'T2', 3), [A])
    let d = s.handle({ type: 'result', from: 'T2', drvPath: A, outcome: built('a', H1) }, 4)
    assert.deepEqual(of(d, 'import').map(x => [x.from, x.narHashes]), [['T2', { out: H1 }]])
    assert.equal(s.job(A)?.state, 'importing')
    assert.deepEqual(of(d, 'sign'), [], 'nothing goes to the signer before the import')
    d = s.handle({ type: 'import-finished', from: 'T2', drvPath: A }, 5)
    assert.equal(s.job(A)?.state, 'built')
    assert.deepEqual(s.job(A)?.checkBuilds?.map(b => b.builtBy), ['T1', 'T2'])
    assert.deepEqual(of(d, 'sign').map(x => x.paths), [['/nix/store/a']])
    assert.equal(s.job(B)?.state, 'ready')
  })

  it('a local second build that agrees admits the outputs without an import', () => {
    // The owner has no free slot (disk low) while T1 builds the first copy, then takes the second.
    const owner = new Scheduler(config({ maxJobs: 1 }))
    owner.handle({ type: 'disk', low: true }, 0)
    owner.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    steal(owner, 'T1', 1)
    owner.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 2)
    let d = owner.handle({ type: 'disk', low: false }, 3)
    assert.deepEqual(of(d, 'build').map(x => x.item.drvPath), [A])
    d = owner.handle({ type: 'build-finished', owner: 'self', drvPath: A, outcome: built('a', H1) }, 4)
    assert.deepEqual(of(d, 'import'), [])
    assert.equal(owner.job(A)?.state, 'built')
    assert.deepEqual(of(d, 'sign').map(x => x.paths), [['/nix/store/a']])
  })

  it('fails a job whose two builds differ as not deterministic, and fails its dependents', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: checked([spec('a'), spec('b', ['a'])]) }, 0)
    steal(s, 'T1', 1)
    s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 2)
    steal(s, 'T2', 3)
    const d = s.handle({ type: 'result', from: 'T2', drvPath: A, outcome: built('a', H2) }, 4)
    const job = s.job(A)
    assert.equal(job?.state, 'failed')
    assert.equal(job?.failure?.kind, 'not-deterministic')
    assert.match(job?.failure?.message ?? '', /may not be deterministic/)
    for (const x of ['T1', 'T2', H1, H2]) assert.ok(job?.failure?.message.includes(x), `message names ${x}`)
    assert.deepEqual(job?.checkBuilds, [{ builtBy: 'T1', narHashes: { out: H1 } }, { builtBy: 'T2', narHashes: { out: H2 } }])
    assert.deepEqual(of(d, 'import'), [], 'nothing of it is imported')
    assert.deepEqual(of(d, 'sign'), [], 'nothing of it is cached')
    assert.deepEqual(of(d, 'discard'), [], 'the owner built no copy: nothing to delete')
    assert.equal(s.job(B)?.state, 'dependency-failed')
    assert.deepEqual(of(d, 'submission-finished'), [{ type: 'submission-finished', id: 's1', ok: false }])
    assert.deepEqual(steal(s, 'T3', 5, 5), [], 'neither the job nor its dependent is offered again')
  })

  it('deletes the copy the owner built when the other build differs', () => {
    const s = new Scheduler(config({ maxJobs: 1 }))
    s.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    s.handle({ type: 'build-finished', owner: 'self', drvPath: A, outcome: built('a', H1) }, 1)
    steal(s, 'T1', 2)
    const d = s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H2) }, 3)
    assert.equal(s.job(A)?.failure?.kind, 'not-deterministic')
    assert.match(s.job(A)?.failure?.message ?? '', /copy built here is deleted/)
    assert.deepEqual(of(d, 'discard'), [{ type: 'discard', drvPath: A, paths: ['/nix/store/a'] }])
  })

  it('requeues a checked job whose second lease lapses, still excluding the first builder', () => {
    const s = new Scheduler(config({ leaseMs: 100, maxAttempts: 5 }))
    s.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    steal(s, 'T1', 0)
    s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 10)
    assert.deepEqual(steal(s, 'T2', 20), [A])
    s.handle({ type: 'tick' }, 130) // T2 goes silent
    assert.equal(s.job(A)?.state, 'ready')
    assert.equal(s.job(A)?.attempts, 1)
    assert.deepEqual(s.job(A)?.checkBuilds?.map(b => b.builtBy), ['T1'], 'the first build is kept')
    assert.deepEqual(steal(s, 'T1', 140), [], 'the first builder is still excluded')
    assert.deepEqual(steal(s, 'T3', 150), [A])
    s.handle({ type: 'result', from: 'T3', drvPath: A, outcome: built('a', H1) }, 160)
    s.handle({ type: 'import-finished', from: 'T3', drvPath: A }, 170)
    assert.equal(s.job(A)?.state, 'built')
    assert.deepEqual(s.job(A)?.checkBuilds?.map(b => b.builtBy), ['T1', 'T3'])
  })

  it('ignores a repeated report of the first builder and a report without hashes', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    steal(s, 'T1', 1)
    s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 2)
    const d = s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 3)
    assert.deepEqual(of(d, 'import'), [])
    assert.equal(s.job(A)?.state, 'ready')
    steal(s, 'T2', 4)
    s.handle({ type: 'result', from: 'T2', drvPath: A, outcome: { ok: true, outputs: { out: '/nix/store/a' } } }, 5)
    assert.equal(s.job(A)?.state, 'ready', 'a build without NAR hashes proves nothing: requeued')
    assert.equal(s.job(A)?.failure?.kind, 'transient')
    assert.deepEqual(s.job(A)?.checkBuilds?.map(b => b.builtBy), ['T1'])
  })

  it('lets another peer be second builder when fetching from the second one fails', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    steal(s, 'T1', 1)
    s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: built('a', H1) }, 2)
    steal(s, 'T2', 3)
    s.handle({ type: 'result', from: 'T2', drvPath: A, outcome: built('a', H1) }, 4)
    s.handle({ type: 'import-finished', from: 'T2', drvPath: A, error: 'served NAR hash differs from the reported one' }, 5)
    assert.equal(s.job(A)?.state, 'ready')
    assert.deepEqual(s.job(A)?.checkBuilds?.map(b => b.builtBy), ['T1'])
    assert.deepEqual(steal(s, 'T3', 6), [A])
  })

  it('waits, ready and offered, while no second builder exists', () => {
    const s = new Scheduler(config({ maxJobs: 1 }))
    s.handle({ type: 'submit', submission: checked([spec('a')]) }, 0)
    s.handle({ type: 'build-finished', owner: 'self', drvPath: A, outcome: built('a', H1) }, 1)
    for (let t = 2; t < 10; t++) s.handle({ type: 'tick' }, t * 10_000)
    assert.equal(s.job(A)?.state, 'ready')
    assert.equal(s.isFinished('s1'), false)
    assert.equal(s.queuedCount(), 1)
  })

  it('builds jobs of a submission without --check-reproducible once, as before', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: { ...checked([spec('a')]), check: false } }, 0)
    const d = s.handle({ type: 'steal-request', requestId: 'r', from: 'T1', capabilities: X86, want: 1 }, 1)
    assert.equal(of(d, 'grant')[0]?.items[0]?.check, undefined)
    const r = s.handle({ type: 'result', from: 'T1', drvPath: A, outcome: { ok: true, outputs: { out: '/nix/store/a' } } }, 2)
    assert.deepEqual(of(r, 'import').map(x => x.from), ['T1'])
    const f = s.handle({ type: 'import-finished', from: 'T1', drvPath: A }, 3)
    assert.deepEqual(of(f, 'sign'), [], 'the worker offers it to the signer itself')
  })
})

describe('the result report carries NAR hashes, bounded', () => {
  const base = { drvPath: '/nix/store/00000000000000000000000000000000-a.drv', ok: true, outputs: { out: '/nix/store/00000000000000000000000000000000-a' } }
  const cases: Array<[string, unknown, boolean]> = [
    ['hashes by output name', { ...base, narHashes: { out: H1 } }, true],
    ['no hashes (an unchecked job)', base, true],
    ['a hash that is not sha256 nix32', { ...base, narHashes: { out: 'md5:abc' } }, false],
    ['an output name with a slash', { ...base, narHashes: { 'o/ut': H1 } }, false],
    ['more than 64 outputs', { ...base, narHashes: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`o${i}`, H1])) }, false],
    ['an overlong hash', { ...base, narHashes: { out: `sha256:${'a'.repeat(200)}` } }, false]
  ]
  for (const [name, value, valid] of cases) {
    it(name, () => {
      if (valid) assert.deepEqual(validateResultReport(value), value)
      else assert.throws(() => validateResultReport(value), { name: 'SchemaError' })
    })
  }
  it('a work item says whether it is checked', () => {
    const item = { drvPath: base.drvPath, outputs: base.outputs, system: 'x86_64-linux', requiredFeatures: [], check: true }
    assert.equal(validateStealGrant({ leaseMs: 6000, items: [item] }).items[0]?.check, true)
    assert.throws(() => validateStealGrant({ leaseMs: 6000, items: [{ ...item, check: 'yes' }] }), { name: 'SchemaError' })
  })
})
