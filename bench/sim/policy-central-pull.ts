// Baseline: one server queue that workers pull from, as Cuirass's remote server and workers
// (src/cuirass/remote.scm, scripts/remote-{server,worker}.scm). The server (node 0) holds the
// queue of builds whose inputs are built; each worker slot asks for work, gets a random queued
// build of a system and features its machine supports, fetches the inputs it lacks from the
// server, builds, reports, and asks again at once; an empty answer makes it ask again a second
// later. The server then downloads the outputs, and their dependents join the queue. A worker
// that goes silent has its builds queued again after Cuirass's worker timeout. Node 0 runs a
// worker too, so every policy has the same slots.
import { canBuild, requirementsKey } from '../../node/scheduler/matching.ts'
import type { SimNodeSpec } from './cluster.ts'
import type { JobEnd } from './invariants.ts'
import type { Policy } from './policy.ts'
import { KIND, type World } from './world.ts'
import type { SimJob, Workload } from './workloads.ts'

const SERVER = 0
const DONE = 3

export class CentralPullPolicy implements Policy {
  private readonly w: World
  private readonly jobs: readonly SimJob[]
  private readonly nodes: readonly SimNodeSpec[]
  private readonly keyOf: Int32Array
  /** Queued builds per requirement key; a build's place in its list, for O(1) removal. */
  private readonly queued: number[][] = []
  private readonly placeInQueue: Int32Array
  /** Per machine, the keys it may build. */
  private readonly keysOf: number[][]
  private readonly remaining: Int32Array
  private readonly dependents: number[][]
  private readonly state: Uint8Array
  private readonly busy: Int32Array
  private readonly runs = new Map<number, { token: number, machine: number, begun: boolean }>()
  private tokens = 0
  private done = 0
  private doneAt: number | undefined

  constructor (w: World, workload: Workload) {
    this.w = w
    this.jobs = workload.jobs
    this.nodes = w.nodes
    const keys = new Map<string, number>()
    const keyJobs: SimJob[] = []
    this.keyOf = new Int32Array(this.jobs.length)
    for (const j of this.jobs) {
      const k = requirementsKey(j)
      let ki = keys.get(k)
      if (ki === undefined) { ki = keys.size; keys.set(k, ki); keyJobs.push(j); this.queued.push([]) }
      this.keyOf[j.index] = ki
    }
    this.keysOf = this.nodes.map(m => keyJobs.flatMap((j, k) => canBuild(m.capabilities, j) ? [k] : []))
    this.placeInQueue = new Int32Array(this.jobs.length).fill(-1)
    this.remaining = new Int32Array(this.jobs.length)
    this.dependents = this.jobs.map(() => [])
    for (const j of this.jobs) {
      this.remaining[j.index] = j.inputs.length
      for (const i of j.inputs) this.dependents[i]?.push(j.index)
    }
    this.state = new Uint8Array(this.jobs.length)
    this.busy = new Int32Array(this.nodes.length)
    w.whenNodeDies(node => { this.onDeath(node) })
  }

  start (submitAt: number): void {
    // Every worker slot is already polling when the jobs arrive, each at its own phase.
    for (const m of this.nodes) {
      for (let s = 0; s < m.slots; s++) this.w.at(this.w.random() * this.w.cal.pullIntervalMs, KIND.poll, m.index, s, () => { this.ask(m.index) })
    }
    this.w.at(submitAt, KIND.submit, SERVER, 0, () => {
      for (const j of this.jobs) if (j.inputs.length === 0) this.enqueue(j.index)
    })
  }

  finished (): boolean { return this.doneAt !== undefined }
  finishedAt (): number { return this.doneAt ?? this.w.now }
  ends (): JobEnd[] { return Array.from(this.state, s => s === DONE ? 'built' : 'unfinished') }
  ownerHas (job: number): boolean { return this.w.stores[SERVER]?.has(job) === true }

  private enqueue (job: number): void {
    const list = this.queued[this.keyOf[job] as number] as number[]
    this.placeInQueue[job] = list.length
    list.push(job)
    this.state[job] = 1
    this.w.idle.ready(job, 1, this.w.now)
  }

