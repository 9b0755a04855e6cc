// The owner's build times (node/mesh/build-times.ts) driven as mesh-node.ts drives them, around
// the real Scheduler: only a build the owner admits is recorded, normalised by its builder's
// speed factor; a stray report, a refused import or a failed job leaves the history unchanged.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler, SCHEDULER_DEFAULTS, type SchedulerConfig, type SchedulerEvent } from '../../node/scheduler/scheduler.ts'
import type { MachineCapabilities } from '../../node/scheduler/matching.ts'
import type { JobSpec } from '../../node/scheduler/job.ts'
import { BuildTimes } from '../../node/mesh/build-times.ts'
import { BuildHistory } from '../../node/state/build-history.ts'

const X86: MachineCapabilities = { systems: ['x86_64-linux'], features: [], mandatoryFeatures: [] }
const HASH = '0c1w7ci4bd2vnabzr1kmzwmq6ma6w5bm'
const DRV = `/nix/store/${HASH}-hello-2.12.drv`
const OUT = `/nix/store/${HASH}-hello-2.12`
const ok = { ok: true as const, outputs: { out: OUT } }

function config (over: Partial<SchedulerConfig> = {}): SchedulerConfig {
  return { selfId: 'self', capabilities: X86, maxJobs: 0, speedFactor: 1, seed: 1, ...SCHEDULER_DEFAULTS, ...over }
}

const spec: JobSpec = { drvPath: DRV, outputs: { out: OUT }, inputJobs: [], system: 'x86_64-linux', requiredFeatures: [] }

/** An owner as mesh-node.ts wires it: the scheduler's decisions go to BuildTimes, results pass it their time. */
function owner (over: Partial<SchedulerConfig> = {}, speeds: Record<string, number> = { T1: 2, T2: 4 }): {
  s: Scheduler, history: BuildHistory, dispatch: (e: SchedulerEvent) => void, result: (from: string, buildMs: number) => void, times: BuildTimes
} {
  const s = new Scheduler(config(over))
  const history = new BuildHistory({ loadBuildTimes: async () => [], putBuildTimes: () => {} })
  const times = new BuildTimes({
    history, selfId: 'self', selfSpeedFactor: over.speedFactor ?? 1,
    speedFactor: (p) => speeds[p], job: (d) => s.job(d)
  })
  let now = 0
  const dispatch = (e: SchedulerEvent): void => { for (const d of s.handle(e, ++now)) times.onDecision(d) }
  // serveResult: the report goes to the scheduler, then its time to BuildTimes.
  const result = (from: string, buildMs: number): void => {
    dispatch({ type: 'result', from, drvPath: DRV, outcome: ok })
    times.reported(from, DRV, buildMs)
  }
  dispatch({ type: 'submit', submission: { id: 's1', requested: [DRV], jobs: [{ ...spec }], substituted: [], priority: 5, submittedAt: 0 } })
  return { s, history, dispatch, result, times }
}

describe('the owner\'s build times', () => {
  it('records a stolen build\'s time × its builder\'s speed factor once its outputs are imported', () => {
    const { s, history, dispatch, result } = owner()
    dispatch({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 })
    result('T1', 1500)
    assert.equal(history.estimate(DRV), undefined, 'not before the outputs are in')
    dispatch({ type: 'import-finished', from: 'T1', drvPath: DRV })
    assert.equal(s.job(DRV)?.state, 'built')
    assert.equal(history.estimate(DRV), 3000)
  })

  it('ignores a report from a peer the job was not granted to, even if the granted one then succeeds', () => {
    const { history, dispatch, result } = owner()
    dispatch({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 })
    result('T2', 999_999) // T2 never held the job
    result('T1', 1000)
    dispatch({ type: 'import-finished', from: 'T1', drvPath: DRV })
    assert.equal(history.estimate(DRV), 2000)
  })

  it('records nothing when the outputs could not be imported and the job then failed', () => {
    const { s, history, dispatch, result } = owner({ maxAttempts: 1 })
    dispatch({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 })
    result('T1', 1000)
    dispatch({ type: 'import-finished', from: 'T1', drvPath: DRV, error: 'untrusted signature' })
    assert.equal(s.job(DRV)?.state, 'failed')
    assert.equal(history.estimate(DRV), undefined)
  })

  it('records nothing for a builder whose speed factor it does not know', () => {
    const { history, dispatch, result } = owner({}, {})
    dispatch({ type: 'steal-request', requestId: 'r1', from: 'T1', capabilities: X86, want: 1 })
    result('T1', 1000)
    dispatch({ type: 'import-finished', from: 'T1', drvPath: DRV })
    assert.equal(history.estimate(DRV), undefined)
  })

  it('records a build of its own at its own speed factor', () => {
    const { s, history, dispatch, times } = owner({ maxJobs: 1, speedFactor: 1.5 })
    assert.deepEqual(s.runningItems().map(i => i.drvPath), [DRV])
    // effects.ts: the time first, then build-finished.
    times.builtHere(DRV, 2000)
    dispatch({ type: 'build-finished', owner: 'self', drvPath: DRV, outcome: ok })
    assert.equal(s.job(DRV)?.state, 'built')
    assert.equal(history.estimate(DRV), 3000)
  })
})
