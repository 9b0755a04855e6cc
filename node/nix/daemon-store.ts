// StoreBackend over the Nix daemon's worker protocol: a pool of persistent connections
// (daemon-pool.ts) instead of a Nix process per operation. Queries take ~0.1–1 ms where a
// process takes ~30 ms; NARs stream through the connection with backpressure both ways.
import { availableParallelism } from 'node:os'
import { outputPaths } from '../../protocols/nix/derivation.ts'
import { readDerivationCached } from './derivation-cache.ts'
import { BuildStatus, DaemonError, type BuildResult } from '../../protocols/nix/daemon-wire.ts'
import { isDerivation, isStorePath, NIX_STORE_DIR } from '../../protocols/nix/store-path.ts'
import { referencesFirst } from './closure-order.ts'
import { checkedNar } from './nar-check.ts'
import type { DaemonConnection, MissingPaths } from './daemon-connection.ts'
import { DaemonPool, type Lease, type PoolStats } from './daemon-pool.ts'
import type { NixSettings } from './nix-config.ts'
import {
  BUILD_LOG_TAIL_LINES, buildFailureFor, InvalidStorePath, isAborted, NarOutOfOrder, OperationAborted, PathNotValid,
  type ExportOptions, type ImportBatchResult, type ImportInfo, type NarEntry,
  type PathInfo, type RealiseOptions, type RealiseResult, type StoreBackend, type WaitOptions
} from './store-backend.ts'

export const DEFAULT_POOL_SIZE = 4
/** Paths per connection below which a validity query is not split. */
export const PARALLEL_QUERY_MIN = 2000
export const DEFAULT_RECYCLE_AFTER = 1000
/** How long an aborted build's daemon gets to stop its builder before it is killed. */
export const BUILD_KILL_GRACE_MS = 5_000
/**
 * How long a query (not a build, not a NAR stream) may go unanswered before its connection is
 * closed: a daemon that stopped answering must fail the request, not hang the node.
 */
export const DEFAULT_QUERY_TIMEOUT_MS = 120_000

export interface DaemonStoreInit {
  /** NIX_CONFIG for the `nix-daemon --stdio` children (as root). */
  settings?: NixSettings
  /** The daemon socket to use instead of starting `nix-daemon --stdio` (how non-root users reach Nix). */
  socketPath?: string
  /** Connections for queries; builds take their own. */
  poolSize?: number
  /** Requests after which a connection is replaced. */
  recycleAfter?: number
  /** See DEFAULT_QUERY_TIMEOUT_MS. */
  queryTimeoutMs?: number
  /** How long a new connection's handshake may take (default 30 s). */
  openTimeoutMs?: number
}

/** The daemon did not answer a query in time; its connection was closed. */
export class DaemonTimeout extends Error {
  override name = 'DaemonTimeout'
}

/** The exit code `nix-store --realise` gives for each failed BuildResult status (see buildFailureFor). */
function exitCodeFor (status: number): number {
  switch (status) {
    case BuildStatus.TimedOut: return 0x65
    case BuildStatus.OutputRejected: return 0x66
    case BuildStatus.NotDeterministic: return 0x68
    case BuildStatus.PermanentFailure:
    case BuildStatus.CachedFailure:
    case BuildStatus.LogLimitExceeded:
    case BuildStatus.DependencyFailed:
      return 0x64
    default: return 1 // transient, misc, input rejected, no substituters: worth another try
  }
}

const SUCCESS = new Set<number>([BuildStatus.Built, BuildStatus.Substituted, BuildStatus.AlreadyValid, BuildStatus.ResolvesToAlreadyValid])

export class DaemonStore implements StoreBackend {
  readonly storeDir = NIX_STORE_DIR
  private readonly settings: NixSettings
  private readonly pool: DaemonPool
  private readonly poolSize: number
  private readonly queryTimeoutMs: number

  constructor (init: DaemonStoreInit = {}) {
    this.settings = init.settings ?? {}
    const open = {
      ...(init.socketPath != null ? { socketPath: init.socketPath } : { settings: this.settings }),
      ...(init.openTimeoutMs != null ? { openTimeoutMs: init.openTimeoutMs } : {})
    }
    this.poolSize = init.poolSize ?? DEFAULT_POOL_SIZE
    this.queryTimeoutMs = init.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS
    this.pool = new DaemonPool(open, this.poolSize, init.recycleAfter ?? DEFAULT_RECYCLE_AFTER)
  }

  get stats (): PoolStats { return this.pool.stats }

