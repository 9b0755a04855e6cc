// The shared binary cache on disk, in the layout Nix's HTTP binary cache serves:
//
//   dir/nix-cache-info                   what the server answers for /nix-cache-info
//   dir/<hashpart>.narinfo               one per path, signed, published last
//   dir/nar/<nix32 FileHash>.nar[.ext]   the compressed NARs
//   dir/index/                           LevelDB: one record per path (for has/missing/stats)
//   dir/tmp/                             files being written; emptied on open
//
// The files are the truth and the index follows them. A path is published in three atomic
// steps, each a write to tmp/ + fsync + rename: (1) the NAR into nar/, (2) the narinfo, (3) the
// index record. A crash between any two leaves a state that open() repairs (recover()): tmp/
// emptied, narinfos without their NAR (or without their references) removed, NARs no narinfo
// names removed, the index rewritten to match. So no half-written NAR is ever served, and a
// narinfo is never visible before its NAR.
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, open, readdir, readFile, rename, rm, stat, type FileHandle } from 'node:fs/promises'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { Level } from 'level'
import { Hash } from '../../protocols/nix/hash.ts'
import { NarHasher } from '../../protocols/nix/nar-hash.ts'
import { formatNarinfo, parseNarinfo, type NarInfo } from '../../protocols/nix/narinfo.ts'
import { encodeNix32 } from '../../protocols/nix/nix32.ts'
import { NIX_STORE_DIR, parseStorePath, storePathFromBaseName } from '../../protocols/nix/store-path.ts'
import { NarHashMismatch, OperationAborted } from '../nix/store-backend.ts'
import type { Logger } from '../log.ts'
import { compressor, DEFAULT_COMPRESSION, NAR_EXTENSIONS, type CompressionName } from './compression.ts'

/** Served as /nix-cache-info. Priority 40 puts it before cache.nixos.org (50) for clients that have both. */
export const NIX_CACHE_INFO = `StoreDir: ${NIX_STORE_DIR}\nWantMassQuery: 1\nPriority: 40\n`

/** `<hashpart>.narinfo`: 32 nix32 characters. */
export const NARINFO_NAME = /^([0-9a-df-np-sv-z]{32})\.narinfo$/
/** `<nix32 of a sha256>.nar[.zst|.br]`: the only names in nar/ the cache writes or serves. */
export const NAR_NAME = /^[0-9a-df-np-sv-z]{52}\.nar(?:\.zst|\.br)?$/
const HASH_PART = /^[0-9a-df-np-sv-z]{32}$/

const INDEX_PREFIX = 'path:'

export class ReferenceMissing extends Error {
  override name = 'ReferenceMissing'
  readonly path: string
  readonly reference: string
  constructor (path: string, reference: string) {
    super(`cannot add ${path} to the cache: its reference ${reference} is not in the cache (add references first)`)
    this.path = path
    this.reference = reference
  }
}

/** Nothing unsigned enters the shared cache: Nix would refuse it anyway. */
export class UnsignedNarinfo extends Error {
  override name = 'UnsignedNarinfo'
  readonly path: string
  constructor (path: string) {
    super(`cannot add ${path} to the cache: its narinfo carries no signature`)
    this.path = path
  }
}

export class CacheInUse extends Error {
  override name = 'CacheInUse'
  readonly dir: string
  constructor (dir: string, cause: unknown) {
    super(`binary cache ${dir} is in use by another process (its index is locked)`, { cause })
    this.dir = dir
  }
}

export class CacheClosed extends Error {
  override name = 'CacheClosed'
  constructor (dir: string) { super(`binary cache ${dir} is closed`) }
}

export interface BinaryCacheOptions {
  /** How new NARs are compressed; what is in the cache already stays as it is. */
  compression?: CompressionName
  /** zstd level or Brotli quality; the method's default when absent. */
  level?: number
  log?: Logger
}

export interface AddOptions {
  signal?: AbortSignal
}

export interface AddResult {
  /** False when the path was in the cache already and the NAR was not read. */
  added: boolean
  /** The narinfo as published, URL, Compression, FileHash and FileSize filled in. */
  info: NarInfo
}

