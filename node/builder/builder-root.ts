// The builder socket's root: where the outputs of the builds plain Nix asked for wait until Nix
// copies them into its store. A `unix://<socket>?root=<dir>` store makes Nix's build-remote read
// an output's files from `<dir>/nix/store/<name>` (UDSRemoteStore's narFromPath is
// LocalFSStore's) and its registration over the socket; so the outputs are unpacked here, and
// never imported into this node's store, where that same Nix holds their locks while it waits.
import { mkdir, readdir, rm } from 'node:fs/promises'
import { basename, join } from 'node:path'
import { restoreNar } from '../../protocols/nix/nar-restore.ts'
import { checkedNar } from '../nix/nar-check.ts'
import { parseStorePath } from '../../protocols/nix/store-path.ts'
import type { ImportBatchResult, ImportInfo, NarEntry, PathInfo, StoreBackend, WaitOptions } from '../nix/store-backend.ts'
import { NarOutOfOrder } from '../nix/store-backend.ts'
import type { Logger } from '../log.ts'

/** An output Nix has not copied this long after it was unpacked is given up on (the client went away). */
export const ROOT_KEEP_MS = 3600_000
/** How often outputs Nix has copied (valid in the node's store now) are removed from the root. */
export const ROOT_SWEEP_MS = 10_000

interface Entry { info: PathInfo, addedAt: number }

export class BuilderRoot {
  /** The `root` of the store URI; the outputs are under `<dir>/nix/store`. */
  readonly dir: string
  private readonly storeDir: string
  private readonly entries = new Map<string, Entry>()
  private readonly store: Pick<StoreBackend, 'isValid'>
  private readonly log: Logger
  private sweepTimer: ReturnType<typeof setInterval> | undefined

  constructor (dir: string, store: Pick<StoreBackend, 'isValid'>, log: Logger) {
    this.dir = dir
    this.storeDir = join(dir, 'nix', 'store')
    this.store = store
    this.log = log
  }

  /**
   * Empties the root (what a previous run left was for connections that are gone) and starts
   * the sweep of copied outputs.
   */
  async start (): Promise<void> {
    await rm(this.storeDir, { recursive: true, force: true })
    await mkdir(this.storeDir, { recursive: true })
    this.sweepTimer = setInterval(() => { void this.sweep() }, ROOT_SWEEP_MS)
    this.sweepTimer.unref()
  }

  stop (): void {
    if (this.sweepTimer !== undefined) clearInterval(this.sweepTimer)
  }

  /** The registration of an output waiting here. */
  pathInfo (path: string): PathInfo | undefined { return this.entries.get(path)?.info }

  /**
   * Which of `paths` Nix can read from here or from the node's store: what fetchClosure asks
   * before it fetches an output's closure, so only the outputs themselves (their references are
   * the build's inputs, valid in the store) are fetched.
   */
  async isValid (paths: string[], options?: WaitOptions): Promise<Set<string>> {
    const here = paths.filter(p => this.entries.has(p))
    const valid = await this.store.isValid(paths.filter(p => !this.entries.has(p)), options)
    return new Set([...here, ...valid])
  }

  /**
   * Unpacks each NAR at `<root>/nix/store/<name>`, checked against its info as an import into
   * the store is: a NAR that does not match leaves nothing there, and the error names the path.
   */
  async importNars (infos: ImportInfo[], nars: AsyncIterable<NarEntry>, options?: WaitOptions): Promise<ImportBatchResult> {
    const imported: string[] = []
    let i = 0
    for await (const entry of nars) {
      const info = infos[i++]
      if (info === undefined || entry.path !== info.path) throw new NarOutOfOrder(info?.path, entry.path)
      parseStorePath(info.path)
      const target = join(this.storeDir, basename(info.path))
      if (this.entries.has(info.path)) {
        // Unpacked already (the same build asked for again): the NAR is read and dropped.
        for await (const _ of entry.nar) { /* drained */ }
      } else {
        await rm(target, { recursive: true, force: true })
        await restoreNar(checkedNar(info, entry.nar, options?.signal), target, options?.signal !== undefined ? { signal: options.signal } : {})
        this.entries.set(info.path, {
          info: { path: info.path, narHash: info.narHash, narSize: info.narSize, references: [...info.references].sort(), signatures: info.signatures ?? [], ...(info.deriver !== undefined ? { deriver: info.deriver } : {}), ...(info.ca !== undefined ? { ca: info.ca } : {}) },
          addedAt: Date.now()
        })
      }
      imported.push(info.path)
    }
    return { imported }
  }

  /** Removes outputs Nix has copied into the node's store, and those it never came for. */
  async sweep (now = Date.now()): Promise<number> {
    if (this.entries.size === 0) return 0
    try {
      const copied = await this.store.isValid([...this.entries.keys()])
      const gone = [...this.entries].filter(([p, e]) => copied.has(p) || now - e.addedAt > ROOT_KEEP_MS).map(([p]) => p)
      for (const p of gone) {
        this.entries.delete(p)
        await rm(join(this.storeDir, basename(p)), { recursive: true, force: true })
      }
      return gone.length
    } catch (err) {
      this.log.warn(`sweeping the builder root ${this.dir} failed: ${(err as Error).message}`)
      return 0
    }
  }

  /** Names under the root's store directory (for tests and status). */
  async listed (): Promise<string[]> { return (await readdir(this.storeDir)).sort() }
}
