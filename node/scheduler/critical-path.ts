// Longest remaining path: the estimated work, this job included, between a job and the end of
// the longest chain of dependents it unblocks. Jobs on long chains go first. A job without an
// estimate (no earlier build of that name) counts as UNKNOWN_ESTIMATE_MS, so with no estimates at
// all the path is the number of jobs on it, in units of that constant.
import type { JobSpec } from './job.ts'

/** What a job nobody has built before is taken to cost: one unit of path. */
export const UNKNOWN_ESTIMATE_MS = 60_000

export function criticalPaths (jobs: readonly JobSpec[]): Map<string, number> {
  const byPath = new Map(jobs.map(j => [j.drvPath, j]))
  const dependents = new Map<string, string[]>()
  for (const j of jobs) {
    for (const input of j.inputJobs) {
      if (!byPath.has(input)) continue
      const list = dependents.get(input) ?? []
      list.push(j.drvPath)
      dependents.set(input, list)
    }
  }
  const memo = new Map<string, number>()
  // Iterative DFS: a deep DAG (thousands of levels) must not overflow the stack.
  for (const start of byPath.keys()) {
    if (memo.has(start)) continue
    const stack: Array<{ path: string, expanded: boolean }> = [{ path: start, expanded: false }]
    while (stack.length > 0) {
      const top = stack[stack.length - 1]
      if (top === undefined) break
      if (memo.has(top.path)) { stack.pop(); continue }
      const deps = dependents.get(top.path) ?? []
      if (!top.expanded) {
        top.expanded = true
        for (const d of deps) if (!memo.has(d)) stack.push({ path: d, expanded: false })
        continue
      }
      let longest = 0
      for (const d of deps) longest = Math.max(longest, memo.get(d) ?? 0)
      memo.set(top.path, longest + (byPath.get(top.path)?.estimatedMs ?? UNKNOWN_ESTIMATE_MS))
      stack.pop()
    }
  }
  return memo
}