export interface CacheStats {
  paths: number
  /** Sum of NarSize: what the paths take unpacked in a store. */
  narBytes: number
  /** Sum of FileSize: what the NAR files take on disk. */
  fileBytes: number
  /** narinfo lookups answered / not found since open (counted by the HTTP server). */
  hits: number
  misses: number
}

/** What open() found and repaired; all empty after a clean shutdown. */
export interface RecoveryReport {
  tmpRemoved: number
  /** Store paths whose narinfo was removed: NAR missing or short, a reference gone, unreadable. */
  narinfosRemoved: string[]
  /** NAR file names no narinfo pointed to. */
  narsRemoved: string[]
  /** Index records added, changed or removed to match the files. */
  indexFixed: number
}

interface IndexRecord {
  storePath: string
  url: string
  compression: string
  narHash: string
  narSize: number
  fileSize: number
  references: string[]
}

export class BinaryCache {
  readonly dir: string
  readonly compression: CompressionName
  /** What open() repaired. */
  readonly recovery: RecoveryReport = { tmpRemoved: 0, narinfosRemoved: [], narsRemoved: [], indexFixed: 0 }
  private readonly level: number | undefined
  private readonly log: Logger | undefined
  private readonly db: Level<string, string>
  private readonly counts = { paths: 0, narBytes: 0, fileBytes: 0, hits: 0, misses: 0 }
  /** Adds under way, by hash part: a second add of the same path waits for the first. */
  private readonly adding = new Map<string, Promise<AddResult>>()
  private closed = false

  private constructor (dir: string, db: Level<string, string>, options: BinaryCacheOptions) {
    this.dir = dir
    this.db = db
    this.compression = options.compression ?? DEFAULT_COMPRESSION
    this.level = options.level
    this.log = options.log
  }

