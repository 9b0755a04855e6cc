// Baseline: Nix's own distributed builds (`builders` + the build hook), as Nix 2.8 does them.
// Sources: src/build-remote/build-remote.cc, src/libstore/build/{derivation-goal,worker}.cc.
// - The submitter's Nix wakes goals in derivation-name order (Goal::key(), Worker::run()).
// - Each goal asks the hook once: the hook picks, among the machines of the right system and
//   features that have a free slot, the one with the lowest load ÷ speed factor in unsigned
//   integer arithmetic (so 1 ÷ 2 = 0 ties with 0 ÷ 1), then the higher speed factor, then the
//   lower load; it holds that slot while it copies the inputs over, builds, and copies the
//   outputs back. One hook at a time: starting the hook and its SSH session is serialised.
// - No machine free: "postpone" if the submitter cannot take it itself (its own slots full),
//   and the goal sleeps until the next build-poll-interval (5 s); else "decline" and it builds
//   locally. Once placed, a job never moves (no rebalancing).
// - A machine that dies: its jobs are noticed after the request timeout and placed again
//   (Nix would fail the build; retrying is generous to the baseline).
import { canBuild, requirementsKey } from '../../node/scheduler/matching.ts'
import type { SimNodeSpec } from './cluster.ts'
import { SimInvariantError, type JobEnd } from './invariants.ts'
import { IntHeap } from './int-heap.ts'
import type { Policy } from './policy.ts'
import { KIND, type World } from './world.ts'
import type { SimJob, Workload } from './workloads.ts'

const WAITING = 0
const READY = 1
const RUNNING = 2
const DONE = 3
const SUBMITTER = 0

export class StaticHookPolicy implements Policy {
  private readonly w: World
  private readonly jobs: readonly SimJob[]
  private readonly nodes: readonly SimNodeSpec[]
  private readonly rankOf: Int32Array
  private readonly jobAtRank: Int32Array
  private readonly keyOf: Int32Array
  private readonly keyJob: SimJob[] = []
  private readonly remaining: Int32Array
  private readonly dependents: number[][]
  private readonly state: Uint8Array
  private readonly awake: IntHeap[] = []
  private readonly postponed: IntHeap[] = []
  private readonly wantSlot: IntHeap[] = []
  private readonly busy: Int32Array
  private readonly speed: Int32Array
  private readonly runs = new Map<number, { token: number, machine: number, begun: boolean }>()
  private tokens = 0
  private hookFreeAt = 0
  private passDue = false
  private pollDue = false
  private done = 0
  private doneAt: number | undefined

  constructor (w: World, workload: Workload) {
    this.w = w
    this.jobs = workload.jobs
    this.nodes = w.nodes
    const n = this.jobs.length
    const order = this.jobs.map(j => j.index).sort((a, b) => compareKeys(this.jobs[a] as SimJob, this.jobs[b] as SimJob))
    this.rankOf = new Int32Array(n)
    this.jobAtRank = new Int32Array(n)
    order.forEach((job, rank) => { this.rankOf[job] = rank; this.jobAtRank[rank] = job })
    const keys = new Map<string, number>()
    this.keyOf = new Int32Array(n)
    for (const j of this.jobs) {
      const k = requirementsKey(j)
      let ki = keys.get(k)
      if (ki === undefined) {
        ki = keys.size
        keys.set(k, ki)
        this.keyJob.push(j)
        this.awake.push(new IntHeap())
        this.postponed.push(new IntHeap())
        this.wantSlot.push(new IntHeap())
      }
      this.keyOf[j.index] = ki
    }
    this.remaining = new Int32Array(n)
    this.dependents = this.jobs.map(() => [])
    for (const j of this.jobs) {
      this.remaining[j.index] = j.inputs.length
      for (const i of j.inputs) this.dependents[i]?.push(j.index)
    }
    this.state = new Uint8Array(n)
    this.busy = new Int32Array(this.nodes.length)
    // build-remote.cc: Machine::speedFactor is an unsigned int.
    this.speed = Int32Array.from(this.nodes, m => Math.max(1, Math.floor(m.speedFactor)))
    w.whenNodeDies(node => { this.onDeath(node) })
  }

