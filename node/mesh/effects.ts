// The scheduler's decisions carried out: builds run here (and aborted when their lease is gone),
// steals, lease renewals, result reports, imports of a worker's outputs, discards of outputs that
// proved not deterministic. One AbortController ends them all on stop.
import { join } from 'node:path'
import { REPORT_GIVE_UP_MS, REPORT_RETRY_MS } from '../../protocols/mesh/constants.ts'
import type { BuildOutcome, Decision, SchedulerEvent } from '../scheduler/scheduler.ts'
import type { WorkItem } from '../scheduler/job.ts'
import type { CacheRef } from '../cache/cache-client.ts'
import type { StoreBackend } from '../nix/store-backend.ts'
import type { SignQueue } from '../signer/sign-queue.ts'
import type { Logger } from '../log.ts'
import { runWorkItem } from './builder.ts'
import { NO_TRACE, type JobTrace } from './job-trace.ts'
import type { MeshNetwork } from './network.ts'
import { allFeatures, type NodeOptions } from './node-options.ts'
import type { PathTrust } from '../../protocols/mesh/path-trust.ts'
import { requestLease } from './protocols/lease.ts'
import { requestResult } from './protocols/result.ts'
import { requestSteal } from './protocols/steal.ts'
import { fetchClosure } from './store-transfer.ts'

export interface EffectsInit {
  network: MeshNetwork
  store: StoreBackend
  signQueue: SignQueue
  options: Pick<NodeOptions, 'capabilities' | 'dataDir'>
  dispatch: (event: SchedulerEvent) => Decision[]
  /** Jobs this node has stolen and still holds, to give back on stop. */
  stolenItems: () => WorkItem[]
  /** Makes queued writes durable (state-db flush). */
  flush: () => Promise<void>
  cacheRef: () => CacheRef | undefined
  trust: (peer: string) => PathTrust
  /** Where remote-only jobs' outputs go (the builder socket's root); none without the socket. */
  builderRoot?: Pick<StoreBackend, 'isValid' | 'importNars'>
  /** A build of this node's own job succeeded in buildMs; called just before the scheduler hears of it. */
  builtHere?: (drvPath: string, buildMs: number) => void
  log: Logger
  trace?: JobTrace
}

/** Builds this node ran, by outcome, since it started (for status and tests). */
export interface BuildCounters { built: number, failed: number, stolen: number }

export class Effects {
  readonly counters: BuildCounters = { built: 0, failed: 0, stolen: 0 }
  private readonly init: EffectsInit
  private readonly builds = new Map<string, AbortController>()
  /** Build times of other owners' jobs, while the scheduler turns their build-finished into a report. */
  private readonly reportTimes = new Map<string, number>()
  private readonly controller = new AbortController()

  constructor (init: EffectsInit) {
    this.init = init
  }

  /** A decision subscriber: carries out the decisions that are effects. */
  readonly onDecision = (d: Decision): void => {
    switch (d.type) {
      case 'build': this.startBuild(d.item); break
      case 'abort': this.abortBuild(d.owner, d.drvPath, d.reason); break
      case 'steal': void this.steal(d.from, d.want); break
      case 'renew': void this.renew(d.owner, d.drvPaths); break
      case 'report': void this.report(d.owner, d.drvPath, d.outcome, this.reportTimes.get(runKey(d.owner, d.drvPath))); break
      case 'import': void this.importOutputs(d.from, d.drvPath, d.outputs, d.narHashes, d.remoteOnly === true); break
      case 'sign': this.init.signQueue.add(d.paths); break
      case 'discard': void this.discardOutputs(d.drvPath, d.paths); break
      default: break
    }
  }

  /** Gives stolen jobs back to their owners, aborts builds and pending reports. */
  async stop (): Promise<void> {
    const byOwner = new Map<string, string[]>()
    for (const item of this.init.stolenItems()) {
      byOwner.set(item.owner, [...(byOwner.get(item.owner) ?? []), item.drvPath])
    }
    this.controller.abort(new Error('node stopping'))
    for (const c of this.builds.values()) c.abort(new Error('node stopping'))
    await Promise.allSettled([...byOwner].map(async ([owner, drvPaths]) => {
      await requestLease(this.init.network, owner, [], drvPaths)
      this.init.log.info(`gave ${drvPaths.length} job(s) back to ${owner}`)
    }))
  }

  private get stopping (): boolean {
    return this.controller.signal.aborted
  }

  private startBuild (item: WorkItem): void {
    const { network, log } = this.init
    const selfId = network.peerId
    const key = runKey(item.owner, item.drvPath)
    const controller = new AbortController()
    this.builds.set(key, controller)
    if (item.owner !== selfId) this.counters.stolen++
    void runWorkItem({
      selfId,
      store: this.init.store,
      network,
      log: log.child('build'),
      logDir: join(this.init.options.dataDir, 'logs'),
      systemFeatures: allFeatures(this.init.options.capabilities),
      cache: () => this.init.cacheRef(),
      trust: (peer: string) => this.init.trust(peer),
      trace: this.init.trace ?? NO_TRACE
    }, item, controller.signal).then(async ({ outcome, buildMs }) => {
      this.builds.delete(key)
      if (controller.signal.aborted) return
      if (outcome.ok) {
        this.counters.built++
        // A checked job's outputs reach the signer only once two builders agree (the owner queues them).
        if (item.check !== true) this.init.signQueue.add(Object.values(outcome.outputs))
        // On disk before the owner hears of it: a worker killed right after its report would
        // otherwise lose the output from its sign queue, and the cache would never get it.
        await this.init.flush()
      } else {
        this.counters.failed++
      }
      if (item.owner === selfId) this.init.trace?.phase(item.drvPath, 'build-finished', { owner: selfId, ok: outcome.ok })
      // The time goes with the report to the owner, or to this node's history for its own job.
      if (outcome.ok && buildMs !== undefined) {
        if (item.owner === selfId) this.init.builtHere?.(item.drvPath, buildMs)
        else this.reportTimes.set(key, buildMs)
      }
      this.init.dispatch({ type: 'build-finished', owner: item.owner, drvPath: item.drvPath, outcome })
      this.reportTimes.delete(key)
    })
  }