  async isValid (paths: string[], options: WaitOptions = {}): Promise<Set<string>> {
    this.checkPaths(paths)
    if (paths.length === 0) return new Set()
    const unique = [...new Set(paths)]
    // The daemon answers one path at a time (a database lookup each, ~20 µs): a long list is
    // split over the pool's connections, whose daemons look up in parallel.
    const parts = chunks(unique, Math.min(this.poolSize, Math.ceil(unique.length / PARALLEL_QUERY_MIN)))
    const answers = await Promise.all(parts.map(async part =>
      await this.withConnection('validity query', options.signal, async c => await c.isValid(part))))
    return answers.length === 1 ? answers[0] as Set<string> : new Set(answers.flatMap(a => [...a]))
  }

  async queryPathInfo (path: string, options: WaitOptions = {}): Promise<PathInfo | null> {
    return (await this.queryPathInfos([path], options)).get(path) ?? null
  }

  async queryPathInfos (paths: string[], options: WaitOptions = {}): Promise<Map<string, PathInfo>> {
    this.checkPaths(paths)
    if (paths.length === 0) return new Map()
    return await this.withConnection('path info query', options.signal, async c => await c.queryPathInfos([...new Set(paths)]))
  }

  async closure (paths: string[], options: WaitOptions = {}): Promise<string[]> {
    this.checkPaths(paths)
    const { byPath, missing } = await this.walk([...new Set(paths)], options.signal)
    if (missing[0] != null) throw new PathNotValid(missing[0])
    return referencesFirst(byPath).map(i => i.path)
  }

  async closureInfos (roots: string[], options: WaitOptions = {}): Promise<{ infos: PathInfo[], missing: string[] }> {
    this.checkPaths(roots)
    const { byPath, missing } = await this.walk([...new Set(roots)], options.signal)
    return { infos: referencesFirst(byPath), missing }
  }

  /** Path info of everything reachable from `roots`, level by level (one round trip each); `missing`: invalid roots. */
  private async walk (roots: string[], signal: AbortSignal | undefined): Promise<{ byPath: Map<string, PathInfo>, missing: string[] }> {
    const byPath = new Map<string, PathInfo>()
    const missing: string[] = []
    if (roots.length === 0) return { byPath, missing }
    await this.withConnection('closure query', signal, async c => {
      let level = roots
      const seen = new Set(roots)
      while (level.length > 0) {
        const infos = await c.queryPathInfos(level)
        const next: string[] = []
        for (const p of level) {
          const info = infos.get(p)
          if (info == null) {
            // A root may be missing; a reference of a valid path never is, unless the store is damaged.
            if (roots.includes(p)) missing.push(p)
            else throw new PathNotValid(p)
            continue
          }
          byPath.set(p, info)
          for (const r of info.references) if (!seen.has(r)) { seen.add(r); next.push(r) }
        }
        level = next
      }
    })
    return { byPath, missing }
  }

  async queryPathFromHashPart (hashPart: string, options: WaitOptions = {}): Promise<string | null> {
    return await this.withConnection('hash part query', options.signal, async c => await c.queryPathFromHashPart(hashPart))
  }

  /**
   * Keeps `path` from the garbage collector while the pooled connection that added the root
   * lives: at most MAX_AGE_MS (60 s), less once it has been idle IDLE_MS (daemon-pool.ts).
   */
  async addTempRoot (path: string, options: WaitOptions = {}): Promise<void> {
    this.checkPaths([path])
    await this.withConnection('add temp root', options.signal, async c => { await c.addTempRoot(path) })
  }

  /** What building `paths` would take; a .drv stands for all its outputs. */
  async queryMissing (paths: string[], options: WaitOptions = {}): Promise<MissingPaths> {
    this.checkPaths(paths)
    return await this.withConnection('missing paths query', options.signal, async c => await c.queryMissing(paths.map(derivedPath)))
  }

