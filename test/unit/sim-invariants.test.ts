// The simulator's invariants are checked on every run and do fire: a scheduler that builds a
// job twice at once, one that starts a job before its inputs, and one that loses a job are each
// caught with a SimInvariantError naming the job.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler, type Decision } from '../../node/scheduler/scheduler.ts'
import { makeCluster } from '../../bench/sim/cluster.ts'
import { BuildTracker, checkEnds, SimInvariantError } from '../../bench/sim/invariants.ts'
import { simulate } from '../../bench/sim/simulator.ts'
import { generateWorkload } from '../../bench/sim/workloads.ts'

/** Runs `body` with Scheduler.prototype.handle replaced by `wrap(original)`. */
function withHandle (wrap: (original: Scheduler['handle']) => Scheduler['handle'], body: () => void): void {
  const original = Scheduler.prototype.handle
  Scheduler.prototype.handle = wrap(original)
  try { body() } finally { Scheduler.prototype.handle = original }
}

const small = (): Parameters<typeof simulate>[0] => ({
  workload: generateWorkload('layered', 80, 2), cluster: makeCluster(4, 2), policy: 'meshbuild', seed: 2
})

describe('simulator invariants', () => {
  it('the production scheduler passes them', () => {
    const r = simulate(small())
    assert.ok(r.allBuilt)
  })

  it('a job built twice at once is caught', () => {
    withHandle(original => function (this: Scheduler, event, now) {
      const out = original.call(this, event, now)
      // A scheduler that starts every build of its own jobs twice.
      return out.flatMap((d): Decision[] => d.type === 'build' && d.item.owner === this.config.selfId ? [d, d] : [d])
    }, () => {
      assert.throws(() => simulate(small()), (err: Error) => err instanceof SimInvariantError && /built 2 times at once/.test(err.message))
    })
  })

  it('a build started before its inputs is caught', () => {
    withHandle(original => function (this: Scheduler, event, now) {
      const out = original.call(this, event, now)
      // On submission, the owner also starts the job with the most inputs at once.
      if (event.type !== 'submit') return out
      const eager = [...event.submission.jobs].sort((a, b) => b.inputJobs.length - a.inputJobs.length)[0]
      if (eager === undefined) return out
      return [...out, { type: 'build', item: { owner: this.config.selfId, drvPath: eager.drvPath, outputs: eager.outputs, system: eager.system, requiredFeatures: eager.requiredFeatures } }]
    }, () => {
      assert.throws(() => simulate(small()), (err: Error) => err instanceof SimInvariantError && /before its input .* was built/.test(err.message))
    })
  })

  it('a lost job is caught', () => {
    let victim: string | undefined
    let dropped = 0
    withHandle(original => function (this: Scheduler, event, now) {
      // The owner ignores every report of the first job a worker reports on: whatever the
      // scheduler then does (lease lapses, retries), that job never gets built.
      if (event.type === 'result') {
        victim ??= event.drvPath
        if (event.drvPath === victim) { dropped++; return [] }
      }
      if (event.type === 'build-finished' && event.owner === this.config.selfId && event.drvPath === victim) { dropped++; return [] }
      return original.call(this, event, now)
    }, () => {
      assert.throws(() => simulate(small()), (err: Error) => err instanceof SimInvariantError && /no node failed|stuck|never finished|limit/.test(err.message))
    })
    assert.ok(dropped > 0, 'no worker reported a result: the sabotage did not happen')
  })

  it('BuildTracker and checkEnds reject what they must', () => {
    const w = generateWorkload('chain', 3, 1)
    const t = new BuildTracker(w.jobs, () => 1)
    assert.throws(() => { t.begin(1, 0, new Set(), 0) }, /before its input/)
    t.begin(0, 0, new Set(), 0)
    assert.throws(() => { t.begin(0, 1, new Set(), 0) }, /built 2 times at once/)
    t.end(0, true)
    assert.throws(() => { t.begin(1, 1, new Set(), 0) }, /without its input .* in its store/)
    t.begin(1, 1, new Set([0]), 0)
    assert.throws(() => { checkEnds(w.jobs, ['built', 'built', 'unfinished'], false, () => true) }, /never finished/)
    assert.throws(() => { checkEnds(w.jobs, ['built', 'built', 'failed-transient'], false, () => true) }, /although no node failed/)
    assert.throws(() => { checkEnds(w.jobs, ['built', 'built', 'built'], false, j => j !== 2) }, /never reached the submitter/)
    checkEnds(w.jobs, ['built', 'failed-transient', 'dependency-failed'], true, () => true)
  })
})
