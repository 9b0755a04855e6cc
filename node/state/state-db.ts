// Durable state in LevelDB: submissions and the jobs of this node as owner, written on every
// change so that a restarted node resumes where it stopped; the sign queue; build times by name. One sublevel per kind of record;
// writes are queued in order and a failed one is logged and reported by the next flush().
import { Level } from 'level'
import type { AbstractSublevel } from 'abstract-level'
import type { Job, Submission } from '../scheduler/job.ts'
import type { Logger } from '../log.ts'

export interface SubmissionRecord extends Submission {
  finished?: { ok: boolean, at: number }
}

interface SignEntry { at: number }

/** A name's build time at speed factor 1 (build-history.ts): smoothed ms, samples taken, last update. */
export interface BuildTimeRecord { ms: number, count: number, at: number }

/** One or more queued writes failed; the state on disk lacks them. */
export class StateWriteError extends Error {
  override name = 'StateWriteError'
}

type Sub<V> = AbstractSublevel<Level<string, string>, string | Buffer | Uint8Array, string, V>

export class StateDb {
  private readonly db: Level<string, string>
  private readonly jobs: Sub<Job>
  private readonly submissions: Sub<SubmissionRecord>
  private readonly signs: Sub<SignEntry>
  private readonly times: Sub<BuildTimeRecord>
  private readonly log: Logger | undefined
  private writes: Promise<void> = Promise.resolve()
  /** Writes that failed since the last flush(), in order. */
  private failures: StateWriteError[] = []

  constructor (path: string, log?: Logger) {
    this.db = new Level<string, string>(path, { valueEncoding: 'utf8' })
    this.jobs = this.db.sublevel<string, Job>('job', { valueEncoding: 'json' })
    this.submissions = this.db.sublevel<string, SubmissionRecord>('sub', { valueEncoding: 'json' })
    this.signs = this.db.sublevel<string, SignEntry>('sign', { valueEncoding: 'json' })
    this.times = this.db.sublevel<string, BuildTimeRecord>('time', { valueEncoding: 'json' })
    this.log = log
  }

  async open (): Promise<void> {
    await this.db.open()
    await this.migrateLegacyKeys()
  }

  /** Waits for the queued writes, then closes; failures not yet flushed are dropped (they were logged). */
  async close (): Promise<void> {
    await this.writes
    await this.db.close()
  }

  /** Queues writes in order; flush() waits for them. */
  putJob (job: Job): void {
    this.enqueue(`job ${job.drvPath}`, async () => { await this.jobs.put(job.drvPath, job) })
  }

  putSubmission (s: SubmissionRecord): void {
    this.enqueue(`submission ${s.id}`, async () => { await this.submissions.put(s.id, s) })
  }

  /** Outputs built here that wait to be offered to the signer. */
  queueForSigner (paths: string[]): void {
    if (paths.length === 0) return
    const at = Date.now()
    this.enqueue(`sign queue +${paths.length}`, async () => {
      await this.signs.batch(paths.map(p => ({ type: 'put' as const, key: p, value: { at } })))
    })
  }

  dequeueForSigner (paths: string[]): void {
    if (paths.length === 0) return
    this.enqueue(`sign queue -${paths.length}`, async () => {
      await this.signs.batch(paths.map(p => ({ type: 'del' as const, key: p })))
    })
  }

  async signQueue (): Promise<string[]> {
    await this.writes
    return await this.signs.keys().all()
  }

  /** Build-time records written and keys removed, as one batch (queued like every write). */
  putBuildTimes (put: Array<[string, BuildTimeRecord]>, del: string[] = []): void {
    if (put.length === 0 && del.length === 0) return
    this.enqueue(`build times +${put.length} -${del.length}`, async () => {
      await this.times.batch([
        ...del.map(key => ({ type: 'del' as const, key })),
        ...put.map(([key, value]) => ({ type: 'put' as const, key, value }))
      ])
    })
  }

  async loadBuildTimes (): Promise<Array<[string, BuildTimeRecord]>> {
    await this.writes
    return await this.times.iterator().all()
  }

  /**
   * Waits for the queued writes. Throws StateWriteError when any of them failed since the last
   * flush (each failure is reported once, and logged when it happened).
   */
  async flush (): Promise<void> {
    await this.writes
    const failed = this.failures.splice(0)
    if (failed.length === 1) throw failed[0]
    if (failed.length > 1) {
      throw new StateWriteError(`${failed.length} state writes failed: ${failed.map(f => f.message).join('; ')}`, { cause: new AggregateError(failed) })
    }
  }

  async loadJobs (): Promise<Job[]> {
    return await this.jobs.values().all()
  }

  async loadSubmissions (): Promise<SubmissionRecord[]> {
    return await this.submissions.values().all()
  }

  private enqueue (what: string, op: () => Promise<void>): void {
    // Each write runs after the one before, whether that one failed or not; a failure is kept
    // for flush() rather than lost in the chain.
    this.writes = this.writes.then(async () => {
      try {
        await op()
      } catch (err) {
        const failure = new StateWriteError(`writing ${what}: ${(err as Error).message}`, { cause: err })
        this.failures.push(failure)
        this.log?.error(failure.message)
      }
    })
  }

  /**
   * A data directory written before the sublevels (keys `job\0<drvPath>` …) keeps its records:
   * each is copied into its sublevel, then the old key deleted; a crash between repeats the copy.
   */
  private async migrateLegacyKeys (): Promise<void> {
    const moved = await this.migrate('job', this.jobs) + await this.migrate('sub', this.submissions) + await this.migrate('sign', this.signs)
    if (moved > 0) this.log?.info(`moved ${moved} state record(s) into the sublevel layout`)
  }

  private async migrate<V> (prefix: string, target: Sub<V>): Promise<number> {
    const old = await this.db.iterator({ gte: `${prefix}\0`, lt: `${prefix}\0\xff` }).all()
    if (old.length === 0) return 0
    await target.batch(old.map(([key, value]) => ({ type: 'put' as const, key: key.slice(prefix.length + 1), value: JSON.parse(value) as V })))
    await this.db.batch(old.map(([key]) => ({ type: 'del' as const, key })))
    return old.length
  }
}
