// Streaming NAR decoder: reads a NAR from any async iterable of byte chunks and yields one event
// per node, file contents as they arrive, in memory bounded by the largest input chunk.
// Every deviation from the canonical form Nix writes is a NarFormatError with the byte offset;
// a canonical NAR is the only kind accepted, so a decoded tree re-encodes to the same bytes.
import {
  MAX_CONTENTS_LENGTH, MAX_NAME_LENGTH, MAX_TARGET_LENGTH, MAX_TOKEN_LENGTH, NAR_MAGIC,
  NarFormatError, padding, showBytes
} from './nar-format.ts'

/**
 * What the decoder reports, in NAR order. `path` is relative to the root, names joined by '/',
 * as raw bytes (Nix names are bytes, not necessarily UTF-8); the root's path is empty.
 * A `file` event is followed by `data` events carrying exactly `size` bytes, then `file-end`.
 * `data` is a view into the source's chunk, not a copy: a source may reuse its buffer once the
 * next chunk is asked for, so a consumer that keeps data past the next event copies it.
 */
export type NarEvent =
  | { type: 'directory', path: Uint8Array, offset: number }
  | { type: 'directory-end', path: Uint8Array }
  | { type: 'file', path: Uint8Array, executable: boolean, size: number, offset: number }
  | { type: 'data', path: Uint8Array, data: Uint8Array }
  | { type: 'file-end', path: Uint8Array }
  | { type: 'symlink', path: Uint8Array, target: Uint8Array, offset: number }

export interface DecodeNarOptions {
  /** Longest symlink target accepted. */
  maxTargetLength?: number
  signal?: AbortSignal
}

const EMPTY = Buffer.alloc(0)
const SLASH = Buffer.from('/')

/** Pulls bytes from the chunk iterator, counting the absolute offset for error messages. */
class ByteReader {
  private readonly source: AsyncIterator<Uint8Array>
  private chunk: Buffer = EMPTY
  private pos = 0
  /** Absolute offset of the next unread byte. */
  offset = 0

  constructor (source: AsyncIterable<Uint8Array>) {
    this.source = source[Symbol.asyncIterator]()
  }

  private get buffered (): number { return this.chunk.length - this.pos }

  /** Makes at least one byte available; false at the end of the input. */
  private async fill (): Promise<boolean> {
    while (this.buffered === 0) {
      const next = await this.source.next()
      if (next.done === true) return false
      const v = next.value
      this.chunk = Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength)
      this.pos = 0
    }
    return true
  }

  async atEnd (): Promise<boolean> { return !(await this.fill()) }

  /** Exactly `n` bytes (a small n: tokens, names, lengths), copied so no input chunk is kept alive. */
  async read (n: number, what: string): Promise<Buffer> {
    if (this.buffered >= n) {
      const out = Buffer.from(this.chunk.subarray(this.pos, this.pos + n))
      this.pos += n
      this.offset += n
      return out
    }
    const out = Buffer.allocUnsafe(n)
    let have = 0
    while (have < n) {
      if (!(await this.fill())) throw new NarFormatError(`NAR ends inside ${what}`, this.offset)
      const take = Math.min(this.buffered, n - have)
      this.chunk.copy(out, have, this.pos, this.pos + take)
      this.pos += take
      this.offset += take
      have += take
    }
    return out
  }

  async readU64 (what: string): Promise<number> {
    const start = this.offset
    const b = await this.read(8, what)
    const high = b.readUInt32LE(4)
    const value = high * 0x100000000 + b.readUInt32LE(0)
    if (value > MAX_CONTENTS_LENGTH) throw new NarFormatError(`${what} is implausibly large (2^${Math.floor(Math.log2(high)) + 32} or more)`, start)
    return value
  }

  /** Zero padding after a string of `length` bytes; any non-zero byte is an error. */
  async readPadding (length: number, what: string): Promise<void> {
    const n = padding(length)
    if (n === 0) return
    const start = this.offset
    const pad = await this.read(n, `the padding of ${what}`)
    const bad = pad.findIndex(b => b !== 0)
    if (bad >= 0) throw new NarFormatError(`non-zero padding byte 0x${pad[bad]!.toString(16).padStart(2, '0')} after ${what}`, start + bad)
  }

  /** A length-prefixed string of at most `max` bytes. */
  async readString (max: number, what: string): Promise<Buffer> {
    const start = this.offset
    const length = await this.readU64(`the length of ${what}`)
    if (length > max) throw new NarFormatError(`${what} is ${length} bytes long, more than the ${max} allowed`, start)
    const bytes = await this.read(length, what)
    await this.readPadding(length, what)
    return bytes
  }

  /** Yields the next `n` bytes as slices of the input chunks (no copy). */
  async * readContents (n: number, what: string): AsyncGenerator<Buffer> {
    let left = n
    while (left > 0) {
      if (!(await this.fill())) throw new NarFormatError(`NAR ends inside ${what} (${left} of ${n} bytes missing)`, this.offset)
      const take = Math.min(this.buffered, left)
      const slice = this.chunk.subarray(this.pos, this.pos + take)
      this.pos += take
      this.offset += take
      left -= take
      yield slice
    }
  }

  async close (): Promise<void> {
    await this.source.return?.()
  }
}

/** One open directory: its path and the last name seen, which the next must follow. */
interface Frame {
  path: Buffer
  prevName: Buffer | undefined
}

/**
 * Decodes the NAR in `source`. Throws NarFormatError on malformed input (wrong magic, unknown
 * token, bad padding, oversized string, invalid, unsorted or duplicate name, truncation,
 * trailing bytes after the NAR).
 */
