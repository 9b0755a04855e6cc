// Every workload under every policy, with and without node failures, finishes with every job
// accounted for (the simulator's end check): built, or failed only where nodes died. The
// figures a user reads are consistent: makespan at or above the lower bound, messages counted.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { makeCluster } from '../../bench/sim/cluster.ts'
import { lowerBound } from '../../bench/sim/lower-bound.ts'
import { POLICIES } from '../../bench/sim/policy.ts'
import { simulate } from '../../bench/sim/simulator.ts'
import { generateWorkload, WORKLOADS } from '../../bench/sim/workloads.ts'

const JOBS = 150
const NODES = 8

describe('simulated runs', () => {
  for (const workload of WORKLOADS) {
    for (const policy of POLICIES) {
      it(`${workload} × ${policy}: all built without failures, accounted for with them`, () => {
        const w = generateWorkload(workload, JOBS, 5)
        const cluster = makeCluster(NODES, 5)
        const r = simulate({ workload: w, cluster, policy, seed: 5 })
        assert.ok(r.allBuilt, 'every job built')
        assert.equal(r.deaths, 0)
        assert.ok(r.makespan >= r.lowerBound, `makespan ${r.makespan} below LB ${r.lowerBound}`)
        assert.ok(r.makespan >= r.tightLowerBound && r.tightLowerBound >= r.lowerBound, `makespan ${r.makespan}, tight bound ${r.tightLowerBound}, LB ${r.lowerBound}`)
        assert.ok(r.messagesPerJob > 0)
        assert.deepEqual(r.counters.unknownDecisions, {})
        const f = simulate({ workload: w, cluster, policy, seed: 5, failRate: 0.4 })
        assert.equal(f.deaths, Math.round(0.4 * (NODES - 1)))
        // The baselines retry a lost build without limit: they always finish everything.
        if (policy !== 'meshbuild') assert.ok(f.allBuilt)
      })
    }
  }

  it('meshbuild with --check-reproducible builds every job twice, on two peers', () => {
    const w = generateWorkload('layered', 60, 9)
    const r = simulate({ workload: w, cluster: makeCluster(5, 9), policy: 'meshbuild', seed: 9, check: true, timeline: true })
    assert.ok(r.allBuilt)
    const builders = new Map<number, Set<number>>()
    for (const t of r.timeline ?? []) if (t.end >= 0) builders.set(t.job, (builders.get(t.job) ?? new Set()).add(t.node))
    for (const j of w.jobs) assert.equal(builders.get(j.index)?.size, 2, `${j.name} built on ${[...(builders.get(j.index) ?? [])].join(', ')}`)
  })

  it('failures at chosen times: a worker dying mid-build loses nothing', () => {
    const w = generateWorkload('independent', 100, 4)
    const cluster = makeCluster(4, 4)
    for (const policy of POLICIES) {
      const r = simulate({ workload: w, cluster, policy, seed: 4, failures: [{ node: 1, atMs: 10_000 }, { node: 2, atMs: 20_000 }], timeline: true })
      assert.equal(r.deaths, 2, policy)
      assert.ok(r.allBuilt, policy)
      // Builds were under way on the dying nodes, and were done again elsewhere.
      const lost = (r.timeline ?? []).filter(t => t.end < 0)
      assert.ok(lost.length > 0, `${policy}: no build vanished with its node`)
      assert.ok(lost.every(t => t.node === 1 || t.node === 2), policy)
    }
  })

  it('the lower bound is the larger of the critical path at the fastest speed and work ÷ capacity', () => {
    const w = generateWorkload('chain', 10, 1)
    const cluster = makeCluster(3, 1, { speeds: [2], slots: [4] })
    const lb = lowerBound(w.jobs, cluster)
    const work = w.jobs.reduce((s, j) => s + j.workMs, 0)
    assert.equal(lb.criticalPathMs, work / 2)
    assert.equal(lb.workBoundMs, work / (3 * 4 * 2))
    assert.equal(lb.lowerBoundMs, work / 2)
    // A chain: nothing is left to spread after its head, so the tighter bound adds nothing.
    assert.equal(lb.tightLowerBoundMs, work / 2)
  })

  it('the tighter bound counts the fan-out that must wait for the head it depends on', () => {
    // One 10 s job everything needs, then 100 jobs of 1 s, on 10 slots of speed 1: LB says 11 s
    // (path 11 s, work 110 s ÷ 10), but the 100 s of fan-out start only at 10 s: 20 s at best.
    const head = { index: 0, name: 'head', drvPath: '/nix/store/h.drv', outputs: {}, inputs: [], system: 'x86_64-linux', requiredFeatures: [], workMs: 10_000, outputBytes: 0 }
    const jobs = [head, ...Array.from({ length: 100 }, (_, k) => ({ ...head, index: k + 1, name: `leaf${k}`, inputs: [0], workMs: 1_000 }))]
    const lb = lowerBound(jobs, makeCluster(1, 1, { speeds: [1], slots: [10] }))
    assert.equal(lb.lowerBoundMs, 11_000)
    assert.equal(lb.tightLowerBoundMs, 20_000)
  })
})
