// What users submit: the plan of a submission (substituting what the shared cache has), the
// records of submissions kept across restarts, and the listeners that watch them.
import { randomUUID } from 'node:crypto'
import { TERMINAL_STATES, type Job } from '../scheduler/job.ts'
import type { Decision, Scheduler, SchedulerEvent } from '../scheduler/scheduler.ts'
import { cachedPaths, substituteFrom, type CacheRef } from '../cache/cache-client.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { StateDb, SubmissionRecord } from '../state/state-db.ts'
import type { Logger } from '../log.ts'
import type { SubmitOptions } from './node-options.ts'
import { planSubmission } from './planner.ts'
import { buildReport, type SubmissionReport } from './reports.ts'

export type SubmissionListener = (report: SubmissionReport) => void

/** Job changes within this long make one report to a submission's watchers. */
export const NOTIFY_COALESCE_MS = 50

export interface SubmissionsInit {
  store: StoreBackend
  scheduler: Pick<Scheduler, 'submission' | 'submissionJobs' | 'isFinished'>
  db: Pick<StateDb, 'putJob' | 'putSubmission' | 'flush' | 'loadSubmissions' | 'loadJobs'>
  dispatch: (event: SchedulerEvent) => Decision[]
  cacheRef: () => CacheRef | undefined
  /** Earlier build times by derivation name (BuildHistory.estimate): the jobs' estimatedMs. */
  estimate?: (drvPath: string) => number | undefined
  log: Logger
}

export class Submissions {
  private readonly init: SubmissionsInit
  private readonly listeners = new Map<string, Set<SubmissionListener>>()
  private readonly records = new Map<string, SubmissionRecord>()
  private readonly pendingNotify = new Map<string, NodeJS.Timeout>()

  constructor (init: SubmissionsInit) {
    this.init = init
  }

  /** Resumes what the previous run of this node owned (nothing to stop: state is in the database). */
  async start (): Promise<void> {
    const { db, log } = this.init
    const [submissions, jobs] = await Promise.all([db.loadSubmissions(), db.loadJobs()])
    for (const s of submissions) this.records.set(s.id, s)
    if (submissions.length > 0) {
      const open = submissions.filter(s => s.finished === undefined).length
      log.info(`resuming: ${submissions.length} submissions on record, ${open} unfinished`)
      this.init.dispatch({ type: 'restore', submissions, jobs })
    }
  }

  /** A decision subscriber: records jobs and finished submissions, and tells the watchers. */
  readonly onDecision = (d: Decision): void => {
    if (d.type === 'job-changed') this.jobChanged(d.job)
    else if (d.type === 'submission-finished') this.submissionFinished(d.id, d.ok)
  }

  async submit (drvPaths: string[], options: SubmitOptions): Promise<string> {
    const { store, log } = this.init
    const id = `${new Date().toISOString().replace(/[-:]/g, '').slice(0, 15)}-${randomUUID().slice(0, 8)}`
    // Not for the builder socket: plain Nix holds the outputs' locks in this store, and it
    // substitutes from the caches it trusts itself before it asks a builder.
    const cache = options.remoteOnly === true ? undefined : this.init.cacheRef()
    const estimate = this.init.estimate
    const planned = { ...(estimate !== undefined ? { estimate } : {}) }
    let spec = await planSubmission(store, drvPaths, {
      id, now: Date.now(), ...options, ...planned,
      ...(cache !== undefined ? { substitutable: async (paths: string[]) => await cachedPaths(cache, paths) } : {})
    })
    if (cache !== undefined) {
      // Outputs the shared cache has: substitute them now, through Nix, which checks the cache's signature.
      const wanted = spec.substituted.flatMap(j => Object.values(j.outputs))
      const valid = await store.isValid(wanted)
      const missing = wanted.filter(p => !valid.has(p))
      try {
        await substituteFrom(cache, missing)
        if (missing.length > 0) log.info(`substituted ${missing.length} output(s) from the shared cache`)
      } catch (err) {
        log.warn(`substituting from ${cache.url} failed, building instead: ${(err as Error).message}`)
        spec = await planSubmission(store, drvPaths, { id, now: Date.now(), ...options, ...planned })
      }
    }
    const estimated = spec.jobs.filter(j => j.estimatedMs !== undefined).length
    log.info(`submission ${id}: ${drvPaths.length} requested, ${spec.jobs.length} to build (${estimated} with a build time from earlier builds), ${spec.substituted.length} already available`)
    this.init.dispatch({ type: 'submit', submission: spec })
    const s = this.init.scheduler.submission(id)
    // A submission with nothing to build has finished already and been recorded as such.
    if (s !== undefined && !this.records.has(id)) {
      this.records.set(id, s)
      this.init.db.putSubmission(s)
    }
    await this.init.db.flush()
    return id
  }

  report (id: string): SubmissionReport | undefined {
    const { scheduler } = this.init
    const s = scheduler.submission(id)
    if (s === undefined) return undefined
    return buildReport(s, scheduler.submissionJobs(id), scheduler.isFinished(id))
  }

  /** Calls `listener` with the submission's report on every change until it finishes. */
  watch (id: string, listener: SubmissionListener): () => void {
    const set = this.listeners.get(id) ?? new Set()
    set.add(listener)
    this.listeners.set(id, set)
    return () => { set.delete(listener) }
  }

  private jobChanged (job: Job): void {
    this.init.db.putJob(job)
    if (TERMINAL_STATES.has(job.state) && job.state !== 'substituted') {
      this.init.log.debug(`${job.drvPath}: ${job.state}`)
    }
    for (const id of job.submissions) this.notify(id)
  }

  private submissionFinished (id: string, ok: boolean): void {
    const s = this.init.scheduler.submission(id)
    const known = this.records.get(id)
    if (s !== undefined && known?.finished === undefined) {
      const record: SubmissionRecord = { ...s, finished: { ok, at: Date.now() } }
      this.records.set(id, record)
      this.init.db.putSubmission(record)
      this.init.log.info(`submission ${id} finished: ${ok ? 'all built' : 'some failed'}`)
    }
    this.notify(id, true)
  }

  /**
   * Tells the watchers. A report covers every job of the submission, and jobs change many times
   * a second: changes within NOTIFY_COALESCE_MS make one report (building one per change was
   * 14 % of an owner's CPU on 600 jobs); the end of a submission is reported at once.
   */
  private notify (id: string, now = false): void {
    const set = this.listeners.get(id)
    if (set === undefined || set.size === 0) return
    const pending = this.pendingNotify.get(id)
    if (!now) {
      if (pending === undefined) this.pendingNotify.set(id, setTimeout(() => { this.notify(id, true) }, NOTIFY_COALESCE_MS).unref())
      return
    }
    if (pending !== undefined) clearTimeout(pending)
    this.pendingNotify.delete(id)
    const report = this.report(id)
    if (report === undefined) return
    for (const l of set) l(report)
  }
}