  private dequeueRandom (machine: number): number | undefined {
    const keys = this.keysOf[machine] ?? []
    let total = 0
    for (const k of keys) total += (this.queued[k] as number[]).length
    if (total === 0) return undefined
    let r = Math.floor(this.w.random() * total)
    for (const k of keys) {
      const list = this.queued[k] as number[]
      if (r >= list.length) { r -= list.length; continue }
      const job = list[r] as number
      const last = list.pop() as number
      if (last !== job) { list[r] = last; this.placeInQueue[last] = r }
      this.placeInQueue[job] = -1
      this.w.idle.ready(job, -1, this.w.now)
      return job
    }
    return undefined
  }

  /** A worker slot of `machine` asks the server for a build. */
  private ask (machine: number): void {
    if (!this.w.isAlive(machine) || this.finished()) return
    const c = this.w.counters
    c.steals++
    c.messages++
    this.w.at(this.w.now + this.w.oneWay() + this.w.cal.requestServiceMs, KIND.pollArrive, SERVER, machine, () => {
      const job = this.dequeueRandom(machine)
      c.messages++
      if (job === undefined) {
        c.emptySteals++
        this.w.at(this.w.now + this.w.oneWay() + this.w.cal.pullIntervalMs, KIND.poll, machine, 0, () => { this.ask(machine) })
        return
      }
      c.jobsGranted++
      this.state[job] = 2
      if (!this.w.isAlive(machine)) {
        // Asked just before it died: the server finds out only by the worker timeout.
        this.w.at(this.w.now + this.w.cal.pullWorkerTimeoutMs, KIND.requeue, machine, job, () => { this.enqueue(job) })
        return
      }
      const run = { token: ++this.tokens, machine, begun: false }
      this.runs.set(job, run)
      this.w.at(this.w.now + this.w.oneWay(), KIND.pollReply, machine, job, () => { this.build(job, machine, run) })
    })
  }

  private build (job: number, m: number, run: { token: number, machine: number, begun: boolean }): void {
    const live = (): boolean => this.runs.get(job) === run && this.w.isAlive(m)
    if (!live()) return
    this.busy[m] = (this.busy[m] as number) + 1
    this.w.idle.setBusy(m, this.busy[m] as number, this.w.now)
    const j = this.jobs[job] as SimJob
    const c = this.w.counters
    const store = this.w.stores[m] as Set<number>
    // The worker substitutes the inputs it lacks from the server's publish server.
    const missing = j.inputs.filter(i => !store.has(i))
    const bytes = missing.reduce((s, i) => s + (this.jobs[i] as SimJob).outputBytes, 0)
    if (missing.length > 0) c.messages += 2
    const fetched = (): void => {
      if (!live()) return
      for (const i of missing) store.add(i)
      this.w.tracker.begin(job, m, store, this.w.now)
      run.begun = true
      this.w.at(this.w.now + this.w.buildMs(job, m), KIND.buildDone, m, job, () => {
        if (!live()) return
        this.w.tracker.end(job, true, this.w.now)
        run.begun = false
        store.add(job)
        this.busy[m] = (this.busy[m] as number) - 1
        this.w.idle.setBusy(m, this.busy[m] as number, this.w.now)
        // build-succeeded to the server, which then downloads the outputs from the worker.
        c.messages += 4
        this.w.send(m, SERVER, j.outputBytes, 1, this.w.now + this.w.roundTrip(), KIND.uploadDone, job, () => {
          if (this.runs.get(job) !== run) return
          if (!this.w.isAlive(m)) return // lost with its worker: requeued by the timeout
          this.w.stores[SERVER]?.add(job)
          this.runs.delete(job)
          this.complete(job)
        })
        this.ask(m)
      })
    }
    if (missing.length > 0) this.w.send(SERVER, m, bytes, missing.length, this.w.now + this.w.roundTrip(), KIND.fetchDone, job, fetched)
    else fetched()
  }

  private complete (job: number): void {
    this.state[job] = DONE
    this.done++
    for (const d of this.dependents[job] ?? []) {
      const left = (this.remaining[d] as number) - 1
      this.remaining[d] = left
      if (left === 0) this.enqueue(d)
    }
    if (this.done === this.jobs.length) this.doneAt = this.w.now
  }

  private onDeath (machine: number): void {
    for (const [job, run] of [...this.runs]) {
      if (run.machine !== machine) continue
      if (run.begun) this.w.tracker.vanish(job)
      this.runs.delete(job)
      this.w.at(this.w.now + this.w.cal.pullWorkerTimeoutMs, KIND.requeue, machine, job, () => { this.enqueue(job) })
    }
  }
}
