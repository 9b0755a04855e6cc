// Build-time estimates in the simulator (the owner's history, --estimates): on the nixpkgs-like
// DAG, whose heavy-tailed leaves decide the makespan, knowing them keeps the longest builds for
// the fastest machines and starts them first. Without, a long build lands on a slow machine.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { makeCluster } from '../../bench/sim/cluster.ts'
import { simulate, type SimResult } from '../../bench/sim/simulator.ts'
import { generateWorkload, type Estimates } from '../../bench/sim/workloads.ts'

function run (seed: number, estimates?: Estimates): SimResult {
  return simulate({ workload: generateWorkload('nixpkgs', 2000, seed), cluster: makeCluster(30, seed), policy: 'meshbuild', seed, ...(estimates !== undefined ? { estimates } : {}) })
}

describe('build-time estimates in the simulator', () => {
  it('bring the nixpkgs-like DAG near its bound where the run without them is far from it', () => {
    for (const seed of [1, 2]) {
      const without = run(seed)
      const exact = run(seed, { kind: 'exact' })
      assert.ok(without.allBuilt && exact.allBuilt, `seed ${seed}: not all built`)
      assert.ok(without.ratio > 1.4, `seed ${seed}: without estimates already ${without.ratio.toFixed(3)} × LB`)
      assert.ok(exact.ratio < 1.1, `seed ${seed}: with exact estimates ${exact.ratio.toFixed(3)} × LB`)
    }
  })

  it('help with estimates off by a log-normal factor (sigma 0.3) too', () => {
    const without = run(2)
    const noisy = run(2, { kind: 'noisy', sigma: 0.3 })
    assert.ok(noisy.allBuilt)
    assert.ok(noisy.ratio < 0.8 * without.ratio, `noisy ${noisy.ratio.toFixed(3)} against ${without.ratio.toFixed(3)} × LB without`)
  })

  it('are the same for the same seed: the noise is drawn per job, not per run', () => {
    const a = run(3, { kind: 'noisy', sigma: 0.5 })
    const b = run(3, { kind: 'noisy', sigma: 0.5 })
    assert.equal(a.traceHash, b.traceHash)
  })
})
