// Streaming NAR decoder: NarParser, a synchronous parser fed one chunk at a time that calls a
// sink per node, and decodeNar, the same as an async generator of events over any async
// iterable of chunks. File contents are passed on as they arrive; memory is bounded by the
// largest input chunk.
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

/**
 * What a NarParser reports, in NAR order, as calls rather than event objects (the restorer
 * writes straight from them). Paths are raw bytes: the parser's root, then the names joined by
 * '/'. `data` views the chunk being parsed and is valid only during the call.
 */
export interface NarSink {
  directory: (path: Buffer, offset: number) => void
  directoryEnd: (path: Buffer) => void
  file: (path: Buffer, executable: boolean, size: number, offset: number) => void
  data: (path: Buffer, data: Buffer) => void
  fileEnd: (path: Buffer) => void
  symlink: (path: Buffer, target: Buffer, offset: number) => void
}

export interface NarParserOptions {
  /** Longest symlink target accepted. */
  maxTargetLength?: number
  /** Path of the root node; entries below it are `root/name/...` (or `name/...` when empty). */
  root?: Buffer
}

const EMPTY = Buffer.alloc(0)
const SLASH = 0x2f

/** Keyword tokens, as bytes to compare against. */
const kw = (text: string): Buffer => Buffer.from(text, 'latin1')
const OPEN = kw('(')
const CLOSE = kw(')')
const TYPE = kw('type')
const REGULAR = kw('regular')
const SYMLINK = kw('symlink')
const DIRECTORY = kw('directory')
const EXECUTABLE = kw('executable')
const CONTENTS = kw('contents')
const TARGET = kw('target')
const ENTRY = kw('entry')
const NAME = kw('name')
const NODE = kw('node')
const MAGIC = kw(NAR_MAGIC)

// What the parser reads next (plain numbers: erasable syntax has no enums).
const S_MAGIC = 0
/** "(" opening a node. */
const S_OPEN = 1
/** "type" after "(". */
const S_TYPE_KEYWORD = 2
/** regular, symlink or directory. */
const S_TYPE = 3
/** "executable" or "contents" in a regular file. */
const S_REGULAR = 4
/** The empty string after "executable". */
const S_EXECUTABLE_MARK = 5
/** "contents" after the executable marker. */
const S_CONTENTS_KEYWORD = 6
/** The u64 length of the contents. */
const S_CONTENTS_LENGTH = 7
/** The contents themselves, streamed. */
const S_CONTENTS = 8
/** The zero padding after the contents. */
const S_CONTENTS_PADDING = 9
/** ")" closing a regular file. */
const S_REGULAR_CLOSE = 10
const S_TARGET_KEYWORD = 11
const S_TARGET = 12
/** ")" closing a symlink. */
const S_SYMLINK_CLOSE = 13
/** ")" closing a directory entry. */
const S_ENTRY_CLOSE = 14
/** "entry" or ")" inside a directory. */
const S_DIRECTORY = 15
/** "(" after "entry". */
const S_ENTRY_OPEN = 16
const S_NAME_KEYWORD = 17
const S_NAME = 18
const S_NODE_KEYWORD = 19
const S_END = 20

/** One open directory: its path and the last name seen, which the next must follow. */
interface Frame {
  path: Buffer
  prevName: Buffer | undefined
}

/**
 * A NAR parser fed one chunk at a time (`push`), synchronous, holding no input chunk between
 * calls: strings split across chunks are gathered in a small buffer, file contents are handed
 * to the sink as views of the chunk. `end()` says the input is over. Every deviation from the
 * canonical form Nix writes is a NarFormatError with the byte offset.
 *
 * Why a push parser: an async reader awaiting each token cost ~20 µs per small file in promise
 * turns, more than writing the file; this one costs a few hundred nanoseconds per token.
 */
export class NarParser {
  private readonly sink: NarSink
  private readonly maxTarget: number
  private state = S_MAGIC
  /** Absolute offset of the current chunk's first byte. */
  private base = 0
  private readonly stack: Frame[] = []
  /** Path of the node being read. */
  private path: Buffer
  /** Offset where the node being read starts (its "("). */
  private nodeAt = 0
  private executable = false
  /** Contents bytes still to come, and the contents' length. */
  private left = 0
  private size = 0
  // A string (or u64) split across chunks: its start, the 8 length bytes, then body + padding.
  private readonly head = Buffer.alloc(8)
  private headHave = 0
  private stringAt = 0
  private body: Buffer = EMPTY
  private bodyLength = 0
  private bodyHave = 0

