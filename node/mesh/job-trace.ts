// A trace of every job's life on this node (`join --trace FILE`): one instant event per phase
// (ready, granted, inputs fetched, build started/finished, result received, outputs imported),
// written as Chrome trace-event JSON so chrome://tracing, Perfetto or bench/trace-report.ts read it.
//
// Format: the JSON Array Format — `[`, then one event per line, comma-separated, `]` on close.
// Chrome and Perfetto accept the file without its `]`, which is what a killed node leaves.
// Timestamps are the wall clock in microseconds, not a monotonic clock: test hosts share one
// machine clock, so the traces of several nodes merge onto one timeline.
import { closeSync, openSync, writeSync } from 'node:fs'
import type { Decision } from '../scheduler/scheduler.ts'
import type { JobState } from '../scheduler/job.ts'

export type TraceArgs = Record<string, string | number | boolean>

export interface JobTrace {
  /** Names the node whose trace this is (its peer id), once the network has started. */
  start: (node: string) => void
  /** Records that the job of `drvPath` reached `phase` now. */
  phase: (drvPath: string, phase: string, args?: TraceArgs) => void
  close: () => void
}

/** One event of the file, as written (and read back by bench/trace-report.ts). */
export interface TraceEvent {
  name: string
  ph: 'i' | 'M'
  s?: 'p'
  ts: number
  pid: number
  tid: number
  args: Record<string, unknown>
}

export const NO_TRACE: JobTrace = { start: () => {}, phase: () => {}, close: () => {} }

const MICROS_PER_MS = 1000

/** Wall-clock microseconds, with the sub-millisecond part of the monotonic clock. */
function nowMicros (): number {
  return Math.round((performance.timeOrigin + performance.now()) * MICROS_PER_MS)
}

/** A stable pid for a node: the same peer id gives the same track in every trace. */
export function tracePid (node: string): number {
  let h = 2166136261
  for (let i = 0; i < node.length; i++) h = Math.imul(h ^ node.charCodeAt(i), 16777619)
  // Positive 31-bit: some viewers read pid as a signed int.
  return (h >>> 1) || 1
}

/** Writes the trace to `file` (truncated), synchronously, so a killed node loses no event. */
export class FileJobTrace implements JobTrace {
  private fd: number | undefined
  private pid = 0
  private first = true

  constructor (file: string) {
    this.fd = openSync(file, 'w')
    writeSync(this.fd, '[\n')
  }

  start (node: string): void {
    this.pid = tracePid(node)
    this.write({ name: 'process_name', ph: 'M', ts: nowMicros(), pid: this.pid, tid: 0, args: { name: node } })
  }

  phase (drvPath: string, phase: string, args: TraceArgs = {}): void {
    this.write({ name: phase, ph: 'i', s: 'p', ts: nowMicros(), pid: this.pid, tid: 0, args: { drv: drvPath, ...args } })
  }

  close (): void {
    if (this.fd === undefined) return
    writeSync(this.fd, '\n]\n')
    closeSync(this.fd)
    this.fd = undefined
  }

  private write (event: TraceEvent): void {
    if (this.fd === undefined) return
    writeSync(this.fd, (this.first ? '' : ',\n') + JSON.stringify(event))
    this.first = false
  }
}

/**
 * A decision subscriber recording the phases the scheduler's decisions show. `selfId` tells
 * own builds from stolen ones; a job's state is traced only when it changes.
 */
export function traceDecisions (trace: JobTrace, selfId: string): (d: Decision) => void {
  const states = new Map<string, JobState>()
  return (d) => {
    switch (d.type) {
      // A slot is taken; a stolen job's inputs are fetched next, so builder.ts traces build-started.
      case 'build': trace.phase(d.item.drvPath, 'slot-taken', { worker: selfId, owner: d.item.owner }); break
      case 'steal': trace.phase('', 'steal-asked', { victim: d.from, want: d.want }); break
      case 'grant': for (const item of d.items) trace.phase(item.drvPath, 'granted', { to: d.to }); break
      // The worker's report of a stolen job; own builds are traced by effects.ts.
      case 'report': trace.phase(d.drvPath, 'build-finished', { owner: d.owner, ok: d.outcome.ok }); break
      case 'import': trace.phase(d.drvPath, 'result-received', { from: d.from }); break
      case 'submission-finished': trace.phase('', 'submission-finished', { id: d.id, ok: d.ok }); break
      case 'job-changed': {
        const { job } = d
        if (states.get(job.drvPath) === job.state) break
        states.set(job.drvPath, job.state)
        if (job.state === 'ready') trace.phase(job.drvPath, 'ready', { owner: selfId })
        else if (job.state === 'built') trace.phase(job.drvPath, 'built', { owner: selfId, builtBy: job.builtBy ?? '' })
        else if (job.state === 'failed') trace.phase(job.drvPath, 'failed', { owner: selfId, reason: job.failure?.message ?? '' })
        break
      }
      default: break
    }
  }
}