  start (submitAt: number): void {
    this.w.at(submitAt, KIND.submit, SUBMITTER, 0, () => {
      for (const j of this.jobs) if (j.inputs.length === 0) this.makeReady(j.index)
    })
  }

  finished (): boolean { return this.doneAt !== undefined }
  finishedAt (): number { return this.doneAt ?? this.w.now }
  ends (): JobEnd[] { return Array.from(this.state, s => s === DONE ? 'built' : 'unfinished') }
  ownerHas (job: number): boolean { return this.w.stores[SUBMITTER]?.has(job) === true }

  private makeReady (job: number): void {
    this.state[job] = READY
    this.w.idle.ready(job, 1, this.w.now)
    this.awake[this.keyOf[job] as number]?.push(this.rankOf[job] as number)
    this.schedulePass()
  }

  private schedulePass (): void {
    if (this.passDue) return
    this.passDue = true
    this.w.at(this.w.now, KIND.hookPass, SUBMITTER, 0, () => { this.passDue = false; this.pass() })
  }

  /** The awake goals, in name order, each asking the hook once. */
  private pass (): void {
    const blocked = new Uint8Array(this.awake.length)
    for (;;) {
      let key = -1
      let best = Infinity
      for (let k = 0; k < this.awake.length; k++) {
        const r = this.awake[k]?.peek()
        if (blocked[k] === 0 && r !== undefined && r < best) { best = r; key = k }
      }
      if (key < 0) break
      const job = this.jobAtRank[(this.awake[key] as IntHeap).pop() as number] as number
      if (this.place(job)) continue
      // Nothing was freed during the pass: every other goal of these requirements waits too.
      blocked[key] = 1
      const rightType = this.remoteOfType(job)
      const target = rightType ? this.postponed[key] as IntHeap : this.wantSlot[key] as IntHeap
      target.push(this.rankOf[job] as number)
      moveAll(this.awake[key] as IntHeap, target)
    }
    if (!this.pollDue && this.postponed.some(h => h.size > 0)) {
      this.pollDue = true
      this.w.at(this.w.now + this.w.cal.hookPollMs, KIND.hookPoll, SUBMITTER, 0, () => {
        this.pollDue = false
        for (let k = 0; k < this.postponed.length; k++) moveAll(this.postponed[k] as IntHeap, this.awake[k] as IntHeap)
        this.pass()
      })
    }
  }

  private place (job: number): boolean {
    const j = this.jobs[job] as SimJob
    let best = -1
    for (let m = 1; m < this.nodes.length; m++) {
      const spec = this.nodes[m] as SimNodeSpec
      if (!this.w.isAlive(m) || (this.busy[m] as number) >= spec.slots || !canBuild(spec.capabilities, j)) continue
      if (best < 0 || this.better(m, best)) best = m
    }
    if (best >= 0) { this.remote(job, best); return true }
    const local = this.nodes[SUBMITTER] as SimNodeSpec
    if ((this.busy[SUBMITTER] as number) < local.slots && canBuild(local.capabilities, j)) { this.local(job); return true }
    if (!canBuild(local.capabilities, j) && !this.remoteOfType(job)) {
      throw new SimInvariantError(`no machine can build ${j.name} (${requirementsKey(j)})`)
    }
    return false
  }

  private better (m: number, than: number): boolean {
    const lm = this.busy[m] as number
    const lb = this.busy[than] as number
    const sm = this.speed[m] as number
    const sb = this.speed[than] as number
    const qm = Math.floor(lm / sm)
    const qb = Math.floor(lb / sb)
    if (qm !== qb) return qm < qb
    if (sm !== sb) return sm > sb
    return lm < lb
  }

  private remoteOfType (job: number): boolean {
    const j = this.jobs[job] as SimJob
    for (let m = 1; m < this.nodes.length; m++) if (this.w.isAlive(m) && canBuild((this.nodes[m] as SimNodeSpec).capabilities, j)) return true
    return false
  }

  private take (job: number, machine: number): { token: number, machine: number, begun: boolean } {
    this.state[job] = RUNNING
    this.w.idle.ready(job, -1, this.w.now)
    this.busy[machine] = (this.busy[machine] as number) + 1
    this.w.idle.setBusy(machine, this.busy[machine] as number, this.w.now)
    const run = { token: ++this.tokens, machine, begun: false }
    this.runs.set(job, run)
    return run
  }

