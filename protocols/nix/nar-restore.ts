// Writing a NAR back to disk, like `nix-store --restore DIR`, all or nothing: the tree is built
// in a temporary sibling of DIR and renamed into place only once the whole NAR has been read
// and checked, so a malformed or truncated NAR never leaves a partial tree at DIR.
import { randomBytes } from 'node:crypto'
import { closeSync, constants, mkdirSync, openSync, symlinkSync, writeSync } from 'node:fs'
import { lstat, rename, rm } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { NarParser, type DecodeNarOptions, type NarSink } from './nar-decoder.ts'

const { O_WRONLY, O_CREAT, O_EXCL } = constants
const NEW_FILE = O_WRONLY | O_CREAT | O_EXCL

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
 * Each chunk is written out before the next is asked for, so a source may reuse its buffer.
 */
export async function restoreNar (source: AsyncIterable<Uint8Array>, target: string, options: RestoreNarOptions = {}): Promise<void> {
  const restore = await NarRestore.start(target, options)
  try {
    for await (const chunk of source) {
      options.signal?.throwIfAborted()
      restore.push(chunk)
    }
    await restore.finish()
  } catch (err) {
    await restore.abandon()
    throw err
  }
}

/**
 * One restore, fed chunk by chunk (`push` is synchronous, for a caller that reads its input
 * synchronously), then `finish()` to check the NAR was complete and move the tree into place,
 * or `abandon()` after any error to remove what was written.
 */
export class NarRestore {
  readonly target: string
  private readonly temp: string
  private readonly parser: NarParser
  private readonly writer: TreeWriter

  private constructor (target: string, options: RestoreNarOptions) {
    this.target = target
    this.temp = join(dirname(target), `.${basename(target)}.meshbuild-restore-${randomBytes(6).toString('hex')}`)
    this.writer = new TreeWriter()
    this.parser = new NarParser(this.writer, { ...options, root: Buffer.from(this.temp, 'utf8') })
  }

  /** Checks that `target` does not exist yet. */
  static async start (target: string, options: RestoreNarOptions = {}): Promise<NarRestore> {
    await mustNotExist(target)
    return new NarRestore(target, options)
  }

  push (chunk: Uint8Array): void {
    this.parser.push(chunk)
  }

  async finish (): Promise<void> {
    this.parser.end()
    // Checked again: something may have appeared at target while we read, and rename(2)
    // would replace an empty directory or a file silently.
    await mustNotExist(this.target)
    await rename(this.temp, this.target)
  }

  async abandon (): Promise<void> {
    this.writer.abandon()
    await rm(this.temp, { recursive: true, force: true })
  }
}

/*
 * Why synchronous calls throughout: each takes microseconds, and through the thread pool they
 * cost ~50 µs apiece here, which made trees of small files several times slower to restore
 * than nix-store. A write is at most one input chunk, so the event loop is never held long.
 */
class TreeWriter implements NarSink {
  private fd = -1

  directory (path: Buffer): void {
    mkdirSync(path, 0o777)
  }

  directoryEnd (): void {}

  file (path: Buffer, executable: boolean): void {
    this.fd = openSync(path, NEW_FILE, executable ? 0o777 : 0o666)
  }

  data (_path: Buffer, data: Buffer): void {
    for (let done = 0; done < data.length;) done += writeSync(this.fd, data, done)
  }

  fileEnd (): void {
    const fd = this.fd
    this.fd = -1
    closeSync(fd)
  }

  symlink (path: Buffer, target: Buffer): void {
    symlinkSync(target, path)
  }

  /** After a failure: closes the file being written, if any. */
  abandon (): void {
    if (this.fd < 0) return
    try { closeSync(this.fd) } catch {}
    this.fd = -1
  }
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
