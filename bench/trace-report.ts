// Where a job's time goes, from the traces of `join --trace FILE` (node/mesh/job-trace.ts):
//
//   node bench/trace-report.ts FILE... [--json]
//
// The files of several nodes are merged (their timestamps share the wall clock), events are
// grouped by derivation, and for each gap between two phases the mean over the jobs that have
// both is printed, with the makespan (first to last event). Then the same gaps summed along the
// critical path: from the job built last back through, at each step, the input whose `built`
// released it (the job built last before it became ready, on the owner's clock). Whatever on
// that path is not a build is the time between the lower bound and the makespan.
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { TraceEvent } from '../node/mesh/job-trace.ts'

const MICROS_PER_MS = 1000

/** The gaps reported: [name, from phase, to phase]; a job counts in a gap when it has both. */
export const GAPS: ReadonlyArray<readonly [string, string, string]> = [
  ['ready→granted', 'ready', 'granted'],
  ['granted→inputs-fetched', 'granted', 'inputs-fetched'],
  ['inputs-fetched→build-started', 'inputs-fetched', 'build-started'],
  ['build-started→build-finished', 'build-started', 'build-finished'],
  ['build-finished→result-received', 'build-finished', 'result-received'],
  ['result-received→outputs-imported', 'result-received', 'outputs-imported']
]

export interface GapFigure { gap: string, jobs: number, meanMs: number }
export interface PathFigure { gap: string, ms: number }
export interface CriticalPathReport {
  /** The jobs of the path, first built first. */
  drvs: string[]
  /** From the first job's ready to the last one's built. */
  spanMs: number
  /** Each gap summed over the path, builds included; `release` is built → the next job's ready. */
  gaps: PathFigure[]
}
export interface TraceReport { jobs: number, makespanMs: number, gaps: GapFigure[], criticalPath: CriticalPathReport }

/** A job is taken to be released by an input built at most this long before it became ready: both
 * are decisions of one scheduler event, written one after the other (a larger window would take
 * the last job of an earlier submission for the first one's input). */
const RELEASE_WINDOW_US = 20_000

/** The events of one trace file; a file without its closing `]` (a killed node) is read too. */
export function parseTrace (text: string): TraceEvent[] {
  let body = text.trim().replace(/,\s*$/, '')
  if (!body.endsWith(']')) body += ']'
  return JSON.parse(body) as TraceEvent[]
}

export function traceReport (events: TraceEvent[]): TraceReport {
  const instants = events.filter(e => e.ph === 'i')
  // The first time each job reached each phase (a retried job keeps its first).
  const byDrv = new Map<string, Map<string, number>>()
  for (const e of instants) {
    const drv = e.args.drv
    if (typeof drv !== 'string' || drv === '') continue
    const phases = byDrv.get(drv) ?? new Map<string, number>()
    byDrv.set(drv, phases)
    const seen = phases.get(e.name)
    if (seen === undefined || e.ts < seen) phases.set(e.name, e.ts)
  }
  const gaps = GAPS.map(([gap, from, to]) => {
    const spans: number[] = []
    for (const phases of byDrv.values()) {
      const a = phases.get(from)
      // An own build is never granted: its queue time runs from ready to build-started.
      const b = phases.get(to) ?? (from === 'ready' && to === 'granted' ? phases.get('build-started') : undefined)
      if (a !== undefined && b !== undefined) spans.push(b - a)
    }
    const mean = spans.length === 0 ? 0 : spans.reduce((s, x) => s + x, 0) / spans.length
    return { gap, jobs: spans.length, meanMs: mean / MICROS_PER_MS }
  })
  const ts = instants.map(e => e.ts)
  const makespanMs = ts.length === 0 ? 0 : (Math.max(...ts) - Math.min(...ts)) / MICROS_PER_MS
  return { jobs: byDrv.size, makespanMs, gaps, criticalPath: criticalPath(byDrv) }
}

/** The jobs on the critical path and where their time went (see the head of this file). */
export function criticalPath (byDrv: Map<string, Map<string, number>>): CriticalPathReport {
  const builtAt = (d: string): number | undefined => byDrv.get(d)?.get('built')
  const built = [...byDrv.keys()].filter(d => builtAt(d) !== undefined)
  let cur = built.reduce<string | undefined>((best, d) => best === undefined || (builtAt(d) ?? 0) > (builtAt(best) ?? 0) ? d : best, undefined)
  const drvs: string[] = []
  while (cur !== undefined && !drvs.includes(cur)) {
    drvs.unshift(cur)
    const ready = byDrv.get(cur)?.get('ready')
    if (ready === undefined) break
    let releasedBy: string | undefined
    for (const d of built) {
      const at = builtAt(d) as number
      if (d === cur || at > ready || at < ready - RELEASE_WINDOW_US) continue
      if (releasedBy === undefined || at > (builtAt(releasedBy) as number)) releasedBy = d
    }
    cur = releasedBy
  }
  const sums = new Map<string, number>()
  const add = (gap: string, us: number): void => { sums.set(gap, (sums.get(gap) ?? 0) + us) }
  let previousBuilt: number | undefined
  for (const d of drvs) {
    const p = byDrv.get(d) as Map<string, number>
    // Each job's phases in order; a missing one (an own build has no grant) is skipped.
    const marks = ['ready', 'granted', 'inputs-fetched', 'build-started', 'build-finished', 'result-received', 'outputs-imported', 'built']
      .filter(m => p.has(m)).map(m => [m, p.get(m) as number] as const)
    const readyAt = p.get('ready')
    if (previousBuilt !== undefined && readyAt !== undefined) add('release (built → next ready)', readyAt - previousBuilt)
    for (let i = 1; i < marks.length; i++) {
      const [from, a] = marks[i - 1] as readonly [string, number]
      const [to, b] = marks[i] as readonly [string, number]
      add(`${from}→${to}`, b - a)
    }
    previousBuilt = p.get('built')
  }
  const first = byDrv.get(drvs[0] ?? '')?.get('ready')
  const last = previousBuilt
  return {
    drvs,
    spanMs: first !== undefined && last !== undefined ? (last - first) / MICROS_PER_MS : 0,
    gaps: [...sums].map(([gap, us]) => ({ gap, ms: us / MICROS_PER_MS }))
  }
}

function main (argv: string[]): void {
  const json = argv.includes('--json')
  const files = argv.filter(a => a !== '--json')
  if (files.length === 0) {
    process.stderr.write('usage: node bench/trace-report.ts FILE... [--json]\n')
    process.exitCode = 2
    return
  }
  const report = traceReport(files.flatMap(f => parseTrace(readFileSync(f, 'utf8'))))
  if (json) {
    process.stdout.write(JSON.stringify(report, null, 2) + '\n')
    return
  }
  process.stdout.write(`${report.jobs} job(s), makespan ${report.makespanMs.toFixed(1)} ms\n`)
  for (const g of report.gaps) process.stdout.write(`${g.gap.padEnd(34)} ${g.meanMs.toFixed(1).padStart(10)} ms  (${g.jobs} job(s))\n`)
  const cp = report.criticalPath
  process.stdout.write(`critical path: ${cp.drvs.length} job(s), ${cp.spanMs.toFixed(1)} ms from the first one ready to the last one built\n`)
  for (const g of cp.gaps) process.stdout.write(`  ${g.gap.padEnd(34)} ${g.ms.toFixed(1).padStart(10)} ms\n`)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main(process.argv.slice(2))
