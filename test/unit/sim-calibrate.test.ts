// bench/sim/calibrate.ts reads a run's `join --trace` events into the simulator's costs: the
// medians of the steal round trip, a stolen job's fetch and the owner's import, less what the
// simulator adds by itself.
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import type { TraceEvent } from '../../node/mesh/job-trace.ts'
import { calibrationFrom, traceFigures } from '../../bench/sim/calibrate.ts'
import { CALIBRATIONS } from '../../bench/sim/calibration.ts'

const OWNER = 1
const THIEF = 2
const ms = (x: number): number => x * 1000

function at (pid: number, name: string, t: number, args: Record<string, unknown>): TraceEvent {
  return { name, ph: 'i', s: 'p', ts: ms(t), pid, tid: 0, args }
}

/** Three stolen jobs with fetch 100/200/300 ms, import 40/50/60 ms, steal round trips 5/7/9 ms. */
function events (): TraceEvent[] {
  const out: TraceEvent[] = [
    { name: 'process_name', ph: 'M', ts: 0, pid: OWNER, tid: 0, args: { name: 'owner-peer' } },
    { name: 'process_name', ph: 'M', ts: 0, pid: THIEF, tid: 0, args: { name: 'thief-peer' } }
  ]
  const fetch = [100, 200, 300]
  const imp = [40, 50, 60]
  const rtt = [5, 7, 9]
  for (let i = 0; i < 3; i++) {
    const drv = `/nix/store/${String(i).repeat(32)}-j${i}.drv`
    const t0 = 1000 * (i + 1)
    out.push(at(THIEF, 'steal-asked', t0, { drv: '', victim: 'owner-peer', want: 1 }))
    out.push(at(OWNER, 'granted', t0 + (rtt[i] ?? 0), { drv, to: 'thief-peer' }))
    out.push(at(THIEF, 'inputs-fetched', t0 + (rtt[i] ?? 0) + (fetch[i] ?? 0), { drv }))
    out.push(at(THIEF, 'build-started', t0 + 400, { drv }))
    out.push(at(THIEF, 'build-finished', t0 + 480, { drv }))
    out.push(at(OWNER, 'result-received', t0 + 500, { drv }))
    out.push(at(OWNER, 'outputs-imported', t0 + 500 + (imp[i] ?? 0), { drv }))
  }
  return out
}

describe('calibration from traces', () => {
  it('takes the medians', () => {
    const f = traceFigures(events())
    assert.deepEqual(f, { stealRoundTripMs: 7, fetchMs: 200, importMs: 50, buildMs: 80, stolenJobs: 3 })
  })

  it('turns them into a profile, build start-up only for zero-length builders', () => {
    const base = CALIBRATIONS.daemon
    const c = calibrationFrom(traceFigures(events()), false)
    assert.equal(c.requestServiceMs, 7 - 2 * base.oneWayMs)
    const roundTrip = 2 * base.oneWayMs + c.requestServiceMs
    assert.equal(c.fetchOverheadMs, 200 - roundTrip - 2 * base.importPerPathMs)
    assert.equal(c.importOverheadMs, 50 - roundTrip - base.importPerPathMs)
    assert.equal(c.buildStartupMs, base.buildStartupMs)
    assert.equal(calibrationFrom(traceFigures(events()), true).buildStartupMs, 80)
  })
})
