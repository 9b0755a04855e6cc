// The wire format of Nix's daemon worker protocol, as NixOS/nix 2.8.0 defines it in
// src/libstore/worker-protocol.hh, daemon.cc, remote-store.cc and src/libutil/serialise.{hh,cc}:
// every integer a u64 little-endian, strings length + bytes + zero padding to 8, lists a count
// then items. Pure: both a client and a server can use it.

export const WORKER_MAGIC_1 = 0x6e697863 // client's
export const WORKER_MAGIC_2 = 0x6478696f // server's
/** 1.34, what Nix 2.8 speaks: major in the high byte, minor in the low one. */
export const PROTOCOL_VERSION = 0x122

export const STDERR_NEXT = 0x6f6c6d67
export const STDERR_READ = 0x64617461
export const STDERR_WRITE = 0x64617416
export const STDERR_LAST = 0x616c7473
export const STDERR_ERROR = 0x63787470
export const STDERR_START_ACTIVITY = 0x53545254
export const STDERR_STOP_ACTIVITY = 0x53544f50
export const STDERR_RESULT = 0x52534c54

export const OP_IS_VALID_PATH = 1
export const OP_ADD_TEMP_ROOT = 11
export const OP_SET_OPTIONS = 19
export const OP_COLLECT_GARBAGE = 20
export const OP_QUERY_PATH_INFO = 26
export const OP_QUERY_PATH_FROM_HASH_PART = 29
export const OP_QUERY_VALID_PATHS = 31
export const OP_NAR_FROM_PATH = 38
export const OP_ADD_TO_STORE_NAR = 39
export const OP_QUERY_MISSING = 40
export const OP_BUILD_PATHS_WITH_RESULTS = 46
export const OP_BUILD_DERIVATION = 36
export const OP_ADD_MULTIPLE_TO_STORE = 44

/** GCOptions::gcDeleteSpecific: delete the paths given, if nothing keeps them alive. */
export const GC_DELETE_SPECIFIC = 3

/** The result type of one line of a builder's output (Nix's `resBuildLogLine`). */
export const RESULT_BUILD_LOG_LINE = 101
/** `lvlError`: as SetOptions' build verbosity it asks for the builder's log (verboseBuild). */
export const VERBOSITY_ERROR = 0

/** BuildResult::Status, as Nix 2.8's build-result.hh numbers it. */
export const BuildStatus = {
  Built: 0,
  Substituted: 1,
  AlreadyValid: 2,
  PermanentFailure: 3,
  InputRejected: 4,
  OutputRejected: 5,
  TransientFailure: 6,
  CachedFailure: 7,
  TimedOut: 8,
  MiscFailure: 9,
  DependencyFailed: 10,
  LogLimitExceeded: 11,
  NotDeterministic: 12,
  ResolvesToAlreadyValid: 13,
  NoSubstituters: 14
} as const

const WORD = 8
/** Bounds for what the daemon may send us, so a corrupt length cannot make us allocate gigabytes. */
export const MAX_STRING_LENGTH = 64 * 1024 * 1024
export const MAX_LIST_COUNT = 1024 * 1024
/** Log lines, error messages and activity texts. */
const MAX_MESSAGE_LENGTH = 1024 * 1024
const MAX_FIELDS = 1024
const FIELD_INT = 0
const FIELD_STRING = 1

export class DaemonProtocolError extends Error {
  override name = 'DaemonProtocolError'
}

/** An error the daemon reported (STDERR_ERROR); the message is the daemon's. */
export class DaemonError extends Error {
  override name = 'DaemonError'
}

function padding (length: number): number { return (WORD - (length % WORD)) % WORD }

export class WireWriter {
  private readonly chunks: Uint8Array[] = []