  /** Opens (creating if need be) the cache in `dir`, after repairing whatever a crash left. */
  static async open (dir: string, options: BinaryCacheOptions = {}): Promise<BinaryCache> {
    for (const sub of ['nar', 'tmp', 'index']) await mkdir(join(dir, sub), { recursive: true })
    const db = new Level<string, string>(join(dir, 'index'), { valueEncoding: 'utf8' })
    try {
      // LevelDB's lock also keeps a second process from recovering (deleting) under a live one.
      await db.open()
    } catch (err) {
      if ((err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED') throw new CacheInUse(dir, err)
      throw err
    }
    const cache = new BinaryCache(dir, db, options)
    try {
      await cache.recover()
      await cache.writeAtomically(join(dir, 'nix-cache-info'), NIX_CACHE_INFO)
    } catch (err) {
      await db.close()
      throw err
    }
    return cache
  }

  /**
   * Stores a path: `info` is its complete, signed narinfo but for URL, Compression, FileHash
   * and FileSize, which are filled in here. The NAR is hashed while it streams through the
   * compressor to disk, and refused (NarHashMismatch, nothing kept) unless it matches NarHash
   * and NarSize. Every reference but the path itself must be in the cache already
   * (ReferenceMissing, the NAR not read). A path already present is not read again.
   */
  async add (info: NarInfo, nar: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, options: AddOptions = {}): Promise<AddResult> {
    this.checkOpen()
    const { hashPart } = parseStorePath(info.storePath)
    for (;;) {
      const running = this.adding.get(hashPart)
      if (running === undefined) break
      await running.catch(() => {})
    }
    const adding = this.store(info, nar, options)
    this.adding.set(hashPart, adding)
    try {
      return await adding
    } finally {
      this.adding.delete(hashPart)
    }
  }

  /** Whether the cache holds `storePath` (a full path). */
  async has (storePath: string): Promise<boolean> {
    return (await this.missing([storePath])).length === 0
  }

  /** Those of `storePaths` (full paths) the cache does not hold, in the order given. */
  async missing (storePaths: string[]): Promise<string[]> {
    this.checkOpen()
    if (storePaths.length === 0) return []
    const keys = storePaths.map(p => INDEX_PREFIX + parseStorePath(p).hashPart)
    const values = await this.db.getMany(keys)
    return storePaths.filter((p, i) => {
      const v = values[i]
      return v === undefined || (JSON.parse(v) as IndexRecord).storePath !== p
    })
  }

  /** The narinfo text for a hash part, or undefined when the cache has no such path. */
  async narinfoText (hashPart: string): Promise<string | undefined> {
    if (!HASH_PART.test(hashPart)) return undefined
    try {
      return await readFile(join(this.dir, `${hashPart}.narinfo`), 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }

  /** The published narinfo of a store path (full path or hash part), or undefined. */
  async narinfo (storePathOrHashPart: string): Promise<NarInfo | undefined> {
    const hashPart = HASH_PART.test(storePathOrHashPart) ? storePathOrHashPart : parseStorePath(storePathOrHashPart).hashPart
    const text = await this.narinfoText(hashPart)
    return text === undefined ? undefined : parseNarinfo(text, { source: `${hashPart}.narinfo` })
  }

  /**
   * Where a NAR file named in a narinfo URL (`<nix32>.nar.zst`, without `nar/`) is, and its
   * size; undefined for a name the cache would never write (no path traversal) or one absent.
   */
  async narFile (name: string): Promise<{ path: string, size: number } | undefined> {
    if (!NAR_NAME.test(name)) return undefined
    const path = join(this.dir, 'nar', name)
    try {
      const st = await stat(path)
      return st.isFile() ? { path, size: st.size } : undefined
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
  }

  /** Counts a narinfo lookup for the hit rate. */
  recordLookup (hit: boolean): void {
    if (hit) this.counts.hits++
    else this.counts.misses++
  }

  stats (): CacheStats {
    return { ...this.counts }
  }

  /** Waits for adds under way, then closes the index. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await Promise.allSettled([...this.adding.values()])
    await this.db.close()
  }

  private checkOpen (): void {
    if (this.closed) throw new CacheClosed(this.dir)
  }

  private async store (info: NarInfo, nar: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, options: AddOptions): Promise<AddResult> {
    const { hashPart, baseName } = parseStorePath(info.storePath)
    if (await this.has(info.storePath)) {
      return { added: false, info: (await this.narinfo(hashPart)) ?? info }
    }
    if (info.sigs.length === 0) throw new UnsignedNarinfo(info.storePath)
    const refs = info.references.filter(r => r !== baseName).map(r => storePathFromBaseName(r))
    const absent = await this.missing(refs)
    if (absent[0] !== undefined) throw new ReferenceMissing(info.storePath, absent[0])
    options.signal?.throwIfAborted()

    // 1. The NAR: hashed, compressed, hashed again, written to tmp/, checked, renamed into nar/.
    const written = await this.writeNar(info, nar, hashPart, options.signal)
    const url = `nar/${encodeNix32(written.fileHash.digest)}.nar${NAR_EXTENSIONS[this.compression]}`
    await rename(written.tmp, join(this.dir, url))
    await fsyncDir(join(this.dir, 'nar'))

    // 2. The narinfo, now that its NAR is in place.
    const published: NarInfo = { ...info, url, compression: this.compression, fileHash: written.fileHash, fileSize: written.fileSize }
    await this.writeAtomically(join(this.dir, `${hashPart}.narinfo`), formatNarinfo(published))

    // 3. The index record.
    const record: IndexRecord = {
      storePath: info.storePath,
      url,
      compression: this.compression,
      narHash: info.narHash.toNix32(),
      narSize: info.narSize,
      fileSize: written.fileSize,
      references: info.references
    }
    await this.db.put(INDEX_PREFIX + hashPart, JSON.stringify(record), { sync: true })
    this.counts.paths++
    this.counts.narBytes += info.narSize
    this.counts.fileBytes += written.fileSize
    this.log?.info(`added ${info.storePath}: ${info.narSize} bytes, ${written.fileSize} as ${url}`)
    return { added: true, info: published }
  }

  /** Streams `nar` through the compressor into a file in tmp/; removes it on any failure. */
  private async writeNar (info: NarInfo, nar: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, hashPart: string, signal: AbortSignal | undefined): Promise<{ tmp: string, fileHash: Hash, fileSize: number }> {
    const tmp = join(this.dir, 'tmp', `${hashPart}-${randomBytes(6).toString('hex')}.nar${NAR_EXTENSIONS[this.compression]}`)
    const narHasher = new NarHasher()
    const fileHasher = createHash('sha256')
    let fileSize = 0
    let tooLong = false
    // Stops a stream that runs past NarSize before it can fill the disk.
    async function * checked (): AsyncGenerator<Uint8Array> {
      for await (const chunk of nar) {
        narHasher.update(chunk)
        if (narHasher.narSize > info.narSize) {
          tooLong = true
          throw new Error('NAR longer than its NarSize')
        }
        yield chunk
      }
    }
    const fh = await open(tmp, 'wx', 0o644)
    let ok = false
    try {
      const sink = new Writable({
        writev (chunks, callback) {
          const bufs = chunks.map(c => c.chunk as Buffer)
          for (const b of bufs) {
            fileHasher.update(b)
            fileSize += b.length
          }
          writeAll(fh, bufs).then(() => { callback() }, callback)
        },
        final (callback) {
          fh.sync().then(() => { callback() }, callback)
        }
      })
      const level = this.level
      await pipeline(checked, compressor(this.compression, { ...(level !== undefined ? { level } : {}), sizeHint: info.narSize }), sink, ...(signal !== undefined ? [{ signal }] : []))
      const actual = narHasher.digest()
      if (!actual.narHash.equals(info.narHash) || actual.narSize !== info.narSize) {
        throw new NarHashMismatch(info.storePath, { hash: info.narHash, size: info.narSize }, { hash: actual.narHash, size: actual.narSize })
      }
      ok = true
      return { tmp, fileHash: new Hash('sha256', fileHasher.digest()), fileSize }
    } catch (err) {
      if (tooLong) throw new NarHashMismatch(info.storePath, { hash: info.narHash, size: info.narSize }, { size: narHasher.narSize })
      if (signal?.aborted === true) throw new OperationAborted(`adding ${info.storePath} to the cache`, signal.reason)
      throw err
    } finally {
      await fh.close()
      if (!ok) await rm(tmp, { force: true })
    }
  }

  /** Writes `text` to tmp/, fsyncs it and renames it to `path`, then fsyncs the directory. */
  private async writeAtomically (path: string, text: string): Promise<void> {
    const tmp = join(this.dir, 'tmp', `${randomBytes(6).toString('hex')}.part`)
    const fh = await open(tmp, 'wx', 0o644)
    try {
      await fh.writeFile(text)
      await fh.sync()
    } finally {
      await fh.close()
    }
    await rename(tmp, path)
    await fsyncDir(this.dir)
  }

  /**
   * Makes the files and the index agree after whatever stopped the last run: (1) empty tmp/,
   * (2) drop narinfos that cannot be parsed or whose NAR is missing or of the wrong size,
   * (3) then, until nothing changes, those with a reference gone, (4) delete NARs no narinfo
   * names, (5) rewrite the index to match.
   */
  private async recover (): Promise<void> {
    const report = this.recovery
    // 1.
    for (const name of await readdir(join(this.dir, 'tmp'))) {
      await rm(join(this.dir, 'tmp', name), { recursive: true, force: true })
      report.tmpRemoved++
    }

    // 2.
    const found = new Map<string, NarInfo>()
    const drop = async (hashPart: string, why: string, storePath?: string): Promise<void> => {
      this.log?.warn(`recovery: removing ${hashPart}.narinfo: ${why}`)
      await rm(join(this.dir, `${hashPart}.narinfo`), { force: true })
      found.delete(hashPart)
      report.narinfosRemoved.push(storePath ?? hashPart)
    }
    for (const name of await readdir(this.dir)) {
      const m = NARINFO_NAME.exec(name)
      if (m == null) continue
      const hashPart = m[1] ?? ''
      let info: NarInfo
      try {
        info = parseNarinfo(await readFile(join(this.dir, name), 'utf8'), { source: name })
        if (parseStorePath(info.storePath).hashPart !== hashPart) throw new Error(`it describes ${info.storePath}`)
        if (!info.url.startsWith('nar/') || !NAR_NAME.test(info.url.slice(4))) throw new Error(`its URL ${info.url} is not a NAR file of this cache`)
      } catch (err) {
        await drop(hashPart, (err as Error).message)
        continue
      }
      const nar = await this.narFile(info.url.slice(4))
      if (nar === undefined) await drop(hashPart, `its NAR ${info.url} is missing`, info.storePath)
      else if (info.fileSize !== undefined && nar.size !== info.fileSize) await drop(hashPart, `its NAR ${info.url} has ${nar.size} bytes, not ${info.fileSize}`, info.storePath)
      else found.set(hashPart, info)
    }

    // 3.
    for (let changed = true; changed;) {
      changed = false
      for (const [hashPart, info] of found) {
        const self = parseStorePath(info.storePath).baseName
        const gone = info.references.find(r => r !== self && found.get(r.slice(0, 32))?.storePath !== storePathFromBaseName(r))
        if (gone !== undefined) {
          await drop(hashPart, `its reference ${gone} is not in the cache`, info.storePath)
          changed = true
        }
      }
    }

    // 4.
    const named = new Set([...found.values()].map(i => i.url.slice(4)))
    for (const name of await readdir(join(this.dir, 'nar'))) {
      if (named.has(name)) continue
      this.log?.warn(`recovery: removing nar/${name}: no narinfo names it`)
      await rm(join(this.dir, 'nar', name), { recursive: true, force: true })
      report.narsRemoved.push(name)
    }

    // 5.
    const want = new Map<string, string>()
    for (const [hashPart, info] of found) {
      const record: IndexRecord = {
        storePath: info.storePath,
        url: info.url,
        compression: info.compression,
        narHash: info.narHash.toNix32(),
        narSize: info.narSize,
        fileSize: info.fileSize ?? (await this.narFile(info.url.slice(4)))?.size ?? 0,
        references: info.references
      }
      want.set(INDEX_PREFIX + hashPart, JSON.stringify(record))
    }
    const batch = this.db.batch()
    for await (const [key, value] of this.db.iterator({ gte: INDEX_PREFIX, lt: `${INDEX_PREFIX}\xff` })) {
      const wanted = want.get(key)
      if (wanted === undefined) {
        batch.del(key)
        report.indexFixed++
      } else if (wanted !== value) {
        batch.put(key, wanted)
        report.indexFixed++
      }
      want.delete(key)
    }
    for (const [key, value] of want) {
      batch.put(key, value)
      report.indexFixed++
    }
    await batch.write({ sync: true })

    for (const info of found.values()) {
      this.counts.paths++
      this.counts.narBytes += info.narSize
      this.counts.fileBytes += info.fileSize ?? 0
    }
    const repaired = report.tmpRemoved + report.narinfosRemoved.length + report.narsRemoved.length + report.indexFixed
    if (repaired > 0) {
      this.log?.info(`recovery: ${report.tmpRemoved} temporary files, ${report.narinfosRemoved.length} narinfos, ${report.narsRemoved.length} NARs removed, ${report.indexFixed} index records fixed`)
    }
    this.log?.info(`opened ${this.dir}: ${this.counts.paths} paths, ${this.counts.fileBytes} bytes of NARs`)
  }
}

async function writeAll (fh: FileHandle, bufs: Buffer[]): Promise<void> {
  let pending = bufs.filter(b => b.length > 0)
  while (pending.length > 0) {
    let { bytesWritten } = await fh.writev(pending)
    // A short write (rare on a regular file): continue from where it stopped.
    const rest: Buffer[] = []
    for (const b of pending) {
      if (bytesWritten >= b.length) bytesWritten -= b.length
      else {
        rest.push(b.subarray(bytesWritten))
        bytesWritten = 0
      }
    }
    pending = rest
  }
}

/** Makes a rename in `dir` durable. */
async function fsyncDir (dir: string): Promise<void> {
  const fh = await open(dir, 'r')
  try {
    await fh.sync()
  } finally {
    await fh.close()
  }
}
