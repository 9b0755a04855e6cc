// Runs one job in a slot of this node: for a stolen job, first brings the .drv closure and the
// input outputs from the owner; then realises it with the local Nix and classifies the outcome.
import { createWriteStream } from 'node:fs'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { outputPaths, readDerivation } from '../../protocols/nix/derivation.ts'
import { storePathBaseName } from '../../protocols/nix/store-path.ts'
import { BuildFailure, type StoreBackend } from '../nix/store-backend.ts'
import type { FailureKind, WorkItem } from '../scheduler/job.ts'
import type { BuildOutcome } from '../scheduler/scheduler.ts'
import { fetchClosure, PathUnavailable } from './store-transfer.ts'
import { substituteFrom, type CacheRef } from '../cache/cache-client.ts'
import type { MeshNetwork } from './network.ts'
import type { Logger } from '../log.ts'

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
}

/** Where the build log of a derivation is kept, for `meshbuild log`. */
export function buildLogPath (logDir: string, drvPath: string): string {
  return join(logDir, `${storePathBaseName(drvPath)}.log`)
}

export async function runWorkItem (ctx: BuilderContext, item: WorkItem, signal: AbortSignal): Promise<BuildOutcome> {
  const { log } = ctx
  try {
    if (item.owner !== ctx.selfId) {
      await fetchInputs(ctx, item, signal)
    }
  } catch (err) {
    const e = err as Error
    log.warn(`fetching inputs of ${item.drvPath} from ${item.owner} failed: ${e.message}`)
    return { ok: false, failure: { kind: 'transient', message: `fetching inputs from ${item.owner} failed: ${e.message}` } }
  }
  await mkdir(ctx.logDir, { recursive: true })
  const logFile = createWriteStream(buildLogPath(ctx.logDir, item.drvPath))
  try {
    log.info(`building ${item.drvPath}${item.owner !== ctx.selfId ? ` for ${item.owner}` : ''}`)
    const result = await ctx.store.realise(item.drvPath, {
      signal,
      systemFeatures: ctx.systemFeatures,
      onLog: (line) => { logFile.write(`${line}\n`) },
      ...(item.timeout !== undefined ? { timeout: item.timeout } : {}),
      ...(item.maxSilentTime !== undefined ? { maxSilentTime: item.maxSilentTime } : {})
    })
    log.info(`built ${item.drvPath}`)
    return { ok: true, outputs: result.outputs }
  } catch (err) {
    if (err instanceof BuildFailure) {
      log.warn(`${err.message}`)
      return { ok: false, failure: { kind: KIND[err.kind], message: err.message, logTail: err.logTail } }
    }
    const e = err as Error
    log.warn(`building ${item.drvPath} failed: ${e.message}`)
    return { ok: false, failure: { kind: 'transient', message: e.message } }
  } finally {
    logFile.end()
  }
}

/** The .drv closure first (so the derivation can be read), then the outputs of its inputs. */
async function fetchInputs (ctx: BuilderContext, item: WorkItem, signal: AbortSignal): Promise<void> {
  const drvs = await fetchClosure(ctx.network, ctx.store, item.owner, [item.drvPath], signal)
  const drv = await readDerivation(item.drvPath)
  const inputs: string[] = []
  for (const [inputDrv, names] of drv.inputDrvs) {
    const outs = outputPaths(await readDerivation(inputDrv))
    for (const n of names) {
      const p = outs.get(n)
      if (p !== undefined && p !== '') inputs.push(p)
    }
  }
  let outs
  try {
    outs = await fetchClosure(ctx.network, ctx.store, item.owner, inputs, signal)
  } catch (err) {
    const cache = ctx.cache()
    if (!(err instanceof PathUnavailable) || cache === undefined) throw err
    ctx.log.info(`${err.message}; substituting the inputs of ${item.drvPath} from the shared cache`)
    await substituteFrom(cache, inputs, signal)
    outs = { imported: inputs, bytes: 0 }
  }
  if (drvs.imported.length + outs.imported.length > 0) {
    ctx.log.debug(`fetched ${drvs.imported.length + outs.imported.length} paths (${drvs.bytes + outs.bytes} bytes) for ${item.drvPath}`)
  }
}