  async realise (drvPath: string, options: RealiseOptions = {}): Promise<RealiseResult> {
    if (!isStorePath(drvPath, this.storeDir) || !isDerivation(drvPath)) throw new InvalidStorePath(drvPath, this.storeDir)
    const { signal } = options
    const tail: string[] = []
    const onLog = (line: string): void => {
      tail.push(line)
      if (tail.length > BUILD_LOG_TAIL_LINES) tail.shift()
      options.onLog?.(line)
    }
    const overrides: Record<string, string> = {}
    const features = options.systemFeatures ?? this.settings.systemFeatures
    if (features != null) overrides['system-features'] = features.join(' ')
    const result = await this.withConnection(`build of '${drvPath}'`, signal, async c => {
      await c.setOptions({
        maxBuildJobs: options.maxJobs ?? 1,
        maxSilentTime: options.maxSilentTime ?? 0,
        timeout: options.timeout ?? 0,
        buildCores: availableParallelism(),
        useSubstitutes: true,
        overrides
      })
      const unwatch = signal != null ? c.watchAbort(signal, BUILD_KILL_GRACE_MS) : () => {}
      try {
        return (await c.buildPathsWithResults([derivedPath(drvPath)], onLog))[0] as BuildResult
      } finally {
        unwatch()
      }
      // A build changes the connection's settings: system features set for one build must not stay for the next.
    }, { own: true, abortCloses: false, closeAfter: options.systemFeatures != null && this.settings.systemFeatures == null })
    if (!SUCCESS.has(result.status)) {
      const message = stripAnsi(result.errorMsg)
      if (message.includes(`cannot build missing derivation '${drvPath}'`) || message.includes(`path '${drvPath}' is not valid`)) {
        throw new PathNotValid(drvPath)
      }
      const said = message.split('\n')[0] ?? ''
      throw buildFailureFor(drvPath, exitCodeFor(result.status), said !== '' ? [...tail, `error: ${said.replace(/^error: /, '')}`].slice(-BUILD_LOG_TAIL_LINES) : tail)
    }
    return { outputs: await this.outputsOf(drvPath, result, signal) }
  }

  async * exportNar (path: string, options: ExportOptions = {}): AsyncGenerator<Uint8Array> {
    this.checkPaths([path])
    const { signal } = options
    // A NAR streams as fast as its consumer (a peer) reads it: on a connection of its own, so
    // that slow consumers cannot hold every query up.
    const lease = await this.pool.acquire(signal, true)
    const onAbort = (): void => { lease.conn.close() }
    signal?.addEventListener('abort', onAbort, { once: true })
    let complete = false
    try {
      // The daemon dumps whatever is on disk under that name: only registered paths may leave.
      if (options.knownValid !== true && !(await lease.conn.isValid([path])).has(path)) {
        complete = true
        throw new PathNotValid(path)
      }
      for await (const chunk of lease.conn.narFromPath(path)) yield chunk
      complete = true
    } catch (err) {
      if (signal?.aborted === true) throw new OperationAborted(`export of '${path}'`, signal.reason)
      throw err
    } finally {
      signal?.removeEventListener('abort', onAbort)
      // Stopped early (the consumer returned, or an error): the rest of the NAR is still on the wire.
      lease.release(!complete)
    }
  }

  async importNars (infos: ImportInfo[], nars: AsyncIterable<NarEntry>, options: WaitOptions = {}): Promise<ImportBatchResult> {
    for (const info of infos) this.checkPaths([info.path, ...info.references, ...(info.deriver != null ? [info.deriver] : [])])
    const { signal } = options
    const source = nars[Symbol.asyncIterator]()
    if (infos.length === 0 || signal?.aborted === true) {
      await source.return?.()
      signal?.throwIfAborted()
      return { imported: [] }
    }
    const imported: string[] = []
    let current: string | undefined
    try {
      // Its own connection, as for an export: the NARs come as fast as a peer sends them.
      await this.withConnection('import', signal, async c => {
        for (const info of infos) {
          current = info.path
          const next = await source.next()
          if (next.done === true) throw new NarOutOfOrder(info.path, undefined)
          if (next.value.path !== info.path) throw new NarOutOfOrder(info.path, next.value.path)
          await c.addToStoreNar(info, checkedNar(info, next.value.nar, signal))
          imported.push(info.path)
        }
        current = undefined
        const extra = await source.next()
        if (extra.done !== true) throw new NarOutOfOrder(undefined, extra.value.path)
      }, { own: true, abortCloses: true })
      return { imported }
    } catch (err) {
      await source.return?.()
      if (current !== undefined) await this.removeLeftover(current)
      if (isAborted(signal)) throw new OperationAborted(`import of '${current ?? infos[0]?.path ?? ''}'`, signal?.reason)
      throw err
    }
  }

  async deletePaths (paths: string[], options: WaitOptions = {}): Promise<void> {
    this.checkPaths(paths)
    if (paths.length === 0) return
    // This store's own idle connections hold temporary roots on what they built or imported.
    await this.pool.releaseRoots()
    await this.withConnection('delete', options.signal, async c => { await c.deleteSpecific([...new Set(paths)]) }, { own: true })
  }

