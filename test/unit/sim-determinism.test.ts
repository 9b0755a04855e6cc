// The simulator (bench/sim/) is a pure function of its inputs: the same seed gives the same
// result and the same event trace; another seed gives another trace.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { makeCluster } from '../../bench/sim/cluster.ts'
import { POLICIES } from '../../bench/sim/policy.ts'
import { simulate, type SimResult } from '../../bench/sim/simulator.ts'
import { generateWorkload } from '../../bench/sim/workloads.ts'

function run (policy: typeof POLICIES[number], seed: number, failRate = 0): SimResult {
  return simulate({ workload: generateWorkload('layered', 200, seed), cluster: makeCluster(8, seed), policy, seed, failRate })
}

describe('simulator determinism', () => {
  for (const policy of POLICIES) {
    it(`${policy}: the same seed gives the same trace and figures; another seed another trace`, () => {
      const a = run(policy, 7, 0.25)
      const b = run(policy, 7, 0.25)
      assert.equal(a.traceHash, b.traceHash)
      assert.equal(a.makespan, b.makespan)
      assert.equal(a.counters.events, b.counters.events)
      assert.equal(a.counters.messages, b.counters.messages)
      assert.equal(a.bytesMoved, b.bytesMoved)
      assert.ok(a.counters.events > 100, `only ${a.counters.events} events: nothing was simulated`)
      const c = run(policy, 8, 0.25)
      assert.notEqual(c.traceHash, a.traceHash)
    })
  }

  it('the workload generators are seeded: same seed same DAG, another seed another', () => {
    for (const name of ['nixpkgs', 'layered', 'chain', 'independent', 'sleep'] as const) {
      const a = generateWorkload(name, 500, 3)
      const b = generateWorkload(name, 500, 3)
      const c = generateWorkload(name, 500, 4)
      assert.deepEqual(a.jobs, b.jobs, name)
      assert.notDeepEqual(a.jobs.map(j => j.workMs), c.jobs.map(j => j.workMs), name)
    }
  })
})