  u64 (value: number): this {
    if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`u64 ${value} is not a non-negative safe integer`)
    const b = new Uint8Array(WORD)
    new DataView(b.buffer).setBigUint64(0, BigInt(value), true)
    this.chunks.push(b)
    return this
  }

  bool (value: boolean): this { return this.u64(value ? 1 : 0) }

  /** 2^64 − 1, "no limit" in Nix's fields (a GC's maxFreed). */
  u64Max (): this {
    this.chunks.push(new Uint8Array(WORD).fill(0xff))
    return this
  }

  bytes (data: Uint8Array): this {
    this.u64(data.length)
    this.chunks.push(data)
    const pad = padding(data.length)
    if (pad > 0) this.chunks.push(new Uint8Array(pad))
    return this
  }

  string (text: string): this { return this.bytes(new TextEncoder().encode(text)) }

  strings (list: readonly string[]): this {
    this.u64(list.length)
    for (const s of list) this.string(s)
    return this
  }

  toBytes (): Uint8Array {
    const total = this.chunks.reduce((n, c) => n + c.length, 0)
    const out = new Uint8Array(total)
    let at = 0
    for (const c of this.chunks) { out.set(c, at); at += c.length }
    return out
  }
}

export class WireReader {
  private readonly source: AsyncIterator<Uint8Array>
  private buffer: Uint8Array = new Uint8Array(0)

  constructor (source: AsyncIterator<Uint8Array> | AsyncIterable<Uint8Array>) {
    this.source = Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source
  }

  private async more (field: string): Promise<Uint8Array> {
    const next = await this.source.next()
    if (next.done === true) throw new DaemonProtocolError(`daemon connection closed while reading ${field}`)
    return next.value
  }

  /** Exactly `n` bytes; the pieces are joined once, not once per chunk received. */
  private async take (n: number, field: string): Promise<Uint8Array> {
    if (this.buffer.length < n) {
      const pieces = [this.buffer]
      let have = this.buffer.length
      while (have < n) {
        const chunk = await this.more(field)
        pieces.push(chunk)
        have += chunk.length
      }
      this.buffer = concat(pieces, have)
    }
    const out = this.buffer.slice(0, n)
    this.buffer = this.buffer.subarray(n)
    return out
  }

  async readExact (n: number, field: string): Promise<Uint8Array> { return await this.take(n, field) }

  /** `n` bytes as the chunks they arrive in (never held whole): for file contents of any size. */
  async * readChunks (n: number, field: string): AsyncGenerator<Uint8Array> {
    let left = n
    while (left > 0) {
      if (this.buffer.length === 0) this.buffer = await this.more(field)
      const piece = this.buffer.subarray(0, Math.min(left, this.buffer.length))
      this.buffer = this.buffer.subarray(piece.length)
      left -= piece.length
      yield piece
    }
  }

  async readU64 (field: string): Promise<number> {
    const b = await this.take(WORD, field)
    const v = new DataView(b.buffer, b.byteOffset, WORD).getBigUint64(0, true)
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new DaemonProtocolError(`${field}: ${v} is too large (above 2^53 - 1)`)
    return Number(v)
  }

  async readBool (field: string): Promise<boolean> { return (await this.readU64(field)) !== 0 }

  async readBytes (field: string, max = MAX_STRING_LENGTH): Promise<Uint8Array> {
    const length = await this.readU64(`${field} length`)
    if (length > max) throw new DaemonProtocolError(`${field}: length ${length} exceeds the limit of ${max}`)
    const data = await this.take(length, field)
    await this.take(padding(length), `${field} padding`)
    return data
  }

  async readString (field: string, max = MAX_STRING_LENGTH): Promise<string> {
    return new TextDecoder().decode(await this.readBytes(field, max))
  }

  async readStrings (field: string, maxCount = MAX_LIST_COUNT, maxLen = MAX_STRING_LENGTH): Promise<string[]> {
    const count = await this.readU64(`${field} count`)
    if (count > maxCount) throw new DaemonProtocolError(`${field}: count ${count} exceeds the limit of ${maxCount}`)
    const out: string[] = []
    for (let i = 0; i < count; i++) out.push(await this.readString(`${field}[${i}]`, maxLen))
    return out
  }
}

