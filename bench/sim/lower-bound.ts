// No schedule finishes before the longest dependency chain built at the fastest machine's speed,
// nor before all work spread over all capacity (slots × speed): LB = the larger of the two.
// Start-up costs and transfers are left out: the bound is what the work itself needs.
//
// Where the DAG has a narrow head that everything needs (nixpkgs-like: stdenv's bootstrap), LB
// is far from reachable: the mesh stands idle while the head builds. A tighter bound, still a
// bound: nothing that depends on job j starts before j's chain of ancestors is built at the
// fastest speed, so makespan ≥ head(j) ÷ fastest + work of j's descendants ÷ capacity, for any j.
// It is taken over jobs along the critical path (where the head is longest), at most
// TIGHT_CANDIDATES of them evenly spaced, each a walk of its descendants.
import type { SimNodeSpec } from './cluster.ts'
import type { SimJob } from './workloads.ts'

export interface LowerBound {
  criticalPathMs: number
  workBoundMs: number
  lowerBoundMs: number
  /** max(LB, the best head-then-descendants bound): no schedule beats it either. */
  tightLowerBoundMs: number
}

const TIGHT_CANDIDATES = 64

export function lowerBound (jobs: readonly SimJob[], nodes: readonly SimNodeSpec[]): LowerBound {
  const fastest = Math.max(...nodes.map(n => n.speedFactor))
  const capacity = nodes.reduce((s, n) => s + n.slots * n.speedFactor, 0)
  // Inputs have smaller indices: one pass in index order is a topological pass.
  const finish = new Float64Array(jobs.length)
  const via = new Int32Array(jobs.length).fill(-1)
  let longest = 0
  let last = -1
  let work = 0
  for (const j of jobs) {
    let start = 0
    for (const i of j.inputs) {
      const f = finish[i] ?? 0
      if (f > start) { start = f; via[j.index] = i }
    }
    const f = start + j.workMs
    finish[j.index] = f
    if (f > longest) { longest = f; last = j.index }
    work += j.workMs
  }
  const criticalPathMs = longest / fastest
  const workBoundMs = work / capacity
  const lowerBoundMs = Math.max(criticalPathMs, workBoundMs)
  return { criticalPathMs, workBoundMs, lowerBoundMs, tightLowerBoundMs: Math.max(lowerBoundMs, headBound(jobs, finish, via, last, fastest, capacity)) }
}

function headBound (jobs: readonly SimJob[], finish: Float64Array, via: Int32Array, last: number, fastest: number, capacity: number): number {
  const path: number[] = []
  for (let j = last; j >= 0; j = via[j] ?? -1) path.push(j)
  const step = Math.max(1, Math.ceil(path.length / TIGHT_CANDIDATES))
  const candidates = path.filter((_, k) => k % step === 0)
  const dependents: number[][] = jobs.map(() => [])
  for (const j of jobs) for (const i of j.inputs) dependents[i]?.push(j.index)
  const seen = new Int32Array(jobs.length).fill(-1)
  let best = 0
  for (const c of candidates) {
    let below = 0
    const stack = [...(dependents[c] ?? [])]
    while (stack.length > 0) {
      const d = stack.pop() as number
      if (seen[d] === c) continue
      seen[d] = c
      below += (jobs[d] as SimJob).workMs
      for (const e of dependents[d] ?? []) if (seen[e] !== c) stack.push(e)
    }
    best = Math.max(best, (finish[c] ?? 0) / fastest + below / capacity)
  }
  return best
}