  private local (job: number): void {
    const run = this.take(job, SUBMITTER)
    this.w.tracker.begin(job, SUBMITTER, this.w.stores[SUBMITTER] as Set<number>, this.w.now)
    run.begun = true
    this.w.at(this.w.now + this.w.buildMs(job, SUBMITTER), KIND.buildDone, SUBMITTER, job, () => {
      this.w.tracker.end(job, true, this.w.now)
      this.w.stores[SUBMITTER]?.add(job)
      this.release(job, SUBMITTER)
      this.complete(job)
    })
  }

  private remote (job: number, m: number): void {
    const run = this.take(job, m)
    const live = (): boolean => this.runs.get(job) === run
    const j = this.jobs[job] as SimJob
    const c = this.w.counters
    // The hook starts, connects and answers "accept" before the next goal can ask.
    const accepted = Math.max(this.w.now, this.hookFreeAt) + this.w.cal.hookSessionMs + this.w.roundTrip()
    this.hookFreeAt = accepted
    c.messages += 2
    this.w.at(accepted, KIND.hookAccepted, m, job, () => {
      if (!live()) return
      const store = this.w.stores[m] as Set<number>
      const missing = j.inputs.filter(i => !store.has(i))
      const bytes = missing.reduce((s, i) => s + (this.jobs[i] as SimJob).outputBytes, 0)
      if (missing.length > 0) c.messages += 2
      const copied = (): void => {
        if (!live()) return
        for (const i of missing) store.add(i)
        this.w.tracker.begin(job, m, store, this.w.now)
        run.begun = true
        c.messages += 2 // buildDerivation and its result
        this.w.at(this.w.now + this.w.buildMs(job, m) + this.w.roundTrip(), KIND.buildDone, m, job, () => {
          if (!live()) return
          this.w.tracker.end(job, true, this.w.now)
          run.begun = false
          store.add(job)
          c.messages += 2
          this.w.send(m, SUBMITTER, j.outputBytes, 1, this.w.now, KIND.copyBackDone, job, () => {
            if (!live()) return
            this.w.stores[SUBMITTER]?.add(job)
            this.release(job, m)
            this.complete(job)
          })
        })
      }
      if (missing.length > 0) this.w.send(SUBMITTER, m, bytes, missing.length, this.w.now, KIND.fetchDone, job, copied)
      else copied()
    })
  }

  private release (job: number, machine: number): void {
    this.runs.delete(job)
    this.busy[machine] = Math.max(0, (this.busy[machine] as number) - 1)
    this.w.idle.setBusy(machine, this.busy[machine] as number, this.w.now)
  }

  private complete (job: number): void {
    this.state[job] = DONE
    this.done++
    for (const d of this.dependents[job] ?? []) {
      const left = (this.remaining[d] as number) - 1
      this.remaining[d] = left
      if (left === 0) this.makeReady(d)
    }
    // A child ended: goals waiting for a build slot wake up (Worker::childTerminated).
    for (let k = 0; k < this.wantSlot.length; k++) moveAll(this.wantSlot[k] as IntHeap, this.awake[k] as IntHeap)
    this.schedulePass()
    if (this.done === this.jobs.length) this.doneAt = this.w.now
  }

  private onDeath (machine: number): void {
    for (const [job, run] of [...this.runs]) {
      if (run.machine !== machine) continue
      if (run.begun) this.w.tracker.vanish(job)
      this.runs.delete(job)
      this.w.at(this.w.now + this.w.cal.deadPeerTimeoutMs, KIND.requeue, machine, job, () => {
        this.busy[machine] = Math.max(0, (this.busy[machine] as number) - 1)
        this.state[job] = WAITING
        this.makeReady(job)
      })
    }
  }
}

function moveAll (from: IntHeap, to: IntHeap): void {
  to.absorb(from)
}

/** Goal::key(): derivations come in the order of their names, then their store paths. */
function compareKeys (a: SimJob, b: SimJob): number {
  const ka = `b$${drvName(a.drvPath)}$${a.drvPath}`
  const kb = `b$${drvName(b.drvPath)}$${b.drvPath}`
  return ka < kb ? -1 : ka > kb ? 1 : 0
}

function drvName (drvPath: string): string {
  return drvPath.slice('/nix/store/'.length + 33)
}