function concat (pieces: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total)
  let at = 0
  for (const p of pieces) { out.set(p, at); at += p.length }
  return out
}

async function readFields (reader: WireReader, field: string): Promise<Array<number | string>> {
  const count = await reader.readU64(`${field} count`)
  if (count > MAX_FIELDS) throw new DaemonProtocolError(`${field}: count ${count} exceeds the limit of ${MAX_FIELDS}`)
  const out: Array<number | string> = []
  for (let i = 0; i < count; i++) {
    const type = await reader.readU64(`${field}[${i}] type`)
    if (type === FIELD_INT) out.push(await reader.readU64(`${field}[${i}]`))
    else if (type === FIELD_STRING) out.push(await reader.readString(`${field}[${i}]`, MAX_MESSAGE_LENGTH))
    else throw new DaemonProtocolError(`${field}[${i}]: unknown field type ${type}`)
  }
  return out
}

/**
 * Reads the daemon's stderr messages after a request until STDERR_LAST. Log lines go to
 * `onLog`: the daemon's own messages (NEXT) and each line of a builder's output (a RESULT of
 * type build-log-line). Throws DaemonError on STDERR_ERROR (protocol ≥ 1.26 form),
 * DaemonProtocolError on anything it does not know.
 */
export async function readStderr (reader: WireReader, onLog?: (line: string) => void): Promise<void> {
  for (;;) {
    const code = await reader.readU64('stderr message code')
    switch (code) {
      case STDERR_LAST: return
      case STDERR_NEXT: {
        const line = await reader.readString('stderr log line', MAX_MESSAGE_LENGTH)
        onLog?.(line)
        break
      }
      case STDERR_START_ACTIVITY:
        await reader.readU64('activity id')
        await reader.readU64('activity level')
        await reader.readU64('activity type')
        await reader.readString('activity text', MAX_MESSAGE_LENGTH)
        await readFields(reader, 'activity fields')
        await reader.readU64('activity parent')
        break
      case STDERR_STOP_ACTIVITY:
        await reader.readU64('activity id')
        break
      case STDERR_RESULT: {
        await reader.readU64('result activity id')
        const type = await reader.readU64('result type')
        const fields = await readFields(reader, 'result fields')
        if (type === RESULT_BUILD_LOG_LINE && typeof fields[0] === 'string') onLog?.(fields[0])
        break
      }
      case STDERR_ERROR: {
        await reader.readString('error type', MAX_MESSAGE_LENGTH)
        await reader.readU64('error level')
        await reader.readString('error name', MAX_MESSAGE_LENGTH)
        const message = await reader.readString('error message', MAX_MESSAGE_LENGTH)
        await reader.readU64('error have-pos')
        const traces = await reader.readU64('error trace count')
        if (traces > MAX_FIELDS) throw new DaemonProtocolError(`error trace count ${traces} exceeds the limit of ${MAX_FIELDS}`)
        for (let i = 0; i < traces; i++) {
          await reader.readU64(`error trace[${i}] have-pos`)
          await reader.readString(`error trace[${i}] hint`, MAX_MESSAGE_LENGTH)
        }
        throw new DaemonError(message)
      }
      default:
        throw new DaemonProtocolError(`stderr message code: unknown code 0x${code.toString(16)}`)
    }
  }
}

/** Checks the server's magic word of the handshake. */
export async function readServerHello (reader: WireReader): Promise<number> {
  const magic = await reader.readU64('server magic')
  if (magic !== WORKER_MAGIC_2) throw new DaemonProtocolError(`server magic: expected 0x${WORKER_MAGIC_2.toString(16)}, got 0x${magic.toString(16)}`)
  return await reader.readU64('server protocol version')
}

