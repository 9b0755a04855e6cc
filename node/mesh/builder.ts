// Runs one job in a slot of this node: for a stolen job, first brings the .drv closure and the
// input outputs from the owner (one path-info round, one nar stream, one nix-store --import);
// then realises it with the local Nix and classifies the outcome, timing the build itself.
import { createWriteStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { storePathBaseName } from '../../protocols/nix/store-path.ts'
import { MAX_BUILD_MS } from '../../protocols/mesh/messages.ts'
import { BuildFailure, type StoreBackend } from '../nix/store-backend.ts'
import type { FailureKind, WorkItem } from '../scheduler/job.ts'
import type { BuildOutcome } from '../scheduler/scheduler.ts'
import { fetchClosure, inputOutputs, PathUnavailable } from './store-transfer.ts'
import type { PathTrust } from '../../protocols/mesh/path-trust.ts'
import { substituteFrom, type CacheRef } from '../cache/cache-client.ts'
import type { MeshNetwork } from './network.ts'
import type { Logger } from '../log.ts'
import type { JobTrace } from './job-trace.ts'

const KIND: Record<BuildFailure['kind'], FailureKind> = {
  permanent: 'build-failed',
  'timed-out': 'timed-out',
  'hash-mismatch': 'hash-mismatch',
  'not-deterministic': 'not-deterministic',
  transient: 'transient'
}

export interface BuilderContext {
  selfId: string
  store: StoreBackend
  network: MeshNetwork
  log: Logger
  logDir: string
  systemFeatures: string[]
  /** The shared cache, to substitute inputs the owner does not have. */
  cache: () => CacheRef | undefined
  /** The keys whose signature admits a path `peer` serves into this store (path-trust.ts). */
  trust: (peer: string) => PathTrust
  trace?: JobTrace
}

/** Where the build log of a derivation is kept, for `meshbuild log`. */
export function buildLogPath (logDir: string, drvPath: string): string {
  return join(logDir, `${storePathBaseName(drvPath)}.log`)
}

/** How a job went and, for a successful build, how long the realisation took (ms, wall time). */
export interface WorkResult {
  outcome: BuildOutcome
  buildMs?: number
}

export async function runWorkItem (ctx: BuilderContext, item: WorkItem, signal: AbortSignal): Promise<WorkResult> {
  const { log } = ctx
  try {
    if (item.owner !== ctx.selfId) {
      await fetchInputs(ctx, item, signal)
      ctx.trace?.phase(item.drvPath, 'inputs-fetched', { owner: item.owner })
    }
  } catch (err) {
    const e = err as Error
    log.warn(`fetching inputs of ${item.drvPath} from ${item.owner} failed: ${e.message}`)
    return { outcome: { ok: false, failure: { kind: 'transient', message: `fetching inputs from ${item.owner} failed: ${e.message}` } } }
  }
  await mkdir(ctx.logDir, { recursive: true })
  const logFile = createWriteStream(buildLogPath(ctx.logDir, item.drvPath))
  try {
    log.info(`building ${item.drvPath}${item.owner !== ctx.selfId ? ` for ${item.owner}` : ''}`)
    ctx.trace?.phase(item.drvPath, 'build-started', { worker: ctx.selfId, owner: item.owner })
    // The build alone, inputs already here: what the owner's build history learns from.
    const started = performance.now()
    const result = await ctx.store.realise(item.drvPath, {
      signal,
      systemFeatures: ctx.systemFeatures,
      onLog: (line) => { logFile.write(`${line}\n`) },
      ...(item.timeout !== undefined ? { timeout: item.timeout } : {}),
      ...(item.maxSilentTime !== undefined ? { maxSilentTime: item.maxSilentTime } : {})
    })
    const buildMs = Math.min(MAX_BUILD_MS, Math.max(0, Math.round(performance.now() - started)))
    log.info(`built ${item.drvPath} in ${buildMs} ms`)
    if (item.check === true) return { outcome: { ok: true, outputs: result.outputs, narHashes: await narHashesOf(ctx.store, result.outputs) }, buildMs }
    return { outcome: { ok: true, outputs: result.outputs }, buildMs }
  } catch (err) {
    if (err instanceof BuildFailure) {
      log.warn(`${err.message}`)
      return { outcome: { ok: false, failure: { kind: KIND[err.kind], message: err.message, logTail: err.logTail } } }
    }
    const e = err as Error
    log.warn(`building ${item.drvPath} failed: ${e.message}`)
    return { outcome: { ok: false, failure: { kind: 'transient', message: e.message } } }
  } finally {
    logFile.end()
  }
}

/** Output name -> NAR hash (`sha256:<nix32>`) of each output as this store registered it. */
async function narHashesOf (store: StoreBackend, outputs: Record<string, string>): Promise<Record<string, string>> {
  const infos = await store.queryPathInfos(Object.values(outputs))
  const hashes: Record<string, string> = {}
  for (const [name, path] of Object.entries(outputs)) {
    const info = infos.get(path)
    if (info === undefined) throw new Error(`output ${path} is not valid after its build`)
    hashes[name] = info.narHash.toNix32()
  }
  return hashes
}

/**
 * The .drv closure and the outputs of its inputs, in one round: the owner, which has the .drv,
 * names the inputs. Once the .drv is here the worker reads the inputs itself: any the owner did
 * not describe (an older owner ignores withInputs) are fetched in a second round, and any the
 * owner lacks come from the shared cache.
 */
async function fetchInputs (ctx: BuilderContext, item: WorkItem, signal: AbortSignal): Promise<void> {
  // Inputs enter this store only signed by the owner's announced key (or --trusted-keys).
  const trust = ctx.trust(item.owner)
  const first = await fetchClosure(ctx.network, ctx.store, item.owner, [item.drvPath], signal, { withInputs: true, trust })
  const inputs = await inputOutputs([item.drvPath])
  const present = new Set(first.present)
  const ownerLacks = new Set(first.missing)
  const undescribed = inputs.filter(p => !present.has(p) && !ownerLacks.has(p))
  let imported = first.imported.length
  let bytes = first.bytes
  if (undescribed.length > 0) {
    try {
      const second = await fetchClosure(ctx.network, ctx.store, item.owner, undescribed, signal, { trust })
      imported += second.imported.length
      bytes += second.bytes
    } catch (err) {
      if (!(err instanceof PathUnavailable)) throw err
      for (const p of undescribed) ownerLacks.add(p)
    }
  }
  const fromCache = inputs.filter(p => ownerLacks.has(p))
  if (fromCache.length > 0) {
    const cache = ctx.cache()
    if (cache === undefined) throw new PathUnavailable(`${item.owner} does not have ${fromCache.join(', ')}`)
    ctx.log.info(`${item.owner} lacks ${fromCache.length} input(s) of ${item.drvPath}; substituting them from the shared cache`)
    await substituteFrom(cache, fromCache, signal)
  }
  if (imported > 0) ctx.log.debug(`fetched ${imported} paths (${bytes} bytes) for ${item.drvPath}`)
}