  constructor (sink: NarSink, options: NarParserOptions = {}) {
    this.sink = sink
    this.maxTarget = options.maxTargetLength ?? MAX_TARGET_LENGTH
    this.path = options.root ?? EMPTY
  }

  /** Parses `chunk`; the sink is called for every node, and for contents, in it. */
  push (input: Uint8Array): void {
    const chunk = Buffer.isBuffer(input) ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength)
    const n = chunk.length
    let p = 0
    while (p < n) {
      const state = this.state
      if (state === S_CONTENTS) {
        const k = Math.min(this.left, n - p)
        this.sink.data(this.path, chunk.subarray(p, p + k))
        p += k
        this.left -= k
        if (this.left === 0) this.contentsDone()
        continue
      }
      if (state === S_END) this.fail('unexpected data after the end of the NAR', this.base + p)
      if (state === S_CONTENTS_PADDING) {
        const k = Math.min(this.bodyLength - this.bodyHave, n - p)
        chunk.copy(this.body, this.bodyHave, p, p + k)
        p += k
        this.bodyHave += k
        if (this.bodyHave === this.bodyLength) {
          this.checkPadding(this.body, 0, this.bodyLength, this.stringAt, 'file contents')
          this.fileEnd()
        }
        continue
      }
      // 1. The whole string in this chunk: read in place.
      if (this.headHave === 0 && n - p >= 8) {
        const at = this.base + p
        if (state === S_CONTENTS_LENGTH) {
          this.contentsLength(this.u64(chunk, p, at, 'the file contents'), at)
          p += 8
          continue
        }
        const length = this.stringLength(chunk, p, at)
        const pad = padding(length)
        if (n - p >= 8 + length + pad) {
          this.checkPadding(chunk, p + 8 + length, pad, at + 8 + length, this.what())
          this.string(chunk, p + 8, length, at)
          p += 8 + length + pad
          continue
        }
      }
      // 2. Split across chunks: gather the length, then body and padding.
      if (this.headHave < 8) {
        if (this.headHave === 0) this.stringAt = this.base + p
        const k = Math.min(8 - this.headHave, n - p)
        chunk.copy(this.head, this.headHave, p, p + k)
        p += k
        this.headHave += k
        if (this.headHave < 8) continue
        if (state === S_CONTENTS_LENGTH) {
          this.headHave = 0
          this.contentsLength(this.u64(this.head, 0, this.stringAt, 'the file contents'), this.stringAt)
          continue
        }
        this.bodyLength = this.stringLength(this.head, 0, this.stringAt)
        this.body = Buffer.allocUnsafe(this.bodyLength + padding(this.bodyLength))
        this.bodyHave = 0
      }
      const k = Math.min(this.body.length - this.bodyHave, n - p)
      chunk.copy(this.body, this.bodyHave, p, p + k)
      p += k
      this.bodyHave += k
      if (this.bodyHave === this.body.length) {
        this.headHave = 0
        const length = this.bodyLength
        this.checkPadding(this.body, length, this.body.length - length, this.stringAt + 8 + length, this.what())
        this.string(this.body, 0, length, this.stringAt)
      }
    }
    this.base += n
  }

  /** The input is over: throws unless the NAR was complete. */
  end (): void {
    const at = this.base
    switch (this.state) {
      case S_END: return
      case S_CONTENTS: this.fail(`NAR ends inside file contents (${this.left} of ${this.size} bytes missing)`, at); break
      case S_CONTENTS_PADDING: this.fail('NAR ends inside the padding of file contents', at); break
    }
    const what = this.state === S_CONTENTS_LENGTH ? 'the file contents' : this.what()
    if (this.headHave < 8) this.fail(`NAR ends inside the length of ${what}`, at)
    this.fail(this.bodyHave < this.bodyLength ? `NAR ends inside ${what}` : `NAR ends inside the padding of ${what}`, at)
  }

  /** What the next string is, for messages. */
  private what (): string {
    switch (this.state) {
      case S_MAGIC: return 'the NAR magic'
      case S_EXECUTABLE_MARK: return 'the executable marker'
      case S_TARGET: return 'a symlink target'
      case S_NAME: return 'a file name'
      default: return 'a token'
    }
  }

  /** Errors while reading the magic say that the input is not a NAR at all. */
  private fail (message: string, at: number): never {
    if (this.state === S_MAGIC) throw new NarFormatError(`not a NAR: it does not start with "${NAR_MAGIC}" (${message} at byte ${at})`, 0)
    throw new NarFormatError(message, at)
  }

  private u64 (b: Buffer, p: number, at: number, what: string): number {
    const high = b.readUInt32LE(p + 4)
    const value = high * 0x100000000 + b.readUInt32LE(p)
    if (value > MAX_CONTENTS_LENGTH) this.fail(`the length of ${what} is implausibly large (2^${Math.floor(Math.log2(high)) + 32} or more)`, at)
    return value
  }

  /** The length of the string at `p`, checked against the limit for what comes next. */
  private stringLength (b: Buffer, p: number, at: number): number {
    const what = this.what()
    const length = this.u64(b, p, at, what)
    const max = this.state === S_TARGET ? this.maxTarget : this.state === S_NAME ? MAX_NAME_LENGTH : MAX_TOKEN_LENGTH
    if (length > max) this.fail(`${what} is ${length} bytes long, more than the ${max} allowed`, at)
    return length
  }

  private checkPadding (b: Buffer, p: number, n: number, at: number, what: string): void {
    for (let i = 0; i < n; i++) {
      const byte = b[p + i]!
      if (byte !== 0) this.fail(`non-zero padding byte 0x${byte.toString(16).padStart(2, '0')} after ${what}`, at + i)
    }
  }

  /** A complete string `b[p, p + length)` that started at offset `at`: one grammar step. */
  private string (b: Buffer, p: number, length: number, at: number): void {
    switch (this.state) {
      case S_MAGIC:
        if (!same(b, p, length, MAGIC)) throw new NarFormatError(`not a NAR: magic is ${showBytes(b.subarray(p, p + length))}, not "${NAR_MAGIC}"`, at)
        this.state = S_OPEN
        return
      case S_OPEN:
        this.expect(b, p, length, at, OPEN, 'to open a node')
        this.nodeAt = at
        this.state = S_TYPE_KEYWORD
        return
      case S_TYPE_KEYWORD:
        this.expect(b, p, length, at, TYPE, 'after "("')
        this.state = S_TYPE
        return
      case S_TYPE:
        if (same(b, p, length, REGULAR)) {
          this.executable = false
          this.state = S_REGULAR
        } else if (same(b, p, length, DIRECTORY)) {
          this.sink.directory(this.path, this.nodeAt)
          this.stack.push({ path: this.path, prevName: undefined })
          this.state = S_DIRECTORY
        } else if (same(b, p, length, SYMLINK)) {
          this.state = S_TARGET_KEYWORD
        } else {
          this.fail(`unknown node type ${text(b, p, length)}`, at)
        }
        return
      case S_REGULAR:
      case S_CONTENTS_KEYWORD:
        if (this.state === S_REGULAR && same(b, p, length, EXECUTABLE)) {
          this.executable = true
          this.state = S_EXECUTABLE_MARK
          return
        }
        if (!same(b, p, length, CONTENTS)) this.fail(`expected "contents" in a regular file, found ${text(b, p, length)}`, at)
        this.state = S_CONTENTS_LENGTH
        return
      case S_EXECUTABLE_MARK:
        if (length !== 0) this.fail(`executable marker has a non-empty value ${showBytes(b.subarray(p, p + length))}`, at)
        this.state = S_CONTENTS_KEYWORD
        return
      case S_REGULAR_CLOSE:
        this.expect(b, p, length, at, CLOSE, 'to close a regular file')
        this.leafDone()
        return
      case S_TARGET_KEYWORD:
        this.expect(b, p, length, at, TARGET, 'in a symlink')
        this.state = S_TARGET
        return
      case S_TARGET:
        if (length === 0) this.fail('symlink target is empty', at)
        this.sink.symlink(this.path, Buffer.from(b.subarray(p, p + length)), this.nodeAt)
        this.state = S_SYMLINK_CLOSE
        return
      case S_SYMLINK_CLOSE:
        this.expect(b, p, length, at, CLOSE, 'to close a symlink')
        this.leafDone()
        return
      case S_ENTRY_CLOSE:
        this.expect(b, p, length, at, CLOSE, 'to close a directory entry')
        this.state = S_DIRECTORY
        return
      case S_DIRECTORY:
        if (same(b, p, length, ENTRY)) {
          this.state = S_ENTRY_OPEN
        } else if (same(b, p, length, CLOSE)) {
          const frame = this.stack.pop()!
          this.sink.directoryEnd(frame.path)
          this.state = this.stack.length > 0 ? S_ENTRY_CLOSE : S_END
        } else {
          this.fail(`expected "entry" or ")" in a directory, found ${text(b, p, length)}`, at)
        }
        return
      case S_ENTRY_OPEN:
        this.expect(b, p, length, at, OPEN, 'after "entry"')
        this.state = S_NAME_KEYWORD
        return
      case S_NAME_KEYWORD:
        this.expect(b, p, length, at, NAME, 'in a directory entry')
        this.state = S_NAME
        return
      case S_NAME: {
        const frame = this.stack[this.stack.length - 1]!
        const name = b.subarray(p, p + length)
        checkName(name, frame.prevName, at)
        const parent = frame.path
        let path: Buffer
        if (parent.length === 0) {
          path = Buffer.from(name)
        } else {
          path = Buffer.allocUnsafe(parent.length + 1 + length)
          parent.copy(path, 0)
          path[parent.length] = SLASH
          name.copy(path, parent.length + 1)
        }
        // The name is kept (for the order check) as a view of the path, which owns its bytes.
        frame.prevName = path.subarray(path.length - length)
        this.path = path
        this.state = S_NODE_KEYWORD
        return
      }
      case S_NODE_KEYWORD:
        this.expect(b, p, length, at, NODE, 'after the entry name')
        this.state = S_OPEN
        return
    }
  }

  private expect (b: Buffer, p: number, length: number, at: number, wanted: Buffer, context: string): void {
    if (!same(b, p, length, wanted)) this.fail(`expected "${wanted.toString('latin1')}" ${context}, found ${text(b, p, length)}`, at)
  }

  private contentsLength (size: number, at: number): void {
    this.size = size
    this.left = size
    this.sink.file(this.path, this.executable, size, this.nodeAt)
    this.stringAt = at + 8 + size // where the padding starts, for its error offsets
    if (size === 0) this.contentsDone()
    else this.state = S_CONTENTS
  }

  private contentsDone (): void {
    const pad = padding(this.size)
    if (pad === 0) {
      this.fileEnd()
      return
    }
    if (this.body.length < 8) this.body = Buffer.alloc(8)
    this.bodyLength = pad
    this.bodyHave = 0
    this.state = S_CONTENTS_PADDING
  }

  private fileEnd (): void {
    this.bodyLength = 0
    this.bodyHave = 0
    this.sink.fileEnd(this.path)
    this.state = S_REGULAR_CLOSE
  }

  /** A file or symlink was closed: close the entry holding it, or the NAR ends here. */
  private leafDone (): void {
    if (this.stack.length > 0) {
      this.state = S_ENTRY_CLOSE
      this.path = this.stack[this.stack.length - 1]!.path
    } else {
      this.state = S_END
    }
  }
}