/** The daemon's answer for one path of BuildPathsWithResults (BuildResult at protocol 1.34). */
export interface BuildResult {
  /** The derived path it answers for (`/nix/store/…drv!*`). */
  path: string
  status: number
  errorMsg: string
  timesBuilt: number
  isNonDeterministic: boolean
  startTime: number
  stopTime: number
  /** DrvOutput id (`sha256:…!out`) to its Realisation as JSON. */
  builtOutputs: Record<string, string>
}

export async function readBuildResult (reader: WireReader): Promise<BuildResult> {
  const path = await reader.readString('build result path')
  const status = await reader.readU64('build status')
  const errorMsg = await reader.readString('build error message', MAX_MESSAGE_LENGTH)
  const timesBuilt = await reader.readU64('times built')
  const isNonDeterministic = await reader.readBool('is non-deterministic')
  const startTime = await reader.readU64('start time')
  const stopTime = await reader.readU64('stop time')
  const outputs = await reader.readU64('built outputs count')
  if (outputs > MAX_FIELDS) throw new DaemonProtocolError(`built outputs count: ${outputs} exceeds the limit of ${MAX_FIELDS}`)
  const builtOutputs: Record<string, string> = {}
  for (let i = 0; i < outputs; i++) {
    const id = await reader.readString(`built output[${i}] id`, MAX_MESSAGE_LENGTH)
    builtOutputs[id] = await reader.readString(`built output[${i}] realisation`, MAX_MESSAGE_LENGTH)
  }
  return { path, status, errorMsg, timesBuilt, isNonDeterministic, startTime, stopTime, builtOutputs }
}

/** One frame of a framed stream (AddToStoreNar at protocol ≥ 1.23): a length, then the bytes, unpadded. */
export function frameHeader (length: number): Uint8Array { return new WireWriter().u64(length).toBytes() }
/** The empty frame that ends a framed stream. */
export const FRAME_END = new Uint8Array(WORD)
/** A frame longer than this is not one Nix's FramedSink (a 32 KiB buffer) would write. */
export const MAX_FRAME_LENGTH = 16 * 1024 * 1024

/**
 * The payload of a framed stream (serialise.hh's FramedSource), read as it arrives: each frame's
 * bytes, until the empty frame. `ended` tells whether that end was reached, so a caller that
 * stopped early can `drain()` the rest and be back in step with the stream.
 */
export class FramedReader implements AsyncIterable<Uint8Array> {
  ended = false
  private readonly frames: AsyncGenerator<Uint8Array>

  constructor (reader: WireReader, maxFrame = MAX_FRAME_LENGTH) {
    this.frames = this.read(reader, maxFrame)
  }

  private async * read (reader: WireReader, maxFrame: number): AsyncGenerator<Uint8Array> {
    for (let i = 0; ; i++) {
      const length = await reader.readU64(`frame ${i} length`)
      if (length === 0) { this.ended = true; return }
      if (length > maxFrame) throw new DaemonProtocolError(`frame ${i}: length ${length} exceeds the limit of ${maxFrame}`)
      yield * reader.readChunks(length, `frame ${i}`)
    }
  }

  /** An iterator that a consumer's `break` cannot close: the frames stay readable for drain(). */
  [Symbol.asyncIterator] (): AsyncIterator<Uint8Array> {
    return { next: async () => await this.frames.next() }
  }

  /** Reads and drops what is left, up to and including the empty frame. */
  async drain (): Promise<void> {
    for (;;) if ((await this.frames.next()).done === true) break
  }
}

/** NAR tokens that are not file contents (names, targets, keywords) are at most this long. */
const MAX_NAR_TOKEN = 64 * 1024
/** Small tokens are passed on in batches of about this size rather than one by one. */
const NAR_BATCH_BYTES = 64 * 1024
const NAR_MAGIC = 'nix-archive-1'

