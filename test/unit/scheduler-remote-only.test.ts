// A job of the builder socket (remoteOnly): plain Nix holds its outputs' locks in the owner's
// store, so the owner never builds it itself, and its outputs are fetched to the socket's root
// (the import decision says so) rather than into that store.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler, SCHEDULER_DEFAULTS, type Decision, type SchedulerConfig } from '../../node/scheduler/scheduler.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec, SubmissionSpec } from '../../node/scheduler/job.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }

function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: 'self', capabilities: X86, maxJobs: 4, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, ...over }
}

const job = (name: string): JobSpec => ({ drvPath: `/nix/store/${name}.drv`, outputs: { out: `/nix/store/${name}` }, inputJobs: [], system: 'x86_64-linux', requiredFeatures: [] })

function submission (id: string, jobs: JobSpec[], remoteOnly: boolean): SubmissionSpec {
  return { id, requested: jobs.map(j => j.drvPath), jobs, substituted: [], priority: 5, submittedAt: 0, ...(remoteOnly ? { remoteOnly: true } : {}) }
}

const builds = (ds: Decision[]): string[] => ds.flatMap(d => d.type === 'build' ? [d.item.drvPath] : [])
const granted = (ds: Decision[]): string[] => ds.flatMap(d => d.type === 'grant' ? d.items.map(i => i.drvPath) : [])

describe('remote-only jobs (the builder socket)', () => {
  it('are never built on the owner, however many slots it has free, and go to a thief', () => {
    const s = new Scheduler(config())
    const first = s.handle({ type: 'submit', submission: submission('socket', [job('a')], true) }, 0)
    assert.deepEqual(builds(first), [], 'the owner built a job whose outputs plain Nix has locked in its store')
    assert.deepEqual(builds(s.handle({ type: 'tick' }, 60_000)), [], 'the owner built it once it had waited')
    assert.deepEqual(granted(s.handle({ type: 'steal-request', requestId: 'r', from: 'peer', capabilities: X86, want: 2 }, 60_001)), ['/nix/store/a.drv'])
  })

  it('a plain submission next to them is built on the owner as before', () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: submission('socket', [job('a')], true) }, 0)
    assert.deepEqual(builds(s.handle({ type: 'submit', submission: submission('cli', [job('b')], false) }, 1)), ['/nix/store/b.drv'])
  })

  it("the owner's import of the thief's outputs is marked for the socket's root", () => {
    const s = new Scheduler(config())
    s.handle({ type: 'submit', submission: submission('socket', [job('a')], true) }, 0)
    s.handle({ type: 'steal-request', requestId: 'r', from: 'peer', capabilities: X86, want: 1 }, 1)
    const ds = s.handle({ type: 'result', from: 'peer', drvPath: '/nix/store/a.drv', outcome: { ok: true, outputs: { out: '/nix/store/a' } } }, 2)
    const imports = ds.filter(d => d.type === 'import')
    assert.equal(imports.length, 1)
    assert.equal(imports[0]?.type === 'import' && imports[0].remoteOnly, true)
  })

  it('are built again when the socket asks for them again (Nix lacks the outputs: they were collected, and the root copy is gone)', () => {
    const s = new Scheduler(config())
    const steal = (t: number): Decision[] => s.handle({ type: 'steal-request', requestId: `r${t}`, from: 'peer', capabilities: X86, want: 1 }, t)
    s.handle({ type: 'submit', submission: submission('socket-1', [job('a')], true) }, 0)
    steal(1)
    s.handle({ type: 'result', from: 'peer', drvPath: '/nix/store/a.drv', outcome: { ok: true, outputs: { out: '/nix/store/a' } } }, 2)
    s.handle({ type: 'import-finished', from: 'peer', drvPath: '/nix/store/a.drv' }, 3)
    assert.equal(s.job('/nix/store/a.drv')?.state, 'built')
    const again = s.handle({ type: 'submit', submission: submission('socket-2', [job('a')], true) }, 4)
    assert.equal(again.some(d => d.type === 'submission-finished'), false, 'the second request was answered from the first build, whose outputs are gone')
    assert.deepEqual(granted(steal(5)), ['/nix/store/a.drv'])
  })
})
