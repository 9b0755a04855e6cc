// What the scheduler's steal back-off and speed-aware placement buy, read off simulated runs of
// the production scheduler: steal requests per job stay bounded as the mesh grows (thieves do
// not all ask an owner whose offer changed), and a chain's jobs go to the fastest machines.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { makeCluster } from '../../bench/sim/cluster.ts'
import { simulate, type SimResult } from '../../bench/sim/simulator.ts'
import { generateWorkload } from '../../bench/sim/workloads.ts'

const requestsPerJob = (r: SimResult): number => (r.counters.messages - r.counters.gossipPublishes) / r.jobs

describe('meshbuild in the simulator as the mesh grows', () => {
  it('keeps steals and requests per job bounded from 10 to 300 nodes', () => {
    const run = (nodes: number): SimResult => simulate({ workload: generateWorkload('layered', 300, 7), cluster: makeCluster(nodes, 7), policy: 'meshbuild', seed: 7 })
    const small = run(10)
    const large = run(300)
    assert.ok(small.allBuilt && large.allBuilt)
    // Every idle thief asking at every change of the owner's offer made this ~116 at 300 nodes.
    assert.ok(large.stealsPerJob < 10, `${large.stealsPerJob.toFixed(1)} steals per job on 300 nodes`)
    assert.ok(requestsPerJob(large) < 3 * requestsPerJob(small), `requests per job ${requestsPerJob(small).toFixed(1)} on 10 nodes, ${requestsPerJob(large).toFixed(1)} on 300`)
  })

  it('builds long chains on the fastest machines, near the lower bound', () => {
    const r = simulate({ workload: generateWorkload('chain', 1000, 1), cluster: makeCluster(10, 1), policy: 'meshbuild', seed: 1 })
    assert.ok(r.allBuilt)
    // Chain links taken by whichever node asked first made this 2.05.
    assert.ok(r.ratio < 1.4, `makespan ${r.ratio.toFixed(2)} × LB`)
  })
})