/**
 * A NAR as the daemon sends it for NarFromPath: unframed, so its end is found by following its
 * structure. Yields the NAR's bytes exactly, file contents as they arrive (constant memory);
 * what comes after the NAR is left in the reader. Checks only the structure it needs.
 */
export async function * readNar (reader: WireReader): AsyncGenerator<Uint8Array> {
  let pending: Uint8Array[] = []
  let pendingBytes = 0
  const token = async (what: string): Promise<string> => {
    const lengthBytes = await reader.readExact(WORD, `NAR ${what} length`)
    const length = Number(new DataView(lengthBytes.buffer, lengthBytes.byteOffset, WORD).getBigUint64(0, true))
    if (length > MAX_NAR_TOKEN) throw new DaemonProtocolError(`NAR ${what}: length ${length} exceeds the limit of ${MAX_NAR_TOKEN}`)
    const body = await reader.readExact(length + padding(length), `NAR ${what}`)
    pending.push(lengthBytes, body)
    pendingBytes += WORD + body.length
    return new TextDecoder().decode(body.subarray(0, length))
  }
  const expect = async (wanted: string, what: string): Promise<void> => {
    const got = await token(what)
    if (got !== wanted) throw new DaemonProtocolError(`NAR ${what}: expected ${JSON.stringify(wanted)}, got ${JSON.stringify(got.slice(0, 64))}`)
  }
  const flush = (): Uint8Array => {
    const out = concat(pending, pendingBytes)
    pending = []
    pendingBytes = 0
    return out
  }

  await expect(NAR_MAGIC, 'magic')
  // Directories open so far; iterative, so a deep tree cannot overflow the call stack.
  let depth = 0
  let atNode = true
  for (;;) {
    if (pendingBytes >= NAR_BATCH_BYTES) yield flush()
    if (atNode) {
      atNode = false
      await expect('(', 'node start')
      await expect('type', 'node type keyword')
      const type = await token('node type')
      if (type === 'directory') { depth++; continue }
      if (type === 'symlink') {
        await expect('target', 'symlink target keyword')
        await token('symlink target')
        await expect(')', 'symlink end')
      } else if (type === 'regular') {
        let t = await token('file keyword')
        if (t === 'executable') {
          await expect('', 'executable marker')
          t = await token('file keyword')
        }
        if (t === 'contents') {
          const lengthBytes = await reader.readExact(WORD, 'NAR contents length')
          const length = Number(new DataView(lengthBytes.buffer, lengthBytes.byteOffset, WORD).getBigUint64(0, true))
          if (!Number.isSafeInteger(length)) throw new DaemonProtocolError(`NAR contents length: ${length} is too large`)
          pending.push(lengthBytes)
          pendingBytes += WORD
          yield flush()
          yield * reader.readChunks(length, 'NAR contents')
          pending.push(await reader.readExact(padding(length), 'NAR contents padding'))
          pendingBytes += padding(length)
          t = await token('file end')
        }
        if (t !== ')') throw new DaemonProtocolError(`NAR file end: expected ")", got ${JSON.stringify(t.slice(0, 64))}`)
      } else {
        throw new DaemonProtocolError(`NAR node type: unknown type ${JSON.stringify(type.slice(0, 64))}`)
      }
      // A file or symlink closed: the whole NAR, or an entry whose ")" follows.
      if (depth === 0) break
      await expect(')', 'entry end')
      continue
    }
    const t = await token('directory keyword')
    if (t === ')') {
      depth--
      if (depth === 0) break
      await expect(')', 'entry end')
    } else if (t === 'entry') {
      await expect('(', 'entry start')
      await expect('name', 'entry name keyword')
      await token('entry name')
      await expect('node', 'entry node keyword')
      atNode = true
    } else {
      throw new DaemonProtocolError(`NAR directory: expected "entry" or ")", got ${JSON.stringify(t.slice(0, 64))}`)
    }
  }
  if (pendingBytes > 0) yield flush()
}
