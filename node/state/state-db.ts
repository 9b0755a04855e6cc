// Durable state in LevelDB: submissions and the jobs of this node as owner, written on every
// change so that a restarted node resumes where it stopped.
import { Level } from 'level'
import type { Job, Submission } from '../scheduler/job.ts'

export interface SubmissionRecord extends Submission {
  finished?: { ok: boolean, at: number }
}

export class StateDb {
  private readonly db: Level<string, string>
  private writes: Promise<void> = Promise.resolve()

  constructor (path: string) {
    this.db = new Level<string, string>(path, { valueEncoding: 'utf8' })
  }

  async open (): Promise<void> {
    await this.db.open()
  }

  async close (): Promise<void> {
    await this.writes
    await this.db.close()
  }

  /** Queues writes in order; flush() waits for them. */
  putJob (job: Job): void {
    this.enqueue(async () => { await this.db.put(`job\0${job.drvPath}`, JSON.stringify(job)) })
  }

  putSubmission (s: SubmissionRecord): void {
    this.enqueue(async () => { await this.db.put(`sub\0${s.id}`, JSON.stringify(s)) })
  }

  /** Outputs built here that wait to be offered to the signer. */
  queueForSigner (paths: string[]): void {
    for (const p of paths) this.enqueue(async () => { await this.db.put(`sign\0${p}`, JSON.stringify({ at: Date.now() })) })
  }

  dequeueForSigner (paths: string[]): void {
    for (const p of paths) this.enqueue(async () => { await this.db.del(`sign\0${p}`) })
  }

  async signQueue (): Promise<string[]> {
    await this.writes
    const out: string[] = []
    for await (const key of this.db.keys({ gte: 'sign\0', lt: 'sign\0\xff' })) out.push(key.slice('sign\0'.length))
    return out
  }

  async flush (): Promise<void> {
    await this.writes
  }

  async loadJobs (): Promise<Job[]> {
    return await this.loadPrefix<Job>('job\0')
  }

  async loadSubmissions (): Promise<SubmissionRecord[]> {
    return await this.loadPrefix<SubmissionRecord>('sub\0')
  }

  async getSubmission (id: string): Promise<SubmissionRecord | undefined> {
    const v = await this.db.get(`sub\0${id}`)
    return v === undefined ? undefined : JSON.parse(v) as SubmissionRecord
  }

  private async loadPrefix<T> (prefix: string): Promise<T[]> {
    const out: T[] = []
    for await (const [, value] of this.db.iterator({ gte: prefix, lt: `${prefix}\xff` })) {
      out.push(JSON.parse(value) as T)
    }
    return out
  }

  private enqueue (op: () => Promise<void>): void {
    this.writes = this.writes.then(op, op)
  }
}