export async function * decodeNar (source: AsyncIterable<Uint8Array>, options: DecodeNarOptions = {}): AsyncGenerator<NarEvent> {
  const maxTarget = options.maxTargetLength ?? MAX_TARGET_LENGTH
  const r = new ByteReader(source)
  const signal = options.signal

  const token = async (): Promise<{ text: string, at: number }> => {
    const at = r.offset
    const t = await r.readString(MAX_TOKEN_LENGTH, 'a token')
    return { text: t.toString('latin1'), at }
  }
  const expect = async (wanted: string, context: string): Promise<void> => {
    const { text, at } = await token()
    if (text !== wanted) throw new NarFormatError(`expected "${wanted}" ${context}, found ${JSON.stringify(text)}`, at)
  }

  try {
    {
      const at = r.offset
      const magic = await r.readString(MAX_TOKEN_LENGTH, 'the NAR magic').catch((err: unknown) => {
        if (err instanceof NarFormatError) throw new NarFormatError(`not a NAR: it does not start with "${NAR_MAGIC}" (${err.message})`, at)
        throw err
      })
      if (magic.toString('latin1') !== NAR_MAGIC) throw new NarFormatError(`not a NAR: magic is ${showBytes(magic)}, not "${NAR_MAGIC}"`, at)
    }

    const stack: Frame[] = []
    let path: Buffer = EMPTY
    // Each turn reads one node at `path`; directories push a frame and their entries are read
    // by the loop below, so nesting depth costs no recursion.
    for (;;) {
      signal?.throwIfAborted()
      const nodeAt = r.offset
      await expect('(', 'to open a node')
      await expect('type', 'after "("')
      const { text: type, at: typeAt } = await token()
      if (type === 'regular') {
        let executable = false
        let next = await token()
        if (next.text === 'executable') {
          const markAt = r.offset
          const mark = await r.readString(MAX_TOKEN_LENGTH, 'the executable marker')
          if (mark.length !== 0) throw new NarFormatError(`executable marker has a non-empty value ${showBytes(mark)}`, markAt)
          executable = true
          next = await token()
        }
        if (next.text !== 'contents') throw new NarFormatError(`expected "contents" in a regular file, found ${JSON.stringify(next.text)}`, next.at)
        const size = await r.readU64('the length of the file contents')
        yield { type: 'file', path, executable, size, offset: nodeAt }
        for await (const data of r.readContents(size, 'file contents')) yield { type: 'data', path, data }
        await r.readPadding(size, 'file contents')
        yield { type: 'file-end', path }
        await expect(')', 'to close a regular file')
      } else if (type === 'symlink') {
        await expect('target', 'in a symlink')
        const target = await r.readString(maxTarget, 'a symlink target')
        if (target.length === 0) throw new NarFormatError('symlink target is empty', r.offset - 8)
        yield { type: 'symlink', path, target, offset: nodeAt }
        await expect(')', 'to close a symlink')
      } else if (type === 'directory') {
        yield { type: 'directory', path, offset: nodeAt }
        stack.push({ path, prevName: undefined })
      } else {
        throw new NarFormatError(`unknown node type ${JSON.stringify(type)}`, typeAt)
      }

      // A leaf inside a directory: close the entry that held it.
      if (type !== 'directory' && stack.length > 0) await expect(')', 'to close a directory entry')

      // Close finished directories (and the entries holding them) until one has another entry.
      let entered = false
      while (stack.length > 0 && !entered) {
        const frame = stack[stack.length - 1]!
        const { text, at } = await token()
        if (text === ')') {
          stack.pop()
          yield { type: 'directory-end', path: frame.path }
          if (stack.length > 0) await expect(')', 'to close a directory entry')
        } else if (text === 'entry') {
          await expect('(', 'after "entry"')
          await expect('name', 'in a directory entry')
          const nameAt = r.offset
          const name = await r.readString(MAX_NAME_LENGTH, 'a file name')
          checkName(name, frame.prevName, nameAt)
          frame.prevName = name
          await expect('node', 'after the entry name')
          path = frame.path.length === 0 ? name : Buffer.concat([frame.path, SLASH, name])
          entered = true
        } else {
          throw new NarFormatError(`expected "entry" or ")" in a directory, found ${JSON.stringify(text)}`, at)
        }
      }
      if (!entered) break // the root node is complete
    }
    if (!(await r.atEnd())) throw new NarFormatError('unexpected data after the end of the NAR', r.offset)
  } finally {
    await r.close()
  }
}

/** Rejects names Nix rejects, and names not strictly after the previous one in byte order. */
function checkName (name: Buffer, prev: Buffer | undefined, at: number): void {
  if (name.length === 0) throw new NarFormatError('empty file name', at)
  if ((name.length === 1 && name[0] === 0x2e) || (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e)) {
    throw new NarFormatError(`invalid file name ${showBytes(name)}`, at)
  }
  if (name.includes(0x2f)) throw new NarFormatError(`file name ${showBytes(name)} contains "/"`, at)
  if (name.includes(0)) throw new NarFormatError(`file name ${showBytes(name)} contains a NUL byte`, at)
  if (prev !== undefined) {
    const order = Buffer.compare(name, prev)
    if (order === 0) throw new NarFormatError(`duplicate file name ${showBytes(name)}`, at)
    if (order < 0) throw new NarFormatError(`file name ${showBytes(name)} is out of order: it sorts before ${showBytes(prev)}`, at)
  }
}

/** A decoded path (raw bytes) as text for messages and listings. */
export function narPathToString (path: Uint8Array): string {
  return Buffer.from(path.buffer, path.byteOffset, path.byteLength).toString('utf8')
}
