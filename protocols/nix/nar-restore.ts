// Writing a NAR back to disk, like `nix-store --restore DIR`, all or nothing: the tree is built
// in a temporary sibling of DIR and renamed into place only once the whole NAR has been read
// and checked, so a malformed or truncated NAR never leaves a partial tree at DIR.
import { randomBytes } from 'node:crypto'
import { closeSync, mkdirSync, openSync, symlinkSync, write, writeSync } from 'node:fs'
import { lstat, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { decodeNar, type DecodeNarOptions } from './nar-decoder.ts'

/** File contents are copied into buffers of this size and written a buffer at a time. */
const WRITE_BUFFER = 1024 * 1024
/** A file's last piece up to this size is written synchronously (cheaper than a thread-pool trip). */
const SYNC_WRITE_MAX = 64 * 1024

const fsWrite = promisify(write)
const SLASH = Buffer.from('/')

/** The restore target exists already; nothing was written. */
export class NarRestoreTargetExistsError extends Error {
  override name = 'NarRestoreTargetExistsError'
  readonly path: string
  constructor (path: string) {
    super(`path '${path}' already exists; restore needs a path that does not exist`)
    this.path = path
  }
}

export type RestoreNarOptions = DecodeNarOptions

/**
 * Restores the NAR read from `source` at `target` (which must not exist): a directory, a
 * regular file or a symlink, as the NAR's root says. On any error the temporary tree is removed
 * and the error (NarFormatError for bad input) is rethrown.
 *
 * File contents are copied out of the source's chunks as they arrive, so a source may reuse its
 * buffer for the next chunk.
 */
export async function restoreNar (source: AsyncIterable<Uint8Array>, target: string, options: RestoreNarOptions = {}): Promise<void> {
  await mustNotExist(target)
  const temp = join(dirname(target), `.${basename(target)}.meshbuild-restore-${randomBytes(6).toString('hex')}`)
  const tempBytes = Buffer.from(temp, 'utf8')
  const full = (path: Uint8Array): Buffer => path.length === 0 ? tempBytes : Buffer.concat([tempBytes, SLASH, path])
  const writer = new FileWriter()

  // Why synchronous calls for mkdir/open/close/symlink: each takes microseconds, and through
  // the thread pool they cost ~50 µs apiece here, which made trees of small files several
  // times slower to restore than nix-store. Contents of any size are written asynchronously.
  try {
    for await (const event of decodeNar(source, options)) {
      switch (event.type) {
        case 'directory':
          mkdirSync(full(event.path), { mode: 0o777 })
          break
        case 'file':
          writer.open(openSync(full(event.path), 'wx', event.executable ? 0o777 : 0o666))
          break
        case 'data':
          await writer.add(event.data)
          break
        case 'file-end':
          await writer.close()
          break
        case 'symlink':
          symlinkSync(event.target as Buffer, full(event.path))
          break
        case 'directory-end':
          break
      }
    }
    // Checked again: something may have appeared at target while we read, and rename(2)
    // would replace an empty directory or a file silently.
    await mustNotExist(target)
    await rename(temp, target)
  } catch (err) {
    await writer.abandon()
    await rm(temp, { recursive: true, force: true })
    throw err
  }
}

/**
 * Writes one file at a time through two buffers: one fills with incoming data while the other
 * is being written, so decoding and disk writes overlap.
 */
class FileWriter {
  private readonly buffers = [Buffer.allocUnsafeSlow(WRITE_BUFFER), Buffer.allocUnsafeSlow(WRITE_BUFFER)]
  private current = 0
  private pos = 0
  private fd: number | undefined
  private inflight: Promise<void> | undefined

  open (fd: number): void {
    this.fd = fd
    this.pos = 0
  }

  async add (data: Uint8Array): Promise<void> {
    let from = 0
    while (from < data.length) {
      const buf = this.buffers[this.current]!
      const n = Math.min(WRITE_BUFFER - this.pos, data.length - from)
      buf.set(data.subarray(from, from + n), this.pos)
      this.pos += n
      from += n
      if (this.pos === WRITE_BUFFER) await this.flush()
    }
  }

  /** Starts writing the current buffer (after the previous write finished) and switches buffers. */
  private async flush (): Promise<void> {
    await this.inflight
    const fd = this.fd!
    const piece = this.buffers[this.current]!.subarray(0, this.pos)
    this.inflight = writeFully(fd, piece)
    this.inflight.catch(() => {}) // awaited before the next write or the close
    this.current ^= 1
    this.pos = 0
  }

  async close (): Promise<void> {
    const fd = this.fd!
    if (this.pos > 0) {
      if (this.inflight == null && this.pos <= SYNC_WRITE_MAX) {
        const piece = this.buffers[this.current]!.subarray(0, this.pos)
        for (let done = 0; done < piece.length;) done += writeSync(fd, piece, done)
        this.pos = 0
      } else {
        await this.flush()
      }
    }
    const last = this.inflight
    this.inflight = undefined
    this.fd = undefined
    try {
      await last
    } finally {
      closeSync(fd)
    }
  }

  /** After a failure: waits for any write in flight and closes the file, ignoring errors. */
  async abandon (): Promise<void> {
    await this.inflight?.catch(() => {})
    this.inflight = undefined
    if (this.fd !== undefined) {
      try { closeSync(this.fd) } catch {}
      this.fd = undefined
    }
  }
}

async function writeFully (fd: number, data: Uint8Array): Promise<void> {
  for (let done = 0; done < data.length;) done += (await fsWrite(fd, data, done, data.length - done)).bytesWritten
}

async function mustNotExist (path: string): Promise<void> {
  try {
    await lstat(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  throw new NarRestoreTargetExistsError(path)
}
