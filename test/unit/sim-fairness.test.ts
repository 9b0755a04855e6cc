// Several owners sharing the mesh, in the simulator (the production scheduler): two owners
// submitting at once get the mesh's slots in proportion to their shares (join --share) while
// both have work, and finish accordingly. Owners are nodes 0 and 1, on alike machines, each
// submitting its own copy of the same DAG (distinct derivations).
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { makeCluster } from '../../bench/sim/cluster.ts'
import { simulate, type SimResult } from '../../bench/sim/simulator.ts'
import { generateWorkload } from '../../bench/sim/workloads.ts'

const SEEDS = [1, 2, 3]

/** 2 × 2,000 sleep-like jobs (0–4 s, light tails: the makespans show the shares) on 30 nodes. */
function run (seed: number, shares: number[]): SimResult {
  const cluster = makeCluster(30, seed)
  // The second owner's machine is the first's twin: only the shares tell them apart.
  const first = cluster[0]
  const second = cluster[1]
  if (first === undefined || second === undefined) throw new Error('no cluster')
  cluster[1] = { ...first, index: 1, id: second.id }
  return simulate({ workload: generateWorkload('sleep', 2000, seed), cluster, policy: 'meshbuild', seed, owners: 2, shares })
}

function owners (r: SimResult): [{ makespan: number, slotShare: number }, { makespan: number, slotShare: number }] {
  const [a, b] = r.owners ?? []
  if (a === undefined || b === undefined) throw new Error('the run reported no owners')
  return [a, b]
}

describe('owners sharing the mesh in the simulator', () => {
  it('with equal shares and equal work, two owners finish within 10 % of each other', () => {
    for (const seed of SEEDS) {
      const r = run(seed, [1, 1])
      assert.ok(r.allBuilt, `seed ${seed}: not every job built`)
      const [a, b] = owners(r)
      const spread = Math.max(a.makespan, b.makespan) / Math.min(a.makespan, b.makespan)
      assert.ok(spread < 1.10, `seed ${seed}: owners finished at ${a.makespan.toFixed(1)} s and ${b.makespan.toFixed(1)} s`)
      assert.ok(Math.abs(a.slotShare - 0.5) < 0.05, `seed ${seed}: the first owner had ${(100 * a.slotShare).toFixed(1)} % of the slots`)
    }
  })

  it('with shares 1:2, the heavier owner gets about twice the slots and finishes first', () => {
    for (const seed of SEEDS) {
      const r = run(seed, [1, 2])
      assert.ok(r.allBuilt, `seed ${seed}: not every job built`)
      const [light, heavy] = owners(r)
      // Choosing victims by queue length alone gave each owner 50 % and the same makespan.
      assert.ok(heavy.slotShare > 0.6 && heavy.slotShare < 0.72, `seed ${seed}: the share-2 owner had ${(100 * heavy.slotShare).toFixed(1)} % of the slots`)
      assert.ok(heavy.makespan < 0.9 * light.makespan, `seed ${seed}: share 2 finished at ${heavy.makespan.toFixed(1)} s, share 1 at ${light.makespan.toFixed(1)} s`)
    }
  })

  it('simulates several owners for meshbuild only: the baselines have one submitter', () => {
    for (const policy of ['static-hook', 'central-pull'] as const) {
      assert.throws(() => simulate({ workload: generateWorkload('sleep', 20, 1), cluster: makeCluster(4, 1), policy, seed: 1, owners: 2 }),
        (e: Error) => e.name === 'SimUsageError' && /meshbuild only/.test(e.message))
    }
  })
})
