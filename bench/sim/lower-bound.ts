// No schedule finishes before the longest dependency chain built at the fastest machine's speed,
// nor before all work spread over all capacity (slots × speed): LB = the larger of the two.
// Start-up costs and transfers are left out: the bound is what the work itself needs.
import type { SimNodeSpec } from './cluster.ts'
import type { SimJob } from './workloads.ts'

export interface LowerBound {
  criticalPathMs: number
  workBoundMs: number
  lowerBoundMs: number
}

export function lowerBound (jobs: readonly SimJob[], nodes: readonly SimNodeSpec[]): LowerBound {
  const fastest = Math.max(...nodes.map(n => n.speedFactor))
  const capacity = nodes.reduce((s, n) => s + n.slots * n.speedFactor, 0)
  // Inputs have smaller indices: one pass in index order is a topological pass.
  const finish = new Float64Array(jobs.length)
  let longest = 0
  let work = 0
  for (const j of jobs) {
    let start = 0
    for (const i of j.inputs) start = Math.max(start, finish[i] ?? 0)
    const f = start + j.workMs
    finish[j.index] = f
    longest = Math.max(longest, f)
    work += j.workMs
  }
  const criticalPathMs = longest / fastest
  const workBoundMs = work / capacity
  return { criticalPathMs, workBoundMs, lowerBoundMs: Math.max(criticalPathMs, workBoundMs) }
}
