// Where a job's time goes, from the traces of `join --trace FILE` (node/mesh/job-trace.ts):
//
//   node bench/trace-report.ts FILE... [--json]
//
// The files of several nodes are merged (their timestamps share the wall clock), events are
// grouped by derivation, and for each gap between two phases the mean over the jobs that have
// both is printed, with the makespan (first to last event).
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
export interface TraceReport { jobs: number, makespanMs: number, gaps: GapFigure[] }

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
  return { jobs: byDrv.size, makespanMs, gaps }
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
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main(process.argv.slice(2))