  /** Stops a build whose lease is gone: its nix-store and the builder's processes are killed. */
  private abortBuild (owner: string, drvPath: string, reason: string): void {
    const build = this.builds.get(runKey(owner, drvPath))
    if (build === undefined) return
    this.init.log.warn(`aborting the build of ${drvPath} for ${owner}: ${reason}`)
    build.abort(new Error(`lease lost: ${reason}`))
  }

  private async steal (from: string, want: number): Promise<void> {
    try {
      const grant = await requestSteal(this.init.network, from, want, this.init.options.capabilities)
      if (grant.items.length > 0) this.init.log.info(`stole ${grant.items.length} job(s) from ${from}`)
      this.init.dispatch({ type: 'steal-reply', from, items: grant.items.map(i => ({ ...i, owner: from })) })
    } catch (err) {
      this.init.log.debug(`steal from ${from} failed: ${(err as Error).message}`)
      this.init.dispatch({ type: 'steal-failed', from, error: (err as Error).message })
    }
  }

  private async renew (owner: string, drvPaths: string[]): Promise<void> {
    const requestedAt = Date.now()
    try {
      const reply = await requestLease(this.init.network, owner, drvPaths, undefined)
      const lost = new Set(reply.lost)
      const held = drvPaths.filter(p => !lost.has(p))
      if (held.length > 0) this.init.dispatch({ type: 'lease-renewed', owner, drvPaths: held, requestedAt })
      if (reply.lost.length > 0) {
        this.init.log.warn(`${owner} says ${reply.lost.length} lease(s) lapsed; aborting those builds`)
        this.init.dispatch({ type: 'lease-lost', owner, drvPaths: reply.lost })
      }
    } catch (err) {
      // The owner may be restarting; keep building and try again at the next renewal. The
      // scheduler aborts the build if no renewal is confirmed for a whole lease.
      this.init.log.debug(`renewing leases with ${owner} failed: ${(err as Error).message}`)
    }
  }

  /** Tells the owner how a stolen job went, retrying while the owner is unreachable. */
  private async report (owner: string, drvPath: string, outcome: BuildOutcome, buildMs: number | undefined): Promise<void> {
    const deadline = Date.now() + REPORT_GIVE_UP_MS
    while (!this.stopping) {
      try {
        await requestResult(this.init.network, owner, drvPath, outcome, buildMs)
        return
      } catch (err) {
        if (Date.now() > deadline) {
          this.init.log.warn(`gave up reporting ${drvPath} to ${owner}: ${(err as Error).message}`)
          return
        }
        this.init.log.debug(`reporting ${drvPath} to ${owner} failed, retrying: ${(err as Error).message}`)
        await new Promise(resolve => setTimeout(resolve, REPORT_RETRY_MS))
      }
    }
  }

  private async importOutputs (from: string, drvPath: string, outputs: Record<string, string>, narHashes: Record<string, string> | undefined, remoteOnly: boolean): Promise<void> {
    try {
      const target = remoteOnly ? this.init.builderRoot : this.init.store
      if (target === undefined) throw new Error('a builder-socket job, but this node serves no builder socket now')
      // A checked job: what `from` serves must have the NAR hashes both builders agreed on.
      const expectNarHashes = narHashes === undefined ? undefined : Object.fromEntries(Object.entries(outputs).flatMap(([n, p]) => narHashes[n] !== undefined ? [[p, narHashes[n]]] : []))
      // Only what `from` (or a key of --trusted-keys) signed is imported; anything else and the
      // result is refused: nothing enters the store and the job is built again elsewhere.
      const r = await fetchClosure(this.init.network, target, from, Object.values(outputs), undefined, { trust: this.init.trust(from), ...(expectNarHashes !== undefined ? { expectNarHashes } : {}) })
      this.init.log.info(`${drvPath} built by ${from}; fetched ${r.imported.length} path(s), ${r.bytes} bytes`)
      this.init.trace?.phase(drvPath, 'outputs-imported', { from, bytes: r.bytes })
      this.init.dispatch({ type: 'import-finished', from, drvPath })
    } catch (err) {
      const e = err as Error
      // An UntrustedPath names the path and why its signature was refused.
      this.init.log.warn(`fetching outputs of ${drvPath} from ${from} failed: ${e.message}`)
      this.init.dispatch({ type: 'import-finished', from, drvPath, error: e.message })
    }
  }

  /**
   * Removes from this store the outputs of a checked job built here whose other build differed,
   * so nothing of it is used or cached. A path something else references stays (Nix refuses).
   */
  private async discardOutputs (drvPath: string, paths: string[]): Promise<void> {
    try {
      await this.init.store.deletePaths(paths)
      this.init.log.warn(`${drvPath} is not deterministic: deleted its outputs built here (${paths.join(', ')})`)
    } catch (err) {
      this.init.log.warn(`${drvPath} is not deterministic; deleting its outputs built here failed: ${(err as Error).message.trim().split('\n').slice(-1)[0] ?? ''}`)
    }
  }
}

function runKey (owner: string, drvPath: string): string {
  return `${owner}\n${drvPath}`
}
