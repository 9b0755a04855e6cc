// bench/trace-report.ts: the per-phase gaps and makespan of merged job traces.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { parseTrace, traceReport } from '../../bench/trace-report.ts'
import type { TraceEvent } from '../../node/mesh/job-trace.ts'

// Wall-clock microseconds, as the nodes write them.
const T0 = 1_796_000_000_000_000
const OWNER = 1
const WORKER = 2

function ev (pid: number, drv: string, name: string, ms: number): TraceEvent {
  return { name, ph: 'i', s: 'p', ts: T0 + ms * 1000, pid, tid: 0, args: { drv } }
}

// Node 1 owns x, y and z; it builds x itself, node 2 steals y and z.
const ownerTrace: TraceEvent[] = [
  { name: 'process_name', ph: 'M', ts: T0 - 5000, pid: OWNER, tid: 0, args: { name: 'owner' } },
  ev(OWNER, 'x', 'ready', 0), ev(OWNER, 'y', 'ready', 0), ev(OWNER, 'z', 'ready', 0),
  ev(OWNER, 'x', 'build-started', 1), ev(OWNER, 'y', 'granted', 2), ev(OWNER, 'z', 'granted', 6),
  ev(OWNER, 'x', 'build-finished', 11), ev(OWNER, 'x', 'built', 11),
  ev(OWNER, 'y', 'result-received', 27), ev(OWNER, 'y', 'outputs-imported', 31),
  ev(OWNER, 'z', 'result-received', 45), ev(OWNER, 'z', 'outputs-imported', 47)
]
const workerTrace: TraceEvent[] = [
  { name: 'steal-asked', ph: 'i', s: 'p', ts: T0 + 1000, pid: WORKER, tid: 0, args: { drv: '', victim: 'owner', want: 2 } },
  ev(WORKER, 'y', 'inputs-fetched', 5), ev(WORKER, 'y', 'build-started', 6), ev(WORKER, 'y', 'build-finished', 26),
  ev(WORKER, 'z', 'inputs-fetched', 11), ev(WORKER, 'z', 'build-started', 12), ev(WORKER, 'z', 'build-finished', 42)
]

describe('traceReport', () => {
  it('gives the mean of each phase gap over the jobs that have it, and the makespan', () => {
    const r = traceReport([...ownerTrace, ...workerTrace])
    assert.equal(r.jobs, 3)
    assert.equal(r.makespanMs, 47)
    assert.deepEqual(r.gaps, [
      { gap: 'ready→granted', jobs: 3, meanMs: 3 }, // x 1 (to build-started), y 2, z 6
      { gap: 'granted→inputs-fetched', jobs: 2, meanMs: 4 },
      { gap: 'inputs-fetched→build-started', jobs: 2, meanMs: 1 },
      { gap: 'build-started→build-finished', jobs: 3, meanMs: 20 },
      { gap: 'build-finished→result-received', jobs: 2, meanMs: 2 },
      { gap: 'result-received→outputs-imported', jobs: 2, meanMs: 3 }
    ])
  })
})

describe('criticalPath', () => {
  it('walks back from the job built last through the input that released each job, summing each gap', () => {
    // a (own build) releases b, stolen; c is independent and built before b became ready.
    const events = [
      ev(OWNER, 'a', 'ready', 0), ev(OWNER, 'c', 'ready', 0), ev(OWNER, 'a', 'build-started', 1), ev(OWNER, 'c', 'build-started', 2),
      ev(OWNER, 'c', 'build-finished', 5), ev(OWNER, 'c', 'built', 5),
      ev(OWNER, 'a', 'build-finished', 11), ev(OWNER, 'a', 'built', 11), ev(OWNER, 'b', 'ready', 11), ev(OWNER, 'b', 'granted', 13),
      ev(WORKER, 'b', 'inputs-fetched', 15), ev(WORKER, 'b', 'build-started', 16), ev(WORKER, 'b', 'build-finished', 36),
      ev(OWNER, 'b', 'result-received', 38), ev(OWNER, 'b', 'outputs-imported', 41), ev(OWNER, 'b', 'built', 41)
    ]
    const cp = traceReport(events).criticalPath
    assert.deepEqual(cp.drvs, ['a', 'b'])
    assert.equal(cp.spanMs, 41)
    assert.deepEqual(Object.fromEntries(cp.gaps.map(g => [g.gap, g.ms])), {
      'ready→build-started': 1,
      'build-started→build-finished': 30,
      'build-finished→built': 0,
      'release (built → next ready)': 0,
      'ready→granted': 2,
      'granted→inputs-fetched': 2,
      'inputs-fetched→build-started': 1,
      'build-finished→result-received': 2,
      'result-received→outputs-imported': 3,
      'outputs-imported→built': 0
    })
  })
})

describe('parseTrace', () => {
  const lines = workerTrace.map(e => JSON.stringify(e))
  it('reads a closed file', () => {
    assert.deepEqual(parseTrace(`[\n${lines.join(',\n')}\n]\n`), workerTrace)
  })
  it('reads the file of a killed node, without its closing bracket', () => {
    assert.deepEqual(parseTrace(`[\n${lines.join(',\n')}`), workerTrace)
    assert.deepEqual(parseTrace(`[\n${lines.join(',\n')},\n`), workerTrace)
    assert.deepEqual(parseTrace('[\n'), [])
  })
})
