// Calibration from the real mesh: reads the `join --trace` files of one run's nodes and prints
// the simulator's costs that the trace measures, as a JSON profile for `--calibration-file`.
//
//   node bench/sim/calibrate.ts [--zero-length] TRACE.json... > calibration.json
//
// Medians over the jobs (a trace taken on a busy machine has a long tail): the steal round trip
// (steal-asked → the victim's first grant to that thief), a stolen job's fetch (granted →
// inputs-fetched), the owner's import (result-received → outputs-imported); with
// --zero-length (builders that do nothing), the build start-up (build-started → build-finished
// of stolen jobs). Each is turned into the profile's fixed cost by taking off what the
// simulator adds by itself (latencies, per-path import).
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import type { TraceEvent } from '../../node/mesh/job-trace.ts'
import { parseTrace } from '../trace-report.ts'
import { CALIBRATIONS, type Calibration } from './calibration.ts'

const MICROS_PER_MS = 1000

export interface TraceFigures {
  stealRoundTripMs?: number
  fetchMs?: number
  importMs?: number
  buildMs?: number
  stolenJobs: number
}

export function traceFigures (events: readonly TraceEvent[]): TraceFigures {
  const nameOf = new Map<number, string>()
  for (const e of events) if (e.ph === 'M' && e.name === 'process_name' && typeof e.args.name === 'string') nameOf.set(e.pid, e.args.name)
  const instants = events.filter(e => e.ph === 'i').sort((a, b) => a.ts - b.ts)
  const first = new Map<string, Map<string, number>>()
  for (const e of instants) {
    const drv = e.args.drv
    if (typeof drv !== 'string' || drv === '') continue
    const m = first.get(drv) ?? new Map<string, number>()
    first.set(drv, m)
    if (!m.has(e.name)) m.set(e.name, e.ts)
  }
  const span = (from: string, to: string, only?: (m: Map<string, number>) => boolean): number[] => {
    const out: number[] = []
    for (const m of first.values()) {
      const a = m.get(from)
      const b = m.get(to)
      if (a !== undefined && b !== undefined && (only === undefined || only(m))) out.push((b - a) / MICROS_PER_MS)
    }
    return out
  }
  const stolen = (m: Map<string, number>): boolean => m.has('granted')
  const grants = instants.filter(e => e.name === 'granted')
  const stealRoundTrips: number[] = []
  for (const ask of instants.filter(e => e.name === 'steal-asked')) {
    const thief = nameOf.get(ask.pid)
    const g = grants.find(x => x.ts >= ask.ts && x.args.to === thief)
    if (g !== undefined) stealRoundTrips.push((g.ts - ask.ts) / MICROS_PER_MS)
  }
  const fetches = span('granted', 'inputs-fetched')
  return {
    ...opt('stealRoundTripMs', median(stealRoundTrips)),
    ...opt('fetchMs', median(fetches)),
    ...opt('importMs', median(span('result-received', 'outputs-imported'))),
    ...opt('buildMs', median(span('build-started', 'build-finished', stolen))),
    stolenJobs: fetches.length
  }
}

/** The profile those figures give, on top of `base` for everything a trace does not show. */
export function calibrationFrom (f: TraceFigures, zeroLength: boolean, base: Calibration = CALIBRATIONS.daemon): Calibration {
  const service = f.stealRoundTripMs !== undefined ? Math.max(0, f.stealRoundTripMs - 2 * base.oneWayMs) : base.requestServiceMs
  const roundTrip = 2 * base.oneWayMs + service
  return {
    ...base,
    requestServiceMs: service,
    // A fetch is a round trip, the stream and an import of the .drv and a few inputs.
    fetchOverheadMs: f.fetchMs !== undefined ? Math.max(0, f.fetchMs - roundTrip - 2 * base.importPerPathMs) : base.fetchOverheadMs,
    importOverheadMs: f.importMs !== undefined ? Math.max(0, f.importMs - roundTrip - base.importPerPathMs) : base.importOverheadMs,
    buildStartupMs: zeroLength && f.buildMs !== undefined ? f.buildMs : base.buildStartupMs
  }
}

function median (xs: number[]): number | undefined {
  if (xs.length === 0) return undefined
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m] : ((s[m - 1] as number) + (s[m] as number)) / 2
}

function opt<K extends string> (key: K, v: number | undefined): Partial<Record<K, number>> {
  return v === undefined ? {} : { [key]: v } as Record<K, number>
}

function main (argv: string[]): void {
  const zeroLength = argv.includes('--zero-length')
  const files = argv.filter(a => !a.startsWith('--'))
  if (files.length === 0) {
    process.stderr.write('usage: node bench/sim/calibrate.ts [--zero-length] TRACE.json... > calibration.json\n')
    process.exitCode = 2
    return
  }
  const figures = traceFigures(files.flatMap(f => parseTrace(readFileSync(f, 'utf8'))))
  process.stderr.write(`from ${figures.stolenJobs} stolen job(s): ${JSON.stringify(figures)}\n`)
  process.stdout.write(`${JSON.stringify(calibrationFrom(figures, zeroLength), null, 2)}\n`)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) main(process.argv.slice(2))