/** Whether `b[p, p + length)` equals `wanted`. */
function same (b: Buffer, p: number, length: number, wanted: Buffer): boolean {
  if (length !== wanted.length) return false
  for (let i = 0; i < length; i++) if (b[p + i] !== wanted[i]) return false
  return true
}

/** A token as it appears in messages. */
function text (b: Buffer, p: number, length: number): string {
  return JSON.stringify(b.toString('latin1', p, p + length))
}

/**
 * Decodes the NAR in `source`. Throws NarFormatError on malformed input (wrong magic, unknown
 * token, bad padding, oversized string, invalid, unsorted or duplicate name, truncation,
 * trailing bytes after the NAR).
 */
export async function * decodeNar (source: AsyncIterable<Uint8Array>, options: DecodeNarOptions = {}): AsyncGenerator<NarEvent> {
  let events: NarEvent[] = []
  const parser = new NarParser({
    directory: (path, offset) => { events.push({ type: 'directory', path, offset }) },
    directoryEnd: path => { events.push({ type: 'directory-end', path }) },
    file: (path, executable, size, offset) => { events.push({ type: 'file', path, executable, size, offset }) },
    data: (path, data) => { events.push({ type: 'data', path, data }) },
    fileEnd: path => { events.push({ type: 'file-end', path }) },
    symlink: (path, target, offset) => { events.push({ type: 'symlink', path, target, offset }) }
  }, options)
  const signal = options.signal
  // The events of one chunk are handed on before the next chunk is asked for, so `data`
  // views stay valid as long as the source keeps its chunk, and an error comes after the
  // events that preceded it.
  const flush = function * (): Generator<NarEvent> {
    const out = events
    events = []
    yield * out
  }
  for await (const chunk of source) {
    signal?.throwIfAborted()
    let failure: unknown
    try {
      parser.push(chunk)
    } catch (err) {
      failure = err
    }
    yield * flush()
    if (failure !== undefined) throw failure
  }
  signal?.throwIfAborted()
  parser.end()
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
