// The simulator runs the production scheduler, not a copy: the class it instantiates is the one
// node/scheduler/scheduler.ts exports, and every scheduling step of a simulated run goes through
// that class's handle().
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { Scheduler } from '../../node/scheduler/scheduler.ts'
import { makeCluster } from '../../bench/sim/cluster.ts'
import { SIMULATED_SCHEDULER } from '../../bench/sim/policy-meshbuild.ts'
import { simulate } from '../../bench/sim/simulator.ts'
import { generateWorkload } from '../../bench/sim/workloads.ts'

describe('simulator identity', () => {
  it('instantiates the Scheduler class of node/scheduler/scheduler.ts', () => {
    assert.equal(SIMULATED_SCHEDULER, Scheduler)
  })

  it('drives a simulated run through Scheduler.prototype.handle', () => {
    const original = Scheduler.prototype.handle
    let calls = 0
    const selves = new Set<string>()
    Scheduler.prototype.handle = function (this: Scheduler, ...args: Parameters<Scheduler['handle']>) {
      calls++
      selves.add(this.config.selfId)
      return original.apply(this, args)
    }
    try {
      const r = simulate({ workload: generateWorkload('layered', 60, 1), cluster: makeCluster(4, 1), policy: 'meshbuild', seed: 1 })
      assert.equal(calls, r.counters.handleCalls)
      assert.ok(calls > 100, `only ${calls} calls`)
      assert.equal(selves.size, 4, 'every node runs its own Scheduler')
      assert.ok(r.allBuilt)
    } finally {
      Scheduler.prototype.handle = original
    }
  })
})
