// The owner's side of the build history: a build time, reported with a result or measured here,
// is held until the scheduler has admitted that build (the job is built by that builder), then
// recorded normalised to speed factor 1 (ms × the builder's speed factor). A report the scheduler
// refused (a job not granted to that peer, a lapsed lease) or a build whose outputs could not be
// imported never reaches the history.
import { TERMINAL_STATES, type Job } from '../scheduler/job.ts'
import type { Decision } from '../scheduler/scheduler.ts'
import type { BuildHistory } from '../state/build-history.ts'

/** Derivations with times waiting for their job to be built; the oldest are forgotten past this. */
export const MAX_PENDING_TIMES = 10_000

export interface BuildTimesInit {
  history: Pick<BuildHistory, 'record'>
  selfId: string
  selfSpeedFactor: number
  /** The speed factor a peer announces (its beacon in the peer table), if it is known. */
  speedFactor: (peerId: string) => number | undefined
  job: (drvPath: string) => Job | undefined
}

export class BuildTimes {
  private readonly init: BuildTimesInit
  /** drvPath -> builder -> ms at speed factor 1, in order of arrival. */
  private readonly pending = new Map<string, Map<string, number>>()

  constructor (init: BuildTimesInit) {
    this.init = init
  }

  /** This node built its own job in `buildMs`: call before the scheduler hears of the build. */
  readonly builtHere = (drvPath: string, buildMs: number): void => {
    this.hold(drvPath, this.init.selfId, buildMs * this.init.selfSpeedFactor)
  }

  /** A peer reported `buildMs` for `drvPath`: call after the scheduler took the report; kept only if it accepted it. */
  readonly reported = (from: string, drvPath: string, buildMs: number): void => {
    const job = this.init.job(drvPath)
    if (job === undefined || TERMINAL_STATES.has(job.state)) return
    const accepted = (job.state === 'importing' && job.worker === from) || (job.checkBuilds ?? []).some(b => b.builtBy === from)
    const speed = this.init.speedFactor(from)
    if (!accepted || speed === undefined) return
    this.hold(drvPath, from, buildMs * speed)
  }

  /** A decision subscriber: a built job records its builders' times; any other end drops them. */
  readonly onDecision = (d: Decision): void => {
    if (d.type !== 'job-changed' || !TERMINAL_STATES.has(d.job.state)) return
    const job = d.job
    const times = this.pending.get(job.drvPath)
    if (times === undefined) return
    this.pending.delete(job.drvPath)
    if (job.state !== 'built') return
    // A checked job was built twice, both builds admitted once their hashes agreed.
    const builders = new Set([...(job.checkBuilds ?? []).map(b => b.builtBy), ...(job.builtBy !== undefined ? [job.builtBy] : [])])
    const now = Date.now()
    for (const [builder, ms] of times) if (builders.has(builder)) this.init.history.record(job.drvPath, ms, now)
  }

  private hold (drvPath: string, builder: string, ms: number): void {
    const times = this.pending.get(drvPath) ?? new Map<string, number>()
    times.set(builder, ms)
    this.pending.set(drvPath, times)
    for (const old of this.pending.keys()) {
      if (this.pending.size <= MAX_PENDING_TIMES) break
      this.pending.delete(old)
    }
  }
}