  /**
   * After a failed import: the daemon restores a NAR into the store as it reads it and leaves
   * what it wrote when the stream breaks off. Once the connection is gone (and its temporary
   * root with it), the invalid leftover is deleted; a path another import is writing stays
   * (that daemon's temporary root keeps it alive).
   */
  private async removeLeftover (path: string): Promise<void> {
    try {
      await this.pool.releaseRoots()
      if ((await this.isValid([path])).has(path)) return
      await this.withConnection('delete of a failed import', undefined, async c => await c.deleteSpecific([path]), { own: true })
    } catch {
      // Garbage a later import or GC removes: never the import's error.
    }
  }

  close (): void { this.pool.close() }

  /**
   * Runs `fn` on a pooled connection. An abort closes the connection (the daemon stops what it
   * was doing); any failure leaves the connection in an unknown state, so it is closed and the
   * next request opens another.
   */
  private async withConnection<T> (what: string, signal: AbortSignal | undefined, fn: (c: DaemonConnection) => Promise<T>,
    options: { own?: boolean, closeAfter?: boolean, abortCloses?: boolean } = {}): Promise<T> {
    const lease: Lease = await this.pool.acquire(signal, options.own === true)
    // Builds watch the abort themselves (the daemon must first stop its builder).
    const onAbort = (): void => { if (options.abortCloses !== false) lease.conn.close() }
    signal?.addEventListener('abort', onAbort, { once: true })
    let broken = options.closeAfter === true
    let timedOut = false
    // Queries only: a build or a NAR stream takes as long as it takes.
    const timer = options.own === true
      ? undefined
      : setTimeout(() => { timedOut = true; lease.conn.close() }, this.queryTimeoutMs)
    try {
      return await fn(lease.conn)
    } catch (err) {
      // Even a daemon's error reply can leave the connection unusable: one about a request it
      // was still reading (a bad CA in AddToStoreNar) is its last word before it exits.
      broken = true
      if (signal?.aborted === true) throw new OperationAborted(what, signal.reason)
      if (timedOut) throw new DaemonTimeout(`the Nix daemon did not answer the ${what} within ${this.queryTimeoutMs} ms`)
      throw fromDaemon(err)
    } finally {
      if (timer !== undefined) clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
      lease.release(broken || signal?.aborted === true)
    }
  }

  /** Output name to path: from the .drv, or (floating content-addressed outputs) from the build's realisations. */
  private async outputsOf (drvPath: string, result: BuildResult, signal: AbortSignal | undefined): Promise<Record<string, string>> {
    const drv = await readDerivationCached(drvPath, signal != null ? { signal } : {})
    const outputs: Record<string, string> = Object.fromEntries(outputPaths(drv))
    for (const [id, json] of Object.entries(result.builtOutputs)) {
      const name = id.slice(id.lastIndexOf('!') + 1)
      if (outputs[name] != null) continue
      const outPath = (JSON.parse(json) as { outPath?: string }).outPath
      if (outPath != null) outputs[name] = outPath.startsWith('/') ? outPath : `${this.storeDir}/${outPath}`
    }
    if (Object.keys(outputs).length === 0) throw new DaemonError(`cannot name the outputs of '${drvPath}'`)
    return outputs
  }

  private checkPaths (paths: string[]): void {
    for (const p of paths) if (!isStorePath(p, this.storeDir)) throw new InvalidStorePath(p, this.storeDir)
  }
}

/** Nix colours its messages for terminals; logs and errors keep the text. */
function stripAnsi (text: string): string { return text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '') }

/** `items` in `n` slices of about equal length (at least one). */
function chunks<T> (items: T[], n: number): T[][] {
  const count = Math.max(1, n)
  const size = Math.ceil(items.length / count)
  const out: T[][] = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out.length > 0 ? out : [[]]
}

/** A .drv as a derived path meaning all its outputs; any other path as itself. */
function derivedPath (path: string): string { return isDerivation(path) ? `${path}!*` : path }

/** The daemon's error, as the backend's own error class where one fits. */
function fromDaemon (err: unknown): unknown {
  if (!(err instanceof DaemonError)) return err
  const message = stripAnsi(err.message)
  const invalid = /path '([^']+)' is not valid/.exec(message)
  if (invalid?.[1] != null) return new PathNotValid(invalid[1])
  return new DaemonError(message)
}

