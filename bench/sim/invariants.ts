// What must hold in every simulated run, whatever the policy: no job built twice at once (a
// checked job's two builds apart; with owners sharing derivations, per owner's job), every input
// built and present on the builder before a build starts, and at the end no job lost. A broken
// one throws SimInvariantError at once, naming the job, the node and the time.
import type { SimJob } from './workloads.ts'

export class SimInvariantError extends Error {
  override name = 'SimInvariantError'
}

export class BuildTracker {
  private readonly jobs: readonly SimJob[]
  /**
   * Builds of each owner's job running now (begun: inputs fetched, Nix started), at
   * owner × jobs + job: owners submitting the same derivations each hold a job of it.
   */
  private readonly active: Int32Array
  /** Jobs some node has built successfully: their outputs exist in the mesh. */
  readonly built: Uint8Array
  /** Builds of each derivation that completed, for whichever owner. */
  readonly completions: Int32Array
  private readonly allowed: (job: number) => number
  started = 0
  vanished = 0
  completed = 0
  /** With recordTimeline: every build that began, with its node and times (end -1 while running or lost). */
  readonly timeline: Array<{ job: number, node: number, start: number, end: number }> = []
  recordTimeline = false
  private readonly open = new Map<number, number[]>()

  /** `owners`: how many owners may each hold a job of the same derivation (1: one job per index). */
  constructor (jobs: readonly SimJob[], allowedAtOnce: (job: number) => number, owners = 1) {
    this.jobs = jobs
    this.active = new Int32Array(jobs.length * owners)
    this.built = new Uint8Array(jobs.length)
    this.completions = new Int32Array(jobs.length)
    this.allowed = allowedAtOnce
  }

  /** A build of owner `owner`'s `job` starts on `node`, whose store holds `store`. */
  begin (job: number, node: number, store: ReadonlySet<number>, now: number, owner = 0): void {
    const j = this.jobs[job] as SimJob
    for (const i of j.inputs) {
      if (this.built[i] !== 1) throw new SimInvariantError(`at ${fmt(now)}: node ${node} started ${j.name} before its input ${(this.jobs[i] as SimJob).name} was built anywhere`)
      if (!store.has(i)) throw new SimInvariantError(`at ${fmt(now)}: node ${node} started ${j.name} without its input ${(this.jobs[i] as SimJob).name} in its store`)
    }
    const k = this.slot(job, owner, j.name)
    const n = (this.active[k] ?? 0) + 1
    if (n > this.allowed(job)) throw new SimInvariantError(`at ${fmt(now)}: ${j.name}${owner > 0 ? ` of owner ${owner}` : ''} is being built ${n} times at once (node ${node} started another build)`)
    this.active[k] = n
    this.started++
    if (this.recordTimeline) {
      const list = this.open.get(k) ?? []
      list.push(this.timeline.length)
      this.open.set(k, list)
      this.timeline.push({ job, node, start: now, end: -1 })
    }
  }

  /** The build finished (ok: its outputs are in the builder's store now). */
  end (job: number, ok: boolean, now = 0, owner = 0): void {
    const k = this.release(job, owner)
    if (ok) {
      this.built[job] = 1
      this.completions[job] = (this.completions[job] ?? 0) + 1
      this.completed++
    }
    const i = this.open.get(k)?.shift()
    const entry = i === undefined ? undefined : this.timeline[i]
    if (entry !== undefined) entry.end = now
  }

  /** The build stopped without a result: aborted, or its node died. */
  vanish (job: number, owner = 0): void {
    const k = this.release(job, owner)
    this.vanished++
    this.open.get(k)?.shift()
  }

  private release (job: number, owner: number): number {
    const name = (this.jobs[job] as SimJob).name
    const k = this.slot(job, owner, name)
    const n = (this.active[k] ?? 0) - 1
    if (n < 0) throw new SimInvariantError(`${name}: a build ended that never began`)
    this.active[k] = n
    return k
  }

  private slot (job: number, owner: number, name: string): number {
    const k = owner * this.jobs.length + job
    if (!(owner >= 0 && k < this.active.length)) throw new SimInvariantError(`${name}: owner ${owner} is not among the tracked owners`)
    return k
  }
}

/** How a job ended, as a policy reports it at the end of a run. */
export type JobEnd = 'built' | 'failed-transient' | 'failed-permanent' | 'dependency-failed' | 'unfinished'

/**
 * No job lost: every job ended, built unless nodes died (then only transient failures and
 * their dependents). `ownerHas` says whether the submitter holds the job's outputs.
 */
export function checkEnds (jobs: readonly SimJob[], ends: readonly JobEnd[], failuresHappened: boolean, ownerHas: (job: number) => boolean): void {
  for (const j of jobs) {
    const end = ends[j.index] ?? 'unfinished'
    if (end === 'unfinished') throw new SimInvariantError(`${j.name} never finished: lost`)
    if (end === 'built') {
      if (!ownerHas(j.index)) throw new SimInvariantError(`${j.name} is built but its outputs never reached the submitter`)
      continue
    }
    if (!failuresHappened) throw new SimInvariantError(`${j.name} ended ${end} although no node failed`)
    if (end === 'failed-permanent') throw new SimInvariantError(`${j.name} failed permanently; the simulated builders never fail`)
  }
}

function fmt (ms: number): string {
  return `${(ms / 1000).toFixed(3)} s`
}
